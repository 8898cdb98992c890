"""``partstream produce`` and ``partstream replay``."""

from __future__ import annotations

import signal
import sys
import threading
from collections import deque
from typing import Any, BinaryIO

import click
import orjson

from coordinator.errors import ConfigError, SerializationError
from partitions.cli.common import State, format_option, json_line, main, pass_state
from partitions.config import ProducerConfig
from partitions.producer import Producer, RecordFuture, RecordMetadata
from partitions.records import Record
from partitions.replay import replay

# Records whose outcome is printed once this many more were sent (keeps memory flat).
_PRINT_WINDOW = 10_000


def _headers(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r}: use NAME=VALUE", param_hint="-H")
        out[name] = value
    return out


def _key_of(line: bytes, field: str, lineno: int) -> str:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as err:
        raise SerializationError(
            f"line {lineno}: not JSON ({err}); --key-field needs JSON lines"
        ) from None
    if not isinstance(obj, dict) or field not in obj:
        raise SerializationError(f"line {lineno}: no field {field!r} to use as the key")
    key = obj[field]
    return key if isinstance(key, str) else orjson.dumps(key).decode()


@main.command("produce")
@click.argument("topic")
@click.option("-k", "--key", help="Key for every record.")
@click.option("--key-field", help="Take each JSON line's key from this field.")
@click.option("-p", "--partition", type=int, help="Send to this partition.")
@click.option("--region", help="Route within this region's partitions.")
@click.option("-H", "--header", "headers", multiple=True, help="Header NAME=VALUE (repeatable).")
@click.option("-q", "--quiet", is_flag=True, help="Print only a summary line.")
@format_option
@pass_state
def produce_cmd(
    state: State,
    topic: str,
    key: str | None,
    key_field: str | None,
    partition: int | None,
    region: str | None,
    headers: tuple[str, ...],
    quiet: bool,
    fmt: str,
) -> None:
    """Produce one record per line of standard input to TOPIC."""
    if key is not None and key_field is not None:
        raise ConfigError("use either --key or --key-field, not both")
    hdrs = _headers(headers) or None
    stream: BinaryIO = sys.stdin.buffer
    pending: deque[RecordFuture] = deque()
    count = 0

    def report(meta: RecordMetadata) -> None:
        if quiet:
            return
        if fmt == "json":
            json_line({"topic": meta.topic, "partition": meta.partition, "id": meta.id})
        else:
            click.echo(f"Produced to partition {meta.partition} at id {meta.id}")

    with Producer(state.conn, ProducerConfig()) as producer:
        try:
            for lineno, raw in enumerate(stream, 1):
                line = raw.rstrip(b"\r\n")
                if not line:
                    continue
                k = _key_of(line, key_field, lineno) if key_field else key
                pending.append(
                    producer.send(
                        topic, line, key=k, headers=hdrs, partition=partition, region=region
                    )
                )
                count += 1
                while len(pending) > _PRINT_WINDOW:
                    report(pending.popleft().result())
        finally:
            producer.flush()
            while pending:
                report(pending.popleft().result())
    if quiet or fmt == "text":
        click.echo(f"{count} records produced to {topic}", err=not quiet)


def _record_text(r: Record) -> str:
    key = "" if r.key is None else r.key.decode("utf-8", "replace")
    value = "" if r.value is None else r.value.decode("utf-8", "replace")
    hdr = "".join(f" {k}={v.decode('utf-8', 'replace')}" for k, v in r.headers.items())
    return f"{r.partition}\t{r.id}\t{key}\t{value}{hdr}"


@main.command("replay")
@click.argument("topic")
@click.option(
    "-p", "--partition", "partitions", type=int, multiple=True, help="Only these partitions."
)
@click.option(
    "--from",
    "start",
    default="earliest",
    show_default=True,
    help="earliest, latest, an ID or @EPOCH_MS.",
)
@click.option("--to", "end", help="Stop at this ID or @EPOCH_MS (inclusive).")
@click.option("-n", "--count", type=int, help="At most N records.")
@click.option("-f", "--follow", is_flag=True, help="Keep waiting for new records.")
@format_option
@pass_state
def replay_cmd(
    state: State,
    topic: str,
    partitions: tuple[int, ...],
    start: str,
    end: str | None,
    count: int | None,
    follow: bool,
    fmt: str,
) -> None:
    """Print TOPIC's records in append order (no consumer group involved)."""
    stop = threading.Event()
    previous: Any = None
    if follow:
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        for record in replay(
            state.conn,
            topic,
            partitions=list(partitions) or None,
            start=start,
            end=end,
            count=count,
            follow=follow,
            stop=stop,
        ):
            if fmt == "json":
                json_line(record.to_dict())
            else:
                click.echo(_record_text(record))
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
