"""Admin of the server-side library on a deployment: which versions each primary holds, and
loading this version everywhere (``partstream functions status|load``).

A cluster gets the library on every primary; a replica has what its primary had (FUNCTION
LOAD replicates), and a node that joined or was promoted without it is found by ``status``
and served by ``load`` (clients also load it by themselves where their user may).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from partitions._base.functions import delete_version, loaded_versions, version
from partitions._client.connection import Connection


@dataclass(frozen=True, slots=True)
class NodeLibrary:
    """The library versions one primary holds."""

    node: str
    versions: tuple[str, ...]
    loaded_now: bool = False  # this version was loaded by the call that reported it
    pruned: tuple[str, ...] = ()  # versions deleted by the call that reported it

    @property
    def current(self) -> bool:
        """The node has this client's version."""
        return version() in self.versions

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "versions": list(self.versions),
            "current": self.current,
            "loaded_now": self.loaded_now,
            "pruned": list(self.pruned),
        }


def _primaries(conn: Connection) -> list[tuple[str, Any]]:
    client = conn.client
    if not conn.is_cluster:
        return [(conn.redacted_url, client)]
    return [(f"{n.host}:{n.port}", client.get_redis_connection(n)) for n in client.get_primaries()]


def library_status(conn: Connection) -> list[NodeLibrary]:
    """Per primary, the versions of partstream's library it holds."""
    return [NodeLibrary(name, tuple(loaded_versions(node))) for name, node in _primaries(conn)]


def load_library(conn: Connection, *, prune: bool = False) -> list[NodeLibrary]:
    """Load this version of the library on every primary that lacks it; with ``prune``,
    delete the other versions (only once no client of an older version runs)."""
    out = []
    for name, node in _primaries(conn):
        loaded = conn.functions.load(node)
        pruned = []
        if prune:
            for ver in loaded_versions(node):
                if ver != version():
                    delete_version(node, ver)
                    pruned.append(ver)
        out.append(NodeLibrary(name, tuple(loaded_versions(node)), loaded, tuple(pruned)))
    return out
