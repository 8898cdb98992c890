"""The pytest plugin shipped with the package (partitions/pytest_plugin.py), seen from a user's
test run: pytester writes a small test file and runs pytest on it in a child process, which
loads the plugin through its ``pytest11`` entry point as a user's pytest would.

The child uses the suite's server (``PARTSTREAM_TEST_URL``), so this runs on each server the
suite runs on, except the test of the embedded server, which starts its own.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from partitions._client.connection import Connection
from partitions._client.server import pid_alive
from partitions.testing import drop_namespace
from tests.helpers import free_port

pytest_plugins = ["pytester"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

README = Path(__file__).resolve().parents[2] / "README.md"
CHILD_TIMEOUT = 120.0


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=CHILD_TIMEOUT)


def readme_example() -> str:
    section = README.read_text().split("## Testing your code", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Testing section has no python example"
    return match.group(1)


@pytest.fixture
def against_suite_server(server_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PARTSTREAM_TEST_URL", server_url)
    monkeypatch.delenv("CI", raising=False)
    return server_url


def test_the_readme_example_passes(pytester: pytest.Pytester, against_suite_server: str) -> None:
    pytester.makepyfile(test_billing=readme_example())
    run(pytester).assert_outcomes(passed=1)


def test_each_test_has_its_own_namespace_dropped_afterwards(
    pytester: pytest.Pytester, against_suite_server: str, conn: Connection
) -> None:
    # Both tests create the same topic: in a shared namespace the second would fail.
    pytester.makepyfile(
        test_isolated="""
        from pathlib import Path

        from partitions.testing import create_topic, produce

        def record(conn):
            with open(Path(__file__).with_name("namespaces.txt"), "a") as f:
                f.write(conn.keys.ns + "\\n")

        def test_one(partstream_conn):
            create_topic(partstream_conn, "orders", partitions=2)
            produce(partstream_conn, "orders", 20)
            record(partstream_conn)

        def test_two(partstream_conn, partstream_config):
            assert partstream_config.namespace == partstream_conn.keys.ns
            create_topic(partstream_conn, "orders", partitions=2)
            record(partstream_conn)
        """
    )
    run(pytester).assert_outcomes(passed=2)
    namespaces = (pytester.path / "namespaces.txt").read_text().split()
    assert len(namespaces) == len(set(namespaces)) == 2
    for ns in namespaces:
        assert drop_namespace(conn, ns) == 0, f"keys of {ns} were left behind"


def test_without_a_url_the_session_has_its_own_embedded_server(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PARTSTREAM_TEST_URL", raising=False)
    monkeypatch.delenv("CI", raising=False)
    pytester.makepyfile(
        test_embedded="""
        from pathlib import Path

        from partitions import EmbeddedServer

        def record(url):
            data_dir = Path(url.removeprefix("unix://")).parent
            with open(Path(__file__).with_name("servers.txt"), "a") as f:
                f.write(f"{url} {EmbeddedServer(data_dir).pid()} {data_dir}\\n")

        def test_one(partstream_url, partstream_conn):
            assert partstream_conn.client.ping()
            record(partstream_url)

        def test_two(partstream_url):
            record(partstream_url)
        """
    )
    run(pytester).assert_outcomes(passed=2)
    lines = (pytester.path / "servers.txt").read_text().splitlines()
    assert len(lines) == 2 and lines[0] == lines[1], "one server for the whole session"
    url, pid, data_dir = lines[0].split()
    assert url.startswith("unix://")
    assert not pid_alive(int(pid)), "the session's server outlived the session"
    assert not Path(data_dir).exists()


@pytest.mark.parametrize("ci", ["", "1"], ids=["locally", "under-CI"])
def test_an_unreachable_server_skips_locally_and_fails_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setenv("PARTSTREAM_TEST_URL", f"redis://127.0.0.1:{free_port()}")
    monkeypatch.setenv("CI", ci)
    pytester.makepyfile(
        test_nothing_there="""
        def test_needs_a_server(partstream_conn):
            raise AssertionError("must not run without a server")
        """
    )
    result = run(pytester, "-rsE")
    if ci:
        result.assert_outcomes(errors=1)
    else:
        result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*partstream test server unreachable*"])
