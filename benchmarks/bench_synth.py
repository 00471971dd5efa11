"""Time SynthVI generation: images per second and total seconds for a given size.

First a per-image profile on a sample rendered in this process (drawing + sensor, then encoding), then
the real end-to-end run of ``synthesize`` into a temporary folder (removed afterwards unless ``--keep``).

    python -m benchmarks.bench_synth --format sysu --ids 491 --workers 2     # SYSU-MM01 scale (~42k images)
    python -m benchmarks.bench_synth --format regdb --ids 412                # RegDB scale (8,240 images)
    python -m benchmarks.bench_synth --ids 40 --workers 1                    # quick look
    python -m benchmarks.bench_synth --ids 491 --sample-only                 # profile + extrapolation only
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from mult.data.synth import synthesize
from mult.data.synth.identity import sample_identity
from mult.data.synth.plan import SYSU_IMAGES_PER_CAMERA, default_test_ids, plan_regdb, plan_sysu
from mult.data.synth.render import render_keyed
from mult.data.synth.scene import background_canvas
from mult.io import write_text_atomic


def profile_sample(args: argparse.Namespace, n_test: int) -> dict[str, float | int]:
    """Render the plan's first ``--sample`` images of every camera in-process; ms per image by stage."""
    if args.format == "sysu":
        plan = plan_sysu(args.seed, args.ids, n_test, args.images_per_camera or SYSU_IMAGES_PER_CAMERA,
                         args.height, args.width)
    else:
        plan = plan_regdb(args.seed, args.ids, n_test, args.height, args.width)
    per_camera = max(1, args.sample // len(plan.cameras))
    chosen = [job for camid in plan.cameras for job in [j for j in plan.jobs if j.camid == camid][:per_camera]]
    canvases = {camid: background_canvas(camera, args.seed) for camid, camera in plan.cameras.items()}
    render_s = encode_s = 0.0
    for job in chosen:
        camera = plan.cameras[job.camid]
        start = time.perf_counter()
        pixels = render_keyed(sample_identity(args.seed, job.pid), camera, canvases[job.camid], args.seed,
                              job.index, job.pose_key, job.view)
        middle = time.perf_counter()
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG" if args.format == "sysu" else "BMP", quality=90)
        render_s += middle - start
        encode_s += time.perf_counter() - middle
    n = len(chosen)
    per_image = (render_s + encode_s) / n
    return {
        "sample_images": n, "render_ms": 1e3 * render_s / n, "encode_ms": 1e3 * encode_s / n,
        "per_image_ms": 1e3 * per_image, "planned_images": len(plan.jobs),
        "extrapolated_s": per_image * len(plan.jobs) / args.workers,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--format", choices=["sysu", "regdb"], default="sysu")
    parser.add_argument("--ids", type=int, default=491, help="identities in all (SYSU-MM01: 491, RegDB: 412)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--height", type=int, default=288)
    parser.add_argument("--width", type=int, default=144)
    parser.add_argument("--images-per-camera", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample", type=int, default=300, help="images rendered in-process for the profile")
    parser.add_argument("--sample-only", action="store_true", help="profile and extrapolate; skip the full run")
    parser.add_argument("--keep", type=Path, default=None, help="write the dataset here and keep it")
    parser.add_argument("--out", type=Path, default=Path(".bench/synth.json"), help="JSON result path")
    args = parser.parse_args(argv)

    n_test = default_test_ids(args.format, args.ids)
    result: dict[str, object] = {
        "benchmark": "synth", "format": args.format, "ids": args.ids, "workers": args.workers,
        "size": [args.height, args.width], "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "profile": profile_sample(args, n_test),
    }
    profile = result["profile"]
    print(f"profile ({profile['sample_images']} images, 1 process): render {profile['render_ms']:.2f} ms + "
          f"encode {profile['encode_ms']:.2f} ms = {profile['per_image_ms']:.2f} ms/image; "
          f"{profile['planned_images']:,} images with {args.workers} worker(s) -> ~{profile['extrapolated_s']:.0f} s")
    if not args.sample_only:
        scratch = None if args.keep else Path(tempfile.mkdtemp(prefix="bench-synth-"))
        out = args.keep or scratch / "data"
        try:
            start = time.perf_counter()
            summary = synthesize(out, args.format, ids=args.ids, images_per_camera=args.images_per_camera,
                                 height=args.height, width=args.width, seed=args.seed, workers=args.workers)
            seconds = time.perf_counter() - start
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        result.update(images=summary.total_images, seconds=round(seconds, 2),
                      images_per_s=round(summary.total_images / seconds, 1),
                      ms_per_image_per_worker=round(1e3 * seconds * args.workers / summary.total_images, 2))
        print(f"{summary.total_images:,} images in {seconds:.1f} s = {result['images_per_s']} images/s "
              f"({result['ms_per_image_per_worker']} ms per image per worker, {args.workers} worker(s))")
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
