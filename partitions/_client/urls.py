"""Server URLs: the forms partstream accepts, checked and parsed without connecting.

=================================================================================  ==========
form                                                                               reaches
=================================================================================  ==========
``redis://[user:pass@]host[:port][/db]``, ``rediss://`` (TLS)                      one server
``unix://[user:pass@]/path/to/socket[?db=N]``                                      one server
``redis+cluster://[user:pass@]host:port[,host:port...]``, ``rediss+cluster://``    a Cluster
``redis+sentinel://[user:pass@]host:port[,host:port...]/MASTER[?db=N]``,            the
``rediss+sentinel://``                                                             primary
=================================================================================  ==========

A cluster URL names seed nodes: any live one is enough to learn the others, so listing
several lets a client start while one node is down. A Sentinel URL names Sentinels (default
port 26379) and the master name they monitor; the client asks them where the primary is on
every new connection, so it follows a failover by itself. Its ``user:pass`` are those of the
data nodes (primary and replicas); Sentinels that require a password of their own take
``?sentinel_password=...`` (and ``sentinel_username=``). With ``rediss+sentinel://`` both the
Sentinels and the data nodes are reached over TLS.

Passwords never reach logs or errors: :func:`redact_url` masks them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from partitions._base.errors import ConfigError

SCHEMES = (
    "redis",
    "rediss",
    "unix",
    "redis+cluster",
    "rediss+cluster",
    "redis+sentinel",
    "rediss+sentinel",
)
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
# Sentinel master names: what `sentinel monitor` accepts in practice, without URL specials.
_MASTER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SENTINEL_QUERY = ("db", "sentinel_username", "sentinel_password")

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """A parsed ``redis+sentinel://`` URL: where the Sentinels are and whom to ask for."""

    sentinels: tuple[Address, ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    tls: bool = False


@dataclass(frozen=True, slots=True)
class ClusterSeeds:
    """A parsed ``redis+cluster://`` URL: the seed nodes and the credentials."""

    nodes: tuple[Address, ...]
    username: str | None = None
    password: str | None = None
    tls: bool = False


def _bad(url: str, why: str) -> ConfigError:
    return ConfigError(f"URL {redact_url(url)} {why}")


def _userinfo(netloc: str) -> tuple[str | None, str | None, str]:
    """(username, password, hosts part) of a netloc; credentials URL-decoded."""
    info, at, hosts = netloc.rpartition("@")
    if not at:
        return None, None, netloc
    user, colon, password = info.partition(":")
    return (unquote(user) or None, unquote(password) if colon else None, hosts)


def parse_hosts(url: str, hosts: str, default_port: int) -> tuple[Address, ...]:
    """``host[:port][,host[:port]...]`` (IPv6 as ``[::1]:port``) into addresses."""
    out: list[Address] = []
    for item in hosts.split(","):
        item = item.strip()
        if not item:
            raise _bad(url, "has an empty host in its host list")
        if item.startswith("["):
            host, bracket, rest = item[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise _bad(url, f"has an invalid IPv6 host {item!r}")
            port_text = rest[1:]
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise _bad(url, "has no host")
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise _bad(url, f"has an invalid port {port_text!r}")
            port = int(port_text)
        else:
            port = default_port
        out.append((host, port))
    return tuple(out)


def parse_sentinel(url: str) -> SentinelTarget:
    """Parse and check a ``redis+sentinel://`` / ``rediss+sentinel://`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis+sentinel", "rediss+sentinel"):
        raise _bad(url, "is not a redis+sentinel:// URL")
    username, password, hosts = _userinfo(parts.netloc)
    if not hosts:
        raise _bad(url, "has no Sentinel host")
    sentinels = parse_hosts(url, hosts, DEFAULT_SENTINEL_PORT)
    master = parts.path.strip("/")
    if not master:
        raise _bad(url, "names no master: add /MASTER_NAME (the name the Sentinels monitor)")
    if not _MASTER_RE.fullmatch(master):
        raise _bad(url, f"has an invalid master name {master!r}")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(query) - set(_SENTINEL_QUERY))
    if unknown:
        known = ", ".join(_SENTINEL_QUERY)
        raise _bad(url, f"has unknown parameter(s) {', '.join(unknown)}; known: {known}")
    db_text = query.get("db", "0")
    if not db_text.isdigit():
        raise _bad(url, f"has an invalid db {db_text!r}")
    return SentinelTarget(
        sentinels=sentinels,
        master=master,
        db=int(db_text),
        username=username,
        password=password,
        sentinel_username=query.get("sentinel_username") or None,
        sentinel_password=query.get("sentinel_password") or None,
        tls=parts.scheme.startswith("rediss"),
    )


def parse_cluster(url: str) -> ClusterSeeds:
    """Parse and check a ``redis+cluster://`` / ``rediss+cluster://`` URL (seed nodes)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis+cluster", "rediss+cluster"):
        raise _bad(url, "is not a redis+cluster:// URL")
    username, password, hosts = _userinfo(parts.netloc)
    if not hosts:
        raise _bad(url, "has no host")
    if parts.path.strip("/") not in ("", "0"):
        raise _bad(url, "names a database: a cluster has only db 0")
    return ClusterSeeds(
        nodes=parse_hosts(url, hosts, DEFAULT_PORT),
        username=username,
        password=password,
        tls=parts.scheme.startswith("rediss"),
    )


def validate_url(url: str) -> str:
    """Check a server URL's form (scheme, hosts, ports, db, master name) without connecting."""
    try:
        parts = urlsplit(url)
    except ValueError as err:
        raise ConfigError(f"invalid server URL: {err}") from None
    if parts.scheme not in SCHEMES:
        raise ConfigError(
            f"unsupported URL scheme {parts.scheme!r}: use one of "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    if parts.scheme.endswith("+sentinel"):
        parse_sentinel(url)
        return url
    if parts.scheme.endswith("+cluster"):
        parse_cluster(url)
        return url
    try:
        port = parts.port
    except ValueError as err:
        raise ConfigError(f"invalid server URL: {err}") from None
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigError("a unix:// URL needs a socket path, e.g. unix:///run/redis.sock")
    elif not parts.hostname:
        raise _bad(url, "has no host")
    if port is not None and not 0 < port < 65536:
        raise _bad(url, "has an invalid port")
    return url


def redact_url(url: str) -> str:
    """The URL with every password (the URL's own, a ``sentinel_password``) as ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    info, at, hosts = parts.netloc.rpartition("@")
    if at and ":" in info:
        parts = parts._replace(netloc=f"{info.partition(':')[0]}:***@{hosts}")
    if "password=" in parts.query:
        query = "&".join(
            f"{k}=***" if k.endswith("password") else f"{k}={v}"
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        )
        parts = parts._replace(query=query)
    return parts.geturl()


def format_hosts(addresses: list[Address] | tuple[Address, ...]) -> str:
    """``host:port,host:port`` (IPv6 hosts bracketed): the host list of a URL."""
    return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in addresses)


__all__ = [
    "SCHEMES",
    "ClusterSeeds",
    "SentinelTarget",
    "format_hosts",
    "parse_cluster",
    "parse_hosts",
    "parse_sentinel",
    "redact_url",
    "validate_url",
]
