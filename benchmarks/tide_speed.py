"""TIDE for one model: kdeval's tide_breakdown (arrays) against tidecv 1.0.1 (kdeval.metrics.tide, which
fills tidecv's Data objects and runs its TIDE), on a generated set, timed in one run.

Generates detection_problem(--images, --categories, --supercategories, --dets) (default 5,000 images ×
100 detections × 80 categories in 12 supercategories), times each once (wall and CPU seconds; the
1-minute load average is printed beside them, as timings on a shared machine move with it), checks
that the nine numbers agree to 1e-6 and prints the ratio. Then the resampling path: compiling its
kernel and accumulating --resamples bootstrap resamples.

    python benchmarks/tide_speed.py [--images 5000] [--categories 80] [--supercategories 12] [--dets 100] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference_analyze import detection_problem

from kdeval.metrics.bootstrap import resample_counts
from kdeval.metrics.tide import tide_errors
from kdeval.metrics.tide_errors import (
    BREAKDOWN_KEYS,
    resampled_tide,
    resampled_tide_breakdown,
    tide_breakdown,
)


def timed(function, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    value = function(*args)
    return value, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--categories", type=int, default=80)
    parser.add_argument("--supercategories", type=int, default=12)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    gt, detections = detection_problem(args.images, args.categories, args.supercategories, args.dets, seed=args.seed)
    print(f"{len(gt['images'])} images, {len(gt['categories'])} categories, {len(gt['annotations'])} ground-truth boxes, "
          f"{len(detections)} detections; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    load_before = os.getloadavg()[0]
    ours, ours_s, ours_cpu = timed(tide_breakdown, gt, detections)
    theirs, theirs_s, theirs_cpu = timed(tide_errors, gt, {"m": detections})
    load_after = os.getloadavg()[0]
    theirs = theirs.loc["m"].to_dict()
    difference = max(abs(ours[k] - theirs[k]) for k in BREAKDOWN_KEYS)
    print(f"1-min load {load_before:.2f} before, {load_after:.2f} after")
    print(f"tidecv (kdeval.metrics.tide.tide_errors): {theirs_s:7.2f} s wall, {theirs_cpu:7.2f} s CPU")
    print(f"kdeval tide_breakdown:                    {ours_s:7.2f} s wall, {ours_cpu:7.2f} s CPU")
    print(f"speed-up: {theirs_s / ours_s:.0f}x wall, {theirs_cpu / ours_cpu:.0f}x CPU; largest difference: {difference:.1e}")
    print("         " + " ".join(f"{k:>7s}" for k in BREAKDOWN_KEYS))
    print("tidecv   " + " ".join(f"{theirs[k]:7.4f}" for k in BREAKDOWN_KEYS))
    print("kdeval   " + " ".join(f"{ours[k]:7.4f}" for k in BREAKDOWN_KEYS))

    if args.resamples:
        tide, match_s, _ = timed(resampled_tide, gt, detections)
        counts = resample_counts(tide.n_images, args.resamples, args.seed)
        _, compile_s, _ = timed(resampled_tide_breakdown, tide, counts[:1])
        rows, resample_s, _ = timed(resampled_tide_breakdown, tide, counts)
        low, high = np.percentile(rows, [2.5, 97.5], axis=0)
        print(f"resampling: matching {match_s:.2f} s, first call (compiles the kernel) {compile_s:.2f} s, "
              f"{args.resamples} resamples {resample_s:.2f} s (load {os.getloadavg()[0]:.2f})")
        print("95% low  " + " ".join(f"{v:7.4f}" for v in low))
        print("95% high " + " ".join(f"{v:7.4f}" for v in high))
    if not difference <= 1e-6:
        sys.exit("tidecv and kdeval differ")


if __name__ == "__main__":
    main()
