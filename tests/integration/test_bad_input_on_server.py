"""Bad input against real servers: a typed, clear error before anything is written.

Each case snapshots the namespace's keys (and the values it cares about) first and checks
they are unchanged afterwards. The CLI prints each error on one line and exits with 1.
"""

from __future__ import annotations

import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from click.testing import CliRunner

from partitions._admin.groups import GroupAdmin
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.errors import (
    EvictionPolicyError,
    InvalidNameError,
    PartstreamError,
    SerializationError,
    ServerTooOldError,
    StateLostError,
    WrongTypeError,
)
from partitions._client.config import ClientConfig, ProducerConfig
from partitions._client.connection import Connection, connect
from partitions._consumer.consumer import Consumer
from partitions._producer.producer import Producer
from partitions.cli import main
from tests import helpers
from tests.helpers import layout, own_server

FAST = helpers.FAST.with_changes(session_timeout_ms=3000, heartbeat_interval_ms=500)


def snapshot(conn: Connection) -> dict[bytes, Any]:
    """Every key of the test's namespace with its type and a dump of its value."""
    out: dict[bytes, Any] = {}
    for key in conn.client.scan_iter(match=f"{conn.config.namespace}:*", count=1000):
        out[key] = (conn.client.type(key), conn.client.dump(key))
    return out


def cli(config: ClientConfig, *args: str, input: str | None = None) -> tuple[int, str, str]:
    res = CliRunner().invoke(
        main, ["--url", str(config.url), "--namespace", config.namespace, *args], input=input
    )
    return res.exit_code, res.stdout, res.stderr


def one_line(err: str, error: str) -> None:
    assert err.startswith(f"error: {error}: ") and err.count("\n") == 1, err


# -- names ------------------------------------------------------------------------------------
BAD_NAMES: list[Any] = ["a b", "t{x}", "t*", "{t}", "t?", "t[1]", "t\n", "", b"\xff\xfe", "x" * 101]


def test_bad_names_at_every_entry_point_write_nothing(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("ok", 2))
    before = snapshot(conn)
    with Producer(conn, ProducerConfig(linger_ms=1)) as p:
        for name in BAD_NAMES:
            with pytest.raises(InvalidNameError):
                TopicAdmin(conn).create(TopicSpec(name, 1))
            with pytest.raises(InvalidNameError):
                p.send(name, "v")
            with pytest.raises(InvalidNameError):
                GroupAdmin(conn).create(name)
            with pytest.raises(InvalidNameError):
                Consumer(name, "ok", conn=conn, group_settings=FAST)
            with pytest.raises(InvalidNameError):
                Consumer("g", name, conn=conn, group_settings=FAST)
            if name:  # an empty instance id means none (a dynamic member)
                with pytest.raises(InvalidNameError):
                    Consumer("g", "ok", conn=conn, instance_id=name, group_settings=FAST)
        for headers in ({"": "v"}, {1: "v"}, {"h": 5}):
            with pytest.raises(SerializationError):
                p.send("ok", "v", headers=headers)  # type: ignore[arg-type]
    assert snapshot(conn) == before


def test_header_name_that_is_not_utf8_is_a_serialization_error(conn: Connection) -> None:
    TopicAdmin(conn).create(TopicSpec("ok", 1))
    with Producer(conn, ProducerConfig(linger_ms=1)) as p, pytest.raises(SerializationError):
        p.send("ok", "v", headers={"bad\udcff": "v"})


def test_cli_bad_names_are_one_line_and_write_nothing(
    client_config: ClientConfig, conn: Connection
) -> None:
    TopicAdmin(conn).create(TopicSpec("ok", 1))
    before = snapshot(conn)
    for args in (
        ["topic", "describe", "{t}"],
        ["group", "create", "g{x}"],
        ["consume", "ok", "-g", "g g", "--timeout", "1"],
        ["consume", "ok", "-g", "g", "--instance-id", "i*", "--timeout", "1"],
        ["produce", "t x"],
    ):
        code, _, err = cli(client_config, *args, input="v\n")
        assert code == 1, args
        one_line(err, "InvalidNameError")
    assert snapshot(conn) == before


# -- oversize -------------------------------------------------------------------------------
def test_oversize_key_or_headers_refused_and_cli_one_line(
    client_config: ClientConfig, conn: Connection
) -> None:
    TopicAdmin(conn).create(TopicSpec("big", 1))
    before = snapshot(conn)
    with Producer(conn, ProducerConfig(linger_ms=1, max_record_bytes=1000)) as p:
        with pytest.raises(SerializationError, match="max_record_bytes=1000"):
            p.send("big", "v", key="k" * 1001)
        with pytest.raises(SerializationError, match="max_record_bytes"):
            p.send("big", "v", key="k", headers={"h": "x" * 1000})
    assert snapshot(conn) == before
    code, _, err = cli(client_config, "produce", "big", input="x" * 1_100_000 + "\n")
    assert code == 1
    one_line(err, "RecordTooLargeError")
    assert snapshot(conn) == before


# -- WRONGTYPE --------------------------------------------------------------------------------
def test_wrongtype_keys_for_produce_consume_and_describe(
    client_config: ClientConfig, conn: Connection
) -> None:
    TopicAdmin(conn).create(TopicSpec("clash", 1))
    stream = conn.keys.stream(layout(conn, "clash"), 0)
    conn.client.set(stream, "someone else's string")
    before = snapshot(conn)
    with (
        Producer(conn, ProducerConfig(linger_ms=1, retries=0)) as p,
        pytest.raises(WrongTypeError, match="wrong kind of value"),
    ):
        p.send("clash", "v", key="k").result(5)
    with pytest.raises(WrongTypeError):
        TopicAdmin(conn).describe("clash")
    with (
        Consumer("g", "clash", conn=conn, group_settings=FAST) as c,
        pytest.raises((WrongTypeError, StateLostError)) as err,
    ):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            c.poll(timeout=0.2)
    assert "WRONGTYPE" in str(err.value) or "wrong kind" in str(err.value)
    assert conn.client.get(stream) == b"someone else's string"
    assert snapshot(conn)[stream.encode()] == before[stream.encode()]
    for args, error in (
        (["produce", "clash", "-k", "k"], "WrongTypeError"),
        (["topic", "describe", "clash"], "WrongTypeError"),
    ):
        code, _, err_text = cli(client_config, *args, input="v\n")
        assert code == 1, args
        one_line(err_text, error)
    assert conn.client.get(stream) == b"someone else's string"


@pytest.mark.parametrize("clash", ["cfg", "state"])
def test_group_create_over_a_wrongtype_key_is_refused_before_writing(
    conn: Connection, clash: str
) -> None:
    key = conn.keys.group_cfg("clashing") if clash == "cfg" else conn.keys.group_state("clashing")
    conn.client.set(key, "not a hash")
    before = snapshot(conn)
    with pytest.raises(WrongTypeError):
        GroupAdmin(conn).create("clashing")
    assert snapshot(conn) == before


# -- state lost -------------------------------------------------------------------------------
def test_restarted_consumer_after_its_stream_was_deleted_gets_state_lost(
    client_config: ClientConfig, conn: Connection
) -> None:
    TopicAdmin(conn).create(TopicSpec("gone", 1))
    with Producer(conn, ProducerConfig(linger_ms=1)) as p:
        for i in range(3):
            p.send("gone", f"v{i}").result(5)
    with Consumer("g", "gone", conn=conn, group_settings=FAST) as c:
        got = 0
        deadline = time.monotonic() + 10
        while got < 3 and time.monotonic() < deadline:
            got += len(c.poll(timeout=0.3))
        assert got == 3
    stream = conn.keys.stream(layout(conn, "gone"), 0)
    conn.client.delete(stream)  # lost while no member was running
    with (
        Consumer("g", "gone", conn=conn, group_settings=FAST) as c,
        pytest.raises(StateLostError, match="group seek"),
    ):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            c.poll(timeout=0.3)
    assert not conn.client.exists(stream)  # never silently re-created
    code, _, err = cli(client_config, "consume", "gone", "-g", "g", "--timeout", "5")
    assert code == 1
    one_line(err, "StateLostError")
    assert not conn.client.exists(stream)


# -- a server too old ---------------------------------------------------------------------------
@contextmanager
def fake_server(info: str) -> Iterator[int]:
    """A tiny RESP server on loopback: +PONG to PING, ``info`` to INFO, an error otherwise."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    stop = threading.Event()
    writes: list[bytes] = []
    version = info.split("_version:")[-1].split("\n")[0]

    def reply(cmd: list[bytes]) -> bytes:
        name = cmd[0].upper() if cmd else b""
        if name == b"PING":
            return b"+PONG\r\n"
        if name == b"HELLO":  # redis-py speaks RESP3 when it can
            fields = {"server": "redis", "version": version, "mode": "standalone"}
            return (
                b"%%%d\r\n" % (len(fields) + 1)
                + b"".join(
                    b"$%d\r\n%b\r\n" % (len(x), x)
                    for kv in fields.items()
                    for x in (kv[0].encode(), kv[1].encode())
                )
                + b"$5\r\nproto\r\n:3\r\n"
            )
        if name == b"INFO":
            body = info.replace("\n", "\r\n").encode()
            return b"$%d\r\n%b\r\n" % (len(body), body)
        writes.append(b" ".join(cmd))
        return b"-ERR unknown command\r\n"

    def serve(sock: socket.socket) -> None:
        buf = b""
        sock.settimeout(0.2)
        with sock:
            while not stop.is_set():
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while True:
                    cmd, buf = _parse(buf)
                    if cmd is None:
                        break
                    sock.sendall(reply(cmd))

    def accept() -> None:
        while not stop.is_set():
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(sock,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(2)
        listener.close()
    # Only connection set-up commands may have reached it (CLIENT SETINFO), never a write.
    assert all(w.upper().startswith(b"CLIENT") for w in writes), writes


def _parse(buf: bytes) -> tuple[list[bytes] | None, bytes]:
    """One RESP array of bulk strings from ``buf``, or (None, buf) if incomplete."""
    if not buf.startswith(b"*") or b"\r\n" not in buf:
        return None, buf
    head, rest = buf.split(b"\r\n", 1)
    items: list[bytes] = []
    for _ in range(int(head[1:])):
        if b"\r\n" not in rest:
            return None, buf
        size_line, rest = rest.split(b"\r\n", 1)
        size = int(size_line[1:])
        if len(rest) < size + 2:
            return None, buf
        items.append(rest[:size])
        rest = rest[size + 2 :]
    return items, rest


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ("# Server\nredis_version:6.2.0\nredis_mode:standalone\n", "Redis 6.2.0 is too old"),
        (
            "# Server\nredis_version:7.2.4\nserver_name:valkey\nvalkey_version:7.0.0\n",
            "Valkey 7.0.0 is too old",
        ),
    ],
)
def test_server_too_old_is_refused_before_anything_is_sent(info: str, expected: str) -> None:
    with fake_server(info) as port:
        url = f"redis://127.0.0.1:{port}"
        with pytest.raises(ServerTooOldError, match=expected):
            connect(ClientConfig(url=url))
        res = CliRunner().invoke(main, ["--url", url, "topic", "create", "t", "-p", "1"])
        assert res.exit_code == 1
        one_line(res.stderr, "ServerTooOldError")


# -- a server that evicts keys -----------------------------------------------------------------
def test_evicting_server_warns_by_default_and_strict_refuses() -> None:
    with own_server(["--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru"]) as server:
        url = f"redis://{server.host_port}"
        with (
            pytest.warns(RuntimeWarning, match="allkeys-lru"),
            connect(ClientConfig(url=url, namespace="ev")) as conn,
        ):
            assert conn.server.maxmemory_policy == "allkeys-lru"
        with pytest.raises(EvictionPolicyError, match="set it to noeviction"):
            connect(ClientConfig(url=url, namespace="ev", strict_eviction_policy=True))
        res = CliRunner().invoke(
            main,
            ["--url", url, "--namespace", "ev", "topic", "create", "t", "-p", "2"],
            env={"PARTSTREAM_STRICT_EVICTION_POLICY": "1"},
        )
        assert res.exit_code == 1
        one_line(res.stderr, "EvictionPolicyError")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with connect(ClientConfig(url=url, namespace="ev")) as conn:
                assert list(conn.client.scan_iter(match="ev:*")) == []  # nothing was written


def test_errors_are_partstream_errors() -> None:
    # The CLI prints only PartstreamError subclasses on one line; the types above are ones.
    for err in (EvictionPolicyError, ServerTooOldError, WrongTypeError, StateLostError):
        assert issubclass(err, PartstreamError)
