"""Record real server replies for the reply parsers' unit tests (tests/unit/test_replies.py).

    python -m tests.unit.replies.record redis://127.0.0.1:6379 redis7
    python -m tests.unit.replies.record "" valkey          # the embedded Valkey

Writes ``tests/unit/replies/<name>.txt``: a Python literal ``{reply name: raw reply}`` (bytes,
ints, lists, dicts, None: what redis-py handed partstream). It drives a real consumer through
a fixed scenario under its own namespace and captures each reply as it reaches its parser, so
the fixtures are exactly what the library receives; the namespace is deleted afterwards.
Run it again when a script's reply shape changes.
"""

from __future__ import annotations

import pprint
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import coordinator.member as member_module
import partitions._admin.groups as group_module
import partitions._consumer.fetcher as fetcher_module
from partitions import Consumer, GroupSettings, TopicAdmin, TopicSpec, connect

HERE = Path(__file__).resolve().parent
SETTINGS = GroupSettings(
    session_timeout_ms=1000, heartbeat_interval_ms=200, max_deliveries=2, reclaim_idle_ms=60_000
)
# The scenario's entries, in stream order (fields as XADD gets them).
ENTRIES = [
    [b"key", b"k1", b"value", b"v1"],
    [b"key", b"k2", b"value", b"v2", b"h:trace", b"abc"],
    [b"value", b"keyless"],
    [b"key", b"k3"],  # a tombstone with a key: no value field
    [b"payload", b"x", b"user", b"u"],  # another client's entry
]


def _raw(client: Any, *args: Any) -> Any:
    """One command's reply as it comes off the wire (no redis-py response callback)."""
    conn = client.connection_pool.get_connection()
    try:
        conn.send_command(*args)
        return conn.read_response()
    finally:
        client.connection_pool.release(conn)


def _spy(module: Any, name: str, out: dict[str, list[Any]], key: str) -> Callable[[], None]:
    """Capture the last argument of ``module.name`` into ``out[key]``; returns the undo."""
    original = getattr(module, name)

    def spy(*args: Any) -> Any:
        reply = args[-1] if name not in ("parse_member_reply", "parse_describe") else args[0]
        out.setdefault(key, []).append(reply)
        return original(*args)

    setattr(module, name, spy)
    return lambda: setattr(module, name, original)


def _drain(c: Consumer, want: int, timeout: float = 10.0) -> list[Any]:
    out: list[Any] = []
    end = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < end:
        out += c.poll(timeout=0.2)
    return out


def record(url: str) -> dict[str, Any]:
    ns = f"rec-{uuid.uuid4().hex[:8]}"
    conn = connect(url=url, namespace=ns) if url else connect(namespace=ns)
    client, keys = conn.client, conn.keys
    got: dict[str, list[Any]] = {}
    undo = [
        _spy(fetcher_module, "fetch_result", got, "consume_read"),
        _spy(fetcher_module, "ack_result", got, "consume_ack"),
        _spy(fetcher_module, "hand_result", got, "consume_hand"),
        _spy(fetcher_module, "retry_result", got, "consume_retry"),
        _spy(fetcher_module, "seek_result", got, "consume_seek"),
        _spy(member_module, "parse_member_reply", got, "member"),
        _spy(group_module, "parse_describe", got, "describe"),
    ]
    try:
        layout = TopicAdmin(conn).create(TopicSpec("t", 1)).layout
        stream = keys.stream(layout, 0)
        for fields in ENTRIES:
            client.execute_command("XADD", stream, "*", *fields)
        with Consumer("g", "t", conn=conn, group_settings=SETTINGS) as c:
            first = _drain(c, len(ENTRIES))
            got["xpending_raw"] = [_raw(client, "XPENDING", stream, "g")]
            got["xpending"] = [client.xpending(stream, "g")]
            c.nack(first[0])  # handed out again: a retry, then a recovered read
            again = _drain(c, 1)
            c.nack(again[0])  # over max_deliveries: dead-lettered
            _drain(c, 0, timeout=1.0)
            c.commit()
            _drain(c, 0, timeout=0.5)
            c.seek("t", 0, "earliest")
            got["fence"] = [client.hget(keys.fence(layout, 0), "g")]
            got["group_cfg"] = [client.hgetall(keys.group_cfg("g"))]
            got["xinfo_groups_raw"] = [_raw(client, "XINFO", "GROUPS", stream)]
            got["xinfo_groups"] = [client.xinfo_groups(stream)]
            group_module.GroupAdmin(conn).describe("g")
        got["describe_unknown"] = [
            conn.functions.call("admin", keys.group_keys("no-such-group"), ["describe"])
        ]
        got["xrange"] = [_raw(client, "XRANGE", stream, "-", "+")]
        got["dlq_xrange"] = [_raw(client, "XRANGE", keys.dlq(layout, 0), "-", "+")]
        got["xinfo_stream_raw"] = [_raw(client, "XINFO", "STREAM", stream)]
        got["xinfo_stream"] = [client.xinfo_stream(stream)]
        # A pending entry whose payload was deleted reads back as [id, nil].
        client.execute_command("XGROUP", "CREATE", stream, "raw", "0")
        client.execute_command(
            "XREADGROUP", "GROUP", "raw", "c", "COUNT", "2", "STREAMS", stream, ">"
        )
        first_id = got["xrange"][0][0][0]
        client.execute_command("XDEL", stream, first_id)
        got["xreadgroup_pending"] = [
            _raw(client, "XREADGROUP", "GROUP", "raw", "c", "STREAMS", stream, "0")
        ]
        got["time"] = [client.time()]
        got["function_list"] = [_raw(client, "FUNCTION", "LIST", "LIBRARYNAME", "partstream*")]
    finally:
        for u in undo:
            u()
        for key in client.scan_iter(match=f"{ns}:*", count=1000):
            client.delete(key)
        conn.close()
    return got


def main() -> None:
    url, name = sys.argv[1], sys.argv[2]
    replies = record(url)
    text = pprint.pformat(replies, width=100, sort_dicts=True)
    (HERE / f"{name}.txt").write_text(f"# Recorded by tests/unit/replies/record.py\n{text}\n")
    print(f"wrote {HERE / f'{name}.txt'}: {', '.join(sorted(replies))}")


if __name__ == "__main__":
    main()
