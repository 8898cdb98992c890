"""``partstream bench produce|consume|e2e|rebalance|coordinator``: the harness (a thin layer)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson

from partitions.bench.assignors import AssignorBenchOptions, env_line, run_assignor_bench
from partitions.bench.group_scale import LiveGroupOptions, run_live_group_bench
from partitions.bench.harness import run_bench
from partitions.bench.options import BenchOptions
from partitions.bench.output import csv_text, summary_text, window_line
from partitions.bench.runner import RunnerBenchOptions, run_runner_bench
from partitions.bench.stats import Window
from partitions.bench.workers import Progress
from partitions.cli.common import State, main, pass_state

_DEFAULTS = BenchOptions()


def _options(fn: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option(
            "--records",
            "-n",
            type=int,
            default=_DEFAULTS.records,
            show_default=True,
            help="Records per measured side (produce, consume).",
        ),
        click.option(
            "--record-size",
            type=int,
            default=_DEFAULTS.record_size,
            show_default=True,
            help="Value bytes per record.",
        ),
        click.option(
            "--partitions", "-p", type=int, default=_DEFAULTS.partitions, show_default=True
        ),
        click.option(
            "--keys",
            type=int,
            default=_DEFAULTS.keys,
            show_default=True,
            help="Distinct record keys.",
        ),
        click.option(
            "--producers",
            type=int,
            default=_DEFAULTS.producers,
            show_default=True,
            help="Producer processes.",
        ),
        click.option(
            "--consumers",
            type=int,
            default=_DEFAULTS.consumers,
            show_default=True,
            help="Consumer processes.",
        ),
        click.option(
            "--batch-size",
            type=int,
            default=_DEFAULTS.batch_size,
            show_default=True,
            help="Producer batch / pipeline / read count.",
        ),
        click.option(
            "--linger-ms",
            type=float,
            default=None,
            help="Producer linger [default: 5 for produce/consume, 0 otherwise].",
        ),
        click.option(
            "--rate",
            type=float,
            default=_DEFAULTS.rate,
            show_default=True,
            help="Records/s of the fixed-rate load (e2e, rebalance).",
        ),
        click.option(
            "--duration",
            type=float,
            default=_DEFAULTS.duration,
            show_default=True,
            help="Seconds of fixed-rate load (e2e; rebalance: per phase).",
        ),
        click.option(
            "--interval",
            type=float,
            default=_DEFAULTS.interval,
            show_default=True,
            help="Seconds per reporting window.",
        ),
        click.option(
            "--repeat",
            type=int,
            default=_DEFAULTS.repeat,
            show_default=True,
            help="Alternating rounds; ratios are the median round's.",
        ),
        click.option(
            "--redis-benchmark/--no-redis-benchmark",
            default=True,
            show_default=True,
            help="Also run redis-benchmark (produce).",
        ),
        click.option(
            "--peers",
            is_flag=True,
            help="Also run NATS JetStream and FastStream-Redis (produce, consume) where "
            "installed: pip install 'partstream[peers]'.",
        ),
        click.option(
            "--cluster",
            default="",
            help="produce: also run partstream's producer on local embedded clusters of "
            "these sizes (masters: 3, or 1,2,3 for the scaling), beside the single-node run; "
            "reports each primary's share of the records and server CPU.",
        ),
        click.option(
            "--cluster-url",
            default=None,
            help="produce: run the cluster side on this cluster instead of local ones.",
        ),
        click.option(
            "--acks",
            type=click.Choice(["1", "all"]),
            default=_DEFAULTS.acks,
            show_default=True,
            help="produce: all = also run the producer with acks='all' beside acks=1 in the "
            "same rounds, on a primary with a replica (a private one with a local replica "
            "unless --url is given); reports the throughput ratio and both latencies.",
        ),
        click.option(
            "--url",
            "bench_url",
            help="Server URL [default: the global --url, "
            "else a private embedded Valkey started for this run].",
        ),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["text", "json", "csv"]),
            default="text",
            show_default=True,
        ),
        click.option(
            "--out",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Write the results (with the environment) as JSON to FILE.",
        ),
        click.option(
            "--plot",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Draw throughput over time and latency to FILE.png (matplotlib).",
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _command(mode: str, params: dict[str, Any]) -> str:
    """The invocation, canonical: every option that differs from its default."""
    parts = ["partstream", "bench", mode]
    ctx = click.get_current_context()
    for p in ctx.command.params:
        if not isinstance(p, click.Option) or p.name is None or p.name not in params:
            continue
        value = params[p.name]
        flag = max(p.opts, key=len)
        if p.is_flag:
            if value and (p.secondary_opts == [] or not p.default):
                parts.append(flag)
            elif not value and p.secondary_opts:
                parts.append(p.secondary_opts[0])
        elif value is not None and value != p.default:
            parts += [flag, str(value)]
    return " ".join(parts)


def _bench(state: State, mode: str, params: dict[str, Any]) -> None:
    fmt: str = params.pop("fmt")
    out: Path | None = params.pop("out")
    plot: Path | None = params.pop("plot")
    url = params.pop("bench_url") or state.url
    command = _command(mode, {**params, "bench_url": url, "fmt": fmt, "out": out, "plot": plot})
    opts = BenchOptions(**params)
    tty = sys.stderr.isatty()
    text = fmt == "text"

    def on_window(name: str, w: Window) -> None:
        if tty:
            click.echo("\r\033[K", nl=False, err=True)
        click.echo(window_line(name, w))

    def live(line: str) -> None:
        click.echo(f"\r\033[K{line}", nl=False, err=True)

    progress = Progress(on_window if text else None, live if tty else None, opts.interval)
    result = run_bench(
        mode,
        opts,
        url=url,
        command=command,
        progress=progress,
        say=click.echo if text else (lambda _: None),
        out=out,
        plot=plot,
    )
    if tty:
        click.echo("\r\033[K", nl=False, err=True)
    if fmt == "json":
        click.echo(orjson.dumps(result.to_dict(), option=orjson.OPT_INDENT_2).decode())
    elif fmt == "csv":
        click.echo(csv_text(result), nl=False)
    else:
        click.echo(summary_text(result))
    if not all(t.met for t in result.targets):
        click.echo("some targets were missed (see above)", err=True)


@main.group("bench")
def bench_group() -> None:
    """Load benchmarks against baselines measured in the same run."""


def _mode(name: str, doc: str) -> None:
    @pass_state
    def cmd(state: State, /, **params: Any) -> None:
        _bench(state, name, params)

    cmd.__doc__ = doc
    bench_group.command(name)(_options(cmd))


_mode("produce", "Producer throughput vs a redis-py XADD pipeline loop and redis-benchmark.")
_mode("consume", "Consumer throughput vs a redis-py XREADGROUP + XACK loop.")
_mode("e2e", "Fixed-rate end-to-end latency vs a raw XADD -> XREADGROUP BLOCK loop.")
_mode("rebalance", "Join / leave / kill -9: time to reconcile and pauses of unmoved partitions.")

_ASSIGNOR_DEFAULTS = AssignorBenchOptions()
_LIVE_DEFAULTS = LiveGroupOptions()


def _emit(result: dict[str, Any], fmt: str, out: Path | None) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    if fmt != "text":
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


@bench_group.command("coordinator")
@click.option("--live", is_flag=True, help="On a real server: members join one group and "
              "heartbeat until stable, then one more joins (defaults 1,000 members over 10,000 "
              "partitions, 1 topic).")  # fmt: skip
@click.option("--url", help="Server URL for --live (default: a private embedded Valkey).")
@click.option("--members", type=click.IntRange(min=1), help=f"[default: "
              f"{_ASSIGNOR_DEFAULTS.members}; --live {_LIVE_DEFAULTS.members}]")  # fmt: skip
@click.option("--partitions", type=click.IntRange(min=1), help=f"[default: "
              f"{_ASSIGNOR_DEFAULTS.partitions}; --live {_LIVE_DEFAULTS.partitions}]")  # fmt: skip
@click.option("--topics", type=click.IntRange(min=1), help=f"[default: "
              f"{_ASSIGNOR_DEFAULTS.topics}; --live {_LIVE_DEFAULTS.topics}]")  # fmt: skip
@click.option(
    "--subscriptions",
    type=click.Choice(["equal", "unequal"]),
    default=_ASSIGNOR_DEFAULTS.subscriptions,
    show_default=True,
    help="equal: every member subscribes to every topic; unequal: each to a random subset.",
)
@click.option("--assignor", default=_ASSIGNOR_DEFAULTS.assignor, show_default=True)
@click.option(
    "--repeat",
    type=int,
    default=_ASSIGNOR_DEFAULTS.repeat,
    show_default=True,
    help="Timed runs per case (--live: rounds, each a new group); the figure is their median.",
)
@click.option("--seed", type=int, default=_ASSIGNOR_DEFAULTS.seed, show_default=True)
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the results (with the environment) as JSON to FILE.",
)
def coordinator_cmd(fmt: str, out: Path | None, live: bool, url: str | None, **params: Any) -> None:
    """The assignor's time on a large group: first target, a leave, a join (no server);
    with --live, a group of real members on a server: time until stable, server CPU per
    heartbeat, assignor time per rebalance, partitions moved by one join."""
    text = fmt == "text"
    say = click.echo if text else lambda _: None
    if live:
        live_opts = LiveGroupOptions(
            members=params["members"] or _LIVE_DEFAULTS.members,
            partitions=params["partitions"] or _LIVE_DEFAULTS.partitions,
            topics=params["topics"] or _LIVE_DEFAULTS.topics,
            assignor=params["assignor"],
            repeat=params["repeat"],
            url=url,
        )
        result = run_live_group_bench(live_opts, say)
        _emit(result, fmt, out)
        if not result["target"]["met"]:
            click.echo("some targets were missed (see above)", err=True)
        return
    for name in ("members", "partitions", "topics"):
        if params[name] is None:
            params[name] = getattr(_ASSIGNOR_DEFAULTS, name)
    command = " ".join(
        ["partstream", "bench", "coordinator"]
        + [f"--{k} {v}" for k, v in params.items() if v != getattr(_ASSIGNOR_DEFAULTS, k)]
    )
    opts = AssignorBenchOptions(**params)
    result = run_assignor_bench(opts, command=command, say=say)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    if text:
        click.echo(env_line(result))
    else:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


_RUNNER_DEFAULTS = RunnerBenchOptions()


@bench_group.command("runner")
@click.option("--records", type=click.IntRange(min=1), default=_RUNNER_DEFAULTS.records,
              show_default=True)  # fmt: skip
@click.option("--partitions", type=click.IntRange(min=1), default=_RUNNER_DEFAULTS.partitions,
              show_default=True)  # fmt: skip
@click.option("--keys", type=click.IntRange(min=1), default=_RUNNER_DEFAULTS.keys,
              show_default=True)  # fmt: skip
@click.option("--handler-ms", type=click.FloatRange(min=0), default=_RUNNER_DEFAULTS.handler_ms,
              show_default=True, help="What the handler waits per record (I/O-bound).")  # fmt: skip
@click.option("--concurrency", "concurrency", default="1,32", show_default=True,
              help="Comma-separated concurrencies, run in turn; the first is the "
              "baseline.")  # fmt: skip
@click.option("--url", help="Server URL (default: a private embedded Valkey).")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
              show_default=True)  # fmt: skip
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the result (with the environment) as JSON to FILE.")  # fmt: skip
def runner_cmd(fmt: str, out: Path | None, concurrency: str, **params: Any) -> None:
    """partitions.run with key-ordered concurrency vs one record at a time (I/O-bound handler)."""
    try:
        levels = tuple(int(c) for c in concurrency.split(",") if c.strip())
    except ValueError as err:
        raise click.BadParameter(f"not a list of integers: {concurrency!r}") from err
    if not levels or min(levels) < 1:
        raise click.BadParameter("give at least one concurrency, each >= 1")
    opts = RunnerBenchOptions(concurrency=levels, **params)
    text = fmt == "text"
    _emit(run_runner_bench(opts, say=click.echo if text else lambda _: None), fmt, out)


__all__ = ["bench_group"]
