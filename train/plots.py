"""PNG plots of a run's metrics.jsonl: losses, cluster counts, pseudo-label quality, test accuracy and, once MULT
has run, the convergence of its label propagation."""

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


SPACES = (("visible_space", "visible space", "-"), ("infrared_space", "infrared space", "--"))


def _propagation_panels(ax_change, ax_steps, entries: list[dict]) -> None:
    """MULT's fixed-point iteration per epoch (METHOD.md §4.5): the stopping test's value per iteration, one line per
    epoch and label space (colour = epoch), against the tolerance; and the iterations used against the cap."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    runs = [e for e in entries if e.get("propagation")]
    epochs = [e["epoch"] + 1 for e in runs]
    norm, cmap = Normalize(min(epochs), max(epochs) + 1e-9), plt.get_cmap("viridis")
    for e, epoch in zip(runs, epochs):
        for key, name, style in SPACES:
            change = e["propagation"][key]["change"]
            ax_change.semilogy(range(1, len(change) + 1), change, style, color=cmap(norm(epoch)), alpha=0.8,
                               label=name if epoch == epochs[0] else None)
    ax_change.axhline(runs[-1]["propagation"]["tol"], color="grey", linestyle=":", label="tolerance")
    ax_change.set(title="label propagation: change per iteration", xlabel="iteration (colour: epoch)",
                  ylabel="relative L1 change")
    ax_change.legend(fontsize=8)
    bar = plt.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax_change, label="epoch")
    bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for key, name, style in SPACES:
        ax_steps.plot(*_series(runs, "propagation", key, "steps"), style, marker="o", label=name)
    ax_steps.axhline(runs[-1]["propagation"]["max_iter"], color="grey", linestyle=":", label="max_iter")
    ax_steps.set(title="label propagation: iterations used", xlabel="epoch", ylim=(0, None))
    ax_steps.legend(fontsize=8)


def plot_run(run) -> None:
    """Write ``run.plot_path`` from ``run.metrics()``: 2x2 panels, plus a column on MULT's label propagation once it
    has run; epochs are 1-based, 0 = before training."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    entries = list(run.metrics())
    if not entries:
        return
    propagation = any(e.get("propagation") for e in entries)
    fig, axes = plt.subplots(2, 3 if propagation else 2, figsize=(16.5 if propagation else 11, 7.5))
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
    if propagation:
        _propagation_panels(axes[0, 2], axes[1, 2], entries)
    for a in axes.flat:
        a.grid(alpha=0.3)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    fig.tight_layout()
    with atomic_path(run.plot_path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
