"""What scoring one robustness scenario costs: kdeval's coco_stats (one pass over arrays) against
pycocotools' COCOeval (evaluate, accumulate, summarize) on a COCO-sized synthetic set; the two must
give the same 12 numbers.

    python benchmarks/scoring_cost.py [--images 5000] [--objects 7] [--detections 100] [--classes 80]

Ground truth: --images 640×480 images with --objects boxes each over --classes categories; results:
--detections per image (five near each object, three of them of its class, the rest scattered at
lower scores), as a trained COCO detector's capped output. Deterministic (seed 0). A robustness run
scores 76 such scenarios per model; beside a GPU `kdeval robustness` also does it in separate
processes (--scoring-processes), so that the GPU does not wait.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import time

import numpy as np
from pycocotools.cocoeval import COCOeval

from kdeval.metrics.coco_ap import coco_stats, ground_truth_coco, results_coco
from kdeval.vocab import COCO_STAT_NAMES


def synthetic_scenario(images: int, objects: int, detections: int, classes: int) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(0)
    gt = {"images": [{"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"} for i in range(images)],
          "categories": [{"id": c + 1, "name": f"class {c + 1}", "supercategory": "thing"} for c in range(classes)],
          "annotations": []}
    found = []
    for image in range(images):
        for _ in range(objects):
            x, y, w, h = rng.uniform(0, 500), rng.uniform(0, 380), rng.uniform(5, 140), rng.uniform(5, 100)
            category = int(rng.integers(1, classes + 1))
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image, "category_id": category,
                                      "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            for k in range(5):
                found.append({"image_id": image, "category_id": category if k < 3 else int(rng.integers(1, classes + 1)),
                              "bbox": [x + rng.normal(0, 4), y + rng.normal(0, 4), w * rng.uniform(0.8, 1.2), h * rng.uniform(0.8, 1.2)],
                              "score": float(rng.uniform(0.05, 1))})
        for _ in range(max(0, detections - 5 * objects)):
            found.append({"image_id": image, "category_id": int(rng.integers(1, classes + 1)),
                          "bbox": [rng.uniform(0, 500), rng.uniform(0, 380), rng.uniform(5, 100), rng.uniform(5, 100)],
                          "score": float(rng.uniform(0.05, 0.5))})
    return gt, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--objects", type=int, default=7)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--classes", type=int, default=80)
    args = parser.parse_args()
    gt, found = synthetic_scenario(args.images, args.objects, args.detections, args.classes)
    print(f"{args.images} images, {len(gt['annotations'])} objects, {len(found)} detections; "
          f"{os.cpu_count()} CPUs, 1-min load {os.getloadavg()[0]:.2f}")
    start = time.perf_counter()
    stats = coco_stats(gt, found)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    evaluator = COCOeval(ground_truth_coco(gt), results_coco(ground_truth_coco(gt), found), "bbox")
    indexed = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluated = time.perf_counter()
        evaluator.accumulate()
        accumulated = time.perf_counter()
        evaluator.summarize()
    theirs = time.perf_counter() - start
    reference = {name: float(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats)}
    print(f"kdeval coco_stats {ours:.2f} s (AP {100 * stats['AP']:.1f}); pycocotools {theirs:.1f} s (indexing "
          f"{indexed - start:.1f}, evaluate {evaluated - indexed:.1f}, accumulate {accumulated - evaluated:.1f}); "
          f"{theirs / ours:.0f}x; the 12 stats {'identical' if stats == reference else 'DIFFERENT'}")
    print(f"76 scenarios per model: {76 * ours / 60:.1f} min of one core with kdeval, {76 * theirs / 60:.0f} with pycocotools")

if __name__ == "__main__":
    main()
