"""The server-side code: one Redis Functions library, versioned, loaded once per primary.

Each operation lives in ``<name>.lua`` beside the Python code that calls it (``append.lua`` in
``partitions/_producer/``, ``consume.lua`` in ``partitions/_consumer/``, ``member.lua`` in
``coordinator/``: :data:`FUNCTIONS` says where), headed by the keys and arguments it takes;
``partitions/_base/common.lua`` holds the helpers they share (server time, key type guards). The
library is their concatenation: every file's body becomes the callback of one function
``ps_<name>_<version>`` (called as ``FCALL``), and the library is named
``partstream_<version>``. The version is a digest of the sources, so a client only ever calls
the code it was shipped with: during a rolling upgrade old and new libraries sit side by side
and each client calls its own (``partstream functions load --prune`` removes the others).

Loading (``FUNCTION LOAD``) is an admin's act: ``partstream functions load`` or ``partstream
apply``; the embedded server and an admin user load it by themselves when a call finds it
missing (a new node, a failed-over replica that never had it, a server restarted without
persistence). A client that may not load it raises :class:`LibraryMissingError` saying what
to run. Producers and consumers need only ``FCALL`` (``FCALL_RO`` for the read-only lag
count): no ``SCRIPT``, no ``EVAL``.

Flags: ``allow-oom`` on what must keep working when the server is out of memory under
``noeviction`` (consumers drain and ack, members heartbeat, fences move); the append function
has none, so an OOM server refuses it (and the producer retries within its delivery timeout);
``no-writes`` on the lag count.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

import redis.exceptions as rex

from partitions._base.durability import Durability
from partitions._base.errors import ConnectionFailedError, LibraryMissingError, translate
from partitions._base.replies import library_names

LIBRARY_PREFIX = "partstream_"
# A durable call on a cluster follows this many redirections (it did not run) before failing.
DURABLE_ATTEMPTS = 4
_REDIRECTS = (rex.AskError, rex.TryAgainError, rex.ClusterDownError, rex.ReadOnlyError)
# Longest WAIT after a write unless the caller says: under the default socket timeout.
DEFAULT_WAIT_MS = 5000

# name -> flags of the function built from <name>.lua, in library order.
FUNCTIONS: dict[str, tuple[str, ...]] = {
    "append": (),
    "consume": ("allow-oom",),
    "seek": (),
    "lag": ("no-writes",),
    "fence": ("allow-oom",),
    "member": ("allow-oom",),
    "admin": ("allow-oom",),
    "topic_create": (),
    "topic_alter": (),
}
# name -> the package whose directory holds <name>.lua: beside the code that calls it.
_HOMES: dict[str, str] = {
    "common": "partitions._base",
    "fence": "partitions._base",
    "append": "partitions._producer",
    "consume": "partitions._consumer",
    "seek": "partitions._admin",
    "lag": "partitions._admin",
    "topic_create": "partitions._admin",
    "topic_alter": "partitions._admin",
    "member": "coordinator",
    "admin": "coordinator",
}


@cache
def source(name: str) -> bytes:
    """The text of ``<name>.lua``."""
    return resources.files(_HOMES[name]).joinpath(f"{name}.lua").read_bytes()


@cache
def _body() -> bytes:
    parts = [source("common")]
    for name, flags in FUNCTIONS.items():
        flag_list = ", ".join(f"'{f}'" for f in flags)
        parts.append(
            b"\n-- ---- " + name.encode() + b".lua ----\n"
            b"local function " + name.encode() + b"_body(KEYS, ARGV)\n"
            + source(name)
            + b"\nend\nredis.register_function{function_name = '"
            + function_name(name).encode()
            + b"', callback = " + name.encode() + b"_body, flags = {" + flag_list.encode()
            + b"}}\n"
        )  # fmt: skip
    return b"".join(parts)


@cache
def version() -> str:
    """The library's version: a digest of its sources (the function names carry it)."""
    digest = hashlib.sha1()
    for name in ("common", *FUNCTIONS):
        digest.update(name.encode() + b"\0" + source(name) + b"\0")
        digest.update(",".join(FUNCTIONS.get(name, ())).encode() + b"\0")
    return digest.hexdigest()[:12]


def library_name() -> str:
    return LIBRARY_PREFIX + version()


def function_name(name: str) -> str:
    """The FCALL name of one function of this version's library."""
    if name not in FUNCTIONS:
        raise KeyError(f"no server-side function {name!r}")
    return f"ps_{name}_{version()}"


@cache
def library_code() -> bytes:
    """The whole library as FUNCTION LOAD takes it."""
    return b"#!lua name=" + library_name().encode() + b"\n" + _body()


# How long a call (or a read) keeps trying while its server fails over: a Sentinel or cluster
# promotes a replica after its down-after / node timeout plus an election, seconds; the
# common production settings (5 s down-after, 15 s node timeout) fit with room to spare.
FAILOVER_GRACE_S = 30.0
_PAUSE_S = 0.05
_MAX_PAUSE_S = 0.5


class NotRun(Exception):
    """Internal: the call failed in a way that proves it did not run (its cause says how)."""


class Backoff:
    """When to try again while a server fails over: pauses doubling from ``first`` up to
    ``most``, for ``window`` seconds in all. Pure (the clock is injected): the sync and the
    asyncio shells sleep the pauses it gives with their own sleep.
    """

    def __init__(
        self,
        window: float,
        *,
        first: float = _PAUSE_S,
        most: float = _MAX_PAUSE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._deadline = clock() + window
        self._pause = first
        self._most = most

    def next_pause(self) -> float | None:
        """The pause before the next try, or None: the window is over, give up."""
        pause = self._pause
        if self._clock() + pause > self._deadline:
            return None
        self._pause = min(pause * 2, self._most)
        return pause


def is_cluster_client(client: Any) -> bool:
    """A ``RedisCluster`` (redis-py's or redis.asyncio's)."""
    return hasattr(client, "get_node_from_key")


def fails_over(client: Any) -> bool:
    """A cluster client, or one behind Sentinels: its primaries can be replaced under it."""
    pool = getattr(client, "connection_pool", None)
    return is_cluster_client(client) or getattr(pool, "sentinel_manager", None) is not None


def did_not_run(err: BaseException) -> bool:
    """The errors after which the command certainly did not run, so trying it again is safe
    whatever it does: no connection could be opened (refused, no primary known to the
    Sentinels, no cluster node reachable), CLUSTERDOWN, TRYAGAIN, MOVED/ASK, LOADING."""
    if isinstance(
        err,
        rex.ClusterDownError | rex.TryAgainError | rex.BusyLoadingError | rex.AskError,
    ):
        return True
    if isinstance(err, rex.RedisClusterException):
        return "cannot be connected" in str(err) or "slot" in str(err).lower()
    if isinstance(err, rex.ConnectionError):
        msg = str(err)
        # redis-py words a failed connect "Error <errno> connecting to host:port. ...".
        return " connecting to " in msg or "No master found" in msg or msg.startswith("Error 111")
    return False


def _is_redirect(err: BaseException) -> bool:
    """MOVED / ASK / TRYAGAIN / CLUSTERDOWN / READONLY: the cluster moved, the call did not run."""
    return isinstance(err, _REDIRECTS) or str(err).startswith(
        ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "READONLY")
    )


def is_missing(err: BaseException) -> bool:
    """The server has no such function: this version's library is not loaded there."""
    return "function not found" in str(err).lower()


def _is_noperm(err: BaseException) -> bool:
    return isinstance(err, rex.NoPermissionError) or str(err).startswith("NOPERM")


def missing_error(where: str, cause: BaseException | None = None) -> LibraryMissingError:
    detail = f" ({cause})" if cause is not None else ""
    return LibraryMissingError(
        f"the server{where} does not have partstream's server-side functions, version "
        f"{version()}{detail}; load them as an admin: `partstream functions load` (or "
        "`partstream apply FILE`), then retry"
    )


# -- the decisions of a call, shared by Functions and the asyncio AsyncFunctions -------------


def load_failure(err: Exception) -> Exception | None:
    """What a failed FUNCTION LOAD means: None if this version was already there, else the
    error to raise (LibraryMissingError if this user may not load it)."""
    if isinstance(err, rex.ResponseError) and "already exists" in str(err):
        return None
    if isinstance(err, rex.ResponseError) and _is_noperm(err):
        return missing_error("", err)
    return translate(err, "loading partstream's server-side functions")


def final_error(err: BaseException, where: str) -> Exception:
    """The partstream error a failed call ends in."""
    if isinstance(err, rex.RedisClusterException):
        return ConnectionFailedError(f"{where}: {err}")
    assert isinstance(err, Exception)
    return translate(err, where)


def call_failure(err: BaseException, where: str, *, retrying: bool) -> Exception:
    """A failed FCALL: NotRun (try again after a pause) when retrying and it provably did
    not run, else its final error."""
    if retrying and did_not_run(err):
        return NotRun()
    return final_error(err, where)


def gave_up(not_run: NotRun, where: str) -> Exception:
    """The error of a call whose retry window closed: that of its last try."""
    assert not_run.__cause__ is not None
    return final_error(not_run.__cause__, where)


def fcall_command(name: str, keys: list[str], args: list[Any]) -> tuple[Any, ...]:
    return ("FCALL", function_name(name), len(keys), *keys, *args)


def durable_commands(
    name: str, keys: list[str], args: list[Any], durability: Durability, wait_ms: int
) -> list[tuple[Any, ...]]:
    """The pipeline of a durable call: the FCALL, then WAIT/WAITAOF on the same connection
    (WAIT counts what its own connection wrote)."""
    return [fcall_command(name, keys, args), *durability.commands(wait_ms)]


def durable_retry(first: Any, *, attempt: int, loaded: bool, cluster: bool) -> str | None:
    """What to do when a durable call's FCALL reply is an error: "load" the library and send
    it again, "redirect" it (it did not run: learn the slot map, send it where the slot is),
    or None: raise it."""
    if not loaded and is_missing(first):
        return "load"
    if cluster and attempt < DURABLE_ATTEMPTS and _is_redirect(first):
        return "redirect"
    return None


class Functions:
    """Calls the library's functions on one client (``redis.Redis`` or ``RedisCluster``);
    loads the library where it is missing, if this client may.

    ``retry_for``: seconds a call whose server is failing over keeps being tried, for the
    errors that prove it did not run (no connection could be opened, CLUSTERDOWN, TRYAGAIN,
    LOADING, no primary known to the Sentinels). Default: :data:`FAILOVER_GRACE_S` on a
    cluster or behind Sentinels (a replica gets promoted within it), 0 on a single server. A
    heartbeat passes 0: its runner retries on its own schedule.
    """

    def __init__(self, client: Any, *, retry_for: float | None = None) -> None:
        self._client = client
        if retry_for is None:
            retry_for = FAILOVER_GRACE_S if fails_over(client) else 0.0
        self.retry_for = retry_for

    def load(self, target: Any = None) -> bool:
        """FUNCTION LOAD this version's library (on ``target``: a node client or connection).

        True if it was loaded now, False if it was already there. LibraryMissingError if
        this user may not load it."""
        try:
            (target or self._client).execute_command("FUNCTION", "LOAD", library_code())
        except rex.RedisError as err:
            failure = load_failure(err)
            if failure is None:
                return False
            raise failure from err
        return True

    def call(
        self,
        name: str,
        keys: list[str],
        args: list[Any],
        context: str = "",
        *,
        durability: Durability | None = None,
        wait_ms: int = DEFAULT_WAIT_MS,
    ) -> Any:
        """FCALL ``name``; if the library is missing there, load it and retry once.

        With a ``durability`` that waits, the call is pipelined with WAIT/WAITAOF (up to
        ``wait_ms``) on the same connection, and returns only once enough replicas confirmed
        what it wrote; else NotEnoughReplicasError (it ran: its effects are on the primary).
        """
        backoff = Backoff(self.retry_for)
        where = context or f"function {name}"
        while True:
            try:
                if durability is not None and durability.waits:
                    return self._call_durable(name, keys, args, where, durability, wait_ms)
                return self._call(name, keys, args, where)
            except NotRun as not_run:
                pause = backoff.next_pause()
                if pause is None:
                    raise gave_up(not_run, where) from not_run.__cause__
                time.sleep(pause)

    def _call(self, name: str, keys: list[str], args: list[Any], where: str) -> Any:
        command = fcall_command(name, keys, args)
        try:
            try:
                return self._client.execute_command(*command)
            except rex.ResponseError as err:
                if not is_missing(err):
                    raise
                self._load_for(keys)
                return self._client.execute_command(*command)
        except (rex.RedisError, rex.RedisClusterException) as err:
            raise call_failure(err, where, retrying=bool(self.retry_for)) from err

    def _call_durable(
        self,
        name: str,
        keys: list[str],
        args: list[Any],
        where: str,
        durability: Durability,
        wait_ms: int,
    ) -> Any:
        # One pipeline on the node of the keys (on a cluster that bypasses RedisCluster's
        # redirection handling, so it is done here).
        cluster = bool(keys) and is_cluster_client(self._client)
        commands = durable_commands(name, keys, args, durability, wait_ms)
        loaded = False
        for attempt in range(1, DURABLE_ATTEMPTS + 1):
            node = self._client
            if cluster:
                node = node.get_redis_connection(node.get_node_from_key(keys[0]))
            pipe = node.pipeline(transaction=False)
            for cmd in commands:
                pipe.execute_command(*cmd)
            try:
                replies = pipe.execute(raise_on_error=False)
            except rex.RedisError as err:
                if cluster:  # a node died or failed over: learn the map for the next call
                    self._refresh_map(err)
                raise call_failure(err, where, retrying=bool(self.retry_for)) from err
            first = replies[0]
            if isinstance(first, Exception):
                action = durable_retry(first, attempt=attempt, loaded=loaded, cluster=cluster)
                if action == "load":
                    loaded = True
                    self.load(node)
                elif action == "redirect":
                    self._refresh_map(first)
                else:
                    raise translate(first, where) from first
                continue
            durability.check(replies[1:], where)
            return first
        raise AssertionError("unreachable")  # pragma: no cover

    def _refresh_map(self, err: BaseException) -> None:
        manager = self._client.nodes_manager
        try:
            if isinstance(err, rex.MovedError):
                manager.move_slot(err)
            else:
                manager.initialize()
        except (rex.RedisError, rex.RedisClusterException):
            pass  # the cluster is unreachable right now: the next call fails and retries

    def _load_for(self, keys: list[str]) -> None:
        target = None
        if keys and is_cluster_client(self._client):  # a cluster: that key's node
            node = self._client.get_node_from_key(keys[0])
            target = self._client.get_redis_connection(node)
        self.load(target)


def loaded_versions(node: Any) -> list[str]:
    """The versions of partstream's library loaded on one node (a plain client)."""
    try:
        libs = node.execute_command("FUNCTION", "LIST", "LIBRARYNAME", LIBRARY_PREFIX + "*")
    except rex.RedisError as err:
        raise translate(err, "listing server-side functions") from err
    names = library_names(libs)
    return sorted(n[len(LIBRARY_PREFIX) :] for n in names if n.startswith(LIBRARY_PREFIX))


def delete_version(node: Any, ver: str) -> None:
    """FUNCTION DELETE one version of the library on one node."""
    try:
        node.execute_command("FUNCTION", "DELETE", LIBRARY_PREFIX + ver)
    except rex.RedisError as err:
        raise translate(err, "deleting an old server-side library") from err
