"""COCO bbox AP: a pure function of (ground truth, detections), equal to pycocotools' COCOeval.

`coco_stats` and `per_category_stats` compute COCOeval's evaluate + accumulate in one pass over
arrays (kdeval.metrics.cocoeval: pycocotools' greedy matching, IoU and accumulation done with its
operations in its order), then summarize's means: the same numbers, bit for bit (tested against
`pycocotools_stats` on random problems with crowds, ties, out-of-range areas and over 100 detections
per image, annotation ids from 0), many times faster than pycocotools' per-image Python loop.
pycocotools' quirks come along: a detection matched to an annotation with id 0 counts as a false
positive, as pycocotools reads id 0 as "unmatched". The pycocotools COCOeval stays for callers that
need its object (`run_cocoeval`) and as the reference (`pycocotools_stats`).

No files, no printing: pycocotools' own printing is silenced here, in one place.
"""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from kdeval.metrics.bootstrap import ResampledAP, masked_mean
from kdeval.metrics.cocoeval import cocoeval_arrays, matched_arrays, summary_mean
from kdeval.vocab import AREA_RANGES, COCO_STAT_NAMES

# COCOeval Params' iouThrs and maxDets, computed as it computes them (0.6000000000000001 and all)
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
MAX_DETS = (1, 10, 100)
# where AP50 and AP75 sit among them, and where summarize's areas sit in AREA_RANGES
T50, T75 = (np.flatnonzero(IOU_THRESHOLDS == t) for t in (0.5, 0.75))
ALL, SMALL, MEDIUM, LARGE = (list(AREA_RANGES).index(area) for area in ("all", "small", "medium", "large"))


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def ground_truth_coco(gt: dict) -> COCO:
    """A pycocotools COCO over a copy of `gt` (areas filled in from boxes where a file lacks them)."""
    dataset = copy.deepcopy(gt)
    for ann in dataset["annotations"]:
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        ann.setdefault("iscrowd", 0)
    coco = COCO()
    coco.dataset = dataset
    with _quiet():
        coco.createIndex()
    return coco


def results_coco(gt_coco: COCO, detections: list[dict]) -> COCO:
    """What COCO.loadRes builds for bbox results, without mutating the caller's detections and
    without its crash on an empty list (an empty list scores AP 0)."""
    annotations = []
    for i, det in enumerate(detections):
        x, y, w, h = det["bbox"]
        annotations.append(
            {
                "image_id": det["image_id"],
                "category_id": det["category_id"],
                "bbox": [x, y, w, h],
                "score": det["score"],
                "area": w * h,
                "id": i + 1,
                "iscrowd": 0,
            }
        )
    coco = COCO()
    coco.dataset = {
        "images": list(gt_coco.dataset["images"]),
        "categories": copy.deepcopy(gt_coco.dataset["categories"]),
        "annotations": annotations,
    }
    with _quiet():
        coco.createIndex()
    return coco


def run_cocoeval(gt_coco: COCO, detections: list[dict], iou_thresholds=None) -> COCOeval:
    """An accumulated bbox COCOeval (maxDets 1, 10, 100), for callers that need its arrays."""
    evaluator = COCOeval(gt_coco, results_coco(gt_coco, detections), "bbox")
    if iou_thresholds is not None:
        evaluator.params.iouThrs = np.asarray(iou_thresholds, dtype=float)
    with _quiet():
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator


def coco_stats(gt: dict, detections: list[dict]) -> dict[str, float]:
    """The 12 COCOeval bbox stats (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl), 0–1.

    -1 marks a stat with no ground truth (e.g. APl on a dataset without large objects), as COCOeval does.
    """
    precision, recall, _ = cocoeval_arrays(gt, detections, IOU_THRESHOLDS, MAX_DETS)
    last = len(MAX_DETS) - 1
    values = [
        summary_mean(precision[:, :, :, ALL]), summary_mean(precision[T50][:, :, :, ALL]),
        summary_mean(precision[T75][:, :, :, ALL]), summary_mean(precision[:, :, :, SMALL]),
        summary_mean(precision[:, :, :, MEDIUM]), summary_mean(precision[:, :, :, LARGE]),
        summary_mean(recall[:, :, ALL, 0]), summary_mean(recall[:, :, ALL, 1]), summary_mean(recall[:, :, ALL, last]),
        summary_mean(recall[:, :, SMALL, last]), summary_mean(recall[:, :, MEDIUM, last]), summary_mean(recall[:, :, LARGE, last]),
    ]
    return dict(zip(COCO_STAT_NAMES, values))


def pycocotools_stats(gt: dict, detections: list[dict]) -> dict[str, float]:
    """coco_stats by pycocotools' own COCOeval (evaluate, accumulate, summarize): the reference."""
    evaluator = run_cocoeval(ground_truth_coco(gt), detections)
    with _quiet():
        evaluator.summarize()
    return {name: float(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats)}


def per_category_stats(gt: dict, detections: list[dict]):
    """AP, AP50, AP75, APs, APm, APl (maxDets 100) of each category, as COCOeval.summarize would give
    them for that category alone, as a DataFrame indexed by category id, with its name; -1 without
    ground truth."""
    import pandas as pd

    precision, _, category_ids = cocoeval_arrays(gt, detections, IOU_THRESHOLDS, MAX_DETS)  # (iou, recall, category, area)
    names = {c["id"]: str(c["name"]) for c in gt["categories"]}
    rows = {}
    for k, category_id in enumerate(category_ids):
        p = precision[:, :, k, :]
        rows[category_id] = {
            "category": names[category_id],
            "AP": summary_mean(p[:, :, ALL]), "AP50": summary_mean(p[T50][:, :, ALL]), "AP75": summary_mean(p[T75][:, :, ALL]),
            "APs": summary_mean(p[:, :, SMALL]), "APm": summary_mean(p[:, :, MEDIUM]), "APl": summary_mean(p[:, :, LARGE]),
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "category_id"
    return table


# ---------------------------------------------------------------- on image resamples


def resampled_coco(gt: dict, detections: list[dict]) -> ResampledAP:
    """The detections matched once, ready to be accumulated on any image resample."""
    arr, outcome = matched_arrays(gt, detections, IOU_THRESHOLDS, MAX_DETS)
    return ResampledAP.from_outcome(arr, outcome, MAX_DETS)


def resampled_stats(resampled: ResampledAP, counts: np.ndarray, per_category: bool = False) -> np.ndarray:
    """The 12 COCO stats on each resample: (resamples, 12), in COCO_STAT_NAMES' order; with
    `per_category`, (resamples, categories, 6), TABLE_METRICS of each category alone. -1 as
    COCOeval (no ground truth in the resample)."""
    ap, _, recall = resampled.accumulate(counts)  # (R, T, K, A), (R, T, K, A, M)
    t50, t75 = int(T50[0]), int(T75[0])
    if per_category:
        by_category = [ap[:, :, :, ALL], ap[:, t50, None, :, ALL], ap[:, t75, None, :, ALL],
                       ap[:, :, :, SMALL], ap[:, :, :, MEDIUM], ap[:, :, :, LARGE]]
        return np.stack([masked_mean(block, (1,)) for block in by_category], axis=-1)
    last = len(MAX_DETS) - 1
    blocks = [ap[:, :, :, ALL], ap[:, t50, None, :, ALL], ap[:, t75, None, :, ALL], ap[:, :, :, SMALL],
              ap[:, :, :, MEDIUM], ap[:, :, :, LARGE], recall[:, :, :, ALL, 0], recall[:, :, :, ALL, 1],
              recall[:, :, :, ALL, last], recall[:, :, :, SMALL, last], recall[:, :, :, MEDIUM, last],
              recall[:, :, :, LARGE, last]]
    return np.stack([masked_mean(block, (1, 2)) for block in blocks], axis=-1)
