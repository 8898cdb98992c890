"""A mutated library must turn a real fault scenario red: the checker catches a real bug.

The mutation, "swap the pending and new reads on takeover": in a copy of the repository,
``PartitionState`` in ``partitions/_consumer/assignment.py`` starts with ``self.cursor = ""``
instead of ``self.cursor = "-"``. A new owner then reads new entries (``>``) first and leaves
the dead owner's unacked entries pending until a reclaim pass finds them idle (60 s by default). The
``consumer-kill9`` scenario (kill -9 mid-batch, keyed records), run against that copy in a
subprocess (cwd and PYTHONPATH at the copy, its workers too), must fail on O: records of a
key are completed while an earlier record the dead owner had handed out is not.

If the text to mutate is not found, the test fails loudly (it must never pass by mutating
nothing); it also checks that the run imported the copy, not this tree.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.checker import Verdict
from tests.faults.scenario import VERDICTS

ROOT = Path(__file__).resolve().parents[2]
TREE = ("partitions", "coordinator", "tests", "config")
ORIGINAL = 'self.cursor = "-"'
MUTANT = 'self.cursor = ""'

pytestmark = pytest.mark.timeout(240)


def mutated_copy(dest: Path) -> Path:
    """Copy the repository tree to ``dest`` and apply the mutation to the copy."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache")
    for name in TREE:
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    fetcher = dest / "partitions" / "_consumer" / "assignment.py"
    text = fetcher.read_text()
    init = text.find("class PartitionState")
    end = text.find("\nclass ", init + 1)
    body = text[init:end]
    if init < 0 or body.count(ORIGINAL) != 1:
        raise AssertionError(
            f"mutation text {ORIGINAL!r} not found exactly once in PartitionState of "
            f"{fetcher}: the library changed; update test_mutation.py (it must not pass by "
            "mutating nothing)"
        )
    fetcher.write_text(text[:init] + body.replace(ORIGINAL, MUTANT) + text[end:])
    assert MUTANT in fetcher.read_text().split("class Assignment")[0]
    return dest


def test_swapping_pending_and_new_reads_on_takeover_fails_O(tmp_path: Path) -> None:
    copy = mutated_copy(tmp_path / "mutant")
    env = {**os.environ, "PYTHONPATH": str(copy)}
    cmd = [sys.executable, "-m", "tests.faults.soak", "consumer-kill9", "--ci", "--json",
           "--set", "drain_timeout=20"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=200)
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    runs = [x for x in lines if x.get("scenario") == "consumer-kill9"]
    assert runs, f"no verdict from the mutant run:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    v = runs[0]
    assert not v["error"], v["error"]
    assert Path(v["lib"]).resolve().is_relative_to(copy.resolve()), v["lib"]
    assert not [f for f in v["run_failures"] if "imported the library" in f], v["run_failures"]
    print(
        f"mutant verdict: {v['flag']} failed on {v['failed_on']}: "
        f"order={v['order_violations']} lost={v['lost']}; "
        f"{[d for d in v['details'] if d.startswith('O:')][:2]}"
    )
    names = {f.name for f in dataclasses.fields(Verdict)}
    shown = Verdict(**{k: x for k, x in v.items() if k in names})
    shown.scenario = "mutant:consumer-kill9"
    shown.fault = "takeover reads new entries before pending"
    VERDICTS.append(shown)  # the session's table shows it as RED (caught)
    assert "O" in v["failed_on"], v
