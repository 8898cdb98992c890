"""Security: least-privilege ACL users, TLS (verified by default, mutual TLS), no leaked passwords.

Each test group starts its own server (users and TLS are server configuration the shared test
server must not get) and stops it by pid.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from partitions import Output, Pipeline
from partitions._admin.acl import acl_rules
from partitions._admin.groups import GroupAdmin
from partitions._admin.topics import TopicAdmin, TopicSpec
from partitions._base.errors import (
    ConfigError,
    ConnectionFailedError,
    LibraryMissingError,
    PermissionDeniedError,
    translate,
)
from partitions._base.functions import library_name
from partitions._base.keys import Keys, TopicLayout
from partitions._base.records import Record
from partitions._client.config import ClientConfig, ConsumerConfig, ProducerConfig
from partitions._client.connection import Connection, connect
from partitions._consumer.consumer import Consumer
from partitions._producer.producer import Producer
from partitions._telemetry.scrape import Scrape, Scraper, scrape
from partitions.cli import main
from tests import helpers
from tests.helpers import ServerProc, free_port, layout, missing, own_server, server_binaries

NS = "sec"
PASSWORD = "Pr0d-s3cret-pw"  # distinctive, so a leak is easy to find in any output
FAST = helpers.FAST.with_changes(session_timeout_ms=3000, heartbeat_interval_ms=500)


# -- ACL users ------------------------------------------------------------------------------
@dataclass
class AclSetup:
    server: ServerProc
    root: Any  # redis.Redis (execute_command is untyped)

    def url(self, user: str, password: str = PASSWORD) -> str:
        return f"redis://{user}:{password}@{self.server.host_port}"

    def config(self, user: str) -> ClientConfig:
        return ClientConfig(url=self.url(user), namespace=NS)

    def connect(self, user: str) -> Connection:
        return connect(self.config(user))

    def layout(self, topic: str) -> TopicLayout:
        """The topic's key layout, read by the admin (other roles may not read every topic)."""
        with self.connect("admin") as admin:
            return layout(admin, topic)

    def stream(self, topic: str, partition: int) -> str:
        return Keys(NS).stream(self.layout(topic), partition)


@pytest.fixture(scope="module", params=server_binaries() or ["none"], ids=lambda b: Path(b).name)
def acl(request: pytest.FixtureRequest) -> Iterator[AclSetup]:
    """Users of each role on a server the test starts: the machine's Redis 7 and Valkey."""
    if request.param == "none":
        missing("no redis-server or valkey-server binary")
    with own_server(binary=request.param) as server:
        root: Any = redis.Redis(port=server.port)
        info = root.info("server")
        # CLIENT SETINFO exists from Redis 7.2 on (and in every Valkey).
        setinfo = "valkey_version" in info or tuple(
            int(x) for x in str(info["redis_version"]).split(".")[:2]
        ) >= (7, 2)
        users = {
            "producer": acl_rules(
                "producer",
                user="producer",
                topics=["orders", "kept"],
                namespace=NS,
                password=PASSWORD,
                client_setinfo=setinfo,
            ),
            "consumer": acl_rules(
                "consumer",
                user="consumer",
                topics=["orders"],
                groups=["billing"],
                namespace=NS,
                password=PASSWORD,
                client_setinfo=setinfo,
            ),
            "pipeline": acl_rules(
                "pipeline",
                user="pipeline",
                topics=["orders"],
                groups=["enrich"],
                outputs=["derived"],
                namespace=NS,
                password=PASSWORD,
                client_setinfo=setinfo,
            ),
            "monitor": acl_rules(
                "monitor", user="monitor", namespace=NS, password=PASSWORD, client_setinfo=setinfo
            ),
            "admin": acl_rules("admin", user="admin", namespace=NS, password=PASSWORD),
        }
        for rules in users.values():
            root.execute_command("ACL", "SETUSER", *rules)
        setup = AclSetup(server, root)
        with setup.connect("admin") as admin:
            topics = TopicAdmin(admin)
            topics.create(TopicSpec("orders", 2))
            topics.create(TopicSpec("other", 1))
            topics.create(TopicSpec("kept", 1, max_length=10, safe_retention=True))
            GroupAdmin(admin).create("billing", FAST)
            GroupAdmin(admin).create("audit", FAST)
        yield setup
        root.close()


def _drain(c: Consumer, n: int, timeout: float = 10.0) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += [r.value.decode() for r in c.poll(timeout=0.3) if r.value is not None]
    return got


def test_producer_appends_to_its_topic_and_nothing_else(acl: AclSetup) -> None:
    before = acl.root.xlen(acl.stream("other", 0))
    acl.root.execute_command("ACL", "LOG", "RESET")
    with acl.connect("producer") as pc:
        with Producer(pc, ProducerConfig(linger_ms=1)) as p:
            metas = [p.send("orders", f"p{i}", key=f"k{i}").result(5) for i in range(5)]
            assert {m.topic for m in metas} == {"orders"}
            assert acl_denials(acl, "producer") == []
            with pytest.raises(PermissionDeniedError, match=r"ACL.*partstream acl print"):
                p.send("other", "x")  # cannot even read the other topic's metadata
        # Safe retention reads the partition's cut (read only), nothing more.
        acl.root.execute_command("ACL", "LOG", "RESET")
        with Producer(pc, ProducerConfig(linger_ms=1)) as p:
            assert p.send("kept", "s").result(5).topic == "kept"
        assert acl_denials(acl, "producer") == []
        # Outside its rights even with raw commands: it can neither read nor trim its topic,
        # no reads as a group, no other topic, no DEL, no dead-letter stream, no group keys,
        # no code of its own (SCRIPT, EVAL, FUNCTION).
        stream = pc.keys.stream(acl.layout("orders"), 0)
        refused = [
            ("XTRIM", stream, "MAXLEN", "0"),
            ("XRANGE", stream, "-", "+"),
            ("XREVRANGE", stream, "+", "-"),
            ("XLEN", stream),
            ("XINFO", "GROUPS", stream),
            ("XPENDING", stream, "billing"),
            ("XREAD", "STREAMS", stream, "0"),
            ("SCRIPT", "LOAD", "return 1"),
            ("EVAL", "return 1", "0"),
            ("EVAL", "while true do end", "0"),
            ("FUNCTION", "LOAD", "#!lua name=evil\nredis.register_function('e', function() end)"),
            ("HSET", pc.keys.stream_groups(acl.layout("orders"), 0), "~cut", "9999999999999-0"),
            ("XREADGROUP", "GROUP", "billing", "c", "STREAMS", stream, ">"),
            ("XACK", stream, "billing", "0-1"),
            ("XGROUP", "CREATE", stream, "mine", "0"),
            ("XADD", pc.keys.stream(acl.layout("other"), 0), "*", "k", "v"),
            ("XADD", pc.keys.dlq(acl.layout("orders"), 0), "*", "k", "v"),
            ("DEL", stream),
            ("HSET", pc.keys.topic_meta("orders"), "partitions", "1"),
            ("HGETALL", pc.keys.group_cfg("billing")),
            ("KEYS", "*"),
            ("CONFIG", "GET", "requirepass"),
        ]
        for cmd in refused:
            with pytest.raises(redis.exceptions.NoPermissionError):
                pc.client.execute_command(*cmd)
        # A consumer needs group rights the producer does not have.
        with pytest.raises(PermissionDeniedError, match="group billing"):
            Consumer("billing", "orders", conn=pc)
    assert acl.root.xlen(acl.stream("other", 0)) == before


def acl_denials(acl: AclSetup, user: str) -> list[Any]:
    """ACL LOG entries of ``user``: refusals a client swallowed would show up here.

    CONFIG GET maxmemory-policy at connect is refused by design (CONFIG is never granted), and
    so is a producer's one question per node whether its user may send MULTI batches (a
    transaction of MULTI, XREVRANGE, XTRIM, XDEL, EXEC that changes nothing): under these
    rules it keeps FCALL append (test_producer_multi.py proves nothing else is refused).
    """
    entries = acl.root.execute_command("ACL", "LOG")
    by_design = {"config|get", *(PROBE if user == "producer" else ())}
    return [
        e for e in entries if _field(e, "username") == user and _field(e, "object") not in by_design
    ]


PROBE = ("multi", "xrevrange", "xtrim", "xdel", "exec")


def _field(entry: Any, name: str) -> Any:
    if isinstance(entry, dict):
        value = entry.get(name, entry.get(name.encode()))
    else:
        items = dict(zip(entry[::2], entry[1::2], strict=True))
        value = items.get(name.encode(), items.get(name))
    return value.decode() if isinstance(value, bytes) else value


def test_consumer_reads_acks_and_dead_letters_its_group_only(acl: AclSetup) -> None:
    with acl.connect("admin") as admin, Producer(admin, ProducerConfig(linger_ms=1)) as p:
        for i in range(6):
            p.send("orders", f"c{i}", key=f"k{i}")
    acl.root.execute_command("ACL", "LOG", "RESET")
    with acl.connect("consumer") as cc:
        with Consumer("billing", "orders", conn=cc, group_settings=FAST) as c:
            got = _drain(c, 6)
            assert len(got) >= 6
            # The dead-letter write (XADD to the dlq inside consume.lua) is allowed.
            rec = c.poll(timeout=0.1) or []
            assert rec == []
        dlq_before = sum(acl.root.xlen(cc.keys.dlq(acl.layout("orders"), p)) for p in range(2))
        with acl.connect("admin") as admin, Producer(admin, ProducerConfig(linger_ms=1)) as p:
            p.send("orders", "poison", key="poison").result(5)
        with Consumer("billing", "orders", conn=cc, group_settings=FAST) as c:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                recs = c.poll(timeout=0.3)
                if recs:
                    c.dead_letter(recs[0], "rejected")
                    break
        dlq_after = sum(acl.root.xlen(cc.keys.dlq(acl.layout("orders"), p)) for p in range(2))
        assert dlq_after == dlq_before + 1
        # Nothing the consumer does in normal work was refused (and silently worked around).
        assert acl_denials(acl, "consumer") == []
        # Refused outside its rights.
        with (
            pytest.raises(PermissionDeniedError, match="appending to orders"),
            Producer(cc, ProducerConfig(linger_ms=1)) as p,
        ):
            p.send("orders", "forged").result(5)
        with pytest.raises(PermissionDeniedError, match="group audit"):
            Consumer("audit", "orders", conn=cc, group_settings=FAST)
        with pytest.raises(PermissionDeniedError, match="reading topic other"):
            Consumer("billing", "other", conn=cc, group_settings=FAST)
        stream = cc.keys.stream(acl.layout("orders"), 0)
        refused = [
            ("XADD", stream, "*", "key", "k", "value", "forged"),
            ("XTRIM", stream, "MAXLEN", "0"),
            ("DEL", stream),
            ("XGROUP", "DESTROY", stream, "billing"),
            ("HGETALL", cc.keys.group_members("audit")),
            (
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "STREAMS",
                cc.keys.stream(acl.layout("other"), 0),
                ">",
            ),
            ("XRANGE", cc.keys.stream(acl.layout("other"), 0), "-", "+"),
            ("HSET", cc.keys.fence(acl.layout("other"), 0), "billing", "x 1"),
            ("HSET", cc.keys.topic_meta("orders"), "partitions", "1"),
            ("SCRIPT", "LOAD", "return 1"),
            ("EVAL", "return 1", "0"),
            ("FUNCTION", "LOAD", "#!lua name=evil\nredis.register_function('e', function() end)"),
        ]
        for cmd in refused:
            with pytest.raises(redis.exceptions.NoPermissionError):
                cc.client.execute_command(*cmd)
        # No role may run code of its own, so it cannot XADD to the topic that way either.
        with pytest.raises(redis.exceptions.ResponseError) as err:
            cc.client.eval("return redis.call('XADD', KEYS[1], '*', 'k', 'v')", 1, stream)
        assert isinstance(translate(err.value), PermissionDeniedError)
    assert b"forged" not in str(acl.root.xrange(acl.stream("orders", 0))).encode()


@pytest.mark.parametrize("mode", ["atomic", "idempotent"])
def test_pipeline_writes_its_outputs_and_acks_its_input_with_nothing_more(
    acl: AclSetup, mode: str
) -> None:
    group = "enrich"
    with acl.connect("admin") as admin:
        # Both modes write to "derived" (the user's rules name it), told apart by value.
        TopicAdmin(admin).create(TopicSpec("derived", 2, safe_retention=True), exist_ok=True)
        if group not in GroupAdmin(admin).list():
            GroupAdmin(admin).create(group, FAST)
        with Producer(admin, ProducerConfig(linger_ms=1)) as p:
            for i in range(6):
                p.send("orders", f"{mode}-in{i}", key=f"k{i}").result(5)
    acl.root.execute_command("ACL", "LOG", "RESET")
    manual = ConsumerConfig(auto_commit=False)
    with (
        acl.connect("pipeline") as pc,
        Consumer(group, "orders", conn=pc, config=manual, group_settings=FAST) as c,
        Pipeline(c, pc, mode=mode) as pipe,  # type: ignore[arg-type]
    ):
        done: list[str] = []
        deadline = time.monotonic() + 10
        while len(done) < 6 and time.monotonic() < deadline:
            for rec in c.poll(timeout=0.3):
                value = rec.value.decode() if rec.value is not None else ""
                if value.startswith(mode):
                    pipe.send_and_commit(rec, [Output("derived", f"out-{value}", key=rec.key)])
                    done.append(value)
                else:  # the other mode's inputs, left from its run
                    pipe.send_and_commit(rec, [])
        assert sorted(done) == [f"{mode}-in{i}" for i in range(6)]
        # Nothing the pipeline does in normal work was refused.
        assert acl_denials(acl, "pipeline") == []
        # Outputs to a topic it was not given are refused before anything is written.
        with acl.connect("admin") as admin, Producer(admin, ProducerConfig(linger_ms=1)) as p:
            p.send("orders", f"{mode}-stray", key="s").result(5)
        stray: list[Record] = []
        while not stray and time.monotonic() < deadline + 10:
            stray = [r for r in c.poll(timeout=0.3) if r.value == f"{mode}-stray".encode()]
        with pytest.raises(PermissionDeniedError):
            pipe.send_and_commit(stray[0], [Output("other", "x", key="s")])
    outs = [
        f[b"value"].decode()
        for p in range(2)
        for _, f in acl.root.xrange(acl.stream("derived", p))
        if f[b"value"].startswith(f"out-{mode}".encode())
    ]
    assert sorted(outs) == [f"out-{mode}-in{i}" for i in range(6)]
    assert b"x" not in [f[b"value"] for _, f in acl.root.xrange(acl.stream("other", 0))]
    with acl.connect("pipeline") as pc:
        out = pc.keys.stream(acl.layout("derived"), 0)
        refused = [
            ("XRANGE", out, "-", "+"),  # it writes its outputs, it does not read them
            ("XTRIM", out, "MAXLEN", "0"),
            ("DEL", out),
            ("HSET", pc.keys.stream_groups(acl.layout("derived"), 0), "~cut", "0-1"),
            ("XADD", acl.stream("other", 0), "*", "key", "k", "value", "v"),
            ("HSET", pc.keys.topic_meta("derived"), "partitions", "1"),
        ]
        for cmd in refused:
            with pytest.raises(redis.exceptions.NoPermissionError):
                pc.client.execute_command(*cmd)


def _without_lag_ms(s: Scrape) -> tuple[Any, ...]:
    # lag_ms is the server's clock minus an entry's time: it grows between two scrapes.
    groups = [(g.group, g.state, g.epoch, g.members, [replace(o, lag_ms=0) for o in g.offsets])
              for g in s.groups]  # fmt: skip
    return s.topics, s.partitions, tuple(groups), s.dead_letters


def test_monitor_scrapes_what_the_exporter_serves_and_can_write_nothing(acl: AclSetup) -> None:
    with acl.connect("admin") as admin:
        with Producer(admin, ProducerConfig(linger_ms=1)) as p:
            for i in range(8):
                p.send("orders", f"m{i}", key=f"k{i}")
        with Consumer("billing", "orders", conn=admin, group_settings=FAST,
                      config=ConsumerConfig(auto_commit=False)) as c:  # fmt: skip
            got = _drain(c, 1)
            assert got
            batch = c.poll(timeout=0.3)
            if batch:
                c.dead_letter(batch[0], "monitored")
        want = scrape(admin)
    assert any(o.lag for g in want.groups for o in g.offsets)  # a group is behind
    assert any(d.reason == "monitored" for d in want.dead_letters) or not batch
    acl.root.execute_command("ACL", "LOG", "RESET")
    with acl.connect("monitor") as mc:
        scraper = Scraper(mc)
        first = scraper.scrape()
        again = scraper.scrape()
        assert scraper.rounds == 1
        # Everything the admin's scrape read, the monitor's reads too.
        assert _without_lag_ms(first) == _without_lag_ms(want) == _without_lag_ms(again)
        assert acl_denials(acl, "monitor") == []
        stream, group_keys = mc.keys.stream(acl.layout("orders"), 0), mc.keys.group_keys("billing")
        refused = [
            ("XADD", stream, "*", "key", "k", "value", "forged"),
            ("XACK", stream, "billing", "0-1"),
            ("XGROUP", "SETID", stream, "billing", "0"),
            ("XTRIM", stream, "MAXLEN", "0"),
            ("DEL", stream),
            ("HSET", mc.keys.topic_meta("orders"), "partitions", "1"),
            ("SADD", mc.keys.topics, "forged"),
            ("FCALL", "ps_admin_x", len(group_keys), *group_keys, "delete", "1"),
            ("SCRIPT", "LOAD", "return 1"),
            ("EVAL", "return 1", "0"),
            ("FUNCTION", "LOAD", "#!lua name=evil\nredis.register_function('e', function() end)"),
            ("XRANGE", "other-ns:t:{orders:0}", "-", "+"),
        ]
        for cmd in refused:
            with pytest.raises(redis.exceptions.NoPermissionError):
                mc.client.execute_command(*cmd)


def test_users_who_may_not_load_the_library_are_told_what_to_run(acl: AclSetup) -> None:
    acl.root.execute_command("FUNCTION", "DELETE", library_name())  # e.g. restarted empty
    with acl.connect("consumer") as cc, pytest.raises(LibraryMissingError, match="functions load"):
        Consumer("billing", "orders", conn=cc, group_settings=FAST)
    quick = acl.config("producer").with_changes(socket_timeout=1.0)
    short = ProducerConfig(delivery_timeout_ms=2000, linger_ms=1)
    with (
        connect(quick) as pc,
        Producer(pc, short) as p,
        pytest.raises(LibraryMissingError, match="functions load"),
    ):
        p.send("orders", "x").result(10)
    res = CliRunner().invoke(main, ["--url", acl.url("admin"), "--namespace", NS,
                                    "functions", "load"])  # fmt: skip
    assert res.exit_code == 0 and "loaded now" in res.output, res.output
    with acl.connect("producer") as pc, Producer(pc, ProducerConfig(linger_ms=1)) as p:
        assert p.send("orders", "y").result(10).topic == "orders"


def test_admin_owns_the_namespace_and_nothing_dangerous(acl: AclSetup) -> None:
    with acl.connect("admin") as admin:
        topics = TopicAdmin(admin)
        topics.create(TopicSpec("scratch", 3))
        assert "scratch" in topics.names()
        assert topics.delete("scratch") is True
        GroupAdmin(admin).create("temp", FAST)
        assert GroupAdmin(admin).delete("temp") is True
        for cmd in (
            ("FLUSHALL",),
            ("KEYS", "*"),
            ("CONFIG", "GET", "requirepass"),
            ("ACL", "LIST"),
            ("SET", "outside:the:namespace", "1"),
            ("GET", "other-ns:t:{orders}:meta"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                admin.client.execute_command(*cmd)


def test_cli_works_with_acl_users_and_refuses_in_one_line(acl: AclSetup) -> None:
    runner = CliRunner()

    def cli(user: str, *args: str, input: str | None = None) -> tuple[int, str, str]:
        res = runner.invoke(main, ["--url", acl.url(user), "--namespace", NS, *args], input=input)
        return res.exit_code, res.stdout, res.stderr

    code, out, err = cli("producer", "produce", "orders", "-k", "cli", input="from-cli\n")
    assert code == 0, err
    assert "Produced to partition" in out
    code, out, err = cli("consumer", "consume", "orders", "-g", "billing", "--timeout", "3")
    assert code == 0, err
    assert "from-cli" in out
    code, _, err = cli("producer", "topic", "create", "evil", "-p", "1")
    assert code == 1
    assert err.startswith("error: PermissionDeniedError") and err.count("\n") == 1
    code, _, err = cli("consumer", "produce", "orders", input="forged\n")
    assert code == 1 and "PermissionDeniedError" in err and err.count("\n") == 1
    for out_or_err in (out, err):
        assert PASSWORD not in out_or_err


def test_acl_print_output_creates_a_working_user(
    acl: AclSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PARTSTREAM_ACL_PASSWORD", "printed-user-pw")
    res = CliRunner().invoke(
        main,
        [
            *("--namespace", NS, "acl", "print", "--role", "producer", "--topic", "orders"),
            *("--user", "printed", "--with-password"),
        ],
    )
    assert res.exit_code == 0, res.stderr
    assert "printed-user-pw" not in res.stdout
    words = shlex.split(res.stdout)
    assert words[:5] == ["ACL", "SETUSER", "printed", "reset", "on"]
    assert words[5].startswith("#")  # the password's SHA-256, not the password
    acl.root.execute_command("ACL", "SETUSER", *words[2:])
    with connect(ClientConfig(url=acl.url("printed", "printed-user-pw"), namespace=NS)) as pc:
        with Producer(pc, ProducerConfig(linger_ms=1)) as p:
            assert p.send("orders", "ok").result(5).topic == "orders"
        with pytest.raises(redis.exceptions.NoPermissionError):
            pc.client.execute_command("XREADGROUP", "GROUP", "g", "c", "STREAMS", "x", ">")
    res = CliRunner().invoke(
        main, ["acl", "print", "--role", "consumer", "--topic", "t", "--user", "u"]
    )
    assert res.exit_code == 1 and "needs at least one group" in res.stderr
    # A pipeline's rules, as the fixture's pipeline user has them; outputs are a pipeline's.
    pipeline = ["acl", "print", "--role", "pipeline", "--topic", "orders", "--group", "enrich"]
    res = CliRunner().invoke(
        main, ["--namespace", NS, *pipeline, "--output", "derived", "--user", "pipeline"]
    )
    assert res.exit_code == 0, res.stderr
    assert shlex.split(res.stdout)[2:] == acl_rules(
        "pipeline", user="pipeline", topics=["orders"], groups=["enrich"], outputs=["derived"],
        namespace=NS,
    )  # fmt: skip
    res = CliRunner().invoke(main, [*pipeline, "--user", "u"])
    assert res.exit_code == 1 and "needs at least one output topic" in res.stderr
    res = CliRunner().invoke(
        main, ["acl", "print", "--role", "consumer", "--topic", "t", "--group", "g",
               "--output", "o", "--user", "u"],
    )  # fmt: skip
    assert res.exit_code == 1 and "takes no output topic" in res.stderr


# -- passwords never printed ------------------------------------------------------------------
def _assert_no_password(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text, text


def test_failed_auth_and_unreachable_server_never_show_the_password(
    acl: AclSetup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = f"redis://producer:{PASSWORD}x@{acl.server.host_port}"  # wrong password
    nobody = f"redis://ghost:{PASSWORD}@{acl.server.host_port}"  # unknown user
    closed = f"redis://producer:{PASSWORD}@127.0.0.1:{free_port()}"  # nothing listens
    for url, kind in (
        (wrong, PermissionDeniedError),
        (nobody, PermissionDeniedError),
        (closed, ConnectionFailedError),
    ):
        config = ClientConfig(url=url, namespace=NS, connect_timeout=1)
        _assert_no_password(repr(config), str(config))
        with pytest.raises(kind) as info:
            connect(config)
        _assert_no_password(str(info.value), repr(info.value))
        _assert_no_password("".join(traceback.format_exception(info.value)))
        res = CliRunner().invoke(main, ["--url", url, "topic", "list"])
        assert res.exit_code == 1 and res.stderr.count("\n") == 1
        assert res.stderr.startswith(f"error: {kind.__name__}")
        _assert_no_password(res.stdout, res.stderr)
    with connect(acl.config("admin")) as conn:
        _assert_no_password(repr(conn), str(conn), repr(conn.config), repr(conn.client))
        assert "***" in repr(conn)
    _assert_no_password(caplog.text, *(r.getMessage() for r in caplog.records))


# -- TLS --------------------------------------------------------------------------------------
@dataclass
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    other_cert: Path  # issued by the trusted CA, for another host name
    other_key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _make_certs(d: Path) -> Certs:
    for name in ("ca", "rogue"):
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", d / f"{name}.key", "-out", d / f"{name}.pem", "-subj", f"/CN=ps-test-{name}",
        )  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (d / "other.ext").write_text("subjectAltName=DNS:other.example\n")
    for name, ext in (("server", "san"), ("client", "san"), ("other", "other")):
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", d / f"{name}.key",
            "-out", d / f"{name}.csr", "-subj", f"/CN=ps-test-{name}",
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", d / f"{name}.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key",
            "-CAcreateserial", "-days", "2", "-out", d / f"{name}.pem",
            "-extfile", d / f"{ext}.ext",
        )  # fmt: skip
    return Certs(
        d / "ca.pem",
        d / "server.pem",
        d / "server.key",
        d / "client.pem",
        d / "client.key",
        d / "rogue.pem",
        d / "other.pem",
        d / "other.key",
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        missing("the openssl command is needed to make test certificates")
    return _make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(certs: Certs) -> Iterator[ServerProc]:
    yield from _start_tls(certs, auth_clients=False)


@pytest.fixture(scope="module")
def mtls_server(certs: Certs) -> Iterator[ServerProc]:
    yield from _start_tls(certs, auth_clients=True)


@pytest.fixture(scope="module")
def other_name_server(certs: Certs) -> Iterator[ServerProc]:
    yield from _start_tls(certs, auth_clients=False, cert=(certs.other_cert, certs.other_key))


def _start_tls(
    certs: Certs, auth_clients: bool, cert: tuple[Path, Path] | None = None
) -> Iterator[ServerProc]:
    cert_file, key_file = cert or (certs.server_cert, certs.server_key)
    tls_args = [
        "--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file),
        "--tls-ca-cert-file", str(certs.ca),
        "--tls-auth-clients", "yes" if auth_clients else "no",
    ]  # fmt: skip
    errors = []
    for binary in server_binaries():
        try:
            cm = own_server(binary=binary, tls_args=tls_args)
            server = cm.__enter__()
        except RuntimeError as err:  # built without TLS: try the next binary
            errors.append(f"{binary}: {err}")
            continue
        try:
            yield server
        finally:
            cm.__exit__(None, None, None)
        return
    missing("no server binary with TLS support: " + "; ".join(errors))


def test_tls_with_the_ca_works_and_is_verified_by_default(
    tls_server: ServerProc, certs: Certs
) -> None:
    url = f"rediss://{tls_server.host_port}"
    with connect(ClientConfig(url=url, namespace=NS, ssl_ca_certs=str(certs.ca))) as conn:
        TopicAdmin(conn).create(TopicSpec("tls", 1), exist_ok=True)
        with Producer(conn, ProducerConfig(linger_ms=1)) as p:
            assert p.send("tls", "over tls").result(5).topic == "tls"
        with Consumer("g", "tls", conn=conn, group_settings=FAST, config=ConsumerConfig()) as c:
            assert _drain(c, 1) == ["over tls"]
    # No CA given: the system store does not know the test CA; a wrong CA: refused too.
    for ca in (None, str(certs.rogue_ca)):
        with pytest.raises(ConfigError, match="TLS certificate could not be verified"):
            connect(ClientConfig(url=url, namespace=NS, ssl_ca_certs=ca, connect_timeout=2))
    # A plain connection to the TLS port fails; TLS options on redis:// are refused up front.
    with pytest.raises(ConnectionFailedError):
        connect(ClientConfig(url=f"redis://{tls_server.host_port}", connect_timeout=2))
    with pytest.raises(ConfigError, match="use rediss://"):
        connect(ClientConfig(url=f"redis://{tls_server.host_port}", ssl_ca_certs=str(certs.ca)))


def test_tls_refuses_a_trusted_certificate_issued_for_another_name(
    other_name_server: ServerProc, certs: Certs
) -> None:
    # The chain is good (our CA signed it) but it names other.example, not 127.0.0.1.
    url = f"rediss://{other_name_server.host_port}"
    with pytest.raises(ConfigError, match="TLS certificate could not be verified"):
        connect(ClientConfig(url=url, namespace=NS, ssl_ca_certs=str(certs.ca), connect_timeout=2))


def test_tls_settings_from_env_and_cli(
    tls_server: ServerProc, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"rediss://{tls_server.host_port}"
    res = CliRunner().invoke(main, ["--url", url, "--namespace", NS, "topic", "list"])
    assert res.exit_code == 1 and "TLS certificate could not be verified" in res.stderr
    assert res.stderr.count("\n") == 1
    monkeypatch.setenv("PARTSTREAM_TLS_CA", str(certs.ca))
    assert ClientConfig.from_env(url=url).ssl_ca_certs == str(certs.ca)
    res = CliRunner().invoke(main, ["--url", url, "--namespace", NS, "topic", "list"])
    assert res.exit_code == 0, res.stderr
    monkeypatch.setenv("PARTSTREAM_TLS_CA", str(certs.ca) + ".missing")
    with pytest.raises(ConfigError, match="ssl_ca_certs"):
        ClientConfig.from_env(url=url)


def test_mutual_tls_needs_the_client_certificate(
    mtls_server: ServerProc, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"rediss://{mtls_server.host_port}"
    with pytest.raises(ConnectionFailedError):
        connect(ClientConfig(url=url, namespace=NS, ssl_ca_certs=str(certs.ca), connect_timeout=2))
    config = ClientConfig(
        url=url,
        namespace=NS,
        ssl_ca_certs=str(certs.ca),
        ssl_certfile=str(certs.client_cert),
        ssl_keyfile=str(certs.client_key),
    )
    with connect(config) as conn:
        assert conn.client.ping()
    monkeypatch.setenv("PARTSTREAM_TLS_CA", str(certs.ca))
    monkeypatch.setenv("PARTSTREAM_TLS_CERT", str(certs.client_cert))
    monkeypatch.setenv("PARTSTREAM_TLS_KEY", str(certs.client_key))
    with connect(ClientConfig.from_env(url=url, namespace=NS)) as conn:
        assert conn.client.ping()
