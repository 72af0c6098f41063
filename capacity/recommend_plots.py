"""Figure of a pool size recommendation: the constraint metrics against the pool size."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from capacity.recommend_pool import PoolRecommendation


def plot_pool_sweep(rec: PoolRecommendation, path: str | Path) -> Path:
    """Plot p95 end-to-end latency, drop rate and execution error rate with 95% CIs vs pool size.

    Target lines are dashed; the recommended pool size is marked with a vertical line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = rec.table
    panels = (
        ("p95_e2e_latency_s", 1000.0, "p95 end-to-end latency (ms)", rec.targets.target_latency_ms),
        ("drop_rate", 1.0, "drop rate", rec.targets.max_drop_rate),
        ("execution_error_rate", 1.0, "execution error rate", rec.targets.max_error_rate),
    )
    figure, axes = plt.subplots(1, 3, figsize=(14, 4))
    for axis, (metric, scale, label, target) in zip(axes, panels, strict=True):
        mean = table[metric].to_numpy(dtype=float) * scale
        half_width = np.nan_to_num(table[f"{metric}_ci95"].to_numpy(dtype=float)) * scale
        sizes = table["pool_size"].to_numpy()
        axis.plot(sizes, mean, marker="o")
        axis.fill_between(sizes, mean - half_width, mean + half_width, alpha=0.25, label="95% CI")
        axis.axhline(target, linestyle="--", color="red", label="target")
        if rec.pool_size is not None:
            axis.axvline(rec.pool_size, color="green", linestyle=":", label="recommended")
        axis.set_xlabel("pool size")
        axis.set_ylabel(label)
        if metric == "p95_e2e_latency_s" and np.nanmax(mean) > 10 * target > 0:
            axis.set_yscale("log")
        axis.legend(fontsize="small")
    figure.suptitle(f"Pool size sweep at {rec.offered_rate_per_s:g} events/s")
    figure.tight_layout()
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output
