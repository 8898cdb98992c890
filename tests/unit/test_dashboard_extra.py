"""Development tooling stays out of the core: without the ``dashboard`` extra the library works
and the web commands say what to install; the peer benchmarks load from the source tree only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from partitions._base.errors import ConfigError
from partitions.cli import main


@pytest.mark.parametrize("missing", ["uvicorn", "starlette"])
@pytest.mark.parametrize("command", ["demo", "dashboard"])
def test_web_commands_name_the_extra_when_the_server_is_missing(
    monkeypatch: pytest.MonkeyPatch, missing: str, command: str
) -> None:
    for name in list(sys.modules):
        if name == missing or name.startswith((f"{missing}.", "partitions.dashboard")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)  # import raises ModuleNotFoundError
    out = CliRunner().invoke(main, [command])
    assert out.exit_code == 1
    assert "pip install 'partstream[dashboard]'" in out.output and missing in out.output


def test_the_library_and_cli_import_without_the_web_server() -> None:
    code = (
        "import sys; sys.modules['starlette'] = sys.modules['uvicorn'] = None\n"
        "import partitions, partitions.cli, coordinator\n"
        "from partitions._walkthrough import demo_declared\n"
        "d = demo_declared(); print(sorted(d.topics), sorted(d.groups))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # Both groups of the demo file, which the old built-in copy lacked.
    assert done.stdout.strip() == "['orders'] ['analytics', 'notifications']"


def test_bench_peers_load_from_the_checkout_and_say_so_without_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from partitions.bench import harness

    peers = harness.load_peers()
    assert peers.__name__ == "bench.peers" and callable(peers.produce_sides)
    monkeypatch.setattr(harness, "PEERS_FILE", tmp_path / "bench" / "peers.py")
    with pytest.raises(ConfigError, match="source checkout"):
        harness.load_peers()
