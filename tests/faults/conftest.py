"""Fault tests: each scenario starts its own server and processes (never the machine's
Redis), and its one-line verdict is collected for the table printed at the end."""

from __future__ import annotations

import pytest

from tests.faults.scenario import REGISTRY, VERDICTS


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults" in str(item.path):
            item.add_marker(pytest.mark.fault)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not VERDICTS:
        return
    tr = terminalreporter
    tr.section("fault scenarios: invariants L, G, O, D and the run (see tests/faults/checker.py)")
    header = (
        f"{'':5} {'scenario':<26} {'produced':>8} {'doubt':>5} {'processed':>9} "
        f"{'dup':>5} {'lost':>5} {'dlq':>4} {'unexp':>5} {'order':>5} {'fence':>5} "
        f"{'D-viol':>6} {'dup-app':>7} {'zombie':>6}  fault; notes"
    )
    tr.write_line(header)
    for v in VERDICTS:
        lost = f"{v.lost}" + (f"/{v.allowed_loss}" if v.allowed_loss else "")
        known = REGISTRY.get(v.scenario)
        flag = "OK" if v.ok else ("XFAIL" if known and known.known else "FAIL")
        if v.scenario.startswith("mutant:"):  # a mutated library: it must fail (be caught)
            flag = "FAIL" if v.ok else "RED"
        why = "; ".join(t for _, t in v.failures())
        tr.write_line(
            f"{flag:<5} {v.scenario:<26} {v.produced:>8} {v.in_doubt:>5} {v.processed:>9} "
            f"{v.duplicated:>5} {lost:>5} {v.dead_lettered:>4} {v.unexpected_dead:>5} "
            f"{v.order_violations:>5} {v.fencing_violations:>5} {v.duplicate_violations:>6} "
            f"{v.duplicate_appends:>7} {v.zombie_refused:>6}  {v.fault}; {'; '.join(v.notes)}"
            + (f"; FAILED ON: {why}" if why else "")
        )
