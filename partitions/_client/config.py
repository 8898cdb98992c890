"""Configuration objects: frozen dataclasses with named defaults and cross-field checks.

Precedence everywhere is: explicit arguments (CLI flags) > environment (``PARTSTREAM_*``) >
file > defaults. Every check raises :class:`ConfigError` at construction, before anything
touches the server.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from partitions._base.durability import Durability, check_settings, parse_acks
from partitions._base.errors import ConfigError
from partitions._base.keys import DEFAULT_NAMESPACE, validate_name
from partitions._client.urls import redact_url, validate_url

_TLS_ENV = {
    "PARTSTREAM_TLS_CA": "ssl_ca_certs",
    "PARTSTREAM_TLS_CERT": "ssl_certfile",
    "PARTSTREAM_TLS_KEY": "ssl_keyfile",
}


def _env_bool(var: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{var} must be 1/true/yes/on or 0/false/no/off, got {raw!r}")


def _client_table(data: object, where: str) -> dict[str, Any]:
    """A ``[client]`` table's settings, checked for unknown names (not data_dir: a file
    names servers, not local directories)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a table")
    allowed = {f.name for f in fields(ClientConfig)} - {"data_dir"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}"
        )
    return dict(data)


def _env_values() -> dict[str, Any]:
    """The ClientConfig fields the environment sets (see ClientConfig.from_env)."""
    values: dict[str, Any] = {}
    env = os.environ
    if url := env.get("PARTSTREAM_URL"):
        values["url"] = url
    if ns := env.get("PARTSTREAM_NAMESPACE"):
        values["namespace"] = ns
    if data_dir := env.get("PARTSTREAM_DATA_DIR"):
        values["data_dir"] = Path(data_dir)
    for var, name in _TLS_ENV.items():
        if path := env.get(var):
            values[name] = path
    if (strict := env.get("PARTSTREAM_STRICT_EVICTION_POLICY")) is not None:
        values["strict_eviction_policy"] = _env_bool("PARTSTREAM_STRICT_EVICTION_POLICY", strict)
    return values


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """How to reach the server.

    ``url=None`` means the embedded Valkey server in ``data_dir``.
    """

    # redis://, rediss://, unix://, redis+cluster://, redis+sentinel://
    # (see partitions._client.urls); None = embedded server.
    url: str | None = None
    # Key namespace; lets several deployments or test runs share a server.
    namespace: str = DEFAULT_NAMESPACE
    # Seconds a single command may take before OperationTimeoutError. Blocking reads always
    # use a BLOCK well below this.
    socket_timeout: float = 10.0
    connect_timeout: float = 5.0
    # Embedded server data directory; None = $PARTSTREAM_DATA_DIR or the user data dir.
    data_dir: Path | None = None
    # TLS (rediss://): CA bundle, optional client certificate and key.
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    # Refuse (instead of warn about) a maxmemory-policy that can evict stream keys.
    strict_eviction_policy: bool = False

    def __post_init__(self) -> None:
        if self.url is not None:
            if not isinstance(self.url, str):
                raise ConfigError(f"url must be a string, got {type(self.url).__name__}")
            validate_url(self.url)
        validate_name(self.namespace, "namespace")
        for name in ("socket_timeout", "connect_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if not isinstance(self.strict_eviction_policy, bool):
            raise ConfigError(
                f"strict_eviction_policy must be true or false, got {self.strict_eviction_policy!r}"
            )
        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is None:
                continue
            if not isinstance(path, str | os.PathLike) or not os.path.isfile(path):
                raise ConfigError(f"{name}: {path!r} is not a readable file")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ConfigError("ssl_keyfile needs ssl_certfile (the client certificate)")

    def __repr__(self) -> str:
        # The URL may carry a password: never show it (dataclass repr would).
        shown = {
            f.name: redact_url(self.url) if f.name == "url" and self.url else getattr(self, f.name)
            for f in fields(self)
        }
        return "ClientConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> ClientConfig:
        """The ``[client]`` table of a TOML config file (``url``, ``namespace``, timeouts,
        TLS files), then the environment, then ``overrides`` whose value is not None: CLI
        flags > environment > file > defaults."""
        table = _load_toml(path).get("client", {})
        values = {**_client_table(table, f"{path}: [client]"), **_env_values()}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "[client]") -> ClientConfig:
        """Build from a TOML table such as ``[client]`` alone (no environment)."""
        return cls(**_client_table(data, where))

    @classmethod
    def from_env(cls, **overrides: Any) -> ClientConfig:
        """Defaults, then the environment, then ``overrides`` whose value is not None.

        Environment: ``PARTSTREAM_URL``, ``PARTSTREAM_NAMESPACE``, ``PARTSTREAM_DATA_DIR``,
        ``PARTSTREAM_TLS_CA`` / ``PARTSTREAM_TLS_CERT`` / ``PARTSTREAM_TLS_KEY`` (CA bundle,
        client certificate and key for ``rediss://``) and
        ``PARTSTREAM_STRICT_EVICTION_POLICY`` (``1``/``true``: refuse an evicting server).
        """
        values = _env_values()
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_changes(self, **changes: Any) -> ClientConfig:
        return replace(self, **changes)


_DURABILITY_FIELDS = ("acks", "min_insync_replicas", "fsync")  # checked by check_settings
_PRODUCER_INT_FIELDS = ("batch_size", "buffer_records", "max_record_bytes", "retries")

# The largest max_record_bytes accepted. One script call carries at most one record above the
# producer's 4 MiB batch size (partitions._producer.batch.MAX_BATCH_BYTES), so every call
# stays far below the server's proto-max-bulk-len (512 MB) and client-query-buffer-limit
# (1 GB) defaults.
MAX_RECORD_BYTES_LIMIT = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ProducerConfig:
    """Batching, back-pressure and retry settings of a :class:`~partitions.Producer`.

    The failure budget is a time, as in Kafka clients: a batch that meets a retriable error
    (refused or broken connection, server restart or loading, failover, ``BUSY``,
    ``TRYAGAIN``, ``OOM``) is sent again, after a back-off that doubles from
    ``retry_backoff_ms`` up to ``retry_backoff_max_ms`` (Kafka's ``retry.backoff.ms`` and
    ``retry.backoff.max.ms``), until ``delivery_timeout_ms`` (Kafka's ``delivery.timeout.ms``)
    has passed since its first record was sent; only then do its futures fail, with the last
    error. The defaults ride out a server restart or a failover. Order per partition and
    idempotence hold across retries.
    """

    # How long a record may wait for its batch to fill before it is sent.
    linger_ms: float = 5.0
    # Records per partition batch (one script call appends a whole batch atomically). A batch
    # is also closed before its records would pass 4 MiB, so a call stays small.
    batch_size: int = 1000
    # Records the producer may hold unsent before send() blocks (back-pressure).
    buffer_records: int = 200_000
    # Seconds send() blocks on a full buffer before BufferFullError; 0 = raise at once.
    block_timeout: float = 30.0
    # A record (key + value + headers) larger than this raises RecordTooLargeError; at most
    # 64 MiB. A record also has at most MAX_HEADERS (1,000) headers (InvalidRecordError).
    max_record_bytes: int = 1_048_576
    # Drop a retried batch's duplicates (server-side sequence check per producer id).
    idempotent: bool = True
    # Upper bound on the time from send() to a future's outcome (Kafka's delivery.timeout.ms):
    # retriable errors are retried until it runs out. At least linger_ms plus the client's
    # socket timeout (checked when the producer starts), as Kafka requires.
    delivery_timeout_ms: float = 120_000.0
    # First wait before a batch is retried; doubled on each further failure of that batch (with
    # +-20 % jitter) up to retry_backoff_max_ms.
    retry_backoff_ms: float = 100.0
    retry_backoff_max_ms: float = 1_000.0
    # Optional cap on attempts after the first, within delivery_timeout_ms. The default is
    # Kafka's (2**31 - 1): the timeout decides.
    retries: int = 2_147_483_647
    # Durability, like Kafka's acks: 1 = a future succeeds once the primary applied its
    # batch; "all" = once WAIT confirmed min_insync_replicas replicas have it (a batch that
    # cannot get them within delivery_timeout_ms fails with NotEnoughReplicasError, in
    # doubt; retries never duplicate it). fsync "local" / "replicas": also wait, where the
    # server has WAITAOF (Redis >= 7.2, Valkey), until it is in the fsynced AOF of the
    # primary / of the replicas too. See partitions._base.durability.
    acks: int | str = 1
    min_insync_replicas: int = 1
    fsync: str = "none"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _DURABILITY_FIELDS:
                continue
            if f.name == "idempotent":
                if not isinstance(value, bool):
                    raise ConfigError(f"idempotent must be true or false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{f.name} must be a number, got {value!r}")
            elif f.name in _PRODUCER_INT_FIELDS and not isinstance(value, int):
                raise ConfigError(f"{f.name} must be an integer, got {value!r}")
            elif value != value or value in (float("inf"), float("-inf")):
                raise ConfigError(f"{f.name} must be a finite number, got {value!r}")
        if self.linger_ms < 0:
            raise ConfigError("linger_ms must be >= 0")
        if not 1 <= self.batch_size <= 100_000:
            raise ConfigError("batch_size must be between 1 and 100000")
        if self.buffer_records < self.batch_size:
            raise ConfigError("buffer_records must be at least batch_size")
        if self.block_timeout < 0:
            raise ConfigError("block_timeout must be >= 0")
        if not 1 <= self.max_record_bytes <= MAX_RECORD_BYTES_LIMIT:
            raise ConfigError("max_record_bytes must be between 1 byte and 64 MiB")
        if self.retries < 0:
            raise ConfigError("retries must be >= 0")
        if self.retry_backoff_ms < 0:
            raise ConfigError("retry_backoff_ms must be >= 0")
        if self.retry_backoff_max_ms < self.retry_backoff_ms:
            raise ConfigError(
                f"retry_backoff_max_ms ({self.retry_backoff_max_ms}) must be at least "
                f"retry_backoff_ms ({self.retry_backoff_ms})"
            )
        check_settings(self.acks, self.min_insync_replicas, self.fsync)
        if self.delivery_timeout_ms <= self.linger_ms:
            raise ConfigError(
                f"delivery_timeout_ms ({self.delivery_timeout_ms}) must be above linger_ms "
                f"({self.linger_ms}): a record waits up to linger_ms before it is even sent"
            )

    @property
    def durability(self) -> Durability:
        """What a batch's futures wait for after the primary applied it."""
        return Durability(self.acks, self.min_insync_replicas, self.fsync)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "[producer]") -> ProducerConfig:
        """Build from a TOML table such as ``[producer]``; unknown keys are a ConfigError."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be a table")
        values = dict(known_fields(cls, dict(data), where))
        if "acks" in values:
            values["acks"] = parse_acks(values["acks"])
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> ProducerConfig:
        """The ``[producer]`` table of a TOML config file (defaults if it has none), then
        ``overrides`` whose value is not None (CLI flags win over the file)."""
        data = _load_toml(path)
        cfg = cls.from_dict(data.get("producer", {}), f"{path}: [producer]")
        return cfg.with_changes(**overrides)

    def with_changes(self, **changes: Any) -> ProducerConfig:
        """A copy with the fields whose value is not None changed (validated again)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if "acks" in changes:
            changes["acks"] = parse_acks(changes["acks"])
        return replace(self, **known_fields(type(self), changes, "ProducerConfig"))

    def check_against(self, client: ClientConfig) -> None:
        """Cross-check with the client, as Kafka checks ``delivery.timeout.ms >= linger.ms +
        request.timeout.ms``: one attempt may take the socket timeout, so a shorter delivery
        timeout could not be kept."""
        floor = self.linger_ms + client.socket_timeout * 1000
        if self.delivery_timeout_ms < floor:
            raise ConfigError(
                f"delivery_timeout_ms ({self.delivery_timeout_ms:.0f}) must be at least "
                f"linger_ms + the socket timeout ({floor:.0f} ms)"
            )


OFFSET_RESETS = ("earliest", "latest")
FOREIGN_ENTRIES = ("deliver", "dead_letter")
# Below this a consumer would leave its group between two records of a busy machine.
MIN_POLL_INTERVAL_MS = 100


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    """How a :class:`~partitions._consumer.consumer.Consumer` reads, commits and waits."""

    # Entries read per owned partition per fetch (XREADGROUP COUNT); all owned partitions
    # are fetched in one round trip.
    fetch_count: int = 500
    # Records poll() returns at most when called without max_records.
    max_poll_records: int = 500
    # Ack the records handed out by the previous poll() (or iteration step) on the next one
    # and on close(); False = only commit() acks.
    auto_commit: bool = True
    # Where a group starts on a partition it has never read: "earliest" (all retained
    # entries) or "latest" (only entries appended after it first reads).
    auto_offset_reset: str = "earliest"
    # Longest single blocking wait for new data (XREAD BLOCK); must stay well below the
    # client's socket timeout, so a quiet stream never looks like a dead server.
    block_ms: int = 500
    # Entries another client wrote to a partition (fields other than partstream's key, value
    # and h:*): "deliver" them (their data is in Record.fields) or "dead_letter" them with
    # reason "malformed".
    foreign_entries: str = "deliver"
    # Longest the application may go without asking for records (poll(), an iteration step,
    # commit()) before the member leaves the group and its partitions move to other members
    # (Kafka's max.poll.interval.ms, same default). The session timeout detects a dead
    # process; this detects a live one whose handler is stuck. Time spent waiting inside
    # poll() does not count.
    max_poll_interval_ms: int = 300_000

    def __post_init__(self) -> None:
        for name in ("fetch_count", "max_poll_records", "block_ms", "max_poll_interval_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.auto_commit, bool):
            raise ConfigError(f"auto_commit must be true or false, got {self.auto_commit!r}")
        if self.fetch_count > 10_000:
            raise ConfigError("fetch_count must be at most 10000")
        if self.foreign_entries not in FOREIGN_ENTRIES:
            raise ConfigError(
                f"foreign_entries must be one of {', '.join(FOREIGN_ENTRIES)}, "
                f"got {self.foreign_entries!r}"
            )
        if self.max_poll_interval_ms < MIN_POLL_INTERVAL_MS:
            raise ConfigError(
                f"max_poll_interval_ms must be at least {MIN_POLL_INTERVAL_MS}, "
                f"got {self.max_poll_interval_ms}"
            )
        if self.auto_offset_reset not in OFFSET_RESETS:
            raise ConfigError(
                f"auto_offset_reset must be one of {', '.join(OFFSET_RESETS)}, "
                f"got {self.auto_offset_reset!r}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "[consumer]") -> ConsumerConfig:
        """Build from a TOML table such as ``[consumer]``; unknown keys are a ConfigError."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be a table")
        return cls(**known_fields(cls, dict(data), where))

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> ConsumerConfig:
        """The ``[consumer]`` table of a TOML config file (defaults if it has none), then
        ``overrides`` whose value is not None (CLI flags win over the file)."""
        data = _load_toml(path)
        cfg = cls.from_dict(data.get("consumer", {}), f"{path}: [consumer]")
        return cfg.with_changes(**overrides)

    def with_changes(self, **changes: Any) -> ConsumerConfig:
        """A copy with the fields whose value is not None changed (validated again)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return replace(self, **known_fields(type(self), changes, "ConsumerConfig"))

    def check_against(self, client: ClientConfig) -> None:
        """Cross-check with the client: a blocking read must end well before its socket times
        out, else an idle consumer would report a dead server."""
        if self.block_ms / 1000 > client.socket_timeout / 2:
            raise ConfigError(
                f"block_ms ({self.block_ms}) must be below half the socket timeout "
                f"({client.socket_timeout * 1000:.0f} ms)"
            )


def _load_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None


def known_fields(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """Reject keys of a TOML table that ``cls`` has no field for (typos lose settings)."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    return data


__all__ = [
    "ClientConfig",
    "ConsumerConfig",
    "ProducerConfig",
    "known_fields",
    "redact_url",
    "validate_url",
]
