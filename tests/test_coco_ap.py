"""kdeval's COCO AP (one pass over arrays) against pycocotools' own COCO.loadRes + COCOeval pipeline."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from kdeval.metrics.coco_ap import coco_stats, per_category_stats, pycocotools_stats
from kdeval.vocab import COCO_STAT_NAMES

from conftest import perfect_detections
from reference_analyze import detection_problem


def reference_stats(gt: dict, detections: list[dict], tmp_path) -> list[float]:
    """pycocotools exactly as users run it: files on disk, COCO(), loadRes, evaluate/accumulate/summarize."""
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_file))
        coco_dt = coco_gt.loadRes(copy.deepcopy(detections))
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return list(evaluator.stats)


def test_perfect_predictions_score_one(tiny_coco):
    stats = coco_stats(tiny_coco, perfect_detections(tiny_coco))
    assert stats["AP"] == pytest.approx(1.0)
    assert stats["AP50"] == pytest.approx(1.0)
    assert stats["APs"] == pytest.approx(1.0)  # all objects of tiny_coco are small (< 32²)
    assert stats["APl"] == -1.0  # no large ground truth: COCOeval's -1


def test_empty_results_score_zero_where_pycocotools_crashes(tiny_coco):
    stats = coco_stats(tiny_coco, [])
    assert stats["AP"] == 0.0 and stats["AP50"] == 0.0 and stats["AR100"] == 0.0


def test_matches_pycocotools_on_random_detections(tiny_coco, tmp_path):
    rng = np.random.default_rng(0)
    detections = []
    for _ in range(60):
        image = int(rng.integers(1, 4))
        x, y = rng.uniform(0, 24, size=2)
        w, h = rng.uniform(2, 20, size=2)
        detections.append({"image_id": image, "category_id": int(rng.integers(1, 3)), "bbox": [x, y, w, h], "score": float(rng.random())})
    detections += perfect_detections(tiny_coco)
    ours = [coco_stats(tiny_coco, detections)[name] for name in COCO_STAT_NAMES]
    assert ours == reference_stats(tiny_coco, detections, tmp_path)


def test_matches_pycocotools_on_a_shapes_split(tiny_shapes, tmp_path):
    gt = json.loads((tiny_shapes / "annotations" / "instances_val.json").read_text())
    rng = np.random.default_rng(1)
    detections = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0, 0.1 * max(w, h), size=4)
        category = ann["category_id"] if rng.random() < 0.7 else int(rng.integers(1, 7))
        detections.append({"image_id": ann["image_id"], "category_id": category, "bbox": [x + jitter[0], y + jitter[1], max(1, w + jitter[2]), max(1, h + jitter[3])], "score": float(rng.random())})
    ours = [coco_stats(gt, detections)[name] for name in COCO_STAT_NAMES]
    assert ours == reference_stats(gt, detections, tmp_path)


def test_a_detection_on_a_crowd_region_is_not_a_false_positive(tiny_coco):
    with_crowd_hit = perfect_detections(tiny_coco) + [{"image_id": 2, "category_id": 2, "bbox": [0, 0, 32, 32], "score": 0.95}]
    assert coco_stats(tiny_coco, with_crowd_hit)["AP"] == pytest.approx(1.0)


def test_inputs_are_not_mutated(tiny_coco):
    detections = perfect_detections(tiny_coco)
    gt_before, dets_before = copy.deepcopy(tiny_coco), copy.deepcopy(detections)
    coco_stats(tiny_coco, detections)
    assert tiny_coco == gt_before and detections == dets_before


def test_missing_area_is_filled_from_the_box(tiny_coco):
    for ann in tiny_coco["annotations"]:
        del ann["area"]
    assert coco_stats(tiny_coco, perfect_detections(tiny_coco))["AP"] == pytest.approx(1.0)


PROBLEMS = [
    # (images, categories, supercategories, detections per image, seed, integer boxes)
    (40, 6, 2, 30, 0, False),
    (40, 6, 3, 30, 1, True),  # integer boxes and two-decimal scores: IoU and score ties
    (10, 2, 1, 260, 2, False),  # over 100 detections per image and class: maxDets 100 cuts, 1 and 10 too
    (15, 1, 1, 8, 3, True),  # one category, few detections: maxDets 1 and 10 differ from 100
    (30, 9, 9, 15, 4, False),
]


@pytest.mark.parametrize("problem", PROBLEMS, ids=[f"seed{p[4]}" for p in PROBLEMS])
def test_the_12_stats_equal_pycocotools_bit_for_bit(problem):
    """Crowds, segmentation areas below the box's, every object size, misses, duplicates, confusions."""
    *shape, seed, integer = problem
    gt, detections = detection_problem(*shape, seed=seed, integer_boxes=integer)
    assert coco_stats(gt, detections) == pycocotools_stats(gt, detections)


def test_edge_cases_equal_pycocotools(tiny_coco):
    gt, detections = detection_problem(12, 3, 1, 20, seed=9)
    cases = {
        "no detections": (gt, []),
        "detections of an unknown image and category": (gt, detections + [
            {"image_id": 5, "category_id": 1, "bbox": [1, 1, 5, 5], "score": 0.9},
            {"image_id": gt["images"][0]["id"], "category_id": 999, "bbox": [1, 1, 5, 5], "score": 0.9}]),
        "a category without ground truth": (dict(gt, categories=gt["categories"] + [{"id": 500, "name": "none", "supercategory": "s0"}]), detections),
        "no annotations at all": (dict(gt, annotations=[]), detections),
        "only crowds": (dict(gt, annotations=[dict(a, iscrowd=1) for a in gt["annotations"]]), detections),
        "tiny coco": (tiny_coco, perfect_detections(tiny_coco)),
        # pycocotools reads a match to annotation id 0 as no match: that detection is a false positive
        "annotation ids from 0": (dict(gt, annotations=[dict(a, id=a["id"] - 1) for a in gt["annotations"]]), detections),
        "annotation 0 found by a perfect detection": (dict(tiny_coco, annotations=[dict(a, id=a["id"] - 1) for a in tiny_coco["annotations"]]),
                                                      perfect_detections(tiny_coco)),
    }
    for name, (ground_truth, found) in cases.items():
        assert coco_stats(ground_truth, found) == pycocotools_stats(ground_truth, found), name
    assert coco_stats(*cases["annotation 0 found by a perfect detection"])["AP"] < 1  # the quirk did apply


def test_per_category_stats_follow_the_same_arrays():
    gt, detections = detection_problem(30, 4, 2, 25, seed=11)
    table = per_category_stats(gt, detections)
    for category in gt["categories"]:
        alone = dict(gt, categories=[category])
        stats = pycocotools_stats(alone, [d for d in detections if d["category_id"] == category["id"]])
        assert [table.loc[category["id"], m] for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")] == [
            stats[m] for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
