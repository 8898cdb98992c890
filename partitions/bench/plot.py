"""``--plot FILE.png``: throughput per window and latency percentiles (matplotlib extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from partitions._base.errors import ConfigError
from partitions.bench.output import BenchResult


def plot_result(result: BenchResult, path: Path) -> None:
    """Left: records/s per reporting window of each run; right: its latency percentiles."""
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    except ImportError as err:
        raise ConfigError("--plot needs matplotlib: pip install 'partstream[bench]'") from err
    fig: Any
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, run in enumerate(result.runs):
        label = f"{run.name} #{i}"
        if run.windows:
            left.plot([w.t for w in run.windows], [w.rate for w in run.windows], label=label)
        lat = run.latency
        if lat.max > 0:
            names = ["p50", "p95", "p99", "p99.9", "max"]
            right.plot(names, [lat.p50, lat.p95, lat.p99, lat.p999, lat.max], "o-", label=label)
    left.set(title=f"{result.mode}: throughput per window", xlabel="s", ylabel="records/s")
    right.set(title="latency", ylabel="ms", yscale="log")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(result.command, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
