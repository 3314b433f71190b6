"""COCO-analyze curves: kdeval's one-pass matching against the per-category reference (mmdetection's way).

Generates a detection problem (default 500 images, 80 categories in 12 supercategories, 100
detections per image), times one run of each on it, checks the precision arrays are identical and
prints the ratio. One pycocotools COCOeval (10 IoU thresholds) is timed too, for scale.

    python benchmarks/error_analysis_speed.py [--images 500] [--categories 80] [--supercategories 12] [--dets 100]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference_analyze import detection_problem, reference_precision  # noqa: E402

from kdeval.metrics.analyze import error_curves  # noqa: E402
from kdeval.metrics.coco_ap import coco_stats  # noqa: E402


def timed(function, *args):
    start = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--categories", type=int, default=80)
    parser.add_argument("--supercategories", type=int, default=12)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    gt, detections = detection_problem(args.images, args.categories, args.supercategories, args.dets, seed=args.seed)
    print(f"{len(gt['images'])} images, {len(gt['categories'])} categories, {len(gt['annotations'])} ground-truth boxes, "
          f"{len(detections)} detections; {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    curves, fast_s = timed(error_curves, gt, detections)
    reference, reference_s = timed(reference_precision, gt, detections)
    _, cocoeval_s = timed(coco_stats, gt, detections)
    difference = float(np.abs(reference - curves.precision).max())
    print(f"reference (1 + 2 x {len(gt['categories'])} COCOeval runs): {reference_s:8.2f} s")
    print(f"one pycocotools COCOeval (for scale):         {cocoeval_s:8.2f} s")
    print(f"kdeval error_curves:                          {fast_s:8.3f} s")
    print(f"speed-up: {reference_s / fast_s:.0f}x; largest precision difference: {difference:g}")
    for setting in curves.settings:
        print(f"  {setting:4s} AP all/small/medium/large: " + " ".join(f"{curves.ap(setting, a):.4f}" for a in curves.areas))
    if difference != 0:
        sys.exit("precision arrays differ")


if __name__ == "__main__":
    main()
