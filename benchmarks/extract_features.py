"""Embed a dataset's training images with a trained run's model, for benchmarks that want learned features.

    python -m benchmarks.extract_features --run runs/src/dcl --data-root data/synth-sysu \\
        --out data/synth-sysu-feats.npz

Writes ``fv`` [Nv, D], ``fr`` [Nr, D] (L2-normalised, no flip: exactly what a training epoch clusters) and
``pid_v``, ``pid_r`` (true ids, -1 where unknown) to ``--out``, atomically. ``bench_label_transfer --features``
draws its SYSU-size inputs from such a file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a training run directory (its latest weights)")
    parser.add_argument("--data-root", type=Path, required=True, help="the dataset whose training images to embed")
    parser.add_argument("--dataset", choices=("sysu", "regdb"), default="sysu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    from mult.errors import MultError
    from mult.features import TorchEncoder
    from mult.io import atomic_path
    from mult.datasets import load_training_set
    from mult.runs import RunDir

    try:
        run = RunDir(args.run)
        cfg, model = run.config(), run.load_model()
        data = load_training_set(args.dataset, args.data_root)
    except MultError as err:
        raise SystemExit(f"error: {err}") from None
    encoder = TorchEncoder(model, cfg.height, cfg.width, flip=False, batch_size=args.batch_size)
    start = time.perf_counter()
    fv = encoder.encode(data.visible_paths, "visible")
    fr = encoder.encode(data.infrared_paths, "infrared")
    with atomic_path(args.out) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, fv=fv, fr=fr, pid_v=data.visible_pids, pid_r=data.infrared_pids)
    print(f"{len(fv)} visible + {len(fr)} infrared {fv.shape[1]}-d features in {time.perf_counter() - start:.0f} s "
          f"-> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
