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
from partitions._base.functions import FAILOVER_GRACE_S, Functions, did_not_run, fails_over
from partitions._base.keys import Keys
from partitions._base.replies import text
from partitions._client.config import ClientConfig
from partitions._client.urls import parse_cluster, parse_sentinel, redact_url

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


def _has_command(client: Any, name: str) -> bool:
    """Probe a command by calling it with no arguments: an arity error means it exists."""
    try:
        client.execute_command(name)
    except rex.ResponseError as err:
        return "unknown command" not in str(err).lower()
    except rex.RedisError:
        return False
    return True


def detect_server(client: Any, *, cluster: bool = False) -> ServerInfo:
    """Read INFO and probe commands; raise ServerTooOldError below the supported minimum.

    On a cluster every primary is checked: the oldest one decides the version, a feature
    counts only if all primaries have it, and an evicting policy on any primary is reported.
    """
    if not cluster:
        return _detect_node(client, cluster=False)
    nodes = [client.get_redis_connection(n) for n in client.get_primaries()]
    infos = [_detect_node(n, cluster=True) for n in nodes]
    oldest = min(infos, key=lambda i: (i.flavor == "valkey", i.version))
    features = frozenset.intersection(*(i.features for i in infos))
    policies = [i.maxmemory_policy for i in infos]
    evicting = [p for p in policies if p is not None and p.startswith("allkeys-")]
    policy = evicting[0] if evicting else None if None in policies else policies[0]
    replicas = min(i.replicas for i in infos)
    return ServerInfo(oldest.flavor, oldest.version, features, True, policy, replicas)


def _detect_node(client: Any, *, cluster: bool) -> ServerInfo:
    """Detect one node (a plain ``redis.Redis``)."""
    try:
        info = client.info("server")
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
        if _has_command(client, "XACKDEL"):
            features.add("acked_trim")
        if _has_command(client, "WAITAOF"):
            features.add("waitaof")
    policy: str | None
    try:
        raw = client.config_get("maxmemory-policy").get("maxmemory-policy")
        policy = None if raw is None else text(raw)
    except rex.RedisError:
        policy = None  # CONFIG may be denied by ACL or renamed: we cannot tell
    return ServerInfo(flavor, version, frozenset(features), cluster, policy, _replicas(client))


def _replicas(client: Any) -> int:
    """Replicas connected to this primary now (0 when INFO replication is denied)."""
    try:
        info = client.info("replication")
    except rex.RedisError:
        return 0
    return int(info.get("connected_slaves", 0) or 0)


def _ping(client: Any) -> None:
    """PING, waiting up to FAILOVER_GRACE_S on a cluster or behind Sentinels while the node
    asked is down or still loading (a failover, a node restarting): they take seconds."""
    deadline = time.monotonic() + (FAILOVER_GRACE_S if fails_over(client) else 0.0)
    pause = 0.1
    while True:
        try:
            client.ping()
            return
        except (rex.RedisError, rex.RedisClusterException) as err:
            if not did_not_run(err) or time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


def _detect(client: Any, cluster: bool) -> ServerInfo:
    """detect_server, riding out a failover in progress: a cluster whose map still names a
    dead primary (until its replica is promoted), or Sentinels between two primaries, is
    asked again, with a fresh slot map, for up to FAILOVER_GRACE_S."""
    deadline = time.monotonic() + (FAILOVER_GRACE_S if fails_over(client) else 0.0)
    pause = 0.1
    while True:
        try:
            return detect_server(client, cluster=cluster)
        except ConnectionFailedError:
            if time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
            if cluster:
                with contextlib.suppress(rex.RedisError, rex.RedisClusterException):
                    client.nodes_manager.initialize()


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


class Connection:
    """An open server: the redis client, its key names, server-side functions and detected
    features.

    Thread-safe: the underlying redis-py client keeps a connection pool.
    """

    def __init__(self, client: Any, config: ClientConfig, url: str, server: ServerInfo) -> None:
        self.client = client
        self.config = config
        self.url = url
        self.server = server
        self.keys = Keys(config.namespace)
        self.functions = Functions(client)
        # Behind Sentinels: a primary can be replaced under this connection (see nodes.py).
        self.behind_sentinel = sentinel_manager(client) is not None

    @property
    def is_cluster(self) -> bool:
        return self.server.cluster

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)

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

    def __repr__(self) -> str:
        return f"<Connection {self.redacted_url} {self.server.describe()}>"


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


def open_client(url: str, config: ClientConfig) -> tuple[Any, bool]:
    """A redis-py client for ``url``: (client, is_cluster). Nothing is sent yet.

    A Sentinel URL gives a plain client whose connections ask the Sentinels for the current
    primary each time they (re)connect, so the client follows a failover by itself; a reply
    ``READONLY`` from a demoted primary drops that connection (redis-py's
    SentinelManagedConnection turns it into a ConnectionError).
    """
    scheme = urlsplit(url).scheme
    if scheme == "unix" and (config.ssl_ca_certs or config.ssl_certfile or config.ssl_keyfile):
        # A unix socket is local: TLS settings (from the environment, say) do not apply.
        config = config.with_changes(ssl_ca_certs=None, ssl_certfile=None, ssl_keyfile=None)
    kwargs = _client_kwargs(config, tls=scheme.startswith("rediss"))
    if scheme.endswith("+cluster"):
        return _cluster_client(url, kwargs), True
    if scheme.endswith("+sentinel"):
        return _sentinel_client(url, config, kwargs), False
    return redis.Redis.from_url(url, **kwargs), False


def _cluster_client(url: str, kwargs: dict[str, Any]) -> Any:
    from redis.cluster import ClusterNode, RedisCluster

    seeds = parse_cluster(url)
    kwargs.pop("health_check_interval", None)
    if seeds.tls:
        kwargs["ssl"] = True
    nodes = [ClusterNode(host, port) for host, port in seeds.nodes]  # type: ignore[no-untyped-call]
    return RedisCluster(
        startup_nodes=nodes,
        username=seeds.username,
        password=seeds.password,
        **kwargs,
    )


def _sentinel_client(url: str, config: ClientConfig, kwargs: dict[str, Any]) -> Any:
    from redis.sentinel import Sentinel

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
    manager = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels), sentinel_kwargs=sentinel_kwargs, **kwargs
    )
    return manager.master_for(  # type: ignore[no-untyped-call]
        target.master, db=target.db, username=target.username, password=target.password
    )


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


def connect(config: ClientConfig | None = None, **overrides: Any) -> Connection:
    """Open a connection to the configured server (or the embedded one) and check it.

    ``overrides`` are ClientConfig fields (``url=...``, ``namespace=...``) applied over
    ``config`` (default: from the environment).
    """
    config = config or ClientConfig.from_env()
    if overrides:
        config = config.with_changes(**overrides)
    url = resolve_url(config)
    client: Any = None
    try:
        client, cluster = open_client(url, config)
        _ping(client)
    except rex.RedisError as err:
        close_client(client)
        raise _tls_error(err, url) or translate(err, f"connecting to {redact_url(url)}") from err
    except rex.RedisClusterException as err:  # no seed node answered
        close_client(client)
        raise ConnectionFailedError(f"connecting to {redact_url(url)}: {err}") from err
    except (OSError, ValueError) as err:
        close_client(client)
        raise ConfigError(f"cannot use {redact_url(url)}: {err}") from err
    try:
        server = _detect(client, cluster)
        check_eviction_policy(server, config.strict_eviction_policy)
    except BaseException:
        close_client(client)
        raise
    return Connection(client, config, url, server)
