"""``partstream topic ...`` and ``partstream apply``."""

from __future__ import annotations

from typing import Any

import click

from partitions._admin import apply as apply_mod
from partitions._admin.topics import TopicAdmin, TopicDescription, TopicSpec
from partitions.cli.common import State, emit, format_option, main, pass_state


def _parse_regions(values: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    regions: dict[str, tuple[int, int]] = {}
    for item in values:
        name, _, rng = item.partition("=")
        first, _, last = rng.partition("-")
        if not name or not first.isdigit() or not (last or first).isdigit():
            raise click.BadParameter(
                f"{item!r}: use NAME=FIRST-LAST, e.g. eu=0-3", param_hint="--region"
            )
        regions[name] = (int(first), int(last or first))
    return regions


@main.group()
def topic() -> None:
    """Create, inspect, change and delete topics."""


@topic.command("create")
@click.argument("name")
@click.option("-p", "--partitions", type=int, required=True, help="Number of partitions.")
@click.option("--max-length", type=int, help="Keep about this many records per partition.")
@click.option("--retention-ms", type=int, help="Drop records older than this (ms).")
@click.option("--safe-retention", is_flag=True, help="Never trim records a group still needs.")
@click.option(
    "--routing", type=click.Choice(["modulo", "jump"]), default="modulo", show_default=True
)
@click.option("--region", "regions", multiple=True, help="Region partition range NAME=FIRST-LAST.")
@click.option("--if-not-exists", is_flag=True, help="Succeed if the topic exists.")
@format_option
@pass_state
def topic_create(
    state: State,
    name: str,
    partitions: int,
    max_length: int | None,
    retention_ms: int | None,
    safe_retention: bool,
    routing: str,
    regions: tuple[str, ...],
    if_not_exists: bool,
    fmt: str,
) -> None:
    """Create topic NAME."""
    spec = TopicSpec(
        name, partitions, max_length, retention_ms, safe_retention, routing, _parse_regions(regions)
    )
    meta = TopicAdmin(state.conn).create(spec, exist_ok=if_not_exists)
    emit(fmt, meta.spec.to_dict(), lambda d: f"Topic {d['name']} has {d['partitions']} partitions")


@topic.command("list")
@format_option
@pass_state
def topic_list(state: State, fmt: str) -> None:
    """List topics."""
    emit(fmt, TopicAdmin(state.conn).names(), lambda names: "\n".join(names))


def _describe_text(d: dict[str, Any]) -> str:
    lines = [
        f"Topic {d['name']}: {d['partitions'].__len__()} partitions, {d['length']} records, "
        f"routing {d['routing']}, max_length {d['max_length']}, retention_ms {d['retention_ms']}"
        + (", safe retention" if d["safe_retention"] else "")
    ]
    if d["regions"]:
        lines.append("Regions: " + ", ".join(f"{k}={v[0]}-{v[1]}" for k, v in d["regions"].items()))
    lines.append(
        f"{'PARTITION':>9} {'LENGTH':>10} {'FIRST ID':>22} {'LAST ID':>22} {'SLOT':>5}  NODE"
    )
    for p in d["partitions"]:
        lines.append(
            f"{p['partition']:>9} {p['length']:>10} {p['first_id'] or '-':>22} "
            f"{p['last_id'] or '-':>22} {p['slot']:>5}  {p['node'] or ''}"
        )
    return "\n".join(lines)


@topic.command("describe")
@click.argument("name")
@format_option
@pass_state
def topic_describe(state: State, name: str, fmt: str) -> None:
    """Show a topic's settings and, per partition, length, first/last id, cluster slot and
    node (on a cluster)."""
    desc: TopicDescription = TopicAdmin(state.conn).describe(name)
    emit(fmt, desc.to_dict(), _describe_text)


@topic.command("alter")
@click.argument("name")
@click.option("-p", "--partitions", type=int, help="Grow to this many partitions.")
@click.option("--max-length", type=int, help="New length limit (0 removes it).")
@click.option("--retention-ms", type=int, help="New age limit in ms (0 removes it).")
@click.option("--safe-retention/--no-safe-retention", default=None)
@format_option
@pass_state
def topic_alter(
    state: State,
    name: str,
    partitions: int | None,
    max_length: int | None,
    retention_ms: int | None,
    safe_retention: bool | None,
    fmt: str,
) -> None:
    """Grow a topic or change its retention."""
    meta = TopicAdmin(state.conn).alter(
        name,
        partitions=partitions,
        max_length=False if max_length is None else (max_length or None),
        retention_ms=False if retention_ms is None else (retention_ms or None),
        safe_retention=safe_retention,
    )
    emit(fmt, meta.spec.to_dict(), lambda d: f"Topic {d['name']}: {d}")


@topic.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def topic_delete(state: State, name: str, yes: bool) -> None:
    """Delete a topic with all its records and dead letters."""
    if not yes:
        click.confirm(f"Delete topic {name} and all its records?", abort=True)
    deleted = TopicAdmin(state.conn).delete(name)
    click.echo(f"Deleted topic {name}" if deleted else f"Topic {name} did not exist")


@main.command("apply")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print the plan, change nothing.")
@click.option("--force", is_flag=True, help="Apply destructive changes (routing, regions).")
@format_option
@pass_state
def apply_cmd(state: State, file: str, dry_run: bool, force: bool, fmt: str) -> None:
    """Create or update the topics and groups declared in a TOML FILE."""
    declared = apply_mod.load(file)
    if dry_run:
        actions = apply_mod.plan(state.conn, declared)
    else:
        actions = apply_mod.execute(state.conn, declared, force=force)
    prefix = "(dry run) " if dry_run else ""
    emit(fmt, [a.to_dict() for a in actions], lambda _: "\n".join(prefix + str(a) for a in actions))


@topic.command("trim")
@click.argument("name")
@click.option("-p", "--partition", type=int, required=True)
@click.option("--max-length", type=int, help="Keep exactly this many newest records.")
@click.option("--min-id", help="Remove records with a lower id.")
@pass_state
def topic_trim(
    state: State, name: str, partition: int, max_length: int | None, min_id: str | None
) -> None:
    """Trim one partition now (unacked records removed this way are dead-lettered as trimmed)."""
    removed = TopicAdmin(state.conn).trim(name, partition, max_length=max_length, min_id=min_id)
    click.echo(f"Removed {removed} records from {name}/{partition}")
