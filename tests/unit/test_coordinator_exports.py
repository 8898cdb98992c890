"""coordinator's curated exports: sorted, complete, importable."""

from __future__ import annotations

import coordinator


def test_all_is_sorted_and_importable() -> None:
    assert coordinator.__all__ == sorted(coordinator.__all__)
    for name in coordinator.__all__:
        assert getattr(coordinator, name) is not None


def test_public_objects_have_docstrings() -> None:
    for name in coordinator.__all__:
        obj = getattr(coordinator, name)
        if callable(obj) and not isinstance(obj, dict):
            assert obj.__doc__, f"{name} has no docstring"
