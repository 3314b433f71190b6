"""Which detections are correct, and why the others are wrong: a pure function of (ground truth,
detections). It colours the qualitative figures and gives the per-image counts that the gallery's
selection ranks images by.

Matching is COCOeval's at one IoU threshold (0.5, as for AP50): within an image, detections in
order of decreasing score (ties keep their input order) each take the still unmatched
ground-truth box of their own class with the highest IoU >= 0.5 (ties: the later box, as COCOeval).
A detection that finds none but covers a crowd region of its class (intersection over the
detection's own area >= 0.5) is "crowd": COCO neither credits nor penalises it. Any other is
wrong, named as TIDE names its error types, first that applies:

- duplicate:    IoU >= 0.5 with an object of its class that a higher-scored detection already found
- class:        IoU >= 0.5 with an object of another class
- localisation: 0.1 <= IoU < 0.5 with an object of its class
- both:         0.1 <= IoU < 0.5 with an object of another class only
- background:   IoU < 0.1 with every object

A detection's verdict depends only on the detections scored above it, so verdicts computed once
on all detections hold at every score threshold: raising the threshold removes detections but
never changes the verdict of those that remain. The gallery's score slider relies on this.
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

import numpy as np

from kdeval.vocab import BACKGROUND_IOU, MATCH_IOU


class Match(NamedTuple):
    verdict: str  # one of vocab.DETECTION_VERDICTS
    annotation_id: int | None  # the ground truth a correct or crowd detection matched; None otherwise


def _as_boxes(bboxes_xywh: list) -> np.ndarray:
    return np.asarray(bboxes_xywh, dtype=float).reshape(-1, 4)


def _intersection_xywh(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """(N, M) areas of intersection of xywh boxes."""
    left = np.maximum(boxes_a[:, None, 0], boxes_b[None, :, 0])
    top = np.maximum(boxes_a[:, None, 1], boxes_b[None, :, 1])
    right = np.minimum(boxes_a[:, None, 0] + boxes_a[:, None, 2], boxes_b[None, :, 0] + boxes_b[None, :, 2])
    bottom = np.minimum(boxes_a[:, None, 1] + boxes_a[:, None, 3], boxes_b[None, :, 1] + boxes_b[None, :, 3])
    return np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)


def box_iou_xywh(boxes_a: list | np.ndarray, boxes_b: list | np.ndarray) -> np.ndarray:
    """(N, M) intersection over union of xywh boxes; 0 where both boxes are empty."""
    boxes_a, boxes_b = _as_boxes(boxes_a), _as_boxes(boxes_b)
    inter = _intersection_xywh(boxes_a, boxes_b)
    union = (boxes_a[:, 2] * boxes_a[:, 3])[:, None] + (boxes_b[:, 2] * boxes_b[:, 3])[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_coverage_xywh(boxes: list | np.ndarray, regions: list | np.ndarray) -> np.ndarray:
    """(N, M) share of each box's area inside each region: COCO's IoU with a crowd region."""
    boxes, regions = _as_boxes(boxes), _as_boxes(regions)
    inter = _intersection_xywh(boxes, regions)
    area = (boxes[:, 2] * boxes[:, 3])[:, None]
    return np.divide(inter, area, out=np.zeros_like(inter), where=area > 0)


def _last_argmax(values: np.ndarray, allowed: np.ndarray) -> int:
    masked = np.where(allowed, values, -np.inf)
    return int(len(masked) - 1 - np.argmax(masked[::-1]))


def match_image(annotations: list[dict], detections: list[dict], iou_threshold: float = MATCH_IOU,
                background_iou: float = BACKGROUND_IOU) -> list[Match]:
    """Verdicts for one image's detections (COCO results entries), in their input order."""
    if not detections:
        return []
    gt_boxes = _as_boxes([a["bbox"] for a in annotations])
    gt_classes = np.array([a["category_id"] for a in annotations], dtype=np.int64)
    crowd = np.array([bool(a.get("iscrowd", 0)) for a in annotations], dtype=bool)
    det_boxes = _as_boxes([d["bbox"] for d in detections])
    iou = box_iou_xywh(det_boxes, gt_boxes)
    coverage = box_coverage_xywh(det_boxes, gt_boxes)
    found = np.zeros(len(annotations), dtype=bool)
    verdicts: list[Match | None] = [None] * len(detections)
    order = sorted(range(len(detections)), key=lambda i: -detections[i]["score"])  # stable, as COCOeval's mergesort
    for d in order:
        same = gt_classes == detections[d]["category_id"]
        hits = iou[d] >= iou_threshold
        free = same & ~crowd & ~found & hits
        if free.any():
            g = _last_argmax(iou[d], free)
            found[g] = True
            verdicts[d] = Match("correct", annotations[g]["id"])
            continue
        in_crowd = same & crowd & (coverage[d] >= iou_threshold)
        if in_crowd.any():
            verdicts[d] = Match("crowd", annotations[_last_argmax(coverage[d], in_crowd)]["id"])
            continue
        near = iou[d] >= background_iou
        if (same & ~crowd & hits).any():
            verdict = "duplicate"
        elif (~same & ~crowd & hits).any():
            verdict = "class"
        elif (same & ~crowd & near).any():
            verdict = "localisation"
        elif (~same & ~crowd & near).any():
            verdict = "both"
        else:
            verdict = "background"
        verdicts[d] = Match(verdict, None)
    return verdicts  # type: ignore[return-value]


def match_detections(gt: dict, detections: list[dict], iou_threshold: float = MATCH_IOU,
                     background_iou: float = BACKGROUND_IOU) -> list[Match]:
    """Verdicts for a whole COCO results list against its ground truth, aligned with `detections`."""
    annotations_of: dict[int, list[dict]] = defaultdict(list)
    for ann in gt["annotations"]:
        annotations_of[ann["image_id"]].append(ann)
    positions_of: dict[int, list[int]] = defaultdict(list)
    for i, det in enumerate(detections):
        positions_of[det["image_id"]].append(i)
    verdicts: list[Match | None] = [None] * len(detections)
    for image_id, positions in positions_of.items():
        image_matches = match_image(annotations_of.get(image_id, []), [detections[i] for i in positions],
                                    iou_threshold, background_iou)
        for i, match in zip(positions, image_matches):
            verdicts[i] = match
    return verdicts  # type: ignore[return-value]
