"""Fault tests: each scenario starts its own server and processes (never the machine's
Redis), and its one-line verdict is collected for the table printed at the end."""

from __future__ import annotations

import pytest

from tests.faults.scenario import VERDICTS


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults" in str(item.path):
            item.add_marker(pytest.mark.fault)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not VERDICTS:
        return
    tr = terminalreporter
    tr.section("fault scenarios: invariants L, G, O, D (see tests/faults/checker.py)")
    header = (
        f"{'':4} {'scenario':<24} {'fault':<34} {'produced':>8} {'processed':>9} "
        f"{'dup':>5} {'lost':>5} {'order':>5} {'fence':>5} {'D-viol':>6} {'dup-app':>7} "
        f"{'zombie':>6}  notes"
    )
    tr.write_line(header)
    for v in VERDICTS:
        lost = f"{v.lost}" + (f"/{v.allowed_loss}" if v.allowed_loss else "")
        tr.write_line(
            f"{'OK' if v.ok else 'FAIL':<4} {v.scenario:<24} {v.fault[:34]:<34} "
            f"{v.produced:>8} {v.processed:>9} {v.duplicated:>5} {lost:>5} "
            f"{v.order_violations:>5} {v.fencing_violations:>5} {v.duplicate_violations:>6} "
            f"{v.duplicate_appends:>7} {v.zombie_refused:>6}  {'; '.join(v.notes)}"
        )
