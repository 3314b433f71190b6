"""The paired image bootstrap against one plain evaluation: COCO AP and the COCO-analyze error curves
of several models on 1,000 image resamples, over the same models scored once.

Generates a COCO-sized problem (default 5,000 images, 80 categories in 12 supercategories) and
--models detectors on its ground truth (one noise model, a seed each; --dets detections per image),
then times:

  COCO AP       coco_stats of every model, against evaluate_detections(..., bootstrap=
                BootstrapSettings(--resamples)) of them, step by step inside that one call: point
                estimates, drawing the resamples, matching once (resampled_coco), accumulating the
                resamples (resampled_stats), the interval table
  error curves  error_curves of every model, against matching once (resampled_error_curves) and
                accumulating the same resamples (resampled_error_aps)

The target is a bootstrap costing at most 10 plain evaluations. Every figure is wall time and, in
brackets, the process's CPU time: the accumulation runs on numba's threads, the plain evaluation on
one, and on a shared machine wall time moves with the load (printed) while CPU time moves less.
The compiled accumulation is compiled on a tiny problem first, outside the timings; that time is
reported. Weight one everywhere is checked against the plain numbers (1e-12).

    python benchmarks/bootstrap_speed.py [--images 5000] [--categories 80] [--supercategories 12] [--dets 100] [--models 3] [--resamples 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from reference_analyze import detection_problem  # noqa: E402
from test_bootstrap import detections_on  # noqa: E402

import kdeval.analysis.evaluation as evaluation_module  # noqa: E402
from kdeval.analysis.evaluation import evaluate_detections  # noqa: E402
from kdeval.metrics.analyze import error_curves, resampled_error_aps, resampled_error_curves  # noqa: E402
from kdeval.metrics.bootstrap import BootstrapSettings, resample_counts  # noqa: E402
from kdeval.metrics.coco_ap import coco_stats, resampled_coco, resampled_stats  # noqa: E402
from kdeval.vocab import COCO_STAT_NAMES  # noqa: E402

TARGET = 10.0

# evaluate_detections' steps, timed inside the one timed call (the names kdeval.analysis.evaluation holds)
PHASES = {
    "coco_stats": "point estimates (coco_stats)",
    "resamples_of": "drawing the resamples",
    "resampled_coco": "matching once (resampled_coco)",
    "resampled_stats": "accumulating (resampled_stats)",
    "interval_table": "interval table",
}


@dataclass
class Clock:
    wall: float = 0.0
    cpu: float = 0.0

    def __add__(self, other: "Clock") -> "Clock":
        return Clock(self.wall + other.wall, self.cpu + other.cpu)

    def __sub__(self, other: "Clock") -> "Clock":
        return Clock(self.wall - other.wall, self.cpu - other.cpu)

    def __str__(self) -> str:
        return f"{self.wall:8.2f} s ({self.cpu:7.2f} s CPU)"

    def over(self, plain: "Clock") -> str:
        wall, cpu = self.wall / plain.wall, self.cpu / plain.cpu
        return f"{wall:.1f}x ({cpu:.1f}x CPU): {'within' if wall <= TARGET else 'OVER'} the {TARGET:g}x target"


def timed(function, *args, **kwargs) -> tuple[object, Clock]:
    wall, cpu = time.perf_counter(), time.process_time()
    value = function(*args, **kwargs)
    return value, Clock(time.perf_counter() - wall, time.process_time() - cpu)


@contextlib.contextmanager
def phases_of_evaluate():
    clocks = {name: Clock() for name in PHASES}
    originals = {name: getattr(evaluation_module, name) for name in PHASES}

    def timing(name):
        def wrapper(*args, **kwargs):
            value, clock = timed(originals[name], *args, **kwargs)
            clocks[name] = clocks[name] + clock
            return value
        return wrapper

    for name in PHASES:
        setattr(evaluation_module, name, timing(name))
    try:
        yield clocks
    finally:
        for name, original in originals.items():
            setattr(evaluation_module, name, original)


def load() -> str:
    return f"1-min load {os.getloadavg()[0]:.2f}"


def check(name: str, what: str, ours: np.ndarray, plain: np.ndarray) -> None:
    worst = float(np.abs(ours - plain).max())
    if worst > 1e-12:
        sys.exit(f"{name}: weight one everywhere differs from {what} by {worst:g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--categories", type=int, default=80)
    parser.add_argument("--supercategories", type=int, default=12)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numba {numba.__version__} with "
          f"{numba.get_num_threads()} threads, numpy {np.__version__}, Python {platform.python_version()}; {load()}")

    start = time.perf_counter()
    gt = detection_problem(args.images, args.categories, args.supercategories, 0, seed=args.seed)[0]
    models = {f"m{k}": detections_on(gt, args.dets, seed=args.seed + 1 + k) for k in range(args.models)}
    n_images = len(gt["images"])
    ones = np.ones((1, n_images), np.int32)
    print(f"{n_images} images, {len(gt['categories'])} categories, {len(gt['annotations'])} ground-truth boxes, "
          f"{args.models} models x {args.dets * n_images} detections; generated in {time.perf_counter() - start:.1f} s")

    # cache=False: every process compiles the accumulation once, here on a tiny problem
    tiny_gt, tiny_dets = detection_problem(4, 2, 1, 5, seed=1)
    _, compile_clock = timed(resampled_stats, resampled_coco(tiny_gt, tiny_dets), np.ones((1, 4), np.int32))
    print(f"numba compile of the accumulation (once per process, outside the timings): {compile_clock}")

    # ---------------------------------------------------------------- COCO AP
    print(f"\nCOCO AP, {args.models} models ({load()})")
    plain_clock, plain = Clock(), {}
    for name, detections in models.items():
        plain[name], clock = timed(coco_stats, gt, detections)
        plain_clock = plain_clock + clock
    with phases_of_evaluate() as phases:
        evaluation, bootstrap_clock = timed(evaluate_detections, gt, models, baseline="m0",
                                            bootstrap=BootstrapSettings(args.resamples, 0.95, 0))
    print(f"  {'plain coco_stats':44s} {plain_clock}")
    print(f"  {f'evaluate_detections, {args.resamples} resamples':44s} {bootstrap_clock}  -> {bootstrap_clock.over(plain_clock)}")
    for phase, label in PHASES.items():
        print(f"    {label:42s} {phases[phase]}")
    print(f"    {'the rest':42s} {bootstrap_clock - sum(phases.values(), Clock())}")
    per = 1000 * phases["resampled_stats"].wall / (args.resamples * args.models)
    print(f"  accumulating: {per:.2f} ms per resample and model ({load()})")
    table = evaluation.intervals.set_index(["model", "metric"])
    for name in models:
        row = table.loc[(name, "AP")]
        outside = "" if row["ci_low"] <= row["value"] <= row["ci_high"] else " (the value lies outside its interval)"
        gain = "" if name == "m0" else (f"; gain over m0 {100 * row['gain']:+.2f} "
                                        f"[{100 * row['gain_ci_low']:+.2f}, {100 * row['gain_ci_high']:+.2f}]")
        print(f"  {name} AP {100 * row['value']:.2f} [{100 * row['ci_low']:.2f}, {100 * row['ci_high']:.2f}]{outside}{gain}")
    for name, detections in models.items():
        check(name, "coco_stats", resampled_stats(resampled_coco(gt, detections), ones)[0],
              np.array([plain[name][k] for k in COCO_STAT_NAMES]))

    # ---------------------------------------------------------------- error curves
    print(f"\nerror curves, {args.models} models ({load()})")
    counts = resample_counts(n_images, args.resamples, 0)
    plain_clock, curves = Clock(), {}
    for name, detections in models.items():
        curves[name], clock = timed(error_curves, gt, detections)
        plain_clock = plain_clock + clock
    matching, accumulating = Clock(), Clock()
    for name, detections in models.items():
        matched, clock = timed(resampled_error_curves, gt, detections)
        matching = matching + clock
        _, clock = timed(resampled_error_aps, matched, counts)
        accumulating = accumulating + clock
        reference = np.array([[curves[name].ap(s, a) for a in curves[name].areas] for s in curves[name].settings])
        check(name, "error_curves", resampled_error_aps(matched, ones)[0], reference)
    print(f"  {'plain error_curves':44s} {plain_clock}")
    print(f"  {f'matched once, {args.resamples} resamples accumulated':44s} {matching + accumulating}  "
          f"-> {(matching + accumulating).over(plain_clock)}")
    print(f"    {'matching once (resampled_error_curves)':42s} {matching}")
    print(f"    {'accumulating (resampled_error_aps)':42s} {accumulating}")
    per = 1000 * accumulating.wall / (args.resamples * args.models)
    print(f"  accumulating: {per:.2f} ms per resample and model ({load()})")
    print("weight one everywhere equals the plain numbers (1e-12) for every model")


if __name__ == "__main__":
    main()
