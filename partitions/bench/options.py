"""What a benchmark run is asked to do: one frozen options object shared by every mode."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from partitions._base.errors import ConfigError

MODES = ("produce", "consume", "e2e", "rebalance")

# Distinct values a run cycles through (the same list for partstream and every baseline).
VALUE_POOL = 1024
# Latency is sampled on the first record of every chunk of this many records.
SAMPLE_EVERY = 100


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """Load shape and settings; ``None`` linger means the mode's own default."""

    # Records per measured side (produce, consume); e2e sends rate x duration.
    records: int = 1_000_000
    # Bytes of each record's value.
    record_size: int = 100
    partitions: int = 16
    # Distinct record keys, cycled in order.
    keys: int = 10_000
    producers: int = 1
    consumers: int = 1
    # Producer batch size, the redis-py loop's pipeline size and the consumers' read count.
    batch_size: int = 1000
    # Producer linger; None = 5 ms for throughput modes, 0 ms for e2e and rebalance.
    linger_ms: float | None = None
    # Records/s for e2e and rebalance (fixed rate, summed over producers).
    rate: float = 5000.0
    # Seconds of fixed-rate load (e2e; rebalance: per phase).
    duration: float = 10.0
    # Seconds per reporting window.
    interval: float = 2.0
    # Rounds of alternating partstream / baseline runs; ratios are the median round's.
    repeat: int = 1
    # Also run redis-benchmark (produce) and the optional peers (NATS, FastStream).
    redis_benchmark: bool = True
    peers: bool = False
    # produce: also run partstream's producer on local embedded clusters of these sizes
    # (masters; "3" or "1,2,3"; empty = none), or on the cluster at cluster_url.
    cluster: tuple[int, ...] = ()
    cluster_url: str | None = None
    # produce: "all" = also run partstream's producer with acks="all" beside acks=1, on a
    # primary with a replica (a private one with a local replica unless a URL is given).
    acks: str = "1"

    def __post_init__(self) -> None:
        positive = (
            "records",
            "record_size",
            "partitions",
            "keys",
            "producers",
            "consumers",
            "batch_size",
            "repeat",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"bench: {name} must be a positive integer, not {value!r}")
        if self.record_size < 16:
            raise ConfigError("bench: record_size must be at least 16 bytes (timestamps)")
        if self.linger_ms is not None and self.linger_ms < 0:
            raise ConfigError("bench: linger_ms must be >= 0")
        if self.rate <= 0 or self.duration <= 0 or self.interval <= 0:
            raise ConfigError("bench: rate, duration and interval must be positive")
        from partitions.bench.cluster import parse_sizes

        object.__setattr__(self, "cluster", parse_sizes(self.cluster))
        if self.cluster_url and self.cluster:
            raise ConfigError("bench: --cluster-url is the cluster to use: give no --cluster")
        if self.acks not in ("1", "all"):
            raise ConfigError(f"bench: acks must be '1' or 'all', not {self.acks!r}")
        if self.records < self.producers:
            raise ConfigError("bench: need at least one record per producer")

    def linger(self, mode: str) -> float:
        if self.linger_ms is not None:
            return self.linger_ms
        return 5.0 if mode in ("produce", "consume") else 0.0

    def to_dict(self, mode: str) -> dict[str, Any]:
        data = asdict(self)
        data["linger_ms"] = self.linger(mode)
        return data


def make_keys(n: int) -> list[bytes]:
    return [b"key-%d" % i for i in range(n)]


def make_values(size: int, count: int = VALUE_POOL, seed: int = 7) -> list[bytes]:
    """``count`` distinct printable values of exactly ``size`` bytes (deterministic)."""
    rng = random.Random(seed)
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return [bytes(rng.choices(alphabet, k=size)) for _ in range(count)]


def make_chunks(opts: BenchOptions, total: int, first: int = 0) -> list[list[tuple[bytes, bytes]]]:
    """(key, value) records ``first .. first+total-1`` in chunks of :data:`SAMPLE_EVERY`.

    Record i has key ``key-(i % keys)`` and value ``values[(i * 7) % VALUE_POOL]``, so every
    side of a comparison sends exactly the same records. At most 100,000 records are
    materialised; longer runs cycle through the chunks (keys stay evenly spread).
    """
    keys = make_keys(opts.keys)
    values = make_values(opts.record_size)
    span = min(total, 100_000)
    chunks: list[list[tuple[bytes, bytes]]] = []
    for lo in range(first, first + span, SAMPLE_EVERY):
        hi = min(lo + SAMPLE_EVERY, first + span)
        chunks.append([(keys[i % opts.keys], values[(i * 7) % VALUE_POOL]) for i in range(lo, hi)])
    return chunks


def split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal shares."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def iter_chunks(opts: BenchOptions, count: int, first: int) -> Iterator[list[tuple[bytes, bytes]]]:
    """One worker's ``count`` records from ``first``, chunk by chunk (every side sends these)."""
    chunks = make_chunks(opts, count, first)
    left, c = count, 0
    while left > 0:
        chunk = chunks[c % len(chunks)]
        if len(chunk) > left:
            chunk = chunk[:left]
        left -= len(chunk)
        c += 1
        yield chunk
