"""``partstream run module:handler``: a worker process around a handler (see partitions.run)."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from partitions._client.config import ConsumerConfig
from partitions._runner.retry import RetryPolicy
from partitions._runner.runner import load_handler, run
from partitions._runner.scheduler import ORDERINGS
from partitions.cli.common import State, json_line, main, pass_state
from partitions.cli.consume import group_settings


@main.command("run")
@click.argument("handler")
@click.option("-t", "--topic", "topics", multiple=True, required=True, help="Topic to consume "
              "(repeat for several).")  # fmt: skip
@click.option("-g", "--group", required=True, help="Consumer group to join.")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=1, show_default=True,
              help="Records handled at once, across different keys (threads for a def "
              "handler, tasks for an async def one); one key's records run in order.")  # fmt: skip
@click.option("--ordering", type=click.Choice(ORDERINGS), default="key", show_default=True,
              help="What must run in order: one key's records, a whole partition's, or "
              "nothing.")  # fmt: skip
@click.option("--max-attempts", type=click.IntRange(min=1), default=3, show_default=True,
              help="Attempts per record before it is dead-lettered.")  # fmt: skip
@click.option("--backoff-ms", type=click.FloatRange(min=0), default=100.0, show_default=True,
              help="Wait after the first failed attempt (doubling after each).")  # fmt: skip
@click.option("--max-backoff-ms", type=click.FloatRange(min=0), default=30_000.0,
              show_default=True, help="Longest wait between attempts.")  # fmt: skip
@click.option("--non-blocking-retries", is_flag=True, help="A failing record steps aside for "
              "its back-off and its key's later records go ahead (breaks per-key order for "
              "that key); default: the key waits.")  # fmt: skip
@click.option("--instance-id", help="Static member id (a restart within the session keeps "
              "its partitions).")  # fmt: skip
@click.option("--session-timeout-ms", type=int, help="Session timeout if this member creates "
              "the group.")  # fmt: skip
@click.option("--heartbeat-ms", type=int, help="Heartbeat interval if this member creates "
              "the group.")  # fmt: skip
@click.option("--health-port", type=click.IntRange(min=0, max=65535), help="Serve GET /health "
              "(and /metrics with --metrics) on this port.")  # fmt: skip
@click.option("--health-host", default="0.0.0.0", show_default=True, help="Address the health "
              "endpoint listens on.")  # fmt: skip
@click.option("--metrics", "with_metrics", is_flag=True, help="Record the client metrics and "
              "serve them at /metrics on --health-port (needs the 'metrics' extra).")  # fmt: skip
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML file "
              "whose [consumer] table sets ConsumerConfig fields and [client] the server "
              "(flags and PARTSTREAM_* win).")  # fmt: skip
@pass_state
def run_cmd(
    state: State,
    handler: str,
    topics: tuple[str, ...],
    group: str,
    concurrency: int,
    ordering: Any,
    max_attempts: int,
    backoff_ms: float,
    max_backoff_ms: float,
    non_blocking_retries: bool,
    instance_id: str | None,
    session_timeout_ms: int | None,
    heartbeat_ms: int | None,
    health_port: int | None,
    health_host: str,
    with_metrics: bool,
    config_path: str | None,
) -> None:
    """Run HANDLER (module:function, importable from the current directory) over the
    topics as a member of GROUP, until SIGTERM or Ctrl-C: then running records finish and are
    acknowledged, and the member leaves the group. Prints the run's counts (JSON) at exit."""
    if with_metrics and health_port is None:
        raise click.UsageError("--metrics serves /metrics on --health-port: give one")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # `module:handler` of the directory it runs in
    func = load_handler(handler)
    state.use_config_file(config_path)
    config = ConsumerConfig.from_toml(config_path) if config_path else ConsumerConfig()
    policy = RetryPolicy(
        max_attempts=max_attempts,
        backoff_ms=backoff_ms,
        max_backoff_ms=max_backoff_ms,
        blocking=not non_blocking_retries,
    )
    metrics = registry = None
    if with_metrics:
        import prometheus_client

        from partitions._telemetry.metrics import ClientMetrics

        registry = prometheus_client.CollectorRegistry()
        metrics = ClientMetrics(registry)
    stats = run(
        func,
        topics,
        group,
        concurrency=concurrency,
        ordering=ordering,
        retry=policy,
        conn=state.conn,
        config=config,
        group_settings=group_settings(session_timeout_ms, heartbeat_ms),
        instance_id=instance_id,
        health_port=health_port,
        health_host=health_host,
        metrics=metrics,
        metrics_registry=registry,
    )
    json_line(stats.to_dict())
