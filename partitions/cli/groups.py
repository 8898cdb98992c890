"""``partstream group ...``: create, alter, list, describe (with lag), lag (with bounds for
alerting), seek, reclaim and delete groups."""

from __future__ import annotations

import sys
from typing import Any

import click

from partitions._admin.groups import (
    GroupAdmin,
    check_lag,
    describe_with_lag,
    execute_group_seek,
    plan_group_seek,
    reclaim_now,
)
from partitions._base.settings import GroupSettings
from partitions.cli.common import State, emit, format_option, main, pass_state


def _settings_options(fn: Any) -> Any:
    for opt in reversed(
        [
            click.option("--assignor", help="uniform (sticky), range or roundrobin."),
            click.option("--session-timeout-ms", type=int),
            click.option("--heartbeat-ms", "heartbeat_interval_ms", type=int),
            click.option("--max-deliveries", type=int, help="Deliveries before dead-lettering."),
            click.option("--reclaim-idle-ms", type=int, help="Reclaim entries idle this long."),
            click.option(
                "--acks",
                type=click.Choice(["1", "all"]),
                help="Durability of the group's state and commits: all = WAIT for replicas.",
            ),
            click.option("--min-insync-replicas", type=int, help="Replicas acks=all waits for."),
            click.option(
                "--fsync",
                type=click.Choice(["none", "local", "replicas"]),
                help="Also wait for the AOF fsync (WAITAOF) on the primary / the replicas.",
            ),
        ]
    ):
        fn = opt(fn)
    return fn


def _changes(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _admin(state: State) -> GroupAdmin:
    return GroupAdmin(state.conn)


@main.group()
def group() -> None:
    """Create, inspect, move and delete consumer groups."""


@group.command("create")
@click.argument("name")
@_settings_options
@click.option("--if-not-exists", is_flag=True, help="Succeed if the group exists.")
@format_option
@pass_state
def group_create(state: State, /, name: str, if_not_exists: bool, fmt: str, **opts: Any) -> None:
    """Create group NAME with the given settings (others default)."""
    settings = GroupSettings().with_changes(**_changes(**opts))
    created = _admin(state).create(name, settings, exist_ok=if_not_exists)
    data = {"group": name, "created": created, "settings": settings.to_dict()}
    emit(fmt, data, lambda d: f"{'created' if d['created'] else 'exists'}: {name}")


@group.command("alter")
@click.argument("name")
@_settings_options
@format_option
@pass_state
def group_alter(state: State, /, name: str, fmt: str, **opts: Any) -> None:
    """Change some settings of group NAME."""
    settings = _admin(state).alter(name, **_changes(**opts))
    emit(fmt, {"group": name, "settings": settings.to_dict()}, lambda d: f"altered: {name}")


@group.command("list")
@format_option
@pass_state
def group_list(state: State, fmt: str) -> None:
    """List groups."""
    emit(fmt, _admin(state).list(), lambda names: "\n".join(names))


def _describe_text(d: dict[str, Any]) -> str:
    lines = [
        f"group {d['group']}  state {d['state']}  epoch {d['epoch']}  "
        f"members {len(d['members'])}  total lag {d['total_lag']}"
    ]
    for p in d["partitions"]:
        lines.append(
            f"  {p['topic']}/{p['partition']}  owner {p['owner'] or '-'}  "
            f"last {p.get('last_delivered_id') or '-'}  pending {p.get('pending', 0)}  "
            f"lag {p.get('lag', '-')}"
        )
    return "\n".join(lines)


@group.command("describe")
@click.argument("name")
@format_option
@pass_state
def group_describe(state: State, name: str, fmt: str) -> None:
    """Members, owners, positions and lag of group NAME."""
    emit(fmt, describe_with_lag(state.conn, name).to_dict(), _describe_text)


# Exit status of `group lag` when a bound is exceeded (1: an error, 2: bad usage).
OVER_BOUND_EXIT = 3


def _lag_text(d: dict[str, Any]) -> str:
    head = "ok" if d["ok"] else "OVER: " + "; ".join(d["violations"])
    lines = [
        f"group {d['group']}  total lag {d['total_lag']}  "
        f"oldest unacked {d['max_lag_seconds']:.3f} s  {head}"
    ]
    for p in d["lag"]:
        lines.append(
            f"  {p['topic']}/{p['partition']}  lag {p['lag']}  pending {p['pending']}  "
            f"{p['lag_seconds']:.3f} s"
        )
    return "\n".join(lines)


@group.command("lag")
@click.argument("name")
@click.option("--topic", help="Only this topic (default: all the group's topics).")
@click.option("--max-lag", type=click.IntRange(min=0), help="Fail if the total lag is above N.")
@click.option(
    "--max-lag-seconds", type=click.FloatRange(min=0),
    help="Fail if the oldest unacked entry is older than S seconds.",
)  # fmt: skip
@format_option
@pass_state
def group_lag_cmd(
    state: State, name: str, topic: str | None, max_lag: int | None,
    max_lag_seconds: float | None, fmt: str,
) -> None:  # fmt: skip
    """Lag of group NAME in entries and seconds; exits 3 when over a bound (for cron, CI)."""
    result = check_lag(
        state.conn, name, max_lag=max_lag, max_lag_seconds=max_lag_seconds, topic=topic
    )
    emit(fmt, result.to_dict(), _lag_text)
    if not result.ok:
        sys.exit(OVER_BOUND_EXIT)


def _plan_text(d: dict[str, Any]) -> str:
    head = "executed" if d["executed"] else "plan (dry run: add --execute to apply)"
    lines = [f"{head}: group {d['group']} to {d['to']}"]
    for s in d["partitions"]:
        lines.append(
            f"  {s['topic']}/{s['partition']}  {s['current'] or '-'} -> {s['new']}  "
            f"(forgets {s['pending']} pending)"
        )
    return "\n".join(lines)


@group.command("seek")
@click.argument("name")
@click.option("--to", "to", required=True, help="earliest, latest, an entry ID or @EPOCH_MS.")
@click.option("--topic", help="Only this topic (default: all the group's topics).")
@click.option("--execute", is_flag=True, help="Apply the plan (default: print it only).")
@click.option("--force", is_flag=True, help="Apply even while members are live.")
@format_option
@pass_state
def group_seek(
    state: State, name: str, to: str, topic: str | None, execute: bool, force: bool, fmt: str
) -> None:
    """Move group NAME to a position on every partition; a dry run unless --execute."""
    plan = plan_group_seek(state.conn, name, to, topic)
    if execute:
        plan = execute_group_seek(state.conn, plan, force=force)
    emit(fmt, plan.to_dict(), _plan_text)


def _reclaim_text(d: dict[str, Any]) -> str:
    lines = [
        f"group {d['group']}: {d['stuck']} entries idle over {d['min_idle_ms']} ms; "
        f"reclaim requested on {d['requested']} partition(s), served by each owner's next read"
    ]
    lines += [
        f"  {p['topic']}/{p['partition']}  stuck {p['stuck']}"
        for p in d["partitions"]
        if p["requested"]
    ]
    return "\n".join(lines)


@group.command("reclaim")
@click.argument("name")
@click.option("--topic", help="Only this topic (default: all the group's topics).")
@click.option(
    "--min-idle-ms", type=click.IntRange(min=0), default=1000, show_default=True,
    help="Reclaim entries pending (delivered, unacked) at least this long.",
)  # fmt: skip
@format_option
@pass_state
def group_reclaim(state: State, name: str, topic: str | None, min_idle_ms: int, fmt: str) -> None:
    """Make the owners of group NAME's partitions redeliver stuck entries now."""
    emit(fmt, reclaim_now(state.conn, name, topic, min_idle_ms).to_dict(), _reclaim_text)


@group.command("delete")
@click.argument("name")
@click.option("--force", is_flag=True, help="Delete even while members are live.")
@format_option
@pass_state
def group_delete(state: State, name: str, force: bool, fmt: str) -> None:
    """Delete group NAME's coordinator state."""
    deleted = _admin(state).delete(name, force=force)
    emit(fmt, {"group": name, "deleted": deleted}, lambda d: f"deleted: {d['deleted']}")
