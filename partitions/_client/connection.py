"""Connecting to a server: URL or embedded, version and feature detection, safety checks.

:func:`connect` is the one way partstream opens a server. It refuses servers older than
Redis 7.0 / Valkey 7.2 (:class:`ServerTooOldError`, naming the version needed), detects the
newer stream features partstream uses when present, and warns (or, strict, refuses) when
``maxmemory-policy`` could evict stream keys.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.exceptions as rex

from partitions._base.errors import (
    ConfigError,
    ConnectionFailedError,
    EvictionPolicyError,
    PartstreamError,
    ServerTooOldError,
    translate,
)
from partitions._base.functions import (
    FAILOVER_GRACE_S,
    Backoff,
    Functions,
    Refresh,
    Send,
    did_not_run,
    fails_over,
)
from partitions._base.keys import Keys
from partitions._base.replies import text
from partitions._base.steps import IO_ERRORS, Pause, Steps, dispatch, drive
from partitions._client.config import ClientConfig
from partitions._client.urls import (
    ClusterSeeds,
    SentinelTarget,
    parse_cluster,
    parse_sentinel,
    redact_url,
)

log = logging.getLogger("partstream")

MIN_REDIS = (7, 0, 0)
MIN_VALKEY = (7, 2, 0)

# Stream features newer than the minimum server, by the Redis version that added them.
# Valkey's own version numbers are unrelated, so for Valkey the commands are probed instead.
_REDIS_FEATURES = {
    "acked_trim": (8, 2, 0),  # XACKDEL / XDELEX / XADD+XTRIM ACKED
    "xreadgroup_claim": (8, 4, 0),
    "idmp": (8, 6, 0),
    "xnack": (8, 8, 0),
    "waitaof": (7, 2, 0),  # WAITAOF: an acknowledged write is in the AOF (fsynced) too
}


def parse_version(text: str) -> tuple[int, int, int]:
    nums = [int("".join(ch for ch in part if ch.isdigit()) or 0) for part in text.split(".")[:3]]
    while len(nums) < 3:
        nums.append(0)
    return (nums[0], nums[1], nums[2])


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What the server is and which optional stream features it has."""

    flavor: str  # "redis" or "valkey"
    version: tuple[int, int, int]
    features: frozenset[str]
    cluster: bool
    maxmemory_policy: str | None
    # Replicas connected to the primary when we connected (the fewest of any primary on a
    # cluster): what ``acks="all"`` can expect, not a promise (replicas come and go).
    replicas: int = 0

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    def has(self, feature: str) -> bool:
        return feature in self.features

    def describe(self) -> str:
        feats = ", ".join(sorted(self.features)) or "none beyond 7.0"
        mode = "cluster" if self.cluster else "single node"
        if self.replicas:
            mode += f", {self.replicas} replica{'s' if self.replicas > 1 else ''}"
        return f"{self.flavor} {self.version_text} ({mode}; features: {feats})"


# Connecting is written once, as steps (partitions/_base/steps.py): this module's connect()
# and the asyncio connect_async() (partitions/_client/aio.py) only do the actions.
@dataclass(frozen=True, slots=True)
class OnNode:
    """Send ``command`` to one primary of a cluster (from :class:`Primaries`), unmerged."""

    node: Any
    command: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Primaries:
    """The result is the cluster's primary nodes (for :class:`OnNode`)."""


def perform(client: Any) -> Callable[[Any], Any]:
    """How a redis-py client does the actions of connecting."""
    return dispatch(
        {
            Send: lambda a: client.execute_command(*a.command),
            OnNode: lambda a: client.get_redis_connection(a.node).execute_command(*a.command),
            Primaries: lambda a: client.get_primaries(),
            Refresh: lambda a: _initialize(client),
            Pause: lambda a: time.sleep(a.seconds),
        }
    )


def _initialize(client: Any) -> None:
    with contextlib.suppress(*IO_ERRORS):
        client.nodes_manager.initialize()


def _probe(name: str, send: Callable[[tuple[Any, ...]], Any]) -> Steps[bool]:
    """Probe a command by calling it with no arguments: an arity error means it exists."""
    try:
        yield send((name,))
    except rex.ResponseError as err:
        return "unknown command" not in str(err).lower()
    except rex.RedisError:
        return False
    return True


def node_steps(*, cluster: bool, node: Any = None) -> Steps[ServerInfo]:
    """Detect one server (``node``: one primary of a cluster); raise ServerTooOldError below
    the supported minimum."""

    def send(command: tuple[Any, ...]) -> Send | OnNode:
        return Send(command) if node is None else OnNode(node, command)

    try:
        info = yield send(("INFO", "server"))
    except rex.RedisError as err:
        raise translate(err, "reading server info") from err
    flavor = (
        "valkey" if info.get("server_name") == "valkey" or "valkey_version" in info else "redis"
    )
    version = parse_version(str(info.get("valkey_version") or info.get("redis_version", "0")))
    if flavor == "redis" and version < MIN_REDIS:
        raise ServerTooOldError(
            f"Redis {'.'.join(map(str, version))} is too old: partstream needs Redis >= 7.0 "
            "(or Valkey >= 7.2)"
        )
    if flavor == "valkey" and version < MIN_VALKEY:
        raise ServerTooOldError(
            f"Valkey {'.'.join(map(str, version))} is too old: partstream needs Valkey >= 7.2 "
            "(or Redis >= 7.0)"
        )
    features: set[str] = set()
    if flavor == "redis":
        features = {name for name, since in _REDIS_FEATURES.items() if version >= since}
    else:
        if (yield from _probe("XACKDEL", send)):
            features.add("acked_trim")
        if (yield from _probe("WAITAOF", send)):
            features.add("waitaof")
    policy: str | None
    try:
        raw = (yield send(("CONFIG GET", "maxmemory-policy"))).get("maxmemory-policy")
        policy = None if raw is None else text(raw)
    except rex.RedisError:
        policy = None  # CONFIG may be denied by ACL or renamed: we cannot tell
    try:
        replication = yield send(("INFO", "replication"))
        replicas = int(replication.get("connected_slaves", 0) or 0)
    except rex.RedisError:
        replicas = 0  # INFO replication denied
    return ServerInfo(flavor, version, frozenset(features), cluster, policy, replicas)


def combine(infos: list[ServerInfo]) -> ServerInfo:
    """A cluster's info from its primaries': the oldest one decides the version, a feature
    counts only if all primaries have it, and an evicting policy on any primary is reported."""
    oldest = min(infos, key=lambda i: (i.flavor == "valkey", i.version))
    features = frozenset.intersection(*(i.features for i in infos))
    policies = [i.maxmemory_policy for i in infos]
    evicting = [p for p in policies if p is not None and p.startswith("allkeys-")]
    policy = evicting[0] if evicting else None if None in policies else policies[0]
    replicas = min(i.replicas for i in infos)
    return ServerInfo(oldest.flavor, oldest.version, features, True, policy, replicas)


def detect_steps(*, cluster: bool) -> Steps[ServerInfo]:
    """Read INFO and probe commands; on a cluster every primary (see :func:`combine`)."""
    if not cluster:
        return (yield from node_steps(cluster=False))
    infos = []
    for node in (yield Primaries()):
        infos.append((yield from node_steps(cluster=True, node=node)))
    return combine(infos)


def detect_server(client: Any, *, cluster: bool = False) -> ServerInfo:
    """Read INFO and probe commands; raise ServerTooOldError below the supported minimum."""
    return drive(detect_steps(cluster=cluster), perform(client))


def connect_steps(*, cluster: bool, failover_window: float) -> Steps[ServerInfo]:
    """PING, then detect the server, riding out a failover in progress for
    ``failover_window`` seconds: a node down or still loading, a cluster whose map still
    names a dead primary (until its replica is promoted: asked again with a fresh slot map),
    Sentinels between two primaries."""
    backoff = Backoff(failover_window, first=0.1, most=1.0)
    while True:
        try:
            yield Send(("PING",))
            break
        except IO_ERRORS as err:
            pause = backoff.next_pause() if did_not_run(err) else None
            if pause is None:
                raise
            yield Pause(pause)
    backoff = Backoff(failover_window, first=0.1, most=1.0)
    while True:
        try:
            return (yield from detect_steps(cluster=cluster))
        except ConnectionFailedError as err:
            pause = backoff.next_pause()
            if pause is None:
                raise
            yield Pause(pause)
            if cluster:
                yield Refresh(err)


def failover_window(client: Any) -> float:
    """How long connecting rides out a failover: FAILOVER_GRACE_S on a cluster or behind
    Sentinels, not at all on a single server."""
    return FAILOVER_GRACE_S if fails_over(client) else 0.0


def check_eviction_policy(server: ServerInfo, strict: bool) -> None:
    """Warn (strict: raise) if the server may evict keys that have no TTL: our streams."""
    policy = server.maxmemory_policy
    if policy is None or not policy.startswith("allkeys-"):
        return  # noeviction / volatile-* never evict keys without a TTL
    msg = (
        f"maxmemory-policy is {policy}: the server may silently delete streams and consumer "
        "groups under memory pressure; set it to noeviction"
    )
    if strict:
        raise EvictionPolicyError(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
    log.warning(msg)


class Opened:
    """What an open server is, for both shells (:class:`Connection` and the asyncio
    ``AsyncConnection``): the client, its config and URL, the detected server, key names."""

    def __init__(self, client: Any, config: ClientConfig, url: str, server: ServerInfo) -> None:
        self.client = client
        self.config = config
        self.url = url
        self.server = server
        self.keys = Keys(config.namespace)
        # Behind Sentinels: a primary can be replaced under this connection (see nodes.py).
        self.behind_sentinel = sentinel_manager(client) is not None

    @property
    def is_cluster(self) -> bool:
        return self.server.cluster

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.redacted_url} {self.server.describe()}>"


class Connection(Opened):
    """An open server: the redis client, its key names, server-side functions and detected
    features.

    Thread-safe: the underlying redis-py client keeps a connection pool.
    """

    def __init__(self, client: Any, config: ClientConfig, url: str, server: ServerInfo) -> None:
        super().__init__(client, config, url, server)
        self.functions = Functions(client)

    def close(self) -> None:
        close_client(self.client)

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _client_kwargs(config: ClientConfig, tls: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "socket_timeout": config.socket_timeout,
        "socket_connect_timeout": config.connect_timeout,
        "health_check_interval": 30,
    }
    if not tls:
        if config.ssl_ca_certs or config.ssl_certfile or config.ssl_keyfile:
            raise ConfigError("TLS options were given but the URL is not TLS; use rediss://")
        return kwargs
    # The certificate's chain and that it names the host connected to are both checked;
    # redis-py before 6.0 skipped the name unless told, so it is always said explicitly.
    kwargs["ssl_cert_reqs"] = "required"
    kwargs["ssl_check_hostname"] = True
    if config.ssl_ca_certs:
        kwargs["ssl_ca_certs"] = config.ssl_ca_certs
    if config.ssl_certfile:
        kwargs["ssl_certfile"] = config.ssl_certfile
    if config.ssl_keyfile:
        kwargs["ssl_keyfile"] = config.ssl_keyfile
    return kwargs


def resolve_url(config: ClientConfig) -> str:
    """The configured URL, or the embedded server's (started if needed)."""
    if config.url is not None:
        return config.url
    from partitions._client.server import EmbeddedServer

    return EmbeddedServer(config.data_dir).ensure_running()


@dataclass(frozen=True, slots=True)
class ClientPlan:
    """What client a URL needs, with which settings: decided once for both the redis-py
    client and the redis.asyncio one (each built by its own shell from this)."""

    kind: str  # "single", "cluster" or "sentinel"
    url: str
    kwargs: dict[str, Any]
    cluster: ClusterSeeds | None = None
    sentinel: SentinelTarget | None = None
    sentinel_kwargs: dict[str, Any] | None = None


def client_plan(url: str, config: ClientConfig) -> ClientPlan:
    """The plan of a client for ``url``: nothing is opened or sent."""
    scheme = urlsplit(url).scheme
    if scheme == "unix" and (config.ssl_ca_certs or config.ssl_certfile or config.ssl_keyfile):
        # A unix socket is local: TLS settings (from the environment, say) do not apply.
        config = config.with_changes(ssl_ca_certs=None, ssl_certfile=None, ssl_keyfile=None)
    kwargs = _client_kwargs(config, tls=scheme.startswith("rediss"))
    if scheme.endswith("+cluster"):
        seeds = parse_cluster(url)
        kwargs.pop("health_check_interval", None)
        if seeds.tls:
            kwargs["ssl"] = True
        kwargs.update(username=seeds.username, password=seeds.password)
        return ClientPlan("cluster", url, kwargs, cluster=seeds)
    if scheme.endswith("+sentinel"):
        target = parse_sentinel(url)
        # Sentinels answer small queries: a dead one must not hold a reconnect for long.
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": config.connect_timeout,
            "socket_connect_timeout": config.connect_timeout,
            "username": target.sentinel_username,
            "password": target.sentinel_password,
        }
        if target.tls:
            kwargs["ssl"] = True
            sentinel_kwargs.update({k: v for k, v in kwargs.items() if k.startswith("ssl")})
        return ClientPlan("sentinel", url, kwargs, sentinel=target, sentinel_kwargs=sentinel_kwargs)
    return ClientPlan("single", url, kwargs)


def open_client(url: str, config: ClientConfig) -> tuple[Any, bool]:
    """A redis-py client for ``url``: (client, is_cluster). Nothing is sent yet.

    A Sentinel URL gives a plain client whose connections ask the Sentinels for the current
    primary each time they (re)connect, so the client follows a failover by itself; a reply
    ``READONLY`` from a demoted primary drops that connection (redis-py's
    SentinelManagedConnection turns it into a ConnectionError).
    """
    plan = client_plan(url, config)
    if plan.cluster is not None:
        from redis.cluster import ClusterNode, RedisCluster

        nodes = [ClusterNode(h, p) for h, p in plan.cluster.nodes]  # type: ignore[no-untyped-call]
        return RedisCluster(startup_nodes=nodes, **plan.kwargs), True
    if plan.sentinel is not None:
        from redis.sentinel import Sentinel

        target = plan.sentinel
        manager = Sentinel(  # type: ignore[no-untyped-call]
            list(target.sentinels), sentinel_kwargs=plan.sentinel_kwargs, **plan.kwargs
        )
        client = manager.master_for(  # type: ignore[no-untyped-call]
            target.master, db=target.db, username=target.username, password=target.password
        )
        return client, False
    return redis.Redis.from_url(url, **plan.kwargs), False


def sentinel_manager(client: Any) -> Any:
    """The ``redis.sentinel.Sentinel`` behind a client opened from a Sentinel URL, else None."""
    return getattr(getattr(client, "connection_pool", None), "sentinel_manager", None)


def close_client(client: Any) -> None:
    """Close a client from :func:`open_client` (and the Sentinel clients behind it)."""
    if client is None:
        return
    manager = sentinel_manager(client)
    for closable in (client, manager):
        if closable is None:
            continue
        try:
            closable.close()
        except Exception:
            log.debug("error while closing a client", exc_info=True)


def _tls_error(err: Exception, url: str) -> PartstreamError | None:
    """A clear error for a TLS handshake refused on either side, else None."""
    msg = str(err)
    low = msg.lower()
    where = f"connecting to {redact_url(url)}"
    if "certificate_verify_failed" in low or "certificate verify failed" in low:
        return ConfigError(
            f"{where}: the server's TLS certificate could not be verified ({msg}); pass the CA "
            "that signed it with ssl_ca_certs (PARTSTREAM_TLS_CA), and connect by the name or "
            "address the certificate is issued for"
        )
    if "certificate required" in low or "alert_certificate_required" in low:
        return ConnectionFailedError(
            f"{where}: the server requires a client certificate ({msg}); set ssl_certfile and "
            "ssl_keyfile (PARTSTREAM_TLS_CERT, PARTSTREAM_TLS_KEY)"
        )
    return None


def connect_failure(err: Exception, url: str) -> Exception | None:
    """The partstream error of a client that could not open ``url``, or None: not a
    connection error, let it through."""
    where = f"connecting to {redact_url(url)}"
    if isinstance(err, PartstreamError):  # already says what to do (too old, evicting...)
        return None
    if isinstance(err, rex.RedisError):
        return _tls_error(err, url) or translate(err, where)
    if isinstance(err, rex.RedisClusterException):  # no seed node answered
        return ConnectionFailedError(f"{where}: {err}")
    if isinstance(err, OSError | ValueError):
        return ConfigError(f"cannot use {redact_url(url)}: {err}")
    return None


def resolve_config(config: ClientConfig | None, overrides: dict[str, Any]) -> ClientConfig:
    """``overrides`` (ClientConfig fields) over ``config`` (default: from the environment)."""
    config = config or ClientConfig.from_env()
    return config.with_changes(**overrides) if overrides else config


def connect(config: ClientConfig | None = None, **overrides: Any) -> Connection:
    """Open a connection to the configured server (or the embedded one) and check it.

    ``overrides`` are ClientConfig fields (``url=...``, ``namespace=...``) applied over
    ``config`` (default: from the environment).
    """
    config = resolve_config(config, overrides)
    url = resolve_url(config)
    client: Any = None
    try:
        client, cluster = open_client(url, config)
        steps = connect_steps(cluster=cluster, failover_window=failover_window(client))
        server = drive(steps, perform(client))
        check_eviction_policy(server, config.strict_eviction_policy)
    except Exception as err:
        close_client(client)
        failure = connect_failure(err, url)
        if failure is None:
            raise
        raise failure from err
    except BaseException:
        close_client(client)
        raise
    return Connection(client, config, url, server)
