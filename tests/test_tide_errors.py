"""kdeval's TIDE breakdown (kdeval.metrics.tide_errors) against tidecv 1.0.1 (kdeval.metrics.tide runs
it), its departure from tidecv's averaging (dbolya/tide issue #28), and its image resamples against
the datasets that hold the resampled images."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from reference_analyze import detection_problem

from kdeval.metrics.bootstrap import resample_counts
from kdeval.metrics.coco_ap import coco_stats
from kdeval.metrics.tide import tide_errors
from kdeval.metrics.tide_errors import (
    BKG,
    BREAKDOWN_KEYS,
    CLS,
    IGNORED,
    LOC,
    ResampledTide,
    _outcome,
    resampled_tide,
    resampled_tide_breakdown,
    tide_breakdown,
)


def tidecv_breakdown(gt: dict, detections: list[dict]) -> dict[str, float]:
    return tide_errors(gt, {"m": detections}).loc["m"].to_dict()


def assert_equal_to_tidecv(gt: dict, detections: list[dict], both_averagings: bool = True) -> dict[str, float]:
    expected = tidecv_breakdown(gt, detections)
    ours = ResampledTide.from_coco(gt, detections)
    for averaging in ("tidecv", "coco") if both_averagings else ("tidecv",):
        assert ours.breakdown(averaging) == pytest.approx(expected, abs=1e-6, nan_ok=True), averaging
    return expected


# ---------------------------------------------------------------- random problems


def varied_problem(seed: int) -> tuple[dict, list[dict]]:
    """detection_problem with what it lacks: images without detections, an image list that is not
    in id order, detections not grouped by image; odd seeds have integer boxes and two-decimal
    scores (IoU and score ties), seed 2 over 100 detections per image (tidecv's per-image cut)."""
    rng = np.random.default_rng(seed)
    gt, detections = detection_problem(80, 6, 2, 120 if seed == 2 else 35, seed=seed, integer_boxes=seed % 2 == 1)
    silent = {image["id"] for image in gt["images"][::6]}
    detections = [d for d in detections if d["image_id"] not in silent]
    gt["images"] = [gt["images"][i] for i in rng.permutation(len(gt["images"]))]
    detections = [detections[i] for i in rng.permutation(len(detections))]
    return gt, detections


@pytest.mark.parametrize("seed", range(8))
def test_equal_to_tidecv_on_random_problems(seed):
    gt, detections = varied_problem(seed)
    expected = assert_equal_to_tidecv(gt, detections)
    # the problem holds what it should: detections ignored in crowds, every error type
    assert np.any(_outcome(gt, detections).det_status == IGNORED)
    assert all(expected[e] > 0 for e in ("Cls", "Loc", "Both", "Dupe", "Bkg"))


# ---------------------------------------------------------------- cases tidecv handles its own way


def dataset(images: list[int], annotations: list[tuple], categories=(1, 2, 3)) -> dict:
    """annotations: (image, category, box[, crowd])."""
    return {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 640} for i in images],
        "annotations": [
            {"id": n + 1, "image_id": a[0], "category_id": a[1], "bbox": list(a[2]), "area": a[2][2] * a[2][3],
             "iscrowd": a[3] if len(a) > 3 else 0}
            for n, a in enumerate(annotations)
        ],
        "categories": [{"id": c, "name": f"c{c}", "supercategory": "s"} for c in categories],
    }


def dets(*rows: tuple) -> list[dict]:
    """rows: (image, category, box, score)."""
    return [{"image_id": i, "category_id": c, "bbox": list(b), "score": s} for i, c, b, s in rows]


def filler(first_image: int, n: int, seed: int) -> tuple[list[int], list[tuple], list[dict]]:
    """A few ordinary images, so that no class hangs on one case."""
    rng = np.random.default_rng(seed)
    images, anns, found = [], [], []
    for i in range(first_image, first_image + n):
        images.append(i)
        for c in (1, 2, 3):
            x, y = rng.uniform(0, 400, 2)
            anns.append((i, c, (float(x), float(y), 60.0, 50.0)))
            found.append((i, c, (float(x) + rng.normal(0, 8), float(y), 60.0, 50.0), float(rng.uniform(0.2, 1))))
            found.append((i, c, (float(rng.uniform(0, 500)), float(rng.uniform(0, 500)), 40.0, 40.0), float(rng.uniform(0, 1))))
    return images, anns, dets(*found)


def case_iou_boundaries():
    """IoU exactly .5 matches (≥ .5); a second detection at exactly .5 on the used box falls in Loc's
    closed range [.1, .5] and its fix drops it; exactly .1 is Loc, not Bkg; exactly .5 with another
    class is Cls; a box missed outright."""
    images, anns, found = filler(10, 4, 0)
    anns += [(1, 1, (0, 0, 10, 20)), (1, 1, (100, 100, 10, 10)), (1, 2, (300, 300, 10, 20)), (1, 3, (500, 500, 30, 30)),
             (2, 1, (0, 0, 50, 50))]
    found += dets((1, 1, (0, 0, 10, 10), 0.9), (1, 1, (0, 0, 10, 10), 0.8), (1, 1, (100, 100, 10, 1), 0.7),
                  (1, 1, (300, 300, 10, 10), 0.6), (1, 1, (0, 0, 10, 12), 0.5), (1, 2, (200, 20, 5, 5), 0.4),
                  (2, 2, (0, 0, 50, 50), 0.95))
    return dataset([1, 2, *images], anns), found


def case_crowds():
    """Detections more than half inside a crowd region of their class are ignored, exactly half
    inside are not; ignored detections still get errors: Loc and Cls ones that their fix makes true
    positives, and Bkg on an image whose only box is a crowd."""
    images, anns, found = filler(10, 4, 1)
    anns += [(1, 1, (0, 0, 100, 100), 1), (1, 1, (0, 0, 20, 20)), (1, 2, (0, 0, 100, 100), 1),
             (1, 1, (60, 60, 20, 20)), (2, 1, (0, 0, 200, 200), 1)]
    found += dets((1, 1, (0, 0, 40, 40), 0.9),  # ignored; IoU .25 with the box: Loc, fixed into a true positive
                  (1, 1, (90, 0, 20, 10), 0.85),  # exactly half inside the crowd: a false positive
                  (1, 2, (60, 60, 20, 22), 0.8),  # inside its class's crowd, ignored; IoU .9 with a class-1 box: Cls
                  (1, 3, (10, 10, 20, 20), 0.7),  # no crowd of its class: counts
                  (2, 1, (10, 10, 50, 50), 0.9), (2, 2, (10, 10, 50, 50), 0.6))  # crowd-only image: Bkg
    return dataset([1, 2, *images], anns), found


def case_ties():
    """Equal IoU with two boxes goes to the first in file order (pycocotools takes the last); equal
    scores across images and within one, mixing true and false positives (the base and the fixed
    evaluations order them differently); the image list in descending id order."""
    images, anns, found = filler(20, 4, 2)
    anns += [(1, 1, (0, 0, 10, 12)), (1, 1, (0, -2, 10, 12)), (2, 1, (0, 0, 30, 30)), (3, 1, (0, 0, 30, 30)),
             (4, 2, (0, 0, 30, 30)), (4, 2, (100, 100, 30, 30))]
    found += dets((1, 1, (0, 0, 10, 10), 0.9), (1, 1, (0, -6, 10, 12), 0.8),  # IoU .83 with both; .33 and .5
                  (2, 1, (300, 300, 30, 30), 0.5), (2, 1, (0, 0, 30, 30), 0.5),
                  (3, 1, (0, 0, 30, 30), 0.5), (3, 1, (300, 300, 30, 30), 0.5),
                  (4, 2, (0, 0, 30, 30), 0.5), (4, 2, (200, 200, 30, 30), 0.5), (4, 2, (100, 100, 31, 30), 0.5))
    return dataset(sorted([1, 2, 3, 4, *images], reverse=True), anns), found


def case_best_match():
    """Loc and Cls errors on one box share tidecv's BestGTMatch: only the highest-scored is fixed
    (whichever type it is), the others vanish under their fix; a box someone could fix is no Miss;
    Cls beats Dupe in tidecv's order."""
    images, anns, found = filler(10, 4, 3)
    anns += [(1, 1, (0, 0, 40, 40)), (2, 1, (0, 0, 40, 40)), (3, 1, (0, 0, 40, 40)), (3, 2, (2, 0, 40, 40))]
    found += dets((1, 1, (0, 0, 40, 100), 0.9), (1, 2, (0, 0, 40, 42), 0.8), (1, 1, (0, 0, 40, 90), 0.7),
                  (2, 2, (0, 0, 40, 42), 0.9), (2, 1, (0, 0, 40, 100), 0.8),
                  (3, 1, (0, 0, 40, 40), 0.9), (3, 2, (2, 0, 40, 40), 0.85), (3, 1, (1, 0, 40, 40), 0.7))
    return dataset([1, 2, 3, *images], anns), found


def case_many_detections():
    """Over 100 detections on one image across classes: tidecv keeps the first 100 of the image
    (pycocotools keeps 100 per class); detections on an image the ground truth does not list."""
    rng = np.random.default_rng(4)
    images, anns, found = filler(10, 3, 4)
    boxes = [(float(x), float(y), 50.0, 50.0) for x, y in rng.uniform(0, 500, (8, 2))]
    anns += [(1, 1 + k % 3, b) for k, b in enumerate(boxes)]
    for k in range(140):
        x, y, w, h = boxes[k % 8]
        found += dets((1, int(rng.integers(1, 4)), (x + rng.normal(0, 10), y + rng.normal(0, 10), w, h), float(rng.random())))
    found += dets((999, 1, (0, 0, 10, 10), 0.99))
    return dataset([1, *images], anns), found


EDGE_CASES = [case_iou_boundaries, case_crowds, case_ties, case_best_match, case_many_detections]


@pytest.mark.parametrize("case", EDGE_CASES, ids=[c.__name__[5:] for c in EDGE_CASES])
def test_equal_to_tidecv_on_edge_cases(case):
    gt, detections = case()
    assert_equal_to_tidecv(gt, detections)


def test_edge_cases_take_the_paths_they_are_for():
    """The cases above would pass without exercising anything if they missed their targets."""
    crowds = _outcome(*case_crowds())
    fixed_ignored = crowds.det_fixed & (crowds.det_status == IGNORED)
    assert set(crowds.det_error[fixed_ignored]) == {CLS, LOC}  # ignored detections fixed into true positives
    assert np.any((crowds.det_status == IGNORED) & (crowds.det_error == BKG))
    assert tide_breakdown(*case_iou_boundaries())["Miss"] > 0
    assert len(resampled_tide(*case_ties()).entries.mixed_first) > 0  # base and fixed orders differ somewhere
    best = _outcome(*case_best_match())
    assert np.any(best.det_fixed & (best.det_error == LOC)) and np.any(best.det_fixed & (best.det_error == CLS))


def test_a_model_without_detections():
    """tidecv divides by zero (kdeval's tidecv wrapper gives NaN for every error); here AP50 is 0,
    the fixes that leave nothing to average are NaN, the others 0."""
    gt, _ = detection_problem(10, 3, 1, 5, seed=0)
    ours = tide_breakdown(gt, [])
    assert ours["AP50"] == 0 == tidecv_breakdown(gt, [])["AP50"]
    assert np.isnan(ours["Miss"]) and np.isnan(ours["FN"])
    assert all(ours[e] == 0 for e in ("Cls", "Loc", "Both", "Dupe", "Bkg", "FP"))


# ---------------------------------------------------------------- dbolya/tide issue #28


def test_a_predicted_class_without_ground_truth_is_averaged_as_pycocotools_does():
    gt, detections = detection_problem(40, 4, 2, 30, seed=5)
    for a in gt["annotations"]:
        a["iscrowd"] = 0  # pycocotools' and tidecv's crowd rules differ; not this test's subject
    gt["categories"].append({"id": 100, "name": "listed, never annotated", "supercategory": "s0"})
    rng = np.random.default_rng(5)
    extra = [{"image_id": image["id"], "category_id": category, "score": float(rng.random()),
              "bbox": [float(v) for v in rng.uniform(0, 300, 4)]}
             for image in gt["images"][:20] for category in (100, 200)]  # 200: not even listed
    detections = detections + extra
    ours = ResampledTide.from_coco(gt, detections)
    pycocotools_ap50 = coco_stats(gt, detections)["AP50"]
    tidecv = tidecv_breakdown(gt, detections)
    assert ours.breakdown("coco")["AP50"] == pytest.approx(pycocotools_ap50, abs=1e-12)
    assert ours.breakdown("tidecv") == pytest.approx(tidecv, abs=1e-6)  # tidecv's way on request
    assert tidecv["AP50"] < pycocotools_ap50 - 0.01  # two classes at AP 0 in its mean
    # without those classes tidecv and pycocotools agree here, so the departure is the averaging alone
    assert tidecv_breakdown(gt, detections[: -len(extra)])["AP50"] == pytest.approx(
        coco_stats(gt, detections[: -len(extra)])["AP50"], abs=1e-12)


def test_a_fix_that_takes_a_class_s_last_box_away_leaves_it_out_of_the_mean():
    """pycocotools' rule in every evaluation: class 2's one box is missed (its one detection is far
    away), so the Miss and FalseNeg fixes leave it without ground truth; tidecv still averages it, at
    AP 0, because it has a prediction."""
    gt = dataset([1, 2], [(1, 1, (0, 0, 50, 50)), (2, 2, (0, 0, 50, 50))], categories=(1, 2))
    found = dets((1, 1, (0, 0, 50, 50), 0.9), (2, 2, (300, 300, 50, 50), 0.8))
    tidecv = assert_equal_to_tidecv(gt, found, both_averagings=False)
    assert (tidecv["AP50"], tidecv["Miss"], tidecv["FN"]) == (0.5, 0.0, 0.0)
    ours = tide_breakdown(gt, found)
    assert (ours["AP50"], ours["Miss"], ours["FN"]) == (0.5, 0.5, 0.5)


# ---------------------------------------------------------------- resamples


def test_counts_of_one_give_the_breakdown_exactly():
    gt, detections = varied_problem(1)  # two-decimal scores: mixed tie groups
    tide = resampled_tide(gt, detections)
    assert len(tide.entries.mixed_first) > 0
    ones = np.ones((2, tide.n_images), np.int32)
    for averaging in ("coco", "tidecv"):
        expected = tide.breakdown(averaging)
        rows = resampled_tide_breakdown(tide, ones, averaging)
        assert rows.shape == (2, len(BREAKDOWN_KEYS))
        assert list(rows[0]) == [expected[k] for k in BREAKDOWN_KEYS]
    assert tide.breakdown() == tide_breakdown(gt, detections)


def duplicated_dataset(gt: dict, detections: list[dict], counts: np.ndarray) -> tuple[dict, list[dict]]:
    """The images in sorted id order, each as many times as counted, renumbered 1, 2, …; annotation
    ids from 1."""
    anns_of, dets_of = {}, {}
    for a in gt["annotations"]:
        anns_of.setdefault(a["image_id"], []).append(a)
    for d in detections:
        dets_of.setdefault(d["image_id"], []).append(d)
    images, annotations, found = [], [], []
    for image_id, count in zip(sorted(i["id"] for i in gt["images"]), counts):
        for _ in range(count):
            new_id = len(images) + 1
            images.append({"id": new_id, "file_name": f"{new_id}.jpg", "width": 640, "height": 640})
            annotations += [{**a, "id": len(annotations) + 1 + n, "image_id": new_id} for n, a in enumerate(anns_of.get(image_id, []))]
            found += [{**d, "image_id": new_id} for d in dets_of.get(image_id, [])]
    return {**gt, "images": images, "annotations": annotations}, found


@pytest.mark.parametrize("seed", [0, 3])
def test_a_resample_equals_the_dataset_of_its_images(seed):
    """Copies of one detection sit together in the accumulation (d1 d1 d2 d2) where the duplicated
    dataset interleaves two detections of one image and class with the same score (d1 d2 d1 d2);
    scores are made distinct within each image, ties across images stay."""
    gt, detections = varied_problem(seed)
    gt = {**gt, "images": sorted(gt["images"], key=lambda i: i["id"])}
    detections = copy.deepcopy(detections)
    within_image = {}
    for d in detections:
        k = within_image[d["image_id"]] = within_image.get(d["image_id"], 0) + 1
        d["score"] = d["score"] + k * 1e-9
    tide = resampled_tide(gt, detections)
    counts = resample_counts(tide.n_images, 3, seed)
    counts[0, :3] = [3, 0, 2]
    for averaging in ("coco", "tidecv"):
        rows = resampled_tide_breakdown(tide, counts, averaging)
        for row, count in zip(rows, counts):
            expected = tide_breakdown(*duplicated_dataset(gt, detections, count), averaging=averaging)
            np.testing.assert_allclose(row, [expected[k] for k in BREAKDOWN_KEYS], rtol=0, atol=1e-12)
    # and one duplicated dataset through tidecv itself
    assert_equal_to_tidecv(*duplicated_dataset(gt, detections, counts[1]), both_averagings=False)


def test_counts_must_cover_every_image():
    gt, detections = detection_problem(5, 2, 1, 3, seed=0)
    with pytest.raises(ValueError, match="5 images"):
        resampled_tide_breakdown(resampled_tide(gt, detections), np.ones((1, 4), np.int32))
