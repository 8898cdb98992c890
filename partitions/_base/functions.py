"""The server-side code: one Redis Functions library, versioned, loaded once per primary.

Each operation lives in ``<name>.lua`` beside the Python code that calls it (``append.lua`` in
``partitions/_producer/``, ``consume.lua`` in ``partitions/_consumer/``, ``member.lua`` in
``coordinator/``: :data:`FUNCTIONS` says where), headed by the keys and arguments it takes;
``partitions/_base/common.lua`` holds the helpers they share (server time, key type guards,
appending records: append.lua and the pipeline's transact.lua append alike). The
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
``no-writes`` on the lag count and the exporter's scrape reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, cast

import redis.exceptions as rex

from partitions._base.durability import Durability
from partitions._base.errors import ConnectionFailedError, LibraryMissingError, translate
from partitions._base.replies import library_names
from partitions._base.steps import IO_ERRORS, Pause, Steps, T, dispatch, drive

LIBRARY_PREFIX = "partstream_"
# A durable call on a cluster follows this many redirections (it did not run) before failing.
DURABLE_ATTEMPTS = 4
_REDIRECTS = (rex.AskError, rex.TryAgainError, rex.ClusterDownError, rex.ReadOnlyError)
# Longest WAIT after a write unless the caller says: under the default socket timeout.
DEFAULT_WAIT_MS = 5000

# name -> flags of the function built from <name>.lua, in library order.
FUNCTIONS: dict[str, tuple[str, ...]] = {
    "append": (),
    "commit": (),
    "consume": ("allow-oom",),
    "seek": (),
    "lag": ("no-writes",),
    "fence": ("allow-oom",),
    "member": ("allow-oom",),
    "admin": ("allow-oom",),
    "topic_create": (),
    "topic_alter": (),
    "transact": (),
    "scrape": ("no-writes",),
}
# name -> the package whose directory holds <name>.lua: beside the code that calls it.
_HOMES: dict[str, str] = {
    "common": "partitions._base",
    "fence": "partitions._base",
    "append": "partitions._producer",
    "commit": "partitions._producer",
    "consume": "partitions._consumer",
    "seek": "partitions._admin",
    "lag": "partitions._admin",
    "topic_create": "partitions._admin",
    "topic_alter": "partitions._admin",
    "member": "coordinator",
    "admin": "coordinator",
    "transact": "partitions._pipeline",
    "scrape": "partitions._telemetry",
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


# -- a call, written once as steps (partitions/_base/steps.py) ------------------------------
# Functions (below) and the asyncio AsyncFunctions (partitions/_client/aio.py) only do
# these actions, each on its own client.


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``command`` on the client (a cluster client routes it by its keys)."""

    command: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Send ``commands`` down one connection, to ``key``'s node on a cluster (None: the
    client's own); the result is every reply, errors included (raise_on_error=False)."""

    key: str | None
    commands: list[tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Invoke:
    """Call ``fn``, a client call of the shell's own kind (blocking, or returning an
    awaitable in the asyncio shell); the result is its reply."""

    fn: Callable[[], Any]


def invoke_steps(fn: Callable[[], Any]) -> Steps[Any]:
    """One client call as steps (for :func:`partitions._base.failover.ride_steps`)."""
    return (yield Invoke(fn))


@dataclass(frozen=True, slots=True)
class Load:
    """FUNCTION LOAD the library on ``target`` (a node, as the caller gave it), else on
    ``key``'s node on a cluster, else on the client."""

    key: str | None = None
    target: Any = None


@dataclass(frozen=True, slots=True)
class Refresh:
    """Re-learn the cluster's slot map after ``error`` (errors doing so are swallowed: the
    next try fails and says why)."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class FCall:
    """One FCALL: which function, its keys and arguments, and what the call is for (the
    context errors are worded with)."""

    name: str
    keys: list[str]
    args: list[Any]
    context: str = ""

    @property
    def where(self) -> str:
        return self.context or f"function {self.name}"

    @property
    def command(self) -> tuple[Any, ...]:
        return ("FCALL", function_name(self.name), len(self.keys), *self.keys, *self.args)

    @property
    def key(self) -> str | None:
        return self.keys[0] if self.keys else None

    def parts(self) -> tuple[str, list[str], list[Any], str]:
        """(name, keys, args, context): the arguments of ``Functions.call``."""
        return self.name, self.keys, self.args, self.context


def load_steps(action: Load) -> Steps[bool]:
    """FUNCTION LOAD: True if loaded now, False if this version was already there;
    LibraryMissingError if this user may not load it."""
    try:
        yield action
    except rex.ResponseError as err:
        if "already exists" in str(err):
            return False
        if _is_noperm(err):
            raise missing_error("", err) from err
        raise translate(err, "loading partstream's server-side functions") from err
    except rex.RedisError as err:
        raise translate(err, "loading partstream's server-side functions") from err
    return True


def _failure(err: BaseException, where: str) -> Exception:
    if isinstance(err, rex.RedisClusterException):
        return ConnectionFailedError(f"{where}: {err}")
    assert isinstance(err, Exception)
    return translate(err, where)


def _attempt(err: BaseException, where: str, retrying: bool) -> Exception:
    """A failed try: NotRun (try again after a pause) when retrying and it provably did not
    run, else its final error."""
    return NotRun() if retrying and did_not_run(err) else _failure(err, where)


def call_steps(
    call: FCall,
    *,
    retry_for: float,
    cluster: bool,
    durability: Durability | None = None,
    wait_ms: int = DEFAULT_WAIT_MS,
    clock: Callable[[], float] = time.monotonic,
) -> Steps[Any]:
    """FCALL ``call``; if the library is missing there, load it and retry once; while the
    server fails over, try again for ``retry_for`` seconds (see :class:`Functions`)."""
    backoff = Backoff(retry_for, clock=clock)
    while True:
        try:
            if durability is not None and durability.waits:
                return (yield from _durable_steps(call, durability, wait_ms, cluster, retry_for))
            return (yield from _plain_steps(call, retry_for))
        except NotRun as not_run:
            pause = backoff.next_pause()
            if pause is None:
                assert not_run.__cause__ is not None
                raise _failure(not_run.__cause__, call.where) from not_run.__cause__
            yield Pause(pause)


def _plain_steps(call: FCall, retry_for: float) -> Steps[Any]:
    try:
        try:
            return (yield Send(call.command))
        except rex.ResponseError as err:
            if not is_missing(err):
                raise
            yield from load_steps(Load(call.key))
            return (yield Send(call.command))
    except IO_ERRORS as err:
        raise _attempt(err, call.where, bool(retry_for)) from err


def _durable_steps(
    call: FCall, durability: Durability, wait_ms: int, cluster: bool, retry_for: float
) -> Steps[Any]:
    # WAIT counts what its own connection wrote: one pipeline on the node of the keys (on a
    # cluster that bypasses the client's redirection handling, so it is done here).
    cluster = cluster and call.key is not None
    pipeline = Pipeline(
        call.key if cluster else None, [call.command, *durability.commands(wait_ms)]
    )
    loaded = False
    for attempt in range(1, DURABLE_ATTEMPTS + 1):
        try:
            replies = yield pipeline
        except rex.RedisError as err:
            if cluster:  # a node died or failed over: learn the map for the next call
                yield Refresh(err)
            raise _attempt(err, call.where, bool(retry_for)) from err
        first = replies[0]
        if not isinstance(first, Exception):
            durability.check(replies[1:], call.where)
            return first
        if not loaded and is_missing(first):
            loaded = True
            yield from load_steps(Load(pipeline.key))
        elif cluster and attempt < DURABLE_ATTEMPTS and _is_redirect(first):
            yield Refresh(first)  # it did not run: send it where the slot is
        else:
            raise translate(first, call.where) from first
    raise AssertionError("unreachable")  # pragma: no cover


class CallsFunctions:
    """What both shells of a Functions client share: the client, the retry window, and the
    steps of a call on it."""

    def __init__(self, client: Any, *, retry_for: float | None = None) -> None:
        self._client = client
        self.retry_for = default_retry(client) if retry_for is None else retry_for

    def _steps(
        self,
        name: str,
        keys: list[str],
        args: list[Any],
        context: str,
        durability: Durability | None,
        wait_ms: int,
    ) -> Steps[Any]:
        call = FCall(name, keys, args, context)
        return self.fcall_steps(call, durability=durability, wait_ms=wait_ms)

    def fcall_steps(
        self,
        call: FCall,
        *,
        durability: Durability | None = None,
        wait_ms: int = DEFAULT_WAIT_MS,
        retry_for: float | None = None,
    ) -> Steps[Any]:
        """The steps of ``call`` on this client (``retry_for``: this call's failover window,
        default the client's); run them with the shell's ``run``."""
        return call_steps(
            call,
            retry_for=self.retry_for if retry_for is None else retry_for,
            cluster=is_cluster_client(self._client),
            durability=durability,
            wait_ms=wait_ms,
        )


class Functions(CallsFunctions):
    """Calls the library's functions on one client (``redis.Redis`` or ``RedisCluster``);
    loads the library where it is missing, if this client may.

    ``retry_for``: seconds a call whose server is failing over keeps being tried, for the
    errors that prove it did not run (no connection could be opened, CLUSTERDOWN, TRYAGAIN,
    LOADING, no primary known to the Sentinels). Default: :data:`FAILOVER_GRACE_S` on a
    cluster or behind Sentinels (a replica gets promoted within it), 0 on a single server. A
    heartbeat passes 0: its runner retries on its own schedule.
    """

    def __init__(self, client: Any, *, retry_for: float | None = None) -> None:
        super().__init__(client, retry_for=retry_for)
        self.perform = dispatch(
            {
                Send: lambda a: client.execute_command(*a.command),
                Invoke: lambda a: a.fn(),
                Pipeline: self._pipeline,
                Load: lambda a: self._target(a).execute_command("FUNCTION", "LOAD", library_code()),
                Refresh: self._refresh_map,
                Pause: lambda a: time.sleep(a.seconds),
            }
        )

    def run(self, steps: Steps[T]) -> T:
        """Run steps made of this module's actions (a call's, or a member's built on them)."""
        return drive(steps, self.perform)

    def load(self, target: Any = None) -> bool:
        """FUNCTION LOAD this version's library (on ``target``: a node client or connection).

        True if it was loaded now, False if it was already there. LibraryMissingError if
        this user may not load it."""
        return self.run(load_steps(Load(target=target)))

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
        return self.run(self._steps(name, keys, args, context, durability, wait_ms))

    def _node(self, key: str | None) -> Any:
        """The plain client of ``key``'s node on a cluster, else the client."""
        if key is None or not is_cluster_client(self._client):
            return self._client
        return self._client.get_redis_connection(self._client.get_node_from_key(key))

    def _target(self, action: Load) -> Any:
        return action.target or self._node(action.key)

    def _pipeline(self, action: Pipeline) -> list[Any]:
        pipe = self._node(action.key).pipeline(transaction=False)
        for command in action.commands:
            pipe.execute_command(*command)
        return cast(list[Any], pipe.execute(raise_on_error=False))

    def _refresh_map(self, action: Refresh) -> None:
        manager = self._client.nodes_manager
        with contextlib.suppress(*IO_ERRORS):
            if isinstance(action.error, rex.MovedError):
                manager.move_slot(action.error)
            else:
                manager.initialize()


def default_retry(client: Any) -> float:
    """:class:`Functions`' default ``retry_for`` on this client."""
    return FAILOVER_GRACE_S if fails_over(client) else 0.0


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
