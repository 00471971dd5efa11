"""The SynthVI stage-2 ablation of docs/RESULTS.md: one stage-1 (DCL) run per data set and seed, then every
stage-2 variant from its weights with the same seed and budget. An accuracy experiment, not a timing one.

    python -m benchmarks.stage2_ablation run --data standard=data/std --data easier=data/h1 --out runs/abl
    python -m benchmarks.stage2_ablation report --out runs/abl        # table (markdown + JSON) and plot

Each run is ``mult train`` in a child process (its log beside it); finished runs are skipped, unfinished ones
restarted, so ``run`` can be stopped and started again. Starting every variant from the same stage-1 weights
makes the comparison paired: the differences between rows are stage 2's alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import REPO_ROOT, write_json

#: variant -> extra ``mult train`` arguments for stage 2. "dcl" is the stage-1 run itself.
VARIANTS: dict[str, list[str]] = {
    "dcl-continued": ["--association", "none"],
    "mult-oclr": [],
    "mult-no-oclr": ["--no-oclr"],
    "ot": ["--association", "ot"],
    "hungarian": ["--association", "hungarian"],
    "beta1": ["--beta", "1"],
    "mult-oclr-after-step": ["--set", "memory_update=after-step"],
}
LABELS = {
    "dcl": "DCL only (stage 1)",
    "dcl-continued": "DCL continued (`--association none`)",
    "mult-oclr": "MULT + OCLR (full method)",
    "mult-no-oclr": "MULT, no OCLR (`--no-oclr`)",
    "ot": "OT-only association (`--association ot`)",
    "hungarian": "PGM-style Hungarian (`--association hungarian`)",
    "beta1": "hard targets only (`--beta 1`)",
    "mult-oclr-after-step": "MULT + OCLR, memories updated after the step (before issue 15)",
}


def finished(run: Path) -> bool:
    """A run is done when its config's last epoch is in metrics.jsonl with an evaluation."""
    try:
        epochs = json.loads((run / "config.json").read_text())["epochs"]
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    except (OSError, ValueError, IndexError, KeyError):
        return False
    return last.get("epoch") == epochs - 1 and "eval" in last


def train(run: Path, data_root: Path, seed: int, preset: str, extra: list[str]) -> None:
    """``mult train`` into ``run`` (restarting an unfinished one); stdout+stderr go to ``run``.log."""
    if finished(run):
        print(f"  {run.name}: done", flush=True)
        return
    shutil.rmtree(run, ignore_errors=True)
    cmd = [sys.executable, "-m", "mult", "train", "--preset", preset, "--data-root", str(data_root),
           "--out", str(run), "--seed", str(seed), *extra]
    started = time.time()
    with open(run.with_suffix(".log"), "w") as log:
        code = subprocess.call(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    if code != 0 or not finished(run):
        raise SystemExit(f"{run}: mult train failed (exit {code}); see {run.with_suffix('.log')}")
    print(f"  {run.name}: {time.time() - started:.0f} s", flush=True)


def run_all(data: dict[str, Path], seeds: list[int], variants: list[str], out: Path, preset: str) -> None:
    # seeds outermost: a stopped run still has every gap at the seeds it finished
    for seed in seeds:
        for gap, root in data.items():
            base = out / gap / f"seed{seed}"
            base.mkdir(parents=True, exist_ok=True)
            print(f"{gap} seed {seed}", flush=True)
            train(base / "dcl", root, seed, preset, ["--stage", "dcl"])
            for name in variants:
                train(base / name, root, seed, preset,
                      ["--stage", "mult", "--from", str(base / "dcl"), *VARIANTS[name]])


# ---- report -------------------------------------------------------------------------------------------

def read_run(run: Path) -> dict:
    """Final all-search / indoor means and the per-epoch cross-label accuracy of one finished run."""
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    final = metrics[-1]["eval"]
    stage_two = [m for m in metrics if m.get("stage") == "mult"]
    return {
        "all": {k: final["sysu-all"][k] for k in ("rank1", "mAP", "mINP")},
        "indoor": {k: final["sysu-indoor"][k] for k in ("rank1", "mAP", "mINP")},
        "cross_acc_v2r": [m["cross_acc_v2r"] for m in stage_two if "cross_acc_v2r" in m],
        "cross_acc_r2v": [m["cross_acc_r2v"] for m in stage_two if "cross_acc_r2v" in m],
        "ari_r": (metrics[-1].get("dbscan_r") or {}).get("ari"),
        # fixed-point iterations used per epoch (visible label space, infrared label space) and the last change
        "propagation": [[(p[space]["steps"], p[space]["change"][-1]) for space in ("visible_space", "infrared_space")]
                        for p in (m.get("propagation") for m in stage_two) if p],
    }


def collect(out: Path) -> dict:
    """gap -> variant -> seed -> run summary, for every finished run under ``out``."""
    table: dict = {}
    for run in sorted(out.glob("*/seed*/*")):
        if run.is_dir() and finished(run):
            gap, seed = run.parent.parent.name, int(run.parent.name.removeprefix("seed"))
            table.setdefault(gap, {}).setdefault(run.name, {})[seed] = read_run(run)
    return table


def markdown(table: dict) -> str:
    lines = []
    for gap, variants in table.items():
        lines += [f"**{gap} gap** — all-search R1 / mAP / mINP, mean over seeds (per seed R1 / mAP); "
                  "indoor R1 / mAP mean; final MULT cross-label accuracy v→r · r→v (%)", "",
                  "| run | seeds | all-search mean | per seed (R1 / mAP) | indoor mean | cross-label acc. |",
                  "|---|---:|---:|---|---:|---|"]
        for name in ["dcl", *VARIANTS]:
            seeds = variants.get(name)
            if not seeds:
                continue
            runs = [seeds[s] for s in sorted(seeds)]
            mean = {k: statistics.mean(r["all"][k] for r in runs) for k in ("rank1", "mAP", "mINP")}
            indoor = {k: statistics.mean(r["indoor"][k] for r in runs) for k in ("rank1", "mAP")}
            per_seed = ", ".join(f"{r['all']['rank1']:.1f} / {r['all']['mAP']:.1f}" for r in runs)
            acc = [(r["cross_acc_v2r"][-1], r["cross_acc_r2v"][-1]) for r in runs if r["cross_acc_v2r"]]
            acc_text = (f"{100 * statistics.mean(a for a, _ in acc):.1f} · {100 * statistics.mean(b for _, b in acc):.1f}"
                        if acc else "–")
            lines.append(f"| {LABELS[name]} | {len(runs)} | {mean['rank1']:.1f} / {mean['mAP']:.1f} / {mean['mINP']:.1f}"
                         f" | {per_seed} | {indoor['rank1']:.1f} / {indoor['mAP']:.1f} | {acc_text} |")
        lines.append("")
    return "\n".join(lines)


def plot_cross_label(out: Path, table: dict, path: Path) -> None:
    """Cross-label accuracy per stage-2 epoch (rows: v→r, r→v; columns: gaps), MULT + OCLR with the official
    memory updates vs after-step ones; solid after label propagation, dotted the transport plan's own argmax."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {"mult-oclr": ("tab:blue", "official memory updates"),
            "mult-oclr-after-step": ("tab:orange", "after-step updates (before)")}
    fig, axes = plt.subplots(2, len(table), figsize=(5.5 * len(table), 7), squeeze=False)
    for col, (gap, variants) in enumerate(table.items()):
        for row, direction in enumerate(("v2r", "r2v")):
            ax = axes[row][col]
            for name, (colour, label) in runs.items():
                for seed in sorted(variants.get(name, {})):
                    lines = (out / gap / f"seed{seed}" / name / "metrics.jsonl").read_text().splitlines()
                    epochs = [json.loads(line) for line in lines]
                    epochs = [m for m in epochs if f"cross_acc_{direction}" in m]
                    xs = [m["epoch"] + 1 for m in epochs]
                    ax.plot(xs, [100 * m[f"cross_acc_{direction}"] for m in epochs], marker="o", color=colour,
                            label=label if seed == min(variants[name]) else None)
                    ax.plot(xs, [100 * m[f"cross_acc_{direction}_initial"] for m in epochs], linestyle=":",
                            color=colour, alpha=0.7)
            arrow = "visible → infrared" if direction == "v2r" else "infrared → visible"
            ax.set_title(f"{gap} gap: cross labels {arrow}")
            ax.set_xlabel("epoch (1-based) whose pseudo-labels are scored")
            ax.set_ylabel("right cross labels (%)")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, title="solid: after propagation, dotted: OT argmax", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(out: Path) -> None:
    table = collect(out)
    if not table:
        raise SystemExit(f"{out}: no finished runs; run `python -m benchmarks.stage2_ablation run` first")
    write_json(out / "ablation.json", table)
    text = markdown(table)
    (out / "ablation.md").write_text(text)
    plot_cross_label(out, table, out / "cross_label_accuracy.png")
    print(text)
    print(f"wrote {out / 'ablation.json'}, {out / 'ablation.md'}, {out / 'cross_label_accuracy.png'}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["run", "report"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", action="append", default=[], metavar="GAP=ROOT",
                        help="a rendered SynthVI set, named by its modality gap (repeatable)")
    parser.add_argument("--preset", default="synth-demo", help="training preset (tiny: a smoke test)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args(argv)
    if args.action == "report":
        report(args.out)
        return
    data = {}
    for item in args.data:
        gap, sep, root = item.partition("=")
        if not sep or not Path(root).is_dir():
            raise SystemExit(f"--data {item}: expected GAP=ROOT with ROOT a rendered SynthVI folder")
        data[gap] = Path(root).resolve()
    if not data:
        raise SystemExit("give at least one --data GAP=ROOT")
    run_all(data, args.seeds, args.variants, args.out.resolve(), args.preset)
    report(args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
