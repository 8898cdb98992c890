"""``partstream dlq ...``: inspect and replay a topic's dead letters."""

from __future__ import annotations

from typing import Any

import click

from partitions._admin.deadletter import DeadLetters
from partitions.cli.common import State, emit, format_option, main, pass_state


@main.group()
def dlq() -> None:
    """Dead letters: records that failed max_deliveries times, were trimmed unacked, did
    not deserialize or were rejected by a handler (with the error, when one was given)."""


def _list_text(rows: list[dict[str, Any]]) -> str:
    return "\n".join(_line(r) for r in rows) or "(no dead letters)"


def _line(r: dict[str, Any]) -> str:
    line = (
        f"{r['topic']}/{r['partition']}  {r['id']}  group {r['group']}  "
        f"{r['reason']} after {r['deliveries']} deliveries  key {r['key']}  value {r['value']}"
    )
    if r.get("error") is not None:
        line += "  error " + " | ".join(r["error"].splitlines())  # one line per letter
    if "fields" in r:
        line += f"  fields {r['fields']}"
    if "problems" in r:
        line += f"  (malformed dead letter {r['dlq_id']}: {'; '.join(r['problems'])})"
    return line


@dlq.command("list")
@click.argument("topic")
@click.option("-p", "--partition", type=int, help="Only this partition.")
@click.option("-g", "--group", help="Only this group's dead letters.")
@click.option("--limit", type=int, default=100, show_default=True, help="Per partition.")
@format_option
@pass_state
def dlq_list(
    state: State, topic: str, partition: int | None, group: str | None, limit: int, fmt: str
) -> None:
    """List TOPIC's dead letters, oldest first per partition."""
    letters = DeadLetters(state.conn).list(topic, partition=partition, group=group, limit=limit)
    emit(fmt, [d.to_dict() for d in letters], _list_text)


@dlq.command("replay")
@click.argument("topic")
@click.option("-p", "--partition", type=int, help="Only this partition.")
@click.option("-g", "--group", help="Only this group's dead letters.")
@format_option
@pass_state
def dlq_replay(
    state: State, topic: str, partition: int | None, group: str | None, fmt: str
) -> None:
    """Re-produce TOPIC's dead letters to their partitions, then remove them."""
    result = DeadLetters(state.conn).replay(topic, partition=partition, group=group)
    for why in result.refused:
        click.echo(f"refused {why}", err=True)
    emit(
        fmt,
        result.to_dict(),
        lambda d: (
            f"replayed {d['replayed']}, skipped {d['skipped']} "
            "(trimmed, another client's entry, or malformed: see dlq list)"
        ),
    )
