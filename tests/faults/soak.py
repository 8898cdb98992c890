"""Run fault scenarios again and again, outside CI: ``python -m tests.faults.soak``.

    python -m tests.faults.soak                       # every scenario once, long variants
    python -m tests.faults.soak consumer-kill9 -n 5   # one scenario, five runs
    python -m tests.faults.soak --ci -n 3             # the CI parameters, three runs each
    python -m tests.faults.soak --list

Each run prints one verdict line (the same checker as the tests); a scenario with a known
library bug prints ``XFAIL`` when it fails only on what that bug fails, with the bug. The
last line sums up: runs, OK, known failures, failures. Exit status 1 if any run failed other
than by its known bug. ``--json`` prints each verdict as one JSON object instead (used by
``test_mutation.py``); ``--set name=value`` overrides a scenario's keyword argument.
Scenarios run one at a time (each starts its own server and processes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any

import partitions
from tests.faults import (  # noqa: F401 - importing registers the scenarios
    test_consumer_faults,
    test_ha_faults,
    test_network_faults,
    test_producer_faults,
    test_server_faults,
)
from tests.faults.checker import Verdict
from tests.faults.scenario import PRINT, REGISTRY


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def run_one(name: str, kwargs: dict[str, Any]) -> tuple[Verdict | None, str]:
    """One run; (verdict, "") or (None, the error that stopped the run)."""
    try:
        return REGISTRY[name].fn(**kwargs), ""
    except Exception as err:  # the harness itself failed: report it as this run's failure
        return None, f"{type(err).__name__}: {err}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.faults.soak", description=__doc__)
    ap.add_argument("names", nargs="*", help="scenarios (default: all)")
    ap.add_argument("-n", "--runs", type=int, default=1, help="runs per scenario")
    ap.add_argument("--ci", action="store_true", help="the CI parameters, not the long ones")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)
    if args.list:
        for name, reg in REGISTRY.items():
            known = f"  [known bug: {reg.known}]" if reg.known else ""
            print(f"{name:<28} soak: {reg.soak or '(as in CI)'}{known}")
        return 0
    names = args.names or list(REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; see --list")
    overrides = dict(item.split("=", 1) for item in args.set)
    PRINT[0] = False
    counts = {"runs": 0, "ok": 0, "known": 0, "failed": 0}
    start = time.monotonic()
    for name in names:
        reg = REGISTRY[name]
        kwargs = {} if args.ci else dict(reg.soak)
        kwargs.update({k: _value(v) for k, v in overrides.items()})
        for i in range(args.runs):
            t0 = time.monotonic()
            v, error = run_one(name, kwargs)
            took = time.monotonic() - t0
            counts["runs"] += 1
            if v is None:
                flag = "FAIL"
            elif v.ok:
                flag = "OK"
            elif reg.known and v.failed_on() <= set(reg.fails_on):
                flag = "XFAIL"
            else:
                flag = "FAIL"
            counts[{"OK": "ok", "XFAIL": "known", "FAIL": "failed"}[flag]] += 1
            if args.json:
                out: dict[str, Any] = {"scenario": name, "run": i + 1, "flag": flag,
                                       "seconds": round(took, 1), "error": error,
                                       "lib": partitions.__file__}  # fmt: skip
                if v is not None:
                    out |= dataclasses.asdict(v)
                    out["failed_on"] = sorted(v.failed_on())
                print(json.dumps(out), flush=True)
            elif v is None:
                print(f"FAIL  {name} run {i + 1}: the harness failed: {error}", flush=True)
            else:
                known = f"  [known bug: {reg.known}]" if flag == "XFAIL" else ""
                line = v.line()[5:]  # without the verdict's own OK/FAIL: flag says it
                print(f"{flag:<5} {i + 1}/{args.runs} {took:4.0f}s {line}{known}", flush=True)
                if flag == "FAIL":
                    for d in v.details[:10]:
                        print("     ", d, flush=True)
    total = time.monotonic() - start
    summary = (
        f"soak: {counts['runs']} runs in {total:.0f}s: {counts['ok']} OK, "
        f"{counts['known']} known failures (XFAIL), {counts['failed']} failed"
    )
    print(summary if not args.json else json.dumps({"summary": summary}), flush=True)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
