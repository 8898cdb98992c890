"""When a producer batch is sent again and when it gives up: a pure policy with an injected clock.

The failure budget is a time, like Kafka's ``delivery.timeout.ms``: a batch may be retried
until ``delivery_timeout_ms`` after it was opened, with a back-off that doubles from
``retry_backoff_ms`` to ``retry_backoff_max_ms`` (each wait jittered by +-20 %, so producers
that failed together do not all come back at once). What counts as retriable:

* **at once** (nothing was executed, waiting would not help): ``MOVED`` / ``ASK`` (the cluster
  named the node to ask);
* **after the back-off**: a refused, broken or timed-out connection, ``LOADING`` (a restarted
  server reading its data), ``BUSY`` (a long script runs), ``OOM`` (maxmemory reached),
  ``TRYAGAIN`` / ``CLUSTERDOWN`` / ``MASTERDOWN`` / ``READONLY`` (resharding or failover),
  ``NOREPLICAS`` (``min-replicas-to-write`` not met), :class:`NotEnoughReplicasError`
  (``acks="all"``: appended but not confirmed by enough replicas yet), a missing function
  library (a server restarted empty or a new primary: the producer loads it if its user may,
  else an admin's ``partstream functions load`` lets the next attempt through);
* **never**: every other server reply (``WRONGTYPE``, ``NOPERM``, ``OUTOFSEQ``,
  ``BADBATCH``, ...): the same batch would be refused again.

:func:`in_doubt` tells the errors after which the batch may have been appended (the
connection broke after the call was written) from refusals that guarantee it was not. The
append script is all-or-nothing, so every server error reply is such a refusal.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import redis.exceptions as rex

from partitions._base.durability import Durability
from partitions._base.errors import (
    ClosedError,
    ConnectionFailedError,
    DeliveryTimeoutError,
    NotEnoughReplicasError,
    PartstreamError,
    SequenceLostError,
    translate,
)
from partitions._base.functions import is_missing
from partitions._client.config import ProducerConfig
from partitions._client.connection import ServerInfo
from partitions._client.nodes import is_redirect
from partitions._producer.batch import Batch, NotSentError

# Replies (by their first word) that refuse a call the server may accept a little later.
_RETRIABLE_CODES = ("OOM", "LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "READONLY",
                    "NOREPLICAS")  # fmt: skip
_RETRIABLE_CLASSES = (
    rex.OutOfMemoryError,
    rex.BusyLoadingError,
    rex.TryAgainError,
    rex.ClusterDownError,  # MasterDownError is one
    rex.ReadOnlyError,
    rex.ConnectionError,
    rex.TimeoutError,
    rex.RedisClusterException,  # e.g. a slot missing from the map while the cluster moves
    OSError,
)
_JITTER = 0.2

log = logging.getLogger("partstream.producer")


class Verdict(Enum):
    """What to do with a batch that met an error."""

    NOW = "retry at once"
    BACKOFF = "retry after a back-off"
    FAIL = "give up"


def classify(err: BaseException) -> Verdict:
    """Whether (and how soon) a call that failed with ``err`` is worth sending again."""
    if isinstance(err, rex.AskError):  # MovedError is an AskError
        return Verdict.NOW
    if isinstance(err, NotEnoughReplicasError):
        return Verdict.BACKOFF
    if isinstance(err, _RETRIABLE_CLASSES):
        return Verdict.BACKOFF
    if isinstance(err, rex.ResponseError):
        msg = str(err)
        if msg.startswith(("MOVED ", "ASK ")):
            return Verdict.NOW
        if is_missing(err):
            return Verdict.BACKOFF
        code = getattr(err, "status_code", None) or msg.split(" ", 1)[0]
        if code in _RETRIABLE_CODES:
            return Verdict.BACKOFF
    return Verdict.FAIL


def in_doubt(err: BaseException) -> bool:
    """True if the call may have been executed although no reply came (a lost connection or a
    timeout after it was written); False for a server's refusal or a call never written."""
    if isinstance(err, NotSentError | rex.BusyLoadingError):
        return False
    return isinstance(err, rex.ConnectionError | rex.TimeoutError | OSError)


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """Back-off and delivery timeout of one producer, in seconds of an injected clock."""

    timeout: float
    backoff: float
    backoff_max: float
    retries: int
    rand: Callable[[], float] = random.random

    @classmethod
    def from_config(cls, config: ProducerConfig) -> DeliveryPolicy:
        return cls(
            timeout=config.delivery_timeout_ms / 1000.0,
            backoff=config.retry_backoff_ms / 1000.0,
            backoff_max=config.retry_backoff_max_ms / 1000.0,
            retries=config.retries,
        )

    def deadline(self, opened: float) -> float:
        """When a batch opened at ``opened`` stops being retried."""
        return opened + self.timeout

    def delay(self, attempts: int) -> float:
        """The wait before the next attempt, after ``attempts`` failed ones (1, 2, ...)."""
        base = min(self.backoff * 2.0 ** min(attempts - 1, 32), self.backoff_max)
        return base * (1.0 - _JITTER + 2 * _JITTER * self.rand())

    def next_try(
        self, err: BaseException, attempts: int, now: float, deadline: float, extra: int = 0
    ) -> float | None:
        """When to send the batch again (a time on the same clock as ``now``), or None to give
        up: ``err`` is not retriable, the batch's ``deadline`` has passed, or its ``attempts``
        passed ``retries`` (+ ``extra``, the redirections a cluster may add)."""
        verdict = classify(err)
        if verdict is Verdict.FAIL or now >= deadline or attempts > self.retries + extra:
            return None
        if verdict is Verdict.NOW:
            return now
        # The last attempt goes out at the deadline at the latest: a batch fails only after it.
        return min(now + self.delay(attempts), deadline)


def warn_unmet_durability(durability: Durability, server: ServerInfo) -> None:
    """Say at once when the server cannot give what ``acks`` / ``fsync`` ask for (sends would
    only fail after their delivery timeout)."""
    if durability.acks == "all" and server.replicas < durability.min_insync_replicas:
        log.warning(
            "acks='all' waits for %d replica(s) but the primary has %d connected: sends will "
            "fail with NotEnoughReplicasError after delivery_timeout_ms unless replicas connect",
            durability.min_insync_replicas,
            server.replicas,
        )
    if durability.fsync != "none" and not server.has("waitaof"):
        log.warning("fsync=%r: this server has no WAITAOF; only WAIT applies", durability.fsync)


def wait_commands(
    durability: Durability, group: list[Batch], socket_timeout: float
) -> list[tuple[Any, ...]]:
    """acks="all" / fsync: the WAIT / WAITAOF to pipeline after one node's batches, waiting at
    most the time left to their nearest delivery deadline, and under half the socket timeout
    (so the wait itself never looks like a dead server)."""
    if not durability.waits:
        return []
    left = min(b.deadline for b in group) - time.monotonic()
    return durability.commands(int(max(0.001, min(left, socket_timeout / 2)) * 1000))


def unconfirmed_error(
    durability: Durability,
    group: list[Batch],
    replies: list[Any],
    waits: list[tuple[Any, ...]],
    confirms: list[Any],
) -> Exception | None:
    """None if the appends of one pipeline are as durable as asked, else the error their
    batches are retried with: they are on the primary but the WAIT said too few replicas, or
    its reply never came (the connection broke after the appends). In doubt either way."""
    if not waits or not any(isinstance(r, list) for r in replies):
        return None
    if len(confirms) < len(waits):
        lost = next((r for r in replies if isinstance(r, Exception)), None)
        return NotEnoughReplicasError(
            "appended, but the connection broke before the replicas confirmed it"
            + (f" ({lost})" if lost is not None else "")
        )
    where = f"appending to {', '.join(sorted({f'{b.topic}/{b.partition}' for b in group}))}"
    try:
        durability.check(confirms, where)
    except NotEnoughReplicasError as err:
        return err
    return None


def is_out_of_seq(err: BaseException) -> bool:
    """The append script's OUTOFSEQ: the server lost this producer's recent sequence."""
    return "OUTOFSEQ" in str(err)


def final_error(batch: Batch, err: Exception, now: float) -> PartstreamError:
    """The error a sent batch's futures fail with once it is not retried: the last one, in
    partstream's tree, saying how long it was tried."""
    where = f"appending to {batch.topic}/{batch.partition}"
    if batch.attempts:
        where += f" (gave up after {batch.attempts + 1} attempts in {now - batch.created:.1f}s)"
    if is_redirect(err):
        error: PartstreamError = ConnectionFailedError(
            f"{where}: the cluster kept redirecting ({type(err).__name__} {err}); is a "
            "resharding or failover stuck?"
        )
    elif is_out_of_seq(err):
        # The server lost this producer's sequence (a crash lost its last writes, or it
        # restarted empty): this batch was NOT appended and fails loudly.
        error = SequenceLostError(
            f"{where}: {err} (the server lost recent writes; this batch was not appended)"
        )
    else:
        error = translate(err, where)
    if error is not err:
        error.__cause__ = err
    return error


def expiry_error(batch: Batch, last: Exception | None, timeout_ms: float) -> PartstreamError:
    """The error of a batch never sent within the delivery timeout: its partition's last error
    (the batch ahead of it kept failing), else :class:`DeliveryTimeoutError`."""
    where = (
        f"appending to {batch.topic}/{batch.partition}: not sent within "
        f"delivery_timeout_ms={timeout_ms:.0f}"
    )
    if last is None:
        return DeliveryTimeoutError(
            f"{where} (earlier batches of its partition held it up: the server is slow or the "
            "producer is backlogged)"
        )
    error = translate(last, f"{where}, behind a failing batch")
    if error is not last:
        error.__cause__ = last
    return error


def closed_error(batch: Batch) -> ClosedError:
    """The error of a batch still undelivered when ``close()`` stopped waiting."""
    last = batch.last_error
    error = ClosedError(
        f"appending to {batch.topic}/{batch.partition}: the producer was closed before the "
        "record was delivered (close() timed out)" + (f"; last error: {last}" if last else "")
    )
    error.__cause__ = last
    return error
