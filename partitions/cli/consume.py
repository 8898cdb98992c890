"""``partstream consume``: read a topic as a member of a consumer group."""

from __future__ import annotations

import signal
import threading
import time

import click

from partitions._base.errors import PollIntervalExceededError
from partitions._base.records import Record
from partitions._base.settings import GroupSettings
from partitions._base.signals import SignalRelay
from partitions._client.config import ConsumerConfig
from partitions._consumer.consumer import Consumer
from partitions.cli.common import State, json_line, main, pass_state


def _text(record: Record) -> str:
    d = record.to_dict()
    return f"{d['partition']}\t{d['id']}\t{d['key']}\t{d['value']}"


def group_settings(session_ms: int | None, heartbeat_ms: int | None) -> GroupSettings | None:
    """Settings for a group this member creates; one flag alone scales the other."""
    if session_ms is None and heartbeat_ms is None:
        return None
    default = GroupSettings()
    if session_ms is None:
        session_ms = max(default.session_timeout_ms, (heartbeat_ms or 0) * 4)
    if heartbeat_ms is None:
        heartbeat_ms = min(default.heartbeat_interval_ms, max(1, session_ms // 4))
    return GroupSettings(session_timeout_ms=session_ms, heartbeat_interval_ms=heartbeat_ms)


@main.command("consume")
@click.argument("topic")
@click.option("-g", "--group", required=True, help="Consumer group to join.")
@click.option("-n", "--count", type=int, help="Exit after N records.")
@click.option("--timeout", type=float, help="Exit after S seconds without a record.")
@click.option("--instance-id", help="Static member id (a restart within the session keeps "
              "its partitions).")  # fmt: skip
@click.option("--session-timeout-ms", type=int, help="Session timeout if this member creates "
              "the group.")  # fmt: skip
@click.option("--heartbeat-ms", type=int, help="Heartbeat interval if this member creates "
              "the group.")  # fmt: skip
@click.option("--max-poll-interval-ms", type=int, help="Leave the group when records are "
              "not asked for within this (default 300000, as Kafka's "
              "max.poll.interval.ms).")  # fmt: skip
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML file "
              "whose [consumer] table sets ConsumerConfig fields and [client] the server "
              "(flags and PARTSTREAM_* win).")  # fmt: skip
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="json",
    show_default=True,
    help="json: one record per line {topic, partition, id, key, value, headers, timestamp}.",
)
@pass_state
def consume_cmd(
    state: State,
    topic: str,
    group: str,
    count: int | None,
    timeout: float | None,
    instance_id: str | None,
    session_timeout_ms: int | None,
    heartbeat_ms: int | None,
    max_poll_interval_ms: int | None,
    config_path: str | None,
    fmt: str,
) -> None:
    """Print TOPIC's records as a member of GROUP, committing each one after printing it.

    SIGTERM or Ctrl-C commit, leave the group and exit."""
    # Each record is committed after it is printed, whatever the file says about auto_commit.
    flags = {"max_poll_interval_ms": max_poll_interval_ms, "auto_commit": False}
    state.use_config_file(config_path)
    base = ConsumerConfig.from_toml(config_path) if config_path else ConsumerConfig()
    config = base.with_changes(**flags)
    stop = threading.Event()
    relay = SignalRelay.setting(stop, (signal.SIGTERM,))
    relay.install()
    try:
        consumer = Consumer(
            group,
            topic,
            conn=state.conn,
            config=config,
            instance_id=instance_id,
            group_settings=group_settings(session_timeout_ms, heartbeat_ms),
        )
    except BaseException:  # e.g. refused by the server's ACL: put the old handler back
        relay.restore()
        raise
    printed = 0
    last = time.monotonic()
    try:
        while not stop.is_set() and (count is None or printed < count):
            wait = 0.5 if timeout is None else min(0.5, max(0.0, last + timeout - time.monotonic()))
            want = None if count is None else count - printed
            try:
                records = consumer.poll(max_records=want, timeout=wait)
                for record in records:
                    if fmt == "json":
                        json_line(record.to_dict())
                    else:
                        click.echo(_text(record))
                    consumer.commit([record])
                    printed += 1
            except PollIntervalExceededError as err:
                # Output stalled (a paused pipe): the rest of the batch is someone else's now.
                click.echo(f"warning: {err}", err=True)
                records = []
            if records:
                last = time.monotonic()
            elif timeout is not None and time.monotonic() - last >= timeout:
                break
    except KeyboardInterrupt:
        pass
    finally:
        relay.restore()
        consumer.close()
