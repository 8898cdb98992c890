"""The public API is exactly what partitions.__all__ lists, sorted and importable."""

from __future__ import annotations

import partitions


def test_all_is_sorted_and_unique() -> None:
    assert partitions.__all__ == sorted(set(partitions.__all__))


def test_every_export_exists_and_public_names_are_exported() -> None:
    for name in partitions.__all__:
        assert hasattr(partitions, name), name
    public = {
        name
        for name, value in vars(partitions).items()
        if not name.startswith("_")
        and getattr(value, "__module__", "").startswith(("partitions", "coordinator"))
    }
    assert public <= set(partitions.__all__), public - set(partitions.__all__)
