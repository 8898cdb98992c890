"""A pytest plugin for the suite runner's failover pass (``-p tests.running_test``): writes
the id of the test starting now to the file ``$PARTSTREAM_CI_RUNNING_TEST``, so the report of
a primary's kill says which test it landed in."""

from __future__ import annotations

import os
from pathlib import Path

ENV = "PARTSTREAM_CI_RUNNING_TEST"


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    path = os.environ.get(ENV)
    if path:
        Path(path).write_text(nodeid)


def running(path: Path) -> str:
    """The test that was starting last (``?`` if none yet)."""
    try:
        return path.read_text() or "?"
    except OSError:
        return "?"
