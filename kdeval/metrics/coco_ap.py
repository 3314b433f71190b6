"""COCO bbox AP: a pure function of (ground truth, detections), computed by pycocotools.

No files, no printing: pycocotools' own printing is silenced here, in one place.
"""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from kdeval.vocab import COCO_STAT_NAMES


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
    evaluator = run_cocoeval(ground_truth_coco(gt), detections)
    with _quiet():
        evaluator.summarize()
    return {name: float(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats)}


def per_category_stats(gt: dict, detections: list[dict]):
    """AP, AP50, AP75, APs, APm, APl (maxDets 100) of each category, as COCOeval.summarize would give
    them for that category alone, as a DataFrame indexed by category id, with its name; -1 without
    ground truth."""
    import pandas as pd

    evaluator = run_cocoeval(ground_truth_coco(gt), detections)
    precision = evaluator.eval["precision"][..., -1]  # (iou, recall, category, area), maxDets 100
    params = evaluator.params
    t50 = int(np.argmin(np.abs(params.iouThrs - 0.5)))
    t75 = int(np.argmin(np.abs(params.iouThrs - 0.75)))
    names = {c["id"]: str(c["name"]) for c in gt["categories"]}

    def mean(block: np.ndarray) -> float:
        valid = block[block > -1]
        return float(np.mean(valid)) if valid.size else -1.0

    rows = {}
    for k, category_id in enumerate(params.catIds):
        p = precision[:, :, k, :]
        rows[category_id] = {
            "category": names[category_id],
            "AP": mean(p[:, :, 0]), "AP50": mean(p[t50, :, 0]), "AP75": mean(p[t75, :, 0]),
            "APs": mean(p[:, :, 1]), "APm": mean(p[:, :, 2]), "APl": mean(p[:, :, 3]),
        }
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "category_id"
    return table
