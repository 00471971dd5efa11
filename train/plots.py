"""PNG plots of a run's metrics.jsonl: losses, cluster counts, pseudo-label quality and test accuracy."""

from __future__ import annotations

from mult.io import atomic_path


def _series(entries: list[dict], *keys: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for e in entries:
        value = e
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, (int, float)):
            xs.append(e["epoch"] + 1)
            ys.append(float(value))
    return xs, ys


def plot_run(run) -> None:
    """Write ``run.plot_path`` (2x2 panels) from ``run.metrics()``; epochs are 1-based, 0 = before training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    entries = list(run.metrics())
    if not entries:
        return
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax = axes[0, 0]
    for key in sorted({k for e in entries for k in e if k.startswith("loss")}):
        ax.plot(*_series(entries, key), marker="o", label=key.replace("loss_", "") if key != "loss" else "total")
    ax.set(title="training loss", xlabel="epoch")
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    for key, name in (("clusters_v", "visible"), ("clusters_r", "infrared")):
        ax.plot(*_series(entries, key), marker="o", label=name)
    ax.set(title="DBSCAN clusters", xlabel="epoch")
    ax.legend(fontsize=8)
    ax = axes[1, 0]
    for key, name in (("dbscan_v", "visible"), ("dbscan_r", "infrared")):
        for metric, style in (("ari", "-"), ("nmi", "--")):
            ax.plot(*_series(entries, key, metric), style, marker="o", label=f"{metric.upper()} {name}")
    for key, name in (("cross_acc_v2r", "cross acc v→r"), ("cross_acc_r2v", "cross acc r→v")):
        (line,) = ax.plot(*_series(entries, key), ":", marker="s", label=name)
        if any(f"{key}_initial" in e for e in entries):  # MULT's own labels before propagation, same colour
            ax.plot(*_series(entries, f"{key}_initial"), ":", marker="x", color=line.get_color(), alpha=0.5,
                    label=f"{name}, before MULT")
    ax.set(title="pseudo-label quality vs ground truth", xlabel="epoch", ylim=(0, 1.02))
    ax.legend(fontsize=8)
    ax = axes[1, 1]
    protocols = sorted({p for e in entries for p in e.get("eval", {})})
    for protocol in protocols:
        ax.plot(*_series(entries, "eval", protocol, "rank1"), marker="o", label=f"{protocol} R1")
        ax.plot(*_series(entries, "eval", protocol, "mAP"), "--", marker="o", label=f"{protocol} mAP")
    ax.set(title="test accuracy (%)", xlabel="epoch (0 = untrained)")
    if protocols:
        ax.legend(fontsize=8)
    for a in axes.flat:
        a.grid(alpha=0.3)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    fig.tight_layout()
    with atomic_path(run.plot_path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
