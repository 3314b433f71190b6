"""`kdeval errors`: COCO-analyze curves against the slow per-category reference, TIDE against tidecv's
own loader, the figures, and the command."""

from __future__ import annotations

import copy
import io
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import perfect_detections, shapes_args, write_json
from reference_analyze import detection_problem, reference_precision
from kdeval.cli import app
from kdeval.errors import KdevalError
from kdeval.metrics.analyze import ap_long_table, curve_long_table, error_curves
from kdeval.metrics.coco_ap import coco_stats
from kdeval.metrics.tide import tide_errors
from kdeval.report.error_figures import ap_label, error_curves_figure, size_gain_figure
from kdeval.vocab import ANALYSIS_SETTINGS, AREA_RANGES

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the curves against the reference

PROBLEMS = [
    # (images, categories, supercategories, detections per image, seed, integer boxes)
    (30, 6, 2, 30, 0, False),
    (30, 6, 3, 30, 1, True),  # integer boxes and two-decimal scores: IoU and score ties
    (8, 2, 1, 260, 2, False),  # more than 100 detections per image and class: maxDets cuts
    (12, 1, 1, 20, 3, True),  # a single category
    (20, 9, 9, 15, 4, False),  # every category its own supercategory: Sim == Loc
]


@pytest.mark.parametrize("problem", PROBLEMS, ids=[f"seed{p[4]}" for p in PROBLEMS])
def test_curves_equal_the_per_category_reference(problem):
    *shape, seed, integer = problem
    gt, detections = detection_problem(*shape, seed=seed, integer_boxes=integer)
    curves = error_curves(gt, detections)
    reference = reference_precision(gt, detections)
    assert curves.precision.shape == reference.shape
    np.testing.assert_allclose(curves.precision, reference, rtol=0, atol=1e-6)
    for s, setting in enumerate(ANALYSIS_SETTINGS):
        for a, area in enumerate(AREA_RANGES):
            block = reference[s, :, :, a]
            expected = float(np.mean(block[block > -1])) if (block > -1).any() else -1.0
            assert curves.ap(setting, area) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 5])
def test_c75_and_c50_are_exactly_cocoeval_ap75_and_ap50(seed):
    gt, detections = detection_problem(25, 5, 2, 40, seed=seed, integer_boxes=bool(seed % 2))
    curves, stats = error_curves(gt, detections), coco_stats(gt, detections)
    assert curves.ap("C75") == stats["AP75"]
    assert curves.ap("C50") == stats["AP50"]


def test_settings_only_grow_more_permissive():
    gt, detections = detection_problem(40, 8, 3, 40, seed=7)
    curves = error_curves(gt, detections)
    for area in AREA_RANGES:
        aps = [curves.ap(s, area) for s in ANALYSIS_SETTINGS]
        assert aps == sorted(aps), area
        assert aps[-1] == 1.0


def test_perfect_detections_score_one_everywhere(tiny_coco):
    curves = error_curves(tiny_coco, perfect_detections(tiny_coco))
    table = curves.ap_table()
    assert (table.loc[:, "all"] == 1.0).all()
    assert curves.ap("C75", "large") == -1.0  # no large objects: -1, as COCOeval reports


def test_sibling_confusion_is_forgiven_by_sim_and_other_confusion_by_oth(tiny_coco):
    # a 'dog' detection on the cat (same supercategory 'animal'), and a correct dog
    gt = copy.deepcopy(tiny_coco)
    gt["categories"].append({"id": 3, "name": "car", "supercategory": "vehicle"})
    gt["annotations"].append({"id": 5, "image_id": 3, "category_id": 3, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0})
    dets = [
        {"image_id": 1, "category_id": 2, "bbox": [16, 16, 12, 8], "score": 0.5},  # the dog, right
        {"image_id": 1, "category_id": 2, "bbox": [2, 2, 10, 10], "score": 0.9},  # the cat, called dog
        {"image_id": 3, "category_id": 3, "bbox": [0, 0, 10, 10], "score": 0.8},  # the car, right
        {"image_id": 3, "category_id": 3, "bbox": [0, 0, 10, 10], "score": 0.7},  # duplicate car
        {"image_id": 2, "category_id": 3, "bbox": [4, 4, 20, 20], "score": 0.95},  # the cat, called car
    ]
    curves = error_curves(gt, dets)
    dog, car = 2, 3
    # dog: the confused detection ranks first, so precision at recall 1 is 1/2 until Sim ignores it
    assert curves.ap("Loc", category_id=dog) == pytest.approx(0.5)
    assert curves.ap("Sim", category_id=dog) == pytest.approx(1.0)
    # car: a duplicate (never forgiven before BG) and a cross-supercategory confusion (forgiven by Oth)
    assert curves.ap("Sim", category_id=car) == pytest.approx(0.5)
    assert curves.ap("Oth", category_id=car) == pytest.approx(1.0)
    np.testing.assert_allclose(curves.precision, reference_precision(gt, dets), atol=1e-6)


def _mmdetection_sim(gt: dict, detections: list[dict]) -> np.ndarray:
    """(recall thresholds, categories, areas): what mmdetection's tools/analysis_tools/
    coco_error_analysis.py stores as Sim ("ps_supercategory"): per category, its detections against
    the ground truth as it is at IoU .1, no sibling marked ignored; -1 kept where there is no ground truth."""
    import contextlib

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def coco(dataset):
        loaded = COCO()
        loaded.dataset = copy.deepcopy(dataset)
        with contextlib.redirect_stdout(io.StringIO()):
            loaded.createIndex()
        return loaded

    truth = coco(gt)
    category_ids = sorted(c["id"] for c in gt["categories"])
    out = []
    for k, category_id in enumerate(category_ids):
        own = coco({**gt, "annotations": [dict(d, id=i + 1, area=d["bbox"][2] * d["bbox"][3], iscrowd=0)
                                          for i, d in enumerate(detections) if d["category_id"] == category_id]})
        evaluator = COCOeval(truth, own, "bbox")
        evaluator.params.imgIds = truth.getImgIds()
        evaluator.params.maxDets = [100]
        evaluator.params.iouThrs = np.array([0.1])
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
        out.append(evaluator.eval["precision"][0, :, k, :, 0])
    return np.stack(out, axis=1)


def test_sim_lies_strictly_between_loc_and_oth_where_supercategories_are_confused():
    # detection_problem calls some detections of an object by a sibling of its supercategory and
    # some by any class: Sim forgives the first kind, Oth both, so on such data Sim is neither
    gt, detections = detection_problem(60, 8, 3, 30, seed=9)
    curves = error_curves(gt, detections)
    loc, sim, oth = (curves.ap(setting) for setting in ("Loc", "Sim", "Oth"))
    assert loc < sim < oth
    # mmdetection's script marks no sibling as ignored: its Sim is this Loc, curve for curve, which the
    # assertion above would refuse
    mmdetection = _mmdetection_sim(gt, detections)
    np.testing.assert_allclose(mmdetection, curves.precision[ANALYSIS_SETTINGS.index("Loc")], rtol=0, atol=1e-12)
    assert float(mmdetection[..., 0][mmdetection[..., 0] > -1].mean()) == pytest.approx(loc, abs=1e-12)


def test_empty_detections_and_a_category_without_ground_truth(tiny_coco):
    gt = copy.deepcopy(tiny_coco)
    gt["categories"].append({"id": 9, "name": "ghost", "supercategory": "animal"})
    empty = error_curves(gt, [])
    assert empty.ap("C50") == 0.0 and empty.ap("FN") == 1.0
    assert empty.ap("C50", category_id=9) == -1.0
    # a detection of the category without ground truth stays out of every average
    dets = perfect_detections(gt) + [{"image_id": 1, "category_id": 9, "bbox": [2, 2, 10, 10], "score": 0.99}]
    curves = error_curves(gt, dets)
    np.testing.assert_allclose(curves.precision, reference_precision(gt, dets), atol=1e-6)
    assert curves.ap("C75") == pytest.approx(1.0)


def test_category_without_supercategory_is_its_own(tiny_coco):
    gt = copy.deepcopy(tiny_coco)
    del gt["categories"][1]["supercategory"]
    dets = [
        {"image_id": 1, "category_id": 2, "bbox": [2, 2, 10, 10], "score": 0.9},  # the cat, called dog
        {"image_id": 1, "category_id": 2, "bbox": [16, 16, 12, 8], "score": 0.5},  # the dog
    ]
    curves = error_curves(gt, dets)
    assert curves.ap("Sim", category_id=2) == curves.ap("Loc", category_id=2)  # no siblings now
    assert curves.ap("Oth", category_id=2) > curves.ap("Sim", category_id=2)


def test_tables_are_tidy_and_curves_average_to_ap():
    gt, detections = detection_problem(20, 4, 2, 20, seed=3)
    curves = {"a": error_curves(gt, detections), "b": error_curves(gt, detections[::2])}
    ap = ap_long_table(curves)
    assert len(ap) == 2 * len(AREA_RANGES) * len(ANALYSIS_SETTINGS)
    lines = curve_long_table(curves)
    for (model, area, setting), line in lines.groupby(["model", "area", "setting"]):
        row = ap[(ap.model == model) & (ap.area == area) & (ap.setting == setting)]
        assert line["precision"].mean() == pytest.approx(float(row["AP"].iloc[0]), abs=1e-9)
    per_category = ap_long_table(curves, per_category=True)
    assert set(per_category["category_id"]) == {c["id"] for c in gt["categories"]}


# ---------------------------------------------------------------- TIDE


def test_tide_matches_tidecvs_own_coco_loader(tmp_path):
    from tidecv import TIDE, datasets

    gt, detections = detection_problem(25, 5, 2, 20, seed=11)
    # tidecv's loader needs `segmentation`; give it the box as a polygon so both paths see the same data
    with_segmentation = copy.deepcopy(gt)
    for ann in with_segmentation["annotations"]:
        x, y, w, h = ann["bbox"]
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    gt_path = write_json(tmp_path / "gt.json", with_segmentation)
    dets_path = write_json(tmp_path / "dets.json", detections)
    before = dict(matplotlib.rcParams)
    with matplotlib.rc_context():
        tide = TIDE()
        tide.evaluate(datasets.COCO(str(gt_path)), datasets.COCOResult(str(dets_path)), mode=TIDE.BOX, name="m")
        expected = tide.get_all_errors()
    ours = tide_errors(gt, {"m": detections})
    for name, value in expected["main"]["m"].items():
        assert ours.loc["m", name] == pytest.approx(value / 100, abs=1e-12)
    assert ours.loc["m", "FP"] == pytest.approx(expected["special"]["m"]["FalsePos"] / 100, abs=1e-12)
    assert ours.loc["m", "FN"] == pytest.approx(expected["special"]["m"]["FalseNeg"] / 100, abs=1e-12)
    assert ours.loc["m", "AP50"] == pytest.approx(tide.runs["m"].ap / 100)
    assert dict(matplotlib.rcParams) == before  # tidecv's global style change stayed inside


def test_tide_perfect_detections_cost_nothing(tiny_coco):
    table = tide_errors(tiny_coco, {"perfect": perfect_detections(tiny_coco)})
    assert table.loc["perfect", "AP50"] == pytest.approx(1.0)
    assert (table.drop(columns="AP50").loc["perfect"] == 0).all()


# ---------------------------------------------------------------- figures


def test_figure1_legends_carry_the_areas_under_the_curves():
    gt, detections = detection_problem(20, 4, 2, 20, seed=3)
    curves = {"baseline": error_curves(gt, detections[::3]), "distilled": error_curves(gt, detections)}
    ap = ap_long_table(curves)
    figure = error_curves_figure(curve_long_table(curves), ap)
    assert len(figure.axes) == 2 * len(AREA_RANGES)
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    c75 = curves["baseline"].ap("C75")
    assert f"[{ap_label(c75)}] C75" in labels and "[1.000] FN" in labels
    assert ap_label(0.431) == ".431" and ap_label(-1) == "–"


def test_figure2_shows_a_loss_as_a_loss():

    ap = pd.DataFrame(
        [{"model": m, "area": a, "setting": s, "AP": v}
         for m, v in (("base", 0.5), ("better", 0.7), ("worse", 0.3))
         for a in ("all", "small", "medium", "large") for s in ANALYSIS_SETTINGS]
    )
    figure = size_gain_figure(ap, "base", ["base", "better", "worse"])
    better, worse = figure.axes
    def heights(ax, edge_is_loss):
        return [p.get_height() for p in ax.patches if (tuple(p.get_edgecolor()[:3]) == matplotlib.colors.to_rgb("#d62728")) == edge_is_loss and p.get_height() > 0]
    assert heights(better, True) == []  # no loss drawn for a gain
    # `errors a=... --baseline a`: one panel of the baseline's own bars, with zero rows of gains
    assert len(size_gain_figure(ap[ap["model"] == "base"], "base", ["base"]).axes) == 1
    assert all(h == pytest.approx(0.2) for h in heights(worse, True)) and len(heights(worse, True)) == 3 * 6


# ---------------------------------------------------------------- the command


def test_relative_changes_are_left_out_where_the_baseline_shows_as_zero():

    from kdeval.report.tables import display_cells

    table = pd.DataFrame({"C75": [0.431, 0.387, 0.0004, 0.0], "Loc": [0.5, 0.6, 0.0, -1.0]},
                         index=["kd", "base", "tiny", "none"])
    assert display_cells(table, "base", relative=True)["C75"].tolist() == ["43.1 (+11.4%)", "38.7", "0.0 (-99.9%)", "0.0 (-100.0%)"]
    assert display_cells(table, "tiny", relative=True)["C75"].tolist() == ["43.1", "38.7", "0.0", "0.0"]
    assert display_cells(table, "base", relative=True)["Loc"].tolist() == ["50.0 (-16.7%)", "60.0", "0.0 (-100.0%)", "–"]
    assert display_cells(table, "tiny", relative=False)["C75"].tolist() == ["43.1 (+43.1)", "38.7 (+38.7)", "0.0", "0.0 (+0.0)"]
    # gains are the differences of the shown values, never '-0.0'
    gains = pd.DataFrame({"AP": [0.01444, 0.01555, 0.01436]}, index=["base", "teacher", "same"])
    assert display_cells(gains, "base")["AP"].tolist() == ["1.4", "1.6 (+0.2)", "1.4 (+0.0)"]
    # COCOeval's -1 (no ground truth in a range) is an empty CSV cell, its gain too, never -1 or -1.3
    from kdeval.report.tables import to_csv

    csv = pd.read_csv(io.StringIO(to_csv(pd.DataFrame({"AP": [0.3, 0.5], "APs": [-1.0, -1.0]}, index=["b", "k"]), "b")))
    assert csv["APs"].isna().all() and csv["APs_gain"].isna().all() and csv["AP_gain"].tolist() == [0.0, pytest.approx(0.2)]


@pytest.mark.slow
def test_errors_command_on_results_files(tmp_path, tiny_coco):
    ann = write_json(tmp_path / "gt.json", tiny_coco)
    perfect = write_json(tmp_path / "perfect.json", perfect_detections(tiny_coco))
    sloppy = write_json(tmp_path / "sloppy.json", [dict(d, bbox=[v + 3 for v in d["bbox"]]) for d in perfect_detections(tiny_coco)])
    out = tmp_path / "out"
    result = runner.invoke(app, ["errors", f"base={sloppy}", f"good={perfect}", "--annotations", str(ann), "--out", str(out), "--no-progress", "--per-category"])
    assert result.exit_code == 0, result.output
    assert "C75" in result.output and "Miss" in result.output
    for name in ("error_analysis.csv", "error_analysis.md", "error_analysis.tex", "error_analysis_intervals.csv", "tide.csv",
                 "tide.md", "tide.tex", "error_curves.csv", "figure1_error_curves.png", "figure1_error_curves.pdf",
                 "figure2_ap_by_size.png", "figure2_ap_by_size.pdf", "tide_errors.png", "per_category/1_cat.png",
                 "per_category/error_analysis_per_category.md", "per_category/error_analysis_per_category.tex"):
        assert (out / name).is_file(), name
    table = (out / "error_analysis.md").read_text()
    assert "| good − base |" in table and "[brackets]" in table  # gains with their intervals (default bootstrap)
    tide = pd.read_csv(out / "tide.csv")
    assert set(tide["averaging"]) == {"coco", "tidecv"} and {"ci_low", "gain_ci_high", "p_gain_le_0"} <= set(tide.columns)
    settings = json.loads((out / "errors_settings.json").read_text())
    assert settings["baseline"] == "base" and settings["bootstrap"] == {"resamples": 1000, "confidence": 0.95, "seed": 0}
    # without the bootstrap: the relative change against the baseline, as the paper writes it
    result = runner.invoke(app, ["errors", f"base={sloppy}", f"good={perfect}", "--annotations", str(ann), "--out", str(out),
                                 "--no-progress", "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    assert "%)" in (out / "error_analysis.md").read_text()
    # the same folder again with one model: the earlier run's per-category files and tidecv plots go
    (out / "tide").mkdir(exist_ok=True)
    (out / "tide" / "base_tidecv_summary.png").write_bytes(b"")  # as earlier versions wrote them
    result = runner.invoke(app, ["errors", f"good={sloppy}", "--annotations", str(ann), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert not list((out / "tide").iterdir())
    assert not list((out / "per_category").iterdir())  # the earlier run's per-category files
    # only kdeval's own files go: --out may hold other things under those names
    (out / "tide" / "README.md").write_text("a clone of tidecv")
    assert runner.invoke(app, ["errors", f"good={sloppy}", "--annotations", str(ann), "--out", str(out), "--no-progress"]).exit_code == 0
    assert (out / "tide" / "README.md").is_file()


def test_errors_command_on_a_checkpoint(tmp_path, tiny_shapes, trained):
    result = runner.invoke(app, ["errors", f"m={trained}", *shapes_args(tiny_shapes), "--device", "cpu", "--out", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output + "".join(traceback.format_exception(*result.exc_info))
    assert (tmp_path / "figure1_error_curves.png").is_file()


IMPORTED_MODEL_LIBRARIES = """
import sys
from kdeval.cli import main
sys.argv = ["kdeval", *sys.argv[1:]]
try:
    main()
except SystemExit as exit_:
    assert exit_.code in (0, None), f"exit status {exit_.code}"
print(",".join(name for name in ("torch", "torchvision") if name in sys.modules))
"""


@pytest.mark.parametrize("command", ["errors", "evaluate"])
def test_results_files_are_scored_without_importing_torch(tmp_path, tiny_coco, command):
    # every model a results file: nothing runs a network, so torch and torchvision (most of a short
    # run's time, to import and at exit) stay unloaded, --device auto included
    ann = write_json(tmp_path / "gt.json", tiny_coco)
    perfect = write_json(tmp_path / "perfect.json", perfect_detections(tiny_coco))
    sloppy = write_json(tmp_path / "sloppy.json", [dict(d, bbox=[v + 3 for v in d["bbox"]]) for d in perfect_detections(tiny_coco)])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", IMPORTED_MODEL_LIBRARIES, command, f"base={sloppy}", f"good={perfect}",
                             "--annotations", str(ann), "--bootstrap", "0", "--out", str(tmp_path / "out"), "--no-progress"],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "", f"imported: {result.stdout.splitlines()[-1]}"


def test_a_device_is_still_checked_when_only_results_files_are_scored(tmp_path, tiny_coco):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: --device cuda is valid")
    ann = write_json(tmp_path / "gt.json", tiny_coco)
    perfect = write_json(tmp_path / "perfect.json", perfect_detections(tiny_coco))
    result = runner.invoke(app, ["errors", str(perfect), "--annotations", str(ann), "--device", "cuda", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "CUDA is not available" in result.output


def test_errors_command_refuses_an_unknown_baseline(tmp_path, tiny_coco):
    ann = write_json(tmp_path / "gt.json", tiny_coco)
    perfect = write_json(tmp_path / "perfect.json", perfect_detections(tiny_coco))
    result = runner.invoke(app, ["errors", str(perfect), "--annotations", str(ann), "--baseline", "nope", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "--baseline 'nope'" in result.output


@pytest.mark.parametrize("box_format", ["xywh", "xyxy"])
def test_results_are_cleaned_alike_checked_at_once_or_one_by_one(tiny_coco, box_format):
    # a results file of kdeval errors' size is checked field by field over all detections at once;
    # a detection the loop would treat differently (a dict subclass here) sends the file to the loop
    from collections import OrderedDict

    from kdeval.data.coco import check_results

    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [2, 2.5, 12, 14], "score": 1, "segmentation": [], "id": 7},
        {"image_id": 2, "category_id": 2, "bbox": (4.0, 4.0, 20.25, 20.0), "score": 0.25},
        {"image_id": 3, "category_id": 1, "bbox": [0.1, 0.2, 2**60, 3.0], "score": 0.5},
    ]
    original = copy.deepcopy(dets)
    at_once = check_results(dets, tiny_coco, "r.json", box_format)
    one_by_one = check_results([OrderedDict(d) for d in dets], tiny_coco, "r.json", box_format)
    assert dets == original
    assert at_once == one_by_one
    assert [list(d) for d in at_once] == [["image_id", "category_id", "bbox", "score"]] * 3
    assert all(type(v) is float for d in at_once for v in [*d["bbox"], d["score"]])
    for bad in ({"bbox": [1, 2, 3, True]}, {"score": float("nan")}, {"image_id": 1.0}, {"bbox": [1, 2, -3, 4]}):
        with pytest.raises(KdevalError, match=r"r\.json: \[1\]"):
            check_results([dets[0], {**dets[1], **bad}], tiny_coco, "r.json")


def test_tide_survives_a_model_without_detections(tiny_coco):
    table = tide_errors(tiny_coco, {"silent": [], "perfect": perfect_detections(tiny_coco)})
    assert table.loc["silent", "AP50"] == 0.0
    assert table.loc["perfect", "AP50"] == pytest.approx(1.0)
