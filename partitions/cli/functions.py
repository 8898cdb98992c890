"""``partstream functions status|load``: the server-side library on each primary."""

from __future__ import annotations

from typing import Any

import click

from partitions._admin.library import library_status, load_library
from partitions._base.functions import version
from partitions.cli.common import State, emit, format_option, main, pass_state


@main.group()
def functions() -> None:
    """partstream's server-side functions (one Redis Functions library, versioned)."""


def _text(rows: list[dict[str, Any]]) -> str:
    lines = [f"this client's version: {version()}"]
    for r in rows:
        mark = "ok" if r["current"] else "MISSING this version"
        extra = " (loaded now)" if r["loaded_now"] else ""
        extra += f" (pruned {', '.join(r['pruned'])})" if r["pruned"] else ""
        lines.append(f"{r['node']}  {mark}{extra}  versions: {', '.join(r['versions']) or '-'}")
    return "\n".join(lines)


@functions.command("status")
@format_option
@pass_state
def functions_status(state: State, fmt: str) -> None:
    """Show the library versions each primary holds; exit 1 if one lacks this version."""
    rows = [n.to_dict() for n in library_status(state.conn)]
    emit(fmt, rows, _text)
    if not all(r["current"] for r in rows):
        raise SystemExit(1)


@functions.command("load")
@click.option("--prune", is_flag=True, help="Delete other versions (no older client left).")
@format_option
@pass_state
def functions_load(state: State, prune: bool, fmt: str) -> None:
    """Load this version's library on every primary that lacks it (admin)."""
    emit(fmt, [n.to_dict() for n in load_library(state.conn, prune=prune)], _text)
