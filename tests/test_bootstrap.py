"""The paired image bootstrap (kdeval.metrics.bootstrap): COCO AP and the COCO-analyze error curves on
image resamples, against pycocotools run on a dataset that holds the drawn images as real copies.

A resample is a count per image (images in sorted id order). Its reference is a dataset built from
the sorted list of drawn positions: every copy a new image (ids 1..n in that order), its ground
truth copied under new annotation ids, its detections copied onto the new image. pycocotools on that
dataset is what the resampled statistics must equal. Copies of one detection then sit next to each
other in pycocotools' score order, as the weighted accumulation assumes, except for two detections
of one image and category with the same score (pycocotools interleaves their copies; see
kdeval.metrics.bootstrap): the exactness problems keep scores distinct within an image and share
them between images, so that ties across images are exercised.
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from kdeval.analysis.evaluation import evaluate_detections
from kdeval.errors import KdevalError
from kdeval.metrics.analyze import error_curves, resampled_error_aps, resampled_error_curves
from kdeval.metrics.bootstrap import BootstrapSettings, counts_of_indices, resample_counts
from kdeval.metrics.coco_ap import (
    IOU_THRESHOLDS,
    MAX_DETS,
    coco_stats,
    per_category_stats,
    pycocotools_stats,
    resampled_coco,
    resampled_stats,
)
from kdeval.metrics.cocoeval import cocoeval_arrays
from kdeval.metrics.intervals import interval_table
from kdeval.vocab import ANALYSIS_SETTINGS, AREA_RANGES, COCO_STAT_NAMES, TABLE_METRICS

from reference_analyze import detection_problem, reference_precision

# ---------------------------------------------------------------- problems


def detections_on(gt: dict, dets_per_image: int, seed: int) -> list[dict]:
    """detection_problem's noise model on a given ground truth: the same kinds of error (poor
    localisation, duplicates, confusions within and across supercategories, background, misses),
    drawn from `seed`, so that several detectors can be scored on one ground truth."""
    rng = np.random.default_rng(seed)
    cat_ids = sorted(c["id"] for c in gt["categories"])
    super_of = {c["id"]: c.get("supercategory") for c in gt["categories"]}
    same_super = {c: [d for d in cat_ids if super_of[d] == super_of[c] and d != c] for c in cat_ids}
    objects = defaultdict(list)
    for ann in gt["annotations"]:
        objects[ann["image_id"]].append((ann["bbox"], ann["category_id"]))
    detections = []
    for image in gt["images"]:
        width, height = image.get("width", 640), image.get("height", 640)
        own = objects[image["id"]]
        for _ in range(dets_per_image):
            if own and rng.random() < 0.6:
                (x, y, w, h), cat = own[int(rng.integers(len(own)))]
                jitter = rng.normal(0, rng.choice([0.03, 0.15, 0.4]), 4) * [w, h, w, h]
                b = [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]), max(1.0, h + jitter[3])]
                r = rng.random()
                if r < 0.15 and same_super[cat]:
                    cat = int(rng.choice(same_super[cat]))
                elif r < 0.25:
                    cat = int(rng.choice(cat_ids))
            else:
                side = float(np.exp(rng.uniform(np.log(6), np.log(300))))
                w, h = side * rng.uniform(0.6, 1.4), side * rng.uniform(0.6, 1.4)
                b = [rng.uniform(0, max(1.0, width - w)), rng.uniform(0, max(1.0, height - h)), w, h]
                cat = int(rng.choice(cat_ids))
            detections.append({"image_id": image["id"], "category_id": cat, "bbox": [round(float(v), 2) for v in b],
                               "score": float(round(rng.random(), 4))})
    return detections


def _by_image(items: list[dict]) -> dict[int, list[dict]]:
    grouped = defaultdict(list)
    for item in items:
        grouped[item["image_id"]].append(item)
    return grouped


def awkward_problem(seed: int, n_images: int = 40, n_categories: int = 6, n_supercategories: int = 2,
                    dets_per_image: int = 30, crowded: int = 130) -> tuple[dict, list[dict]]:
    """detection_problem (crowds and every object size), made awkward on purpose: the image list is
    shuffled (file order is not id order), two images carry over 100 detections of one category (the
    cut at maxDets 100), two have no detections, one has no ground truth (and still detections).
    Scores come from one grid shared by all images, distinct within an image: many ties across
    images, none within one."""
    gt, detections = detection_problem(n_images, n_categories, n_supercategories, dets_per_image, seed=seed)
    rng = np.random.default_rng(seed + 1000)
    ids = sorted(image["id"] for image in gt["images"])
    anns, dets = _by_image(gt["annotations"]), _by_image(detections)
    with_objects = [i for i in ids if any(not a["iscrowd"] for a in anns[i])]
    busy = with_objects[:2]
    bare = [i for i in ids if i not in busy][3:5]
    blind = [i for i in ids if i not in busy and i not in bare][-1]
    for image_id in busy:
        target = next(a for a in anns[image_id] if not a["iscrowd"])
        x, y, w, h = target["bbox"]
        for k in range(crowded):
            if k % 3 == 0:  # near the object: true positives at ranks past 100 for some scores
                jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
                box = [x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]), max(1.0, h + jitter[3])]
            else:
                box = [rng.uniform(0, 500), rng.uniform(0, 500), rng.uniform(4, 140), rng.uniform(4, 140)]
            dets[image_id].append({"image_id": image_id, "category_id": target["category_id"],
                                   "bbox": [round(float(v), 2) for v in box], "score": 0.0})
    for image_id in bare:
        dets[image_id] = []
    anns[blind] = []
    grid = np.arange(1, 1001) / 1001
    for image_id in ids:
        for det, score in zip(dets[image_id], rng.choice(grid, len(dets[image_id]), replace=False)):
            det["score"] = float(score)
    images = list(gt["images"])
    rng.shuffle(images)
    annotations = [a for i in ids for a in anns[i]]
    gt = {"images": images, "annotations": annotations, "categories": gt["categories"]}
    return gt, [d for i in ids for d in dets[i]]


def duplicated(gt: dict, detections: list[dict], indices) -> tuple[dict, list[dict]]:
    """The dataset a resample stands for: the images at `indices` (positions in sorted id order,
    repeats allowed), in sorted order, each copy a new image with ids 1..n, its annotations under
    new ids from 1, its detections on the new image."""
    ids = sorted(image["id"] for image in gt["images"])
    image_of = {image["id"]: image for image in gt["images"]}
    anns, dets = _by_image(gt["annotations"]), _by_image(detections)
    images, annotations, results = [], [], []
    for new_id, position in enumerate(sorted(int(i) for i in indices), start=1):
        old = ids[position]
        images.append({**image_of[old], "id": new_id})
        for ann in anns[old]:
            annotations.append({**copy.deepcopy(ann), "id": len(annotations) + 1, "image_id": new_id})
        for det in dets[old]:
            results.append({**copy.deepcopy(det), "image_id": new_id})
    return {"images": images, "annotations": annotations, "categories": copy.deepcopy(gt["categories"])}, results


def positions_without(gt: dict, category_id: int) -> list[int]:
    """Positions (sorted id order) of the images holding no ground truth of `category_id`."""
    ids = sorted(image["id"] for image in gt["images"])
    holding = {a["image_id"] for a in gt["annotations"] if a["category_id"] == category_id}
    return [p for p, i in enumerate(ids) if i not in holding]


def resamples(gt: dict, detections: list[dict], seed: int, random: int) -> list[np.ndarray]:
    """`random` draws with replacement, then the awkward ones: one image many times (the one with
    most detections), only images without some category, only images without ground truth."""
    n = len(gt["images"])
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, n, n) for _ in range(random)]
    ids = sorted(image["id"] for image in gt["images"])
    per_image = _by_image(detections)
    draws.append(np.full(n, int(np.argmax([len(per_image[i]) for i in ids]))))
    for category in gt["categories"]:
        free = positions_without(gt, category["id"])
        if 0 < len(free) < n:
            draws.append(rng.choice(free, n))
            break
    else:
        raise AssertionError("every category is everywhere: no resample can leave one out")
    with_gt = {a["image_id"] for a in gt["annotations"]}
    draws.append(np.array([p for p, i in enumerate(ids) if i not in with_gt] * 2))
    return draws


@pytest.fixture(scope="module")
def awkward():
    problems = [awkward_problem(seed) for seed in (3, 4)]
    for gt, detections in problems:  # what the problems are for, checked rather than hoped for
        assert any(a["iscrowd"] for a in gt["annotations"])
        areas = np.array([a["area"] for a in gt["annotations"] if not a["iscrowd"]])
        assert (areas < 32**2).any() and ((areas >= 32**2) & (areas <= 96**2)).any() and (areas > 96**2).any()
        per_pair = pd.Series([(d["image_id"], d["category_id"]) for d in detections]).value_counts()
        assert per_pair.max() > 100
        assert [image["id"] for image in gt["images"]] != sorted(image["id"] for image in gt["images"])
        with_dets, with_gt = {d["image_id"] for d in detections}, {a["image_id"] for a in gt["annotations"]}
        assert {image["id"] for image in gt["images"]} - with_dets and {image["id"] for image in gt["images"]} - with_gt
    return problems


# ---------------------------------------------------------------- COCO AP against pycocotools


def test_resampled_stats_equal_pycocotools_on_the_duplicated_dataset(awkward):
    for problem_seed, (gt, detections) in enumerate(awkward):
        n = len(gt["images"])
        matched = resampled_coco(gt, detections)
        for indices in resamples(gt, detections, seed=problem_seed, random=4):
            ours = resampled_stats(matched, counts_of_indices(indices, n))[0]
            reference = np.array(list(pycocotools_stats(*duplicated(gt, detections, indices)).values()))
            np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12, err_msg=f"resample {sorted(map(int, indices))}")


def test_tied_scores_within_an_image_follow_pycocotools_copy_by_copy():
    """Scores rounded to one decimal and integer boxes: many detections of one image and category
    share a score, and pycocotools takes each copy's tied detections together (d1 d2 d1 d2)."""
    gt, detections = detection_problem(40, 3, 2, 40, seed=5, integer_boxes=True)
    for ann in gt["annotations"]:
        ann["id"] += 1  # pycocotools reads annotation id 0 as 'unmatched'
    detections = [{**d, "score": round(d["score"], 1)} for d in detections]
    pairs = pd.Series([(d["image_id"], d["category_id"], d["score"]) for d in detections])
    assert pairs.duplicated().sum() > 100  # ties within an image, not just across images
    n = len(gt["images"])
    matched, curves = resampled_coco(gt, detections), resampled_error_curves(gt, detections)
    rng = np.random.default_rng(0)
    for indices in [rng.integers(0, n, n) for _ in range(3)] + [np.full(n, 7)]:
        counts = counts_of_indices(indices, n)
        reference_gt, reference_dets = duplicated(gt, detections, indices)
        reference = np.array(list(pycocotools_stats(reference_gt, reference_dets).values()))
        np.testing.assert_allclose(resampled_stats(matched, counts)[0], reference, rtol=0, atol=1e-12)
        np.testing.assert_allclose(resampled_error_aps(curves, counts)[0],
                                   error_curves(reference_gt, reference_dets).ap_table().to_numpy(), rtol=0, atol=1e-12)


def test_a_resample_without_any_ground_truth_gives_minus_one_everywhere(awkward):
    gt, detections = awkward[0]
    indices = resamples(gt, detections, seed=0, random=0)[-1]
    assert (resampled_stats(resampled_coco(gt, detections), counts_of_indices(indices, len(gt["images"]))) == -1).all()
    assert set(pycocotools_stats(*duplicated(gt, detections, indices)).values()) == {-1.0}


def test_per_category_stats_equal_pycocotools_on_the_duplicated_dataset(awkward):
    seen_missing = False
    for problem_seed, (gt, detections) in enumerate(awkward):
        n = len(gt["images"])
        matched = resampled_coco(gt, detections)
        for indices in resamples(gt, detections, seed=10 + problem_seed, random=2):
            ours = resampled_stats(matched, counts_of_indices(indices, n), per_category=True)[0]  # (categories, 6)
            table = per_category_stats(*duplicated(gt, detections, indices))
            assert list(table.index) == sorted(c["id"] for c in gt["categories"])
            reference = table[list(TABLE_METRICS)].to_numpy(float)
            np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12, err_msg=f"resample {sorted(map(int, indices))}")
            seen_missing |= bool((reference[:, 0] == -1).any() & (reference[:, 0] > -1).any())
    assert seen_missing, "no resample left a category out: the -1 of a missing category went unchecked"


def test_resample_positions_follow_sorted_image_ids_not_file_order(awkward):
    gt, detections = awkward[0]
    n = len(gt["images"])
    in_file_order = copy.deepcopy(gt)
    in_file_order["images"] = sorted(in_file_order["images"], key=lambda image: image["id"])
    counts = resample_counts(n, 5, seed=1)
    np.testing.assert_array_equal(resampled_stats(resampled_coco(gt, detections), counts),
                                  resampled_stats(resampled_coco(in_file_order, detections), counts))


# ---------------------------------------------------------------- error curves against the reference


def reference_error_aps(gt: dict, detections: list[dict]) -> np.ndarray:
    """(settings, areas): ErrorCurves.ap's average (entries above -1) of mmdetection's arrays."""
    precision = reference_precision(gt, detections)
    out = np.full((len(ANALYSIS_SETTINGS), len(AREA_RANGES)), -1.0)
    for s in range(len(ANALYSIS_SETTINGS)):
        for a in range(len(AREA_RANGES)):
            block = precision[s, :, :, a]
            valid = block[block > -1]
            out[s, a] = valid.mean() if valid.size else -1.0
    return out


def test_resampled_error_aps_equal_the_reference_on_the_duplicated_dataset():
    gt, detections = awkward_problem(7, n_images=16, n_categories=4, n_supercategories=2, dets_per_image=14, crowded=105)
    n = len(gt["images"])
    assert any(a["iscrowd"] for a in gt["annotations"])
    whole = reference_error_aps(gt, detections)
    loc, sim, oth = (ANALYSIS_SETTINGS.index(s) for s in ("Loc", "Sim", "Oth"))
    assert (whole[sim] > whole[loc]).any() and (whole[oth] > whole[sim]).any()  # the added crowd regions matter
    matched = resampled_error_curves(gt, detections)
    for indices in resamples(gt, detections, seed=5, random=2):
        ours = resampled_error_aps(matched, counts_of_indices(indices, n))[0]
        reference = reference_error_aps(*duplicated(gt, detections, indices))
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-12, err_msg=f"resample {sorted(map(int, indices))}")


# ---------------------------------------------------------------- weight one everywhere


def sequential_mean(precision: np.ndarray) -> np.ndarray:
    """Mean over axis 1 (the 101 recall thresholds) summed left to right, as the compiled
    accumulation sums: numpy's pairwise sum would differ in the last bit."""
    total = np.zeros(precision.shape[:1] + precision.shape[2:])
    for r in range(precision.shape[1]):
        total = total + precision[:, r]
    return np.where(precision[:, 0] > -1, total / precision.shape[1], -1.0)


@pytest.mark.parametrize("decimals", [None, 1], ids=["distinct-scores", "scores-tied"])
def test_weight_one_everywhere_is_the_plain_evaluation(awkward, decimals):
    gt, detections = awkward[1]
    if decimals is not None:
        detections = [{**d, "score": round(d["score"], decimals)} for d in detections]
    matched = resampled_coco(gt, detections)
    ones = np.ones((1, len(gt["images"])), np.int32)
    ap, _, recall = matched.accumulate(ones)
    precision, plain_recall, _ = cocoeval_arrays(gt, detections, IOU_THRESHOLDS, MAX_DETS)
    # per (threshold, category, area) the same numbers bit for bit, ties and all
    np.testing.assert_array_equal(ap[0], sequential_mean(precision))
    np.testing.assert_array_equal(recall[0], plain_recall)
    # the 12 stats: summarize's one mean over every entry against a mean of per-threshold,
    # per-category means; the same up to the order of summation
    plain = np.array([coco_stats(gt, detections)[name] for name in COCO_STAT_NAMES])
    np.testing.assert_allclose(resampled_stats(matched, ones)[0], plain, rtol=0, atol=1e-15)


def test_weight_one_everywhere_is_the_plain_error_curves(awkward):
    gt, detections = awkward[0]
    detections = [{**d, "score": round(d["score"], 1)} for d in detections]
    matched = resampled_error_curves(gt, detections)
    ones = np.ones((1, len(gt["images"])), np.int32)
    ap, share, _ = matched.accumulate(ones)
    curves = error_curves(gt, detections)
    oth = ANALYSIS_SETTINGS.index("Oth")
    np.testing.assert_array_equal(ap[0], sequential_mean(curves.precision[:oth + 1]))
    np.testing.assert_array_equal(np.where(share[0] > -1, share[0] * 101, -1)[oth],
                                  np.where(curves.precision[oth, 0] > -1, (curves.precision[oth] > 0).sum(axis=0), -1))
    plain = np.array([[curves.ap(s, a) for a in curves.areas] for s in curves.settings])
    np.testing.assert_allclose(resampled_error_aps(matched, ones)[0], plain, rtol=0, atol=1e-15)


def test_a_model_without_detections_scores_zero_on_every_resample(awkward):
    gt, _ = awkward[0]
    counts = resample_counts(len(gt["images"]), 4, seed=0)
    stats = resampled_stats(resampled_coco(gt, []), counts)
    assert ((stats == 0) | (stats == -1)).all() and (stats[:, 0] == 0).all()
    ones = np.ones((1, len(gt["images"])), np.int32)
    np.testing.assert_array_equal(resampled_stats(resampled_coco(gt, []), ones)[0], list(coco_stats(gt, []).values()))


# ---------------------------------------------------------------- resamples


def test_resample_counts_draw_n_images_reproducibly():
    counts = resample_counts(37, 50, seed=3)
    assert counts.shape == (50, 37) and counts.dtype == np.int32
    assert (counts.sum(axis=1) == 37).all() and (counts >= 0).all()
    np.testing.assert_array_equal(counts, resample_counts(37, 50, seed=3))
    assert not np.array_equal(counts, resample_counts(37, 50, seed=4))
    assert counts_of_indices([0, 2, 2, 4], 6).tolist() == [[1, 0, 2, 0, 1, 0]]


def test_counts_of_the_wrong_width_are_refused(awkward):
    gt, detections = awkward[0]
    with pytest.raises(ValueError, match="images"):
        resampled_coco(gt, detections).accumulate(np.ones((2, len(gt["images"]) + 1), np.int32))


def test_bootstrap_settings_refuse_nonsense():
    with pytest.raises(KdevalError):
        BootstrapSettings(resamples=-1)
    with pytest.raises(KdevalError):
        BootstrapSettings(confidence=1.5)
    for confidence in (0.0, 1.0):
        with pytest.raises(KdevalError):
            BootstrapSettings(confidence=confidence)
    assert not BootstrapSettings(resamples=0).enabled and BootstrapSettings().enabled


# ---------------------------------------------------------------- pairing through evaluate_detections


@pytest.fixture(scope="module")
def everyday():
    """60 images, 5 categories, one ground truth with every COCO stat defined, two detectors."""
    gt = detection_problem(60, 5, 2, 0, seed=11)[0]
    first, second = detections_on(gt, 25, seed=1), detections_on(gt, 25, seed=2)
    assert min(coco_stats(gt, first).values()) > -1
    return gt, first, second


def test_identical_and_shifted_models_gain_exactly_nothing(everyday):
    gt, detections, _ = everyday
    shifted = [{**d, "score": d["score"] + 0.5} for d in detections]
    models = {"a": detections, "b": copy.deepcopy(detections), "shifted": shifted}
    evaluation = evaluate_detections(gt, models, per_class=True, baseline="a", bootstrap=BootstrapSettings(200, 0.95, 5))
    intervals = evaluation.intervals.set_index(["model", "metric"])
    for model in ("b", "shifted"):
        assert evaluation.stats[model] == evaluation.stats["a"]
        rows = intervals.loc[model]
        assert (rows["gain"] == 0).all() and (rows["gain_ci_low"] == 0).all() and (rows["gain_ci_high"] == 0).all()
        assert (rows["p_gain_le_0"] == 1).all()
        np.testing.assert_array_equal(rows[["ci_low", "ci_high"]], intervals.loc["a"][["ci_low", "ci_high"]])
        per_class = evaluation.per_class_intervals
        mine = per_class[per_class["model"] == model]
        defined = mine["value"].notna()
        assert defined.any() and (mine.loc[defined, ["gain", "gain_ci_low", "gain_ci_high"]] == 0).all().all()
    assert (intervals.loc["a", "ci_low"] < intervals.loc["a", "ci_high"]).all()


def test_the_seed_decides_the_resamples(everyday):
    gt, first, second = everyday

    def intervals(seed):
        evaluation = evaluate_detections(gt, {"a": first, "b": second}, baseline="a",
                                         bootstrap=BootstrapSettings(200, 0.95, seed))
        return evaluation.intervals

    again = intervals(7)
    pd.testing.assert_frame_equal(intervals(7), again)
    other = intervals(8)
    columns = ["ci_low", "ci_high", "gain_ci_low", "gain_ci_high"]
    pd.testing.assert_frame_equal(other.drop(columns=columns + ["p_gain_le_0"]), again.drop(columns=columns + ["p_gain_le_0"]))
    b = again["model"] == "b"
    assert (other.loc[b, columns].to_numpy() != again.loc[b, columns].to_numpy()).any(axis=1).all()


def test_runs_are_averaged_before_the_resamples_are_compared(everyday):
    gt, first, second = everyday
    third = detections_on(gt, 25, seed=3)
    bootstrap = BootstrapSettings(100, 0.9, 2)
    runs = evaluate_detections(gt, {"a": first, "b": [second, third]}, baseline="a", bootstrap=bootstrap)
    per_run = np.array([list(coco_stats(gt, run).values()) for run in (second, third)])
    b = runs.intervals[runs.intervals["model"] == "b"]
    np.testing.assert_array_equal(b["value"], per_run.mean(axis=0))
    np.testing.assert_array_equal(b["std_over_runs"], per_run.std(axis=0, ddof=1))
    assert (b["runs"] == 2).all()
    # a model run twice to the same detections is the model run once
    once = evaluate_detections(gt, {"a": first, "b": second}, baseline="a", bootstrap=bootstrap).intervals
    twice = evaluate_detections(gt, {"a": first, "b": [second, copy.deepcopy(second)]}, baseline="a", bootstrap=bootstrap).intervals
    columns = ["value", "ci_low", "ci_high", "gain", "gain_ci_low", "gain_ci_high", "p_gain_le_0"]
    np.testing.assert_allclose(twice[columns].to_numpy(float), once[columns].to_numpy(float), rtol=0, atol=1e-15)
    assert twice.loc[twice["model"] == "b", "std_over_runs"].eq(0).all()


def test_without_bootstrap_the_intervals_are_empty(everyday):
    gt, first, second = everyday
    for bootstrap in (None, BootstrapSettings(0)):
        table = evaluate_detections(gt, {"a": first, "b": second}, baseline="a", bootstrap=bootstrap).intervals
        assert table[["ci_low", "ci_high", "gain_ci_low", "gain_ci_high", "p_gain_le_0"]].isna().all().all()
        b = table[table["model"] == "b"].set_index("metric")
        assert b.loc["AP", "gain"] == pytest.approx(coco_stats(gt, second)["AP"] - coco_stats(gt, first)["AP"])


# ---------------------------------------------------------------- interval_table


def test_interval_table_over_runs():
    keys = pd.DataFrame({"metric": ["x", "y"]})
    base = np.array([[0.30, 0.50], [0.34, 0.52], [0.29, 0.61]])
    new = np.array([[0.40, 0.55], [0.38, 0.50], [0.47, 0.58]])
    table = interval_table(keys, {"base": base, "new": new}, None, "base").set_index(["model", "metric"])
    for model, runs in (("base", base), ("new", new)):
        np.testing.assert_array_equal(table.loc[model, "value"], runs.mean(axis=0))
        np.testing.assert_array_equal(table.loc[model, "std_over_runs"], runs.std(axis=0, ddof=1))
        assert (table.loc[model, "runs"] == 3).all()
    np.testing.assert_array_equal(table.loc["new", "gain"], new.mean(axis=0) - base.mean(axis=0))
    assert table.loc["base", "gain"].isna().all()
    single = interval_table(keys, {"base": base[:1], "new": new[:1]}, None, "base")
    assert single["std_over_runs"].isna().all() and (single["runs"] == 1).all()


def test_interval_table_percentiles_and_p_value_by_hand():
    keys = pd.DataFrame({"metric": ["x", "y", "z"]})
    point = {"base": np.array([[0.5, 0.5, -1.0]]), "new": np.array([[0.6, 0.4, -1.0]])}
    # 4 resamples, 1 run, 3 statistics; z has no ground truth anywhere
    base = np.array([[0.5, 0.5, -1], [0.5, 0.5, -1], [0.5, 0.5, -1], [0.5, 0.5, -1]], float)[:, None, :]
    new = np.array([[0.4, 0.4, -1], [0.5, -1, -1], [0.7, 0.6, -1], [0.8, 0.3, -1]], float)[:, None, :]
    table = interval_table(keys, point, {"base": base, "new": new}, "base", confidence=0.5).set_index(["model", "metric"])
    new_rows = table.loc["new"]
    # x: differences −0.1, 0, 0.2, 0.3: two of four are ≤ 0 (a tie counts)
    assert new_rows.loc["x", "p_gain_le_0"] == 0.5
    differences = np.array([0.4, 0.5, 0.7, 0.8]) - 0.5
    assert new_rows.loc["x", "gain_ci_low"] == pytest.approx(np.percentile(differences, 25))
    assert new_rows.loc["x", "gain_ci_high"] == pytest.approx(np.percentile(differences, 75))
    # a value's interval is the basic one: 2·value − the upper and lower percentiles
    assert new_rows.loc["x", "ci_low"] == pytest.approx(2 * 0.6 - np.percentile([0.4, 0.5, 0.7, 0.8], 75))
    assert new_rows.loc["x", "ci_high"] == pytest.approx(2 * 0.6 - np.percentile([0.4, 0.5, 0.7, 0.8], 25))
    # y: the resample where it is -1 is left out: differences −0.1, 0.1, −0.2
    assert new_rows.loc["y", "p_gain_le_0"] == pytest.approx(2 / 3)
    assert new_rows.loc["y", "ci_high"] == pytest.approx(2 * 0.4 - np.percentile([0.4, 0.6, 0.3], 25))
    assert new_rows.loc["y", "gain_ci_low"] == pytest.approx(np.percentile([-0.1, 0.1, -0.2], 25))
    # z: no value anywhere, no interval, no p-value
    assert new_rows.loc["z", ["value", "ci_low", "ci_high", "gain", "gain_ci_low", "gain_ci_high", "p_gain_le_0"]].isna().all()
    assert table.loc[("base", "x"), "ci_low"] == table.loc[("base", "x"), "ci_high"] == 0.5


def test_interval_table_averages_runs_before_the_percentiles():
    keys = pd.DataFrame({"metric": ["x"]})
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.4, (50, 2, 1))
    new = rng.uniform(0.3, 0.5, (50, 2, 1))
    point = {"base": base.mean(axis=0), "new": new.mean(axis=0)}
    table = interval_table(keys, point, {"base": base, "new": new}, "base").set_index("model")
    difference = new.mean(axis=1)[:, 0] - base.mean(axis=1)[:, 0]
    low, high = np.percentile(difference, [2.5, 97.5])
    assert table.loc["new", "gain_ci_low"] == pytest.approx(low) and table.loc["new", "gain_ci_high"] == pytest.approx(high)
    assert table.loc["new", "p_gain_le_0"] == pytest.approx((difference <= 0).mean())
    value = point["new"].mean()
    assert table.loc["new", "ci_low"] == pytest.approx(2 * value - np.percentile(new.mean(axis=1)[:, 0], 97.5))


# ---------------------------------------------------------------- calibration


@pytest.mark.slow
def test_the_gain_interval_covers_a_true_gain_of_zero(capsys):
    """Two detectors drawn from one noise model on one ground truth have no true gain: the 95%
    interval of the gain must cover 0 about 95 times in 100 independent draws (at least 90)."""
    start = time.perf_counter()
    draws, covered = 100, defaultdict(int)
    for draw in range(draws):
        gt = detection_problem(100, 5, 2, 0, seed=10_000 + draw)[0]
        models = {"a": detections_on(gt, 15, seed=2 * draw), "b": detections_on(gt, 15, seed=2 * draw + 1)}
        table = evaluate_detections(gt, models, baseline="a", bootstrap=BootstrapSettings(200, 0.95, draw)).intervals
        for _, row in table[table["model"] == "b"].iterrows():
            covered[row["metric"]] += bool(row["gain_ci_low"] <= 0 <= row["gain_ci_high"])
    with capsys.disabled():
        print(f"\ncoverage of a zero gain over {draws} draws ({time.perf_counter() - start:.0f} s): "
              + ", ".join(f"{metric} {covered[metric]}" for metric in COCO_STAT_NAMES))
    assert covered["AP"] >= 90, dict(covered)


def test_a_values_interval_stays_within_the_statistics_range():
    """The basic interval reflects the resamples about the value: near 0 (or 1) it would step past it."""
    keys = pd.DataFrame({"metric": ["near 0", "near 1", "ratio"]})
    point = {"m": np.array([[0.01, 0.99, 1.5]])}
    resampled = {"m": np.array([[0.0, 0.95, 1.0], [0.05, 1.0, 1.2], [0.08, 0.96, 2.5]])[:, None, :]}
    row = interval_table(keys, point, resampled, None, upper=np.array([1.0, 1.0, np.inf])).set_index("metric")
    assert row.loc["near 0", "ci_low"] == 0.0 and row.loc["near 1", "ci_high"] == 1.0  # 2·v − q would be < 0, > 1
    assert row.loc["ratio", "ci_high"] > 1.5  # no cap where the statistic has none
