"""Matching detections to ground truth for the qualitative figures: cases checked by hand, and the
correct/crowd verdicts against pycocotools' own matching at IoU 0.5."""

from __future__ import annotations

import numpy as np
import pytest

from reference_analyze import detection_problem
from kdeval.metrics.coco_ap import ground_truth_coco, run_cocoeval
from kdeval.metrics.matching import box_coverage_xywh, box_iou_xywh, match_detections, match_image
from kdeval.vocab import DETECTION_VERDICTS


def gt_box(ann_id, category_id, bbox, crowd=0):
    return {"id": ann_id, "image_id": 1, "category_id": category_id, "bbox": bbox, "iscrowd": crowd}


def det(category_id, bbox, score):
    return {"image_id": 1, "category_id": category_id, "bbox": bbox, "score": score}


def verdicts(annotations, detections):
    return [m.verdict for m in match_image(annotations, detections)]


def test_iou_and_coverage_by_hand():
    assert box_iou_xywh([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 10, 10], [20, 20, 5, 5]]).tolist() == [[1.0, 50 / 150, 0.0]]
    assert box_iou_xywh([[0, 0, 0, 0]], [[0, 0, 0, 0]]).tolist() == [[0.0]]  # empty boxes: 0, not NaN
    assert box_coverage_xywh([[0, 0, 10, 10]], [[0, 0, 100, 100], [5, 0, 100, 100]]).tolist() == [[1.0, 0.5]]
    assert box_iou_xywh([], [[0, 0, 1, 1]]).shape == (0, 1)


def test_each_verdict_by_hand():
    annotations = [gt_box(10, 1, [0, 0, 10, 10]), gt_box(11, 2, [50, 50, 10, 10])]
    detections = [
        det(1, [0, 0, 10, 10], 0.9),  # correct, finds 10
        det(1, [1, 0, 10, 10], 0.8),  # same object again: duplicate
        det(1, [50, 50, 10, 10], 0.7),  # on the class-2 object: class
        det(1, [5, 5, 10, 10], 0.3),  # IoU 25/175 = 0.14 with its class: localisation
        det(1, [55, 55, 10, 10], 0.2),  # IoU 0.14 with another class only: both
        det(2, [90, 90, 5, 5], 0.1),  # nothing near: background
    ]
    assert verdicts(annotations, detections) == ["correct", "duplicate", "class", "localisation", "both", "background"]
    assert match_image(annotations, detections)[0].annotation_id == 10


def test_greedy_by_score_not_by_input_order():
    annotations = [gt_box(1, 1, [0, 0, 10, 10])]
    detections = [det(1, [1, 1, 10, 10], 0.4), det(1, [0, 0, 10, 10], 0.9)]
    assert verdicts(annotations, detections) == ["duplicate", "correct"]


def test_best_iou_wins_and_a_second_object_is_still_found():
    annotations = [gt_box(1, 1, [0, 0, 10, 10]), gt_box(2, 1, [4, 0, 10, 10])]
    detections = [det(1, [3, 0, 10, 10], 0.9), det(1, [0, 0, 10, 10], 0.8)]
    matches = match_image(annotations, detections)
    assert [m.annotation_id for m in matches] == [2, 1]


def test_crowd_regions_neither_credit_nor_penalise():
    annotations = [gt_box(1, 1, [0, 0, 100, 100], crowd=1), gt_box(2, 1, [0, 0, 10, 10])]
    detections = [det(1, [0, 0, 10, 10], 0.9), det(1, [20, 20, 10, 10], 0.8), det(2, [40, 40, 10, 10], 0.7)]
    assert verdicts(annotations, detections) == ["correct", "crowd", "background"]


def test_empty_cases():
    assert match_image([gt_box(1, 1, [0, 0, 5, 5])], []) == []
    assert verdicts([], [det(1, [0, 0, 5, 5], 0.5)]) == ["background"]
    assert match_detections({"annotations": []}, []) == []


def test_verdicts_hold_at_every_score_threshold():
    gt, detections = detection_problem(15, 4, 2, 25, seed=7)
    full = match_detections(gt, detections)
    for threshold in (0.2, 0.5, 0.8):
        kept = [i for i, d in enumerate(detections) if d["score"] >= threshold]
        again = match_detections(gt, [detections[i] for i in kept])
        assert again == [full[i] for i in kept]


@pytest.mark.parametrize("seed,integer", [(0, False), (1, True), (2, False)])
def test_correct_and_crowd_equal_cocoeval_matching_at_iou_half(seed, integer):
    gt, detections = detection_problem(25, 5, 2, 30, seed=seed, integer_boxes=integer)
    matches = match_detections(gt, detections)
    assert {m.verdict for m in matches} <= set(DETECTION_VERDICTS)
    evaluator = run_cocoeval(ground_truth_coco(gt), detections, iou_thresholds=[0.5])
    expected = {}
    for record in evaluator.evalImgs:
        if record is None or record["aRng"] != [0, 1e10]:
            continue
        for det_id, gt_id, ignored in zip(record["dtIds"], record["dtMatches"][0], record["dtIgnore"][0]):
            expected[det_id - 1] = ("crowd" if ignored else "correct") if gt_id > 0 else "wrong", int(gt_id) or None
    assert len(expected) == len(detections)
    for i, match in enumerate(matches):
        verdict = match.verdict if match.verdict in ("correct", "crowd") else "wrong"
        assert (verdict, match.annotation_id) == expected[i], (i, detections[i])
    assert sum(m.verdict == "correct" for m in matches) == int(np.sum([v == "correct" for v, _ in expected.values()]))
