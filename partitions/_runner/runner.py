"""A worker process around a handler: key-ordered concurrency, retries, clean shutdown.

:func:`run` is what ``partstream run module:handler`` calls. One consumer thread owns the
:class:`~partitions.Consumer` (it is not thread-safe): it polls, feeds a
:class:`~partitions._runner.scheduler.KeyedScheduler`, and acknowledges finished records.
Handlers run elsewhere: a pool of ``concurrency`` threads for ``def handler(record)``, or
tasks on one event loop thread for ``async def handler(record)``. A finished record starts
its lane's next one at once, from the worker, without waiting for the consumer thread.

What holds, with the defaults:

* **Per-key order**: records of one key (of one partition) are handled one after another, in
  partition order, retries included (see :class:`RetryPolicy`); different keys run side by
  side, up to ``concurrency`` at once.
* **No ack before done**: a record is acknowledged only after its handler returned (or it
  went to the dead-letter stream after its last attempt). A crash redelivers exactly the
  records that were queued or running, to the partition's next owner, in order.
* **Rebalances** wait for the revoked partitions' running records (at most half the group's
  session, after which the group takes them over anyway) and acknowledge them before the
  partitions are released; queued records of those partitions are dropped unacked, for the
  new owner to read.
* **Stopping** (SIGTERM, SIGINT, or ``stop`` set): fetching stops, queued records are dropped
  unacked, running ones finish and are acknowledged, the consumer commits and leaves the
  group. A second signal stops at once (running records are then redelivered elsewhere).
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from partitions._base.errors import ConfigError, NotOwnerError, PollIntervalExceededError
from partitions._base.records import Record
from partitions._base.serde import Serializer
from partitions._base.settings import GroupSettings
from partitions._base.signals import SignalRelay
from partitions._base.types import TopicPartition
from partitions._client.config import ClientConfig, ConsumerConfig
from partitions._client.connection import Connection
from partitions._consumer.consumer import Consumer
from partitions._runner.retry import RetryPolicy
from partitions._runner.scheduler import KeyedScheduler, Ordering

log = logging.getLogger("partstream.runner")

Handler = Callable[[Record], Any]

# The consumer thread's poll wait while records are in flight: the longest a finished
# record waits for its ack, and how often rebalances and signals are looked at.
_BUSY_POLL_S = 0.05
_IDLE_POLL_S = 0.5


@dataclass(slots=True)
class RunStats:
    """What one :func:`run` did, for logs, the health endpoint and tests."""

    handled: int = 0  # records whose handler returned
    retried: int = 0  # failed attempts followed by another
    dead_lettered: int = 0  # records sent to the dead-letter stream after their last attempt
    refused: int = 0  # acks refused: the partition had moved on (the record is redone there)
    dropped: int = 0  # queued records let go unacked (revoked, lost, or stopping)
    started_at: float = field(default_factory=time.time)
    last_loop_at: float = field(default_factory=time.monotonic)

    def to_dict(self) -> dict[str, Any]:
        return {
            "handled": self.handled,
            "retried": self.retried,
            "dead_lettered": self.dead_lettered,
            "refused": self.refused,
            "dropped": self.dropped,
            "uptime_s": round(time.time() - self.started_at, 3),
        }


@dataclass(frozen=True, slots=True)
class _Outcome:
    record: Record
    error: BaseException | None  # None: handled; else the last attempt's error
    attempts: int
    abandoned: bool = False  # stopping during a back-off: no ack, the record is redone


def run(
    handler: Handler,
    topics: str | Iterable[str],
    group: str,
    *,
    concurrency: int = 1,
    ordering: Ordering = "key",
    retry: RetryPolicy | None = None,
    conn: Connection | None = None,
    config: ConsumerConfig | None = None,
    client_config: ClientConfig | None = None,
    group_settings: GroupSettings | None = None,
    instance_id: str | None = None,
    health_port: int | None = None,
    health_host: str = "0.0.0.0",
    metrics: Any = None,
    metrics_registry: Any = None,
    stop: threading.Event | None = None,
    handle_signals: bool = True,
    value_serializer: Serializer | None = None,
) -> RunStats:
    """Run ``handler`` over ``topics`` as a member of ``group`` until stopped (see module).

    ``handler`` is ``def handler(record)`` or ``async def handler(record)``; its return value
    is ignored, an exception is retried by ``retry`` (default :class:`RetryPolicy`: 3 attempts)
    and then dead-letters the record (reason ``retries_exhausted``, or ``handler_error`` for an
    exception the policy does not retry), with the last error as the dead letter's ``error``
    (``"ValueError: ..."``). ``config``'s ``auto_commit`` is ignored: the runner
    acknowledges each record when it is done. ``metrics``: a :class:`~partitions.ClientMetrics`
    the consumer records into; ``health_port``: serve ``GET /health`` there (and ``/metrics``,
    the exposition of ``metrics_registry``, a prometheus_client registry). ``stop``: set it
    to stop (from another thread); with ``handle_signals`` SIGTERM and SIGINT set it too.
    ``value_serializer``: the handler gets ``record.value`` loaded by it (a
    :class:`~partitions.Serializer`); a record that does not load never reaches the handler,
    it is dead-lettered as ``deserialization`` with the error.
    """
    runner = Runner(
        handler,
        topics,
        group,
        concurrency=concurrency,
        ordering=ordering,
        retry=retry,
        conn=conn,
        config=config,
        client_config=client_config,
        group_settings=group_settings,
        instance_id=instance_id,
        metrics=metrics,
        stop=stop,
        value_serializer=value_serializer,
    )
    return runner.run(
        health_port=health_port,
        health_host=health_host,
        registry=metrics_registry,
        signals=handle_signals,
    )


class Runner:
    """The machinery behind :func:`run`; one instance runs once."""

    def __init__(
        self,
        handler: Handler,
        topics: str | Iterable[str],
        group: str,
        *,
        concurrency: int = 1,
        ordering: Ordering = "key",
        retry: RetryPolicy | None = None,
        conn: Connection | None = None,
        config: ConsumerConfig | None = None,
        client_config: ClientConfig | None = None,
        group_settings: GroupSettings | None = None,
        instance_id: str | None = None,
        metrics: Any = None,
        stop: threading.Event | None = None,
        value_serializer: Serializer | None = None,
    ) -> None:
        if not callable(handler):
            raise ConfigError(f"the handler must be callable, got {handler!r}")
        self.handler = handler
        self.is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            getattr(handler, "__call__", None)  # noqa: B004 (an async callable object)
        )
        self.topics = topics
        self.group = group
        self.retry = retry if retry is not None else RetryPolicy()
        self.stats = RunStats()
        self.stop = stop or threading.Event()
        self._sched = KeyedScheduler(concurrency, ordering)
        self._max_queued = max(8 * concurrency, (config or ConsumerConfig()).max_poll_records)
        self._conn, self._client_config = conn, client_config
        self._config = replace(config or ConsumerConfig(), auto_commit=False)
        self._group_settings, self._instance_id = group_settings, instance_id
        self._metrics = metrics
        self._value_serializer = value_serializer
        self._cond = threading.Condition()
        self._outcomes: list[_Outcome] = []
        # Non-blocking retries: (due, tie-breaker, record) of deferred records, and the
        # attempts each has had (by id(record)) while it waits.
        self._due: list[tuple[float, int, Record]] = []
        self._seq = 0
        self._attempts: dict[int, int] = {}
        # Copies of held records the server delivered again (a reclaim of a long-pending
        # entry): acked together with the original, never handled twice.
        self._copies: dict[tuple[str, int, str], list[Record]] = {}
        self._halt = threading.Event()  # a second signal: stop without waiting
        self._pool: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self.consumer: Consumer | None = None
        self.health: Any = None  # the HealthServer while one runs
        # The consumer's assignment as of its last poll: the consumer is the consumer
        # thread's alone, so the health endpoint reads this copy.
        self._owned: frozenset[TopicPartition] = frozenset()

    # -- the consumer thread -------------------------------------------------------------------
    def run(
        self,
        *,
        health_port: int | None = None,
        health_host: str = "0.0.0.0",
        registry: Any = None,
        signals: bool = True,
    ) -> RunStats:
        restore = self._install_signals() if signals else None
        health = None
        try:
            self._start_workers()
            self.consumer = Consumer(
                self.group,
                self.topics,
                conn=self._conn,
                config=self._config,
                client_config=self._client_config,
                group_settings=self._group_settings,
                instance_id=self._instance_id,
                listener=_Listener(self),
                metrics=self._metrics,
                value_serializer=self._value_serializer,
            )
            if health_port is not None:
                from partitions._runner.health import HealthServer

                health = self.health = HealthServer(self, health_host, health_port, registry)
                health.start()
            self._loop_until_stopped(self.consumer)
            self._finish(self.consumer)
        finally:
            if health is not None:
                health.stop()
            if self.consumer is not None:
                self.consumer.close()
            self._stop_workers()
            if restore is not None:
                restore()
        return self.stats

    @property
    def healthy(self) -> bool:
        """Whether the consumer loop is turning (it iterates at least every idle poll)."""
        stuck_after = max(5.0, self._config.max_poll_interval_ms / 1000)
        return not self.stop.is_set() and time.monotonic() - self.stats.last_loop_at < stuck_after

    def owned(self) -> set[TopicPartition]:
        """The partitions the runner's consumer owned when it last polled."""
        return set(self._owned)

    def in_flight(self) -> dict[str, int]:
        with self._cond:
            return {"running": self._sched.running(), "queued": self._sched.queued()}

    def _loop_until_stopped(self, consumer: Consumer) -> None:
        while not self.stop.is_set():
            self.stats.last_loop_at = time.monotonic()
            self._acknowledge(consumer)
            if self._due:
                self._resume_due()
            self._owned = frozenset(consumer.assignment())
            with self._cond:
                room = self._max_queued - len(self._sched)
                busy = len(self._sched) > 0
            try:
                if room > 0:
                    records = consumer.poll(room, _BUSY_POLL_S if busy else _IDLE_POLL_S)
                    if records:
                        self._offer(records)
                else:
                    consumer.assignment()  # applies rebalance events while the queue is full
                    with self._cond:
                        if not self._outcomes:
                            self._cond.wait(_BUSY_POLL_S)
            except PollIntervalExceededError as err:
                # The member left the group (handlers kept every slot past the interval):
                # nothing queued is ours any more, and the consumer is rejoining.
                log.warning("%s; dropping the queued records", err)
                self._drop(None)

    def _finish(self, consumer: Consumer) -> None:
        """Stop fetching; let running records finish (not queued ones); acknowledge them."""
        self._drop(None)
        self._wait_for(None, None)

    def _offer(self, records: list[Record]) -> None:
        with self._cond:
            for copy in self._sched.offer(records):
                self._copies.setdefault((copy.topic, copy.partition, copy.id), []).append(copy)
            start = self._sched.take()
        self._submit(start)

    def _acknowledge(self, consumer: Consumer) -> None:
        """Ack what finished, dead-letter what failed for good (the consumer thread only)."""
        with self._cond:
            outcomes, self._outcomes = self._outcomes, []
        acks: list[Record] = []
        for out in outcomes:
            rec = out.record
            copies = self._copies.pop((rec.topic, rec.partition, rec.id), [])
            if out.abandoned:
                continue
            acks.extend(copies)
            if out.error is None:
                self.stats.handled += 1
                acks.append(rec)
            else:
                self._dead_letter(consumer, out)
        if not acks:
            return
        try:
            consumer.commit(acks)
        except NotOwnerError as err:
            owned = consumer.assignment()
            self.stats.refused += sum(
                TopicPartition(r.topic, r.partition) not in owned for r in acks
            )
            log.warning("%s", err)
        except PollIntervalExceededError as err:
            self.stats.refused += len(acks)
            log.warning("%s; dropping the queued records", err)
            self._drop(None)

    def _dead_letter(self, consumer: Consumer, out: _Outcome) -> None:
        rec, error = out.record, out.error
        reason = "retries_exhausted" if out.attempts > 1 else "handler_error"
        log.error(
            "%s/%s %s failed after %d attempt(s), dead-lettered (%s): %s: %s",
            rec.topic,
            rec.partition,
            rec.id,
            out.attempts,
            reason,
            type(error).__name__,
            error,
        )
        try:
            consumer.dead_letter(rec, reason, error=f"{type(error).__name__}: {error}")
            self.stats.dead_lettered += 1
        except NotOwnerError:
            self.stats.refused += 1

    def _drop(self, partitions: Iterable[TopicPartition] | None) -> None:
        """Let the queued records of ``partitions`` (None: all) go, unacked."""
        with self._cond:
            dropped = self._sched.drop(
                self._sched.partitions() if partitions is None else partitions
            )
            for rec in dropped:  # left for the partition's next owner, copies and all
                self._copies.pop((rec.topic, rec.partition, rec.id), None)
                self._attempts.pop(id(rec), None)
        self.stats.dropped += len(dropped)

    def _wait_for(self, partitions: set[TopicPartition] | None, timeout: float | None) -> None:
        """Until no record of ``partitions`` (None: none at all) runs, or ``timeout`` s passed
        (None: no limit; a second signal ends it), acking records as they finish."""
        deadline = None if timeout is None else time.monotonic() + timeout
        consumer = self.consumer
        while not self._halt.is_set():
            with self._cond:
                if not self._sched.running(partitions):
                    break
                left = 3600.0 if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    log.warning(
                        "%d record(s) of revoked partitions still running after %.1fs: "
                        "their acks will be refused, the new owner redoes them",
                        self._sched.running(partitions),
                        timeout,
                    )
                    break
                if not self._outcomes:
                    self._cond.wait(min(left, _BUSY_POLL_S))
            if consumer is not None:
                self._acknowledge(consumer)
        if consumer is not None:
            self._acknowledge(consumer)

    # -- workers -------------------------------------------------------------------------------
    def _start_workers(self) -> None:
        if self.is_async:
            self._loop = asyncio.new_event_loop()
            self._loop_thread = threading.Thread(
                target=self._loop.run_forever, name="partstream-runner-loop", daemon=True
            )
            self._loop_thread.start()
        else:
            self._pool = ThreadPoolExecutor(
                self._sched.concurrency, thread_name_prefix="partstream-runner"
            )

    def _stop_workers(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=not self._halt.is_set(), cancel_futures=True)
        if self._loop is not None and self._loop_thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(timeout=5)
            if not self._loop_thread.is_alive():
                self._loop.close()

    def _submit(self, records: list[Record]) -> None:
        for rec in records:
            if self._loop is not None:
                asyncio.run_coroutine_threadsafe(self._handle_async(rec), self._loop)
            elif self._pool is not None:
                self._pool.submit(self._handle, rec)

    def _handle(self, rec: Record) -> None:
        attempt = self._attempts.pop(id(rec), 0)
        while True:
            attempt += 1
            try:
                self.handler(rec)
            except Exception as err:
                wait = self._failed(rec, err, attempt)
                if wait is None:
                    return
                if self.stop.wait(wait):
                    self._done(_Outcome(rec, err, attempt, abandoned=True))
                    return
                continue
            except BaseException:
                self._done(_Outcome(rec, None, attempt, abandoned=True))
                raise
            self._done(_Outcome(rec, None, attempt))
            return

    async def _handle_async(self, rec: Record) -> None:
        attempt = self._attempts.pop(id(rec), 0)
        handler: Callable[[Record], Awaitable[Any]] = self.handler
        while True:
            attempt += 1
            try:
                await handler(rec)
            except Exception as err:
                wait = self._failed(rec, err, attempt)
                if wait is None:
                    return
                if await self._stopped_during(wait):
                    self._done(_Outcome(rec, err, attempt, abandoned=True))
                    return
                continue
            except BaseException:
                self._done(_Outcome(rec, None, attempt, abandoned=True))
                raise
            self._done(_Outcome(rec, None, attempt))
            return

    async def _stopped_during(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not self.stop.is_set() and (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(_BUSY_POLL_S, left))
        return self.stop.is_set()

    def _failed(self, rec: Record, err: Exception, attempt: int) -> float | None:
        """After failed attempt ``attempt``: the blocking wait before the next one, or None
        when this worker is done with the record (dead-lettered, or deferred aside)."""
        if not self.retry.retries(err, attempt):
            self._done(_Outcome(rec, err, attempt))
            return None
        delay = self.retry.delay_s(attempt)
        with self._cond:
            self.stats.retried += 1
            if self.retry.blocking:
                return delay
            # Non-blocking: step aside; the consumer thread resumes it when it is due.
            self._sched.defer(rec)
            self._attempts[id(rec)] = attempt
            self._seq += 1
            heapq.heappush(self._due, (time.monotonic() + delay, self._seq, rec))
            start = [] if self.stop.is_set() else self._sched.take()
            self._cond.notify_all()
        self._submit(start)
        return None

    def _resume_due(self) -> None:
        """Put deferred records whose back-off is over back at the front of their lanes."""
        now = time.monotonic()
        with self._cond:
            while self._due and self._due[0][0] <= now:
                _, _, rec = heapq.heappop(self._due)
                if not self._sched.resume(rec):  # its partition was revoked meanwhile
                    self._attempts.pop(id(rec), None)
            start = self._sched.take()
        self._submit(start)

    def _done(self, outcome: _Outcome) -> None:
        """A worker finished a record: queue its ack and start its lane's next record."""
        with self._cond:
            self._sched.finish(outcome.record)
            self._outcomes.append(outcome)
            start = [] if self.stop.is_set() else self._sched.take()
            self._cond.notify_all()
        self._submit(start)

    # -- signals -------------------------------------------------------------------------------
    def _install_signals(self) -> Callable[[], None] | None:
        if threading.current_thread() is not threading.main_thread():
            return None

        def on_signal(signum: int) -> None:  # on the relay's thread, not in the handler
            if self.stop.is_set():
                log.warning("second signal: stopping without waiting for running records")
                self._halt.set()
                with self._cond:
                    self._cond.notify_all()
                return
            log.info("signal %d: finishing running records, then leaving the group", signum)
            self.stop.set()

        relay = SignalRelay(on_signal)
        relay.install()
        return relay.restore


class _Listener:
    """Rebalance callbacks (on the consumer thread, inside poll): drain before release."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.runner._drop(revoked)
        consumer = self.runner.consumer
        session_s = (
            consumer.group_settings.session_timeout_ms / 1000 if consumer is not None else 10.0
        )
        # The heartbeat thread waits half a session for this callback; leave it a margin.
        self.runner._wait_for(revoked, session_s * 0.4)

    def on_partitions_assigned(self, assigned: Any) -> None:
        pass

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        # Already someone else's: drop what has not started; acks of the rest are refused.
        self.runner._drop(lost)


def load_handler(spec: str) -> Handler:
    """``module:attribute`` (``pkg.mod:obj.method`` too) -> the callable it names."""
    import importlib

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"handler must be given as module:function, got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"cannot import {module_name!r} for the handler: {err}") from err
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as err:
            raise ConfigError(f"{module_name!r} has no {attr!r}") from err
    if not callable(obj):
        raise ConfigError(f"{spec} is not callable")
    return obj  # type: ignore[no-any-return]
