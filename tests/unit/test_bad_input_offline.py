"""Bad input without a server: every mistake is a typed ConfigError before any connection.

The CLI cases point ``--url`` at a port nothing listens on: had the command tried to connect
before validating, it would fail with ConnectionFailedError instead of the expected error.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from partitions._admin.apply import load
from partitions._base.errors import ConfigError, InvalidNameError
from partitions._base.settings import GroupSettings
from partitions._client.config import ClientConfig, ConsumerConfig, ProducerConfig
from partitions.cli import main


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}"


def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    res = CliRunner().invoke(main, ["--url", _dead_url(), *args], env=env)
    return res.exit_code, res.stderr


BAD_TOML = {
    "syntax": ("[topics.a\npartitions = 2\n", "invalid TOML"),
    "wrong type": ('[topics.a]\npartitions = "four"\n', "partitions"),
    "bool as int": ("[groups.g]\nmax_deliveries = true\n", "max_deliveries"),
    "float as int": ("[groups.g]\nsession_timeout_ms = 3000.5\n", "session_timeout_ms"),
    "contradictory": (
        "[groups.g]\nsession_timeout_ms = 3000\nheartbeat_interval_ms = 1000\n",
        "below a third of the session timeout",
    ),
    "unknown topic key": ("[topics.a]\npartitions = 2\nretention = 5\n", "unknown setting"),
    "unknown group key": ("[groups.g]\nsession_timeout = 5\n", "unknown group setting"),
    "unknown table": ("[topic.a]\npartitions = 2\n", "unknown table"),
    "not a table": ("topics = 5\n", "must be a table"),
    "bad topic name": ('[topics."a b"]\npartitions = 2\n', "may only use"),
    "bad group name": ('[groups."g{x}"]\n', "may only use"),
}


@pytest.mark.parametrize("case", sorted(BAD_TOML))
def test_bad_toml_is_a_config_error_naming_the_problem(case: str, tmp_path: Path) -> None:
    text, expected = BAD_TOML[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load(path)
    code, err = _cli("apply", str(path))
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(("error: ConfigError", "error: InvalidNameError")), err
    assert expected.split()[0] in err


def test_heartbeat_exactly_a_third_of_the_session_is_refused() -> None:
    with pytest.raises(ConfigError, match="below a third"):
        GroupSettings(session_timeout_ms=3000, heartbeat_interval_ms=1000)
    assert GroupSettings(session_timeout_ms=3001, heartbeat_interval_ms=1000)


@pytest.mark.parametrize(
    ("cls", "kwargs", "expected"),
    [
        (ClientConfig, {"socket_timeout": "10"}, "socket_timeout"),
        (ClientConfig, {"connect_timeout": -1}, "connect_timeout"),
        (ClientConfig, {"url": 6379}, "url must be a string"),
        (ClientConfig, {"strict_eviction_policy": "yes"}, "strict_eviction_policy"),
        (ClientConfig, {"ssl_ca_certs": "/nonexistent/ca.pem"}, "ssl_ca_certs"),
        (ProducerConfig, {"batch_size": "100"}, "batch_size"),
        (ProducerConfig, {"batch_size": 10.5}, "batch_size must be an integer"),
        (ProducerConfig, {"idempotent": "no"}, "idempotent"),
        (ProducerConfig, {"linger_ms": None}, "linger_ms"),
        (ConsumerConfig, {"fetch_count": "5"}, "fetch_count"),
        (ConsumerConfig, {"auto_commit": "no"}, "auto_commit"),
        (ConsumerConfig, {"auto_offset_reset": "smallest"}, "auto_offset_reset"),
    ],
)
def test_wrong_types_in_config_objects_are_config_errors(
    cls: Any, kwargs: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        cls(**kwargs)


def test_tls_key_without_certificate_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_text("not really a key")
    with pytest.raises(ConfigError, match="ssl_keyfile needs ssl_certfile"):
        ClientConfig(url="rediss://localhost", ssl_keyfile=str(key))


@pytest.mark.parametrize(
    "namespace", ["a b", "ns{x}", "ns*", "ns:x", "", "\tns", b"\xff\xfe", "ns\x00"]
)
def test_bad_namespaces(namespace: Any) -> None:
    with pytest.raises(InvalidNameError):
        ClientConfig(namespace=namespace)


def test_bad_environment_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARTSTREAM_NAMESPACE", "bad ns")
    with pytest.raises(InvalidNameError):
        ClientConfig.from_env()
    monkeypatch.delenv("PARTSTREAM_NAMESPACE")
    monkeypatch.setenv("PARTSTREAM_STRICT_EVICTION_POLICY", "maybe")
    with pytest.raises(ConfigError, match="PARTSTREAM_STRICT_EVICTION_POLICY"):
        ClientConfig.from_env()
    monkeypatch.setenv("PARTSTREAM_STRICT_EVICTION_POLICY", "1")
    assert ClientConfig.from_env().strict_eviction_policy is True
    monkeypatch.setenv("PARTSTREAM_TLS_CERT", "/nonexistent/cert.pem")
    with pytest.raises(ConfigError, match="ssl_certfile"):
        ClientConfig.from_env()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["topic", "create", "a b", "-p", "2"], "InvalidNameError"),
        (["topic", "create", "t*", "-p", "2"], "InvalidNameError"),
        (["--namespace", "n s", "topic", "list"], "InvalidNameError"),
    ],
)
def test_cli_rejects_bad_names_before_connecting(args: list[str], error: str) -> None:
    code, err = _cli(*args)
    assert code == 1 and err.startswith(f"error: {error}") and err.count("\n") == 1, err


def test_cli_rejects_bad_environment_in_one_line() -> None:
    code, err = _cli("topic", "list", env={"PARTSTREAM_TLS_CA": "/nonexistent/ca.pem"})
    assert code == 1 and err.startswith("error: ConfigError") and "ssl_ca_certs" in err
