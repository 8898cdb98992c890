"""``partstream produce`` and ``partstream replay``."""

from __future__ import annotations

import contextlib
import signal
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import click
import orjson

from partitions._admin.replay import replay
from partitions._base.errors import ConfigError, PartstreamError, SerializationError
from partitions._base.records import Record
from partitions._base.signals import SignalRelay
from partitions._client.config import ProducerConfig
from partitions._producer.producer import Producer, RecordFuture
from partitions.cli.common import State, format_option, json_line, main, pass_state

# Records whose outcome is printed once this many more were sent (keeps memory flat).
_PRINT_WINDOW = 10_000
# --validate-first keeps the input in memory up to this size, then in a temporary file.
_SPOOL_BYTES = 64 * 1024 * 1024


def _headers(values: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r}: use NAME=VALUE", param_hint="-H")
        out[name] = value
    return out


def _key_of(line: bytes, field: str) -> str:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as err:
        raise SerializationError(f"not JSON ({err}); --key-field needs JSON lines") from None
    if not isinstance(obj, dict) or field not in obj:
        raise SerializationError(f"no field {field!r} to use as the key")
    key = obj[field]
    return key if isinstance(key, str) else orjson.dumps(key).decode()


class _Outcomes:
    """The futures of the records sent so far, resolved in order, printed and counted."""

    def __init__(self, quiet: bool, fmt: str) -> None:
        self.quiet = quiet
        self.fmt = fmt
        self.pending: deque[RecordFuture] = deque()
        self.produced = 0
        self.failed = 0
        self.first_error: BaseException | None = None

    def resolve(self, keep: int = 0) -> None:
        """Resolve all but the newest ``keep`` futures (they are done or being sent)."""
        while len(self.pending) > keep:
            err = self.pending[0].exception()
            fut = self.pending.popleft()
            if err is not None:
                self.failed += 1
                self.first_error = self.first_error or err
                continue
            self.produced += 1
            if self.quiet:
                continue
            meta = fut.result()
            if self.fmt == "json":
                json_line({"topic": meta.topic, "partition": meta.partition, "id": meta.id})
            else:
                click.echo(f"Produced to partition {meta.partition} at id {meta.id}")

    def tally(self, topic: str) -> str:
        failed = f", {self.failed} failed" if self.failed else ""
        return f"{self.produced} records produced to {topic}{failed}"


def _stop(err: PartstreamError, message: str) -> PartstreamError:
    """The same kind of error (a user catches or greps its type) with the tally added."""
    try:
        stopped = type(err)(message)
    except Exception:  # an error class with another signature: keep the base type
        stopped = PartstreamError(message)
    stopped.__cause__ = err
    return stopped


@main.command("produce")
@click.argument("topic")
@click.option("-k", "--key", help="Key for every record.")
@click.option("--key-field", help="Take each JSON line's key from this field.")
@click.option("-p", "--partition", type=int, help="Send to this partition.")
@click.option("--region", help="Route within this region's partitions.")
@click.option("-H", "--header", "headers", multiple=True, help="Header NAME=VALUE (repeatable).")
@click.option(
    "--validate-first",
    is_flag=True,
    help="Check every line before producing any (the input is spooled to memory or disk).",
)
@click.option("-q", "--quiet", is_flag=True, help="Print only a summary line.")
@click.option(
    "--acks",
    type=click.Choice(["1", "all"]),
    help="1: a record is produced once the primary has it; all: once WAIT confirmed "
    "--min-insync-replicas replicas have it (default: the file's, else 1).",
)
@click.option("--min-insync-replicas", type=int, help="Replicas acks=all waits for (default 1).")
@click.option(
    "--fsync",
    type=click.Choice(["none", "local", "replicas"]),
    help="Also wait for the AOF fsync (WAITAOF) on the primary / on the replicas.",
)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML file "
              "whose [producer] table sets ProducerConfig fields and [client] the server "
              "(flags and PARTSTREAM_* win).")  # fmt: skip
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
    validate_first: bool,
    quiet: bool,
    acks: str | None,
    min_insync_replicas: int | None,
    fsync: str | None,
    config_path: str | None,
    fmt: str,
) -> None:
    """Produce one record per line of standard input to TOPIC.

    A line that cannot be sent (bad JSON for --key-field, too large, ...) stops the command:
    the lines before it are produced (their count is in the error), none from it on. With
    --validate-first, nothing is produced unless every line passes. A record the server
    refuses stops the input too; the error counts what was produced.
    """
    if key is not None and key_field is not None:
        raise ConfigError("use either --key or --key-field, not both")
    hdrs = _headers(headers) or None
    out = _Outcomes(quiet, fmt)

    def lines(stream: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
        for lineno, raw in enumerate(stream, 1):
            line = raw.rstrip(b"\r\n")
            if line:
                yield lineno, line

    state.use_config_file(config_path)
    base = ProducerConfig.from_toml(config_path) if config_path else ProducerConfig()
    config = base.with_changes(acks=acks, min_insync_replicas=min_insync_replicas, fsync=fsync)
    with Producer(state.conn, config) as producer, contextlib.ExitStack() as stack:
        stream: Iterable[bytes] = sys.stdin.buffer
        if validate_first:
            spool = stack.enter_context(tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES))
            for lineno, line in lines(_tee(stream, spool)):
                try:
                    k = _key_of(line, key_field) if key_field else key
                    producer.validate(topic, line, k, hdrs, partition, region=region)
                except PartstreamError as err:
                    raise _stop(err, f"line {lineno}: {err}; nothing was produced") from err
            spool.seek(0)
            stream = spool
        lineno = 0
        try:
            for lineno, line in lines(stream):  # noqa: B007  (lineno is reported below)
                k = _key_of(line, key_field) if key_field else key
                out.pending.append(
                    producer.send(topic, line, k, hdrs, partition=partition, region=region)
                )
                if len(out.pending) > _PRINT_WINDOW:
                    out.resolve(keep=_PRINT_WINDOW)
                    if out.first_error is not None:
                        break
        except PartstreamError as err:
            producer.flush()
            out.resolve()
            raise _stop(
                err, f"line {lineno}: {err}; {out.tally(topic)} from the lines before it"
            ) from err
        producer.flush()
        out.resolve()
        failure = out.first_error
        if failure is not None:
            if not isinstance(failure, PartstreamError):
                raise failure
            raise _stop(
                failure, f"{failure}; stopped after line {lineno}: {out.tally(topic)}"
            ) from failure
    if quiet or fmt == "text":
        click.echo(out.tally(topic), err=not quiet)


def _tee(source: Iterable[bytes], sink: Any) -> Iterator[bytes]:
    """The lines of ``source``, each copied into ``sink`` on the way."""
    for raw in source:
        sink.write(raw)
        yield raw


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
    relay = SignalRelay.setting(stop, (signal.SIGTERM,))
    if follow:
        relay.install()
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
        relay.restore()
