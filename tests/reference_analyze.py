"""The slow, obviously-right way to the COCO-analyze curves, and synthetic detection problems to test on.

`reference_precision` follows mmdetection's tools/analysis_tools/coco_error_analysis.py: one
pycocotools COCOeval at IoU .75/.50/.10, then two more per category, with the other classes'
ground truth relabelled as crowd regions of that category. It keeps -1 (no ground truth) as
COCOeval does, so the caller chooses how to average. The benchmark imports it too.
"""

from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def _coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    for ann in coco.dataset["annotations"]:
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        ann.setdefault("iscrowd", 0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _precision(gt: COCO, dt: COCO, iou_thresholds) -> np.ndarray:
    evaluator = COCOeval(gt, dt, "bbox")
    evaluator.params.imgIds = gt.getImgIds()
    evaluator.params.maxDets = [100]
    evaluator.params.iouThrs = np.array(iou_thresholds, dtype=float)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator.eval["precision"][..., 0]  # (T, R, K, A)


def _category_run(gt_dataset: dict, dt_dataset: dict, category: dict, relabel) -> np.ndarray:
    """Precision (R, A) of one category's detections, other ground truth relabelled as its crowds."""
    gt = copy.deepcopy(gt_dataset)
    for ann in gt["annotations"]:
        if ann["category_id"] != category["id"] and relabel(ann["category_id"]):
            ann.update(ignore=1, iscrowd=1, category_id=category["id"])
    dt = copy.deepcopy(dt_dataset)
    dt["annotations"] = [d for d in dt["annotations"] if d["category_id"] == category["id"]]
    k = sorted(c["id"] for c in gt_dataset["categories"]).index(category["id"])
    return _precision(_coco(gt), _coco(dt), [0.1])[0, :, k, :]


def reference_precision(gt_dataset: dict, detections: list[dict]) -> np.ndarray:
    """(7 settings, R, K, A) as mmdetection builds it, -1 kept where a category has no ground truth."""
    gt = _coco(gt_dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(copy.deepcopy(detections))
    ps = _precision(gt, dt, [0.75, 0.5, 0.1])
    ps = np.concatenate([ps, np.zeros((4, *ps.shape[1:]))])
    super_of = {c["id"]: c.get("supercategory") for c in gt_dataset["categories"]}
    for k, category in enumerate(sorted(gt_dataset["categories"], key=lambda c: c["id"])):
        siblings = lambda cid, sup=super_of[category["id"]]: super_of[cid] == sup  # noqa: E731
        ps[3, :, k, :] = _category_run(gt.dataset, dt.dataset, category, siblings)
        ps[4, :, k, :] = _category_run(gt.dataset, dt.dataset, category, lambda cid: True)
    ps[5] = np.where(ps[4] > -1, ps[4] > 0, -1)
    ps[6] = np.where(ps[4] > -1, 1.0, -1)
    return ps


def detection_problem(
    n_images: int, n_categories: int, n_supercategories: int, dets_per_image: int, seed: int = 0, integer_boxes: bool = False
) -> tuple[dict, list[dict]]:
    """A COCO dataset and detections with every kind of error: poor localisation, duplicates,
    confusions within and across supercategories, background, misses, crowds, all object sizes."""
    rng = np.random.default_rng(seed)
    categories = [
        {"id": 3 * c + 1, "name": f"c{c}", "supercategory": f"s{c % n_supercategories}"} for c in range(n_categories)
    ]
    cat_ids = [c["id"] for c in categories]
    same_super = {
        c["id"]: [d["id"] for d in categories if d["supercategory"] == c["supercategory"] and d["id"] != c["id"]]
        for c in categories
    }
    images, annotations, detections = [], [], []
    size = 640

    def box():
        side = float(np.exp(rng.uniform(np.log(6), np.log(300))))
        w, h = side * rng.uniform(0.6, 1.4), side * rng.uniform(0.6, 1.4)
        x, y = rng.uniform(0, size - w), rng.uniform(0, size - h)
        b = [x, y, w, h]
        return [float(round(v)) for v in b] if integer_boxes else [round(v, 2) for v in b]

    for i in range(n_images):
        image_id = 1000 + 7 * i
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": size, "height": size})
        objects = []
        for _ in range(int(rng.integers(0, 12))):
            b, cat = box(), int(rng.choice(cat_ids))
            crowd = int(rng.random() < 0.03)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat, "bbox": b,
                                "area": b[2] * b[3] * float(rng.uniform(0.5, 1.0)), "iscrowd": crowd})
            objects.append((b, cat))
        dets = []
        while len(dets) < dets_per_image:
            if objects and rng.random() < 0.6:
                (x, y, w, h), cat = objects[int(rng.integers(len(objects)))]
                jitter = rng.normal(0, rng.choice([0.03, 0.15, 0.4]), 4) * [w, h, w, h]
                b = [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]), max(1.0, h + jitter[3])]
                b = [float(round(v)) for v in b] if integer_boxes else [round(float(v), 2) for v in b]
                r = rng.random()
                if r < 0.15 and same_super[cat]:
                    cat = int(rng.choice(same_super[cat]))
                elif r < 0.25:
                    cat = int(rng.choice(cat_ids))
            else:
                b, cat = box(), int(rng.choice(cat_ids))
            score = float(round(rng.random(), 2 if integer_boxes else 4))  # coarse scores make ties
            dets.append({"image_id": image_id, "category_id": cat, "bbox": b, "score": score})
        detections.extend(dets)
    return {"images": images, "annotations": annotations, "categories": categories}, detections
