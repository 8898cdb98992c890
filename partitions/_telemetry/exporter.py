"""The Prometheus exporter behind ``partstream metrics serve``.

Named after kafka_exporter's metrics, so its dashboards and alert rules translate by
replacing ``kafka_`` with ``partstream_`` (and the label ``consumergroup`` with ``group``).
A background thread scrapes the deployment every ``interval`` seconds
(:class:`partitions._telemetry.scrape.Scraper`: one pipelined round per node while the topics
and groups stay as they were, bounded work per partition); ``GET /metrics`` serves the last
scrape, so any number of Prometheus servers scraping the exporter cost the Redis deployment
nothing more.

=================================================  ==============================================
metric {labels}                                    meaning (as of the exporter's last scrape)
=================================================  ==============================================
partstream_up                                      1 if the last scrape succeeded, else 0 (and
                                                   no deployment series are served)
partstream_topic_partitions {topic}                partition count
partstream_topic_partition_length                  entries in the partition stream (XLEN)
  {topic, partition}
partstream_topic_partition_current_offset          entries ever appended (XINFO STREAM
  {topic, partition}                               entries-added; trims keep it): its rate()
                                                   is the produce rate
partstream_topic_partition_first_timestamp_seconds the oldest entry's id time (absent when the
  {topic, partition}                               stream is empty)
partstream_topic_partition_last_timestamp_seconds  the newest entry's id time (absent if empty)
  {topic, partition}
partstream_consumergroup_lag                       entries the group has not acked: undelivered
  {group, topic, partition}                        + pending (a group that never read the
                                                   partition: its length). Where the server's
                                                   lag is NULL (after a seek) the undelivered
                                                   ones are counted up to SCRAPE_COUNT_LIMIT,
                                                   beyond it a lower bound
partstream_consumergroup_lag_sum {group, topic}    the lag summed over the topic's partitions
partstream_consumergroup_lag_seconds               age of the oldest entry the group has not
  {group, topic, partition}                        acked (undelivered or pending), by the
                                                   server's clock minus the entry's id time;
                                                   0 when caught up
partstream_consumergroup_pending                   entries delivered to the group, not acked
  {group, topic, partition}                        (XPENDING)
partstream_consumergroup_current_offset            entries delivered to the group (XINFO GROUPS
  {group, topic, partition}                        entries-read; absent when the server cannot
                                                   tell, as after a seek)
partstream_consumergroup_members {group}           members, not counting static members that
                                                   left within their session timeout
partstream_consumergroup_epoch {group}             the group epoch (bumps on every membership
                                                   or assignment change)
partstream_deadletter_entries                      entries in the partition's dead-letter stream
  {topic, partition, group, reason}                by the group that dead-lettered them and
                                                   why; the series of a partition add up to its
                                                   dead-letter stream's length. Read
                                                   incrementally (DeadLetterTally): entries the
                                                   exporter has not read yet are under
                                                   group="" reason="unclassified"
partstream_exporter_scrape_duration_seconds        how long the last scrape took
partstream_exporter_last_scrape_timestamp_seconds  when the last successful scrape started
partstream_exporter_scrape_errors_total            failed scrapes since the exporter started
=================================================  ==============================================

Groups are those partstream knows (created or joined through it), over the topics their
members subscribed to: the set ``partstream group describe`` reports. prometheus_client is an
optional dependency (``pip install 'partstream[metrics]'``), imported only here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from partitions._admin.deadletter import DeadLetterTally
from partitions._base.errors import ConfigError, PartstreamError
from partitions._base.signals import SignalRelay
from partitions._client.connection import Connection
from partitions._telemetry.scrape import SCRAPE_COUNT_LIMIT, Scrape, Scraper

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("partstream.exporter")

DEFAULT_PORT = 9808
DEFAULT_INTERVAL_S = 10.0


def require_prometheus() -> Any:
    """The prometheus_client module, or a ConfigError saying how to install it."""
    try:
        import prometheus_client
    except ImportError as err:
        raise ConfigError(
            "the metrics exporter needs prometheus_client: pip install 'partstream[metrics]'"
        ) from err
    return prometheus_client


def metric_families(last: Scrape | None, errors: int) -> list[Metric]:
    """The metric families of a scrape (``None``: the last scrape failed)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    def gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=labels)

    up = gauge("partstream_up", "1 if the exporter's last scrape of the deployment succeeded.", [])
    up.add_metric([], 0 if last is None else 1)
    failed = CounterMetricFamily(
        "partstream_exporter_scrape_errors", "Failed scrapes since the exporter started.", labels=[]
    )
    failed.add_metric([], errors)
    out: list[Metric] = [up, failed]
    if last is None:
        return out
    took = gauge("partstream_exporter_scrape_duration_seconds", "Duration of the last scrape.", [])
    took.add_metric([], last.duration_s)
    when = gauge(
        "partstream_exporter_last_scrape_timestamp_seconds",
        "When the last successful scrape started (Unix time).",
        [],
    )
    when.add_metric([], last.time_ms / 1000)
    tp = ["topic", "partition"]
    gtp = ["group", "topic", "partition"]
    parts = gauge("partstream_topic_partitions", "Partitions of the topic.", ["topic"])
    length = gauge("partstream_topic_partition_length", "Entries in the partition stream.", tp)
    added = gauge(
        "partstream_topic_partition_current_offset",
        "Entries ever appended to the partition (trims keep it); rate() is the produce rate.",
        tp,
    )
    first = gauge(
        "partstream_topic_partition_first_timestamp_seconds",
        "Time of the partition's oldest entry (its id); absent when empty.",
        tp,
    )
    newest = gauge(
        "partstream_topic_partition_last_timestamp_seconds",
        "Time of the partition's newest entry (its id); absent when empty.",
        tp,
    )
    for m in last.topics:
        parts.add_metric([m.name], m.partitions)
    for p in last.partitions:
        labels = [p.topic, str(p.partition)]
        length.add_metric(labels, p.length)
        if p.entries_added is not None:
            added.add_metric(labels, p.entries_added)
        if p.first_timestamp_ms is not None:
            first.add_metric(labels, p.first_timestamp_ms / 1000)
        if p.last_timestamp_ms is not None:
            newest.add_metric(labels, p.last_timestamp_ms / 1000)
    lag = gauge(
        "partstream_consumergroup_lag",
        "Entries the group has not acknowledged on the partition: undelivered + pending.",
        gtp,
    )
    lag_sum = gauge(
        "partstream_consumergroup_lag_sum",
        "The group's lag summed over the topic's partitions.",
        ["group", "topic"],
    )
    lag_s = gauge(
        "partstream_consumergroup_lag_seconds",
        "Age of the oldest entry the group has not acknowledged (undelivered or pending); "
        "0 when caught up.",
        gtp,
    )
    pending = gauge(
        "partstream_consumergroup_pending", "Entries delivered to the group and not acked.", gtp
    )
    read = gauge(
        "partstream_consumergroup_current_offset",
        "Entries delivered to the group (absent when the server cannot tell, after a seek).",
        gtp,
    )
    members = gauge(
        "partstream_consumergroup_members",
        "Members of the group (static members that left for now not counted).",
        ["group"],
    )
    epoch = gauge("partstream_consumergroup_epoch", "The group epoch.", ["group"])
    for g in last.groups:
        members.add_metric([g.group], g.members)
        epoch.add_metric([g.group], g.epoch)
        sums: dict[str, int] = {}
        for o in g.offsets:
            labels = [g.group, o.topic, str(o.partition)]
            lag.add_metric(labels, o.lag)
            lag_s.add_metric(labels, o.lag_seconds)
            pending.add_metric(labels, o.pending)
            if o.entries_read is not None:
                read.add_metric(labels, o.entries_read)
            sums[o.topic] = sums.get(o.topic, 0) + o.lag
        for topic, n in sums.items():
            lag_sum.add_metric([g.group, topic], n)
    dead = gauge(
        "partstream_deadletter_entries",
        "Entries in the partition's dead-letter stream by group and reason (not yet read by "
        "the exporter: reason=unclassified).",
        ["topic", "partition", "group", "reason"],
    )
    for d in last.dead_letters:
        dead.add_metric([d.topic, str(d.partition), d.group, d.reason], d.entries)
    out += [took, when, parts, length, added, first, newest]
    out += [lag, lag_sum, lag_s, pending, read, members, epoch, dead]
    return out


class _Collector:
    """A prometheus_client collector serving the exporter's last scrape."""

    def __init__(self, exporter: MetricsExporter) -> None:
        self._exporter = exporter

    def collect(self) -> Iterator[Metric]:
        last, errors = self._exporter.last()
        yield from metric_families(last, errors)


class MetricsExporter:
    """Scrapes a deployment every ``interval`` seconds and serves Prometheus metrics over
    HTTP at ``http://host:port/metrics`` (port 0: any free port; see :attr:`port`).

    Thread-safe: the scraping thread and the HTTP threads share only the last scrape. Use as
    a context manager, or :meth:`start` then :meth:`stop`.
    """

    def __init__(
        self,
        conn: Connection,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        interval: float = DEFAULT_INTERVAL_S,
        count_limit: int = SCRAPE_COUNT_LIMIT,
    ) -> None:
        if not interval > 0:
            raise ConfigError(f"interval must be > 0 seconds, got {interval!r}")
        require_prometheus()
        self.conn = conn
        self.host = host
        self.port = port
        self.interval = interval
        self.count_limit = count_limit
        self._scraper = Scraper(conn, DeadLetterTally(), count_limit=self.count_limit)
        self._lock = threading.Lock()
        self._last: Scrape | None = None
        self._errors = 0
        self._scrapes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._httpd: Any = None

    def last(self) -> tuple[Scrape | None, int]:
        """The last scrape (None if it failed) and the failures so far."""
        with self._lock:
            return self._last, self._errors

    @property
    def scrapes(self) -> int:
        """Scrapes attempted so far (successful or not)."""
        with self._lock:
            return self._scrapes

    def scrape_once(self) -> Scrape | None:
        """Scrape now (the thread does this every interval); None if it failed."""
        try:
            result: Scrape | None = self._scraper.scrape()
        except PartstreamError as err:
            log.warning("scrape failed: %s", err)
            result = None
        with self._lock:
            self._last = result
            self._scrapes += 1
            if result is None:
                self._errors += 1
        return result

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.scrape_once()
            except Exception:  # never let the thread die: the next interval tries again
                log.exception("scrape crashed")
                with self._lock:
                    self._last, self._errors = None, self._errors + 1

    def start(self) -> MetricsExporter:
        """Scrape once, then serve and keep scraping in the background."""
        prom = require_prometheus()
        from prometheus_client import CollectorRegistry

        self._stop.clear()
        self.scrape_once()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        try:
            self._httpd, _ = prom.start_http_server(self.port, addr=self.host, registry=registry)
        except OSError as err:
            raise ConfigError(f"cannot listen on {self.host}:{self.port}: {err}") from err
        self.port = int(self._httpd.server_port)
        self._thread = threading.Thread(target=self._run, name="partstream-exporter", daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, self.interval))
            self._thread = None

    def __enter__(self) -> MetricsExporter:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve(
    conn: Connection,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    interval: float = DEFAULT_INTERVAL_S,
    echo: Callable[[str], None] = print,
    until: threading.Event | None = None,
) -> None:
    """Run the exporter until interrupted (or until ``until`` is set)."""
    import signal

    stop = until or threading.Event()
    relay = SignalRelay.setting(stop, (signal.SIGTERM,))
    relay.install()
    try:
        with MetricsExporter(conn, host=host, port=port, interval=interval) as exporter:
            echo(f"Serving Prometheus metrics at {exporter.url} (scraping every {interval:g} s)")
            try:
                while not stop.wait(0.5):
                    pass
            except KeyboardInterrupt:
                pass
    finally:
        relay.restore()
