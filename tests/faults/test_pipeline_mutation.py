"""A pipeline whose dedupe is broken must turn the pipeline kill -9 scenario red.

The mutation, in a copy of the repository: ``transact.lua``'s ``apply`` no longer drops an
input at or below its source's mark (``if mark and id_le(input_id, mark)`` becomes
``if false``), so a replay after a crash between the outputs and the ack writes them again.
The ``pipeline-kill9`` scenario in the idempotent mode (the Cluster's, on one node), run
against that copy in a subprocess (cwd and PYTHONPATH at the copy, its workers too), must
fail on duplicated outputs; the unmutated tree passes the same scenario
(test_pipeline_faults.py). If the text to mutate is not found exactly once, the test fails
loudly: it must never pass by mutating nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.checker import Verdict
from tests.faults.scenario import VERDICTS
from tests.faults.test_mutation import ROOT, TREE

pytestmark = pytest.mark.timeout(300)

TRANSACT = Path("partitions") / "_pipeline" / "transact.lua"
ORIGINAL = "if mark and id_le(input_id, mark) then return {2, mark} end"
MUTANT = "if false then return {2, mark} end"
RUN = """
import dataclasses, json, partitions
from tests.faults.test_pipeline_faults import pipeline_kill9
v = pipeline_kill9(mode="idempotent", kills=12, work_ms=0.0)
print(json.dumps({"lib": partitions.__file__, **dataclasses.asdict(v),
                  "failed_on": sorted(v.failed_on())}))
"""


def mutated_copy(dest: Path) -> Path:
    import shutil

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache")
    for name in TREE:
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    lua = dest / TRANSACT
    text = lua.read_text()
    if text.count(ORIGINAL) != 1:
        raise AssertionError(
            f"mutation text {ORIGINAL!r} not found exactly once in {lua}: the library "
            "changed; update test_pipeline_mutation.py (it must not pass by mutating nothing)"
        )
    lua.write_text(text.replace(ORIGINAL, MUTANT))
    return dest


def test_a_pipeline_without_its_dedupe_duplicates_outputs_under_kill9(tmp_path: Path) -> None:
    copy = mutated_copy(tmp_path / "mutant")
    env = {**os.environ, "PYTHONPATH": str(copy), "PARTSTREAM_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.run(
        [sys.executable, "-c", RUN], cwd=copy, env=env, capture_output=True, text=True,
        timeout=280,
    )  # fmt: skip
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith('{"lib"')]
    assert lines, f"no verdict from the mutant run:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    v = lines[0]
    assert Path(v["lib"]).resolve().is_relative_to(copy.resolve()), v["lib"]
    names = {f.name for f in dataclasses.fields(Verdict)}
    shown = Verdict(**{k: x for k, x in v.items() if k in names})
    shown.scenario = "mutant:pipeline-kill9"
    shown.fault = "transact.lua apply without its dedupe"
    VERDICTS.append(shown)  # the session's table shows it as RED (caught)
    print(f"mutant verdict: failed on {v['failed_on']}: dup-appends={v['duplicate_appends']}")
    assert "dup-appends" in v["failed_on"], v
