"""Per-class tables, and results from other detectors: every mismatch named, fixed only when asked."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import perfect_detections, write_json
from reference_analyze import detection_problem
from kdeval.cli import app
from kdeval.data.foreign_results import _XYXY_PROBE, CategoryMap, diagnose
from kdeval.labels import LabelSpace
from kdeval.metrics.coco_ap import coco_stats, per_category_stats, run_cocoeval, ground_truth_coco
from kdeval.vocab import TABLE_METRICS

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------- per-class AP


def test_per_category_stats_equal_cocoeval_on_that_category_alone():
    gt, detections = detection_problem(25, 4, 2, 30, seed=5)
    table = per_category_stats(gt, detections)
    for category in gt["categories"]:
        evaluator = run_cocoeval(ground_truth_coco(gt), detections)
        evaluator.params.catIds = [category["id"]]
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        expected = dict(zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), evaluator.stats[:6]))
        for metric in TABLE_METRICS:
            assert table.loc[category["id"], metric] == pytest.approx(expected[metric], abs=1e-12), (category, metric)
        assert table.loc[category["id"], "category"] == category["name"]


def test_evaluate_per_class_writes_tables_with_gains(tmp_path, tiny_coco):
    gt = write_json(tmp_path / "gt.json", tiny_coco)
    good = write_json(tmp_path / "good.json", perfect_detections(tiny_coco))
    half = write_json(tmp_path / "half.json", [d for d in perfect_detections(tiny_coco) if d["category_id"] == 1])
    result = run("evaluate", f"half={half}", f"good={good}", "--annotations", gt, "--baseline", "half", "--per-class", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    tidy = pd.read_csv(tmp_path / "o" / "per_class.csv")
    assert (tidy["value"].dropna() >= 0).all()  # COCOeval's -1 (no ground truth in a range) is empty
    dog_ap = tidy[(tidy.category == "dog") & (tidy.metric == "AP")].set_index("model")
    assert dog_ap.loc["half", "value"] == 0.0 and dog_ap.loc["good", "value"] == pytest.approx(1.0)
    assert dog_ap.loc["good", "gain"] == pytest.approx(1.0)
    markdown = (tmp_path / "o" / "per_class.md").read_text()
    # with the default bootstrap: intervals, a gain column, and the mark on a gain that excludes 0
    assert "| category | half | good | good − half |" in markdown
    assert "| dog (2) | 0.0 [0.0, 0.0] | 100.0 [100.0, 100.0] | +100.0 [+100.0, +100.0]* |" in markdown
    assert "Category & half & good & good $-$ half" in (tmp_path / "o" / "per_class.tex").read_text()
    assert dog_ap.loc["good", "gain_ci_low"] == pytest.approx(1.0) and dog_ap.loc["good", "p_gain_le_0"] == 0.0
    # without it, the plain tables as before
    assert run("evaluate", f"half={half}", f"good={good}", "--annotations", gt, "--baseline", "half", "--per-class",
               "--bootstrap", "0", "--out", tmp_path / "p").exit_code == 0
    markdown = (tmp_path / "p" / "per_class.md").read_text()
    assert "| category | half | good |" in markdown and "| dog (2) | 0.0 | 100.0 (+100.0) |" in markdown
    assert "Category & half & good" in (tmp_path / "p" / "per_class.tex").read_text()
    # the same folder again without --per-class: the tables of the earlier models do not stay behind
    assert run("evaluate", f"good={good}", "--annotations", gt, "--out", tmp_path / "o").exit_code == 0
    assert not list((tmp_path / "o").glob("per_class.*")) and (tmp_path / "o" / "ap_table.md").is_file()


# ---------------------------------------------------------------- diagnosis


@pytest.fixture
def coco91_like() -> dict:
    """Three categories with COCO-style sparse ids (1, 3, 90) and image sizes."""
    return {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 80} for i in (1, 2)],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 20], "area": 600, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 90, "bbox": [50, 30, 40, 40], "area": 1600, "iscrowd": 0},
        ],
        "categories": [{"id": c, "name": f"n{c}", "supercategory": "s"} for c in (1, 3, 90)],
    }


def test_zero_based_ids_are_named_as_such(tiny_coco):
    dets = [dict(d, category_id=d["category_id"] - 1) for d in perfect_detections(tiny_coco)]
    [problem] = diagnose(dets, tiny_coco, "r.json")
    assert "0-based" in problem and "--category-map" in problem and "category_id: 0" in problem


def test_contiguous_ids_against_cocos_91_id_space_are_named(coco91_like):
    dets = [{"image_id": 1, "category_id": c, "bbox": [10, 10, 30, 20], "score": 0.5} for c in (0, 1, 2)]
    [problem] = diagnose(dets, coco91_like, "r.json")
    assert "91-id space" in problem and "contiguous (0–2)" in problem


def test_xyxy_boxes_are_recognised_and_fixed_only_when_asked(tmp_path, coco91_like):
    xyxy = [{"image_id": 1 + i % 2, "category_id": 1, "bbox": [40 + i, 30, 90, 75], "score": 0.5} for i in range(12)]
    [problem] = diagnose(xyxy, coco91_like, "r.json")
    assert "[x1, y1, x2, y2]" in problem and "--box-format xyxy" in problem
    # real xywh boxes, even large ones, are not flagged
    assert diagnose(perfect_detections(coco91_like) * 6, coco91_like, "r.json") == []
    gt = write_json(tmp_path / "gt.json", coco91_like)
    as_xyxy = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9,
                "bbox": [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]}
               for a in coco91_like["annotations"]]
    path = write_json(tmp_path / "xyxy.json", as_xyxy)
    result = run("evaluate", path, "--annotations", gt, "--box-format", "xyxy", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o" / "coco_stats.json").read_text())["stats"]["xyxy"]["AP"] == pytest.approx(1.0)


def test_xyxy_is_judged_on_every_box_beyond_the_first_ones_looked_at(coco91_like):
    # the first boxes looked at all fit as corners: the rest decides, and its counts are reported
    many = _XYXY_PROBE + 200
    xyxy = [{"image_id": 1 + i % 2, "category_id": 1, "bbox": [40 + i % 10, 30, 90, 75], "score": 0.5} for i in range(many)]
    [problem] = diagnose(xyxy, coco91_like, "r.json")
    assert f"({many} of {many} leave their image" in problem
    # one box further on that cannot be corners ([x, y, w, h] with w < x) clears them all
    mixed = [*xyxy, {"image_id": 1, "category_id": 1, "bbox": [50, 30, 20, 20], "score": 0.5}]
    assert diagnose(mixed, coco91_like, "r.json") == []
    # detections on images without a size are not counted, nor are ones on unknown images judged
    sized = [dict(d, image_id=1) for d in xyxy[:9]]
    assert diagnose([*sized, {"image_id": 2, "category_id": 1, "bbox": [40, 30, 90, 75], "score": 0.5}],
                    coco91_like, "r.json") != []
    unsized = copy.deepcopy(coco91_like)
    del unsized["images"][1]["width"]
    assert diagnose([*sized, {"image_id": 2, "category_id": 1, "bbox": [40, 30, 90, 75], "score": 0.5}],
                    unsized, "r.json") == []  # 9 boxes on an image of known size: too few to say


def test_every_problem_gets_its_own_line_and_exit_2(tmp_path, tiny_coco):
    gt = write_json(tmp_path / "gt.json", tiny_coco)
    dets = [
        {"image_id": 77, "category_id": 1, "bbox": [1, 1, 2, 2], "score": 0.5},
        {"image_id": 1, "category_id": 0, "bbox": [1, 1, 2, 2], "score": 0.5},
    ]
    path = write_json(tmp_path / "r.json", dets)
    result = run("evaluate", path, "--annotations", gt, "--out", tmp_path / "o")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("kdeval: error:")]
    assert len(lines) == 2
    assert "[0].image_id: 77" in lines[0] and "[1].category_id: 0" in lines[1]
    assert "Traceback" not in result.output


def test_scores_outside_unit_range_are_noted_and_scored(tmp_path, tiny_coco):
    gt = write_json(tmp_path / "gt.json", tiny_coco)
    logits = [dict(d, score=3.5 - i) for i, d in enumerate(perfect_detections(tiny_coco))]
    path = write_json(tmp_path / "logits.json", logits)
    result = run("evaluate", path, "--annotations", gt, "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert "kdeval: note:" in result.output and "outside [0, 1]" in result.output
    assert coco_stats(tiny_coco, logits)["AP"] == pytest.approx(1.0)


def test_results_on_a_subset_and_a_map_that_does_not_fit_are_noted(tmp_path, tiny_coco):
    """Results made on a subset of the images (here none of the dataset's), scored against all
    (--annotations forgotten), and a 0-based map applied to 1-based results: scored as asked, each
    with a note saying why AP may mislead. The empty image does not count: a detector leaves it empty."""
    gt = write_json(tmp_path / "gt.json", tiny_coco)
    perfect = perfect_detections(tiny_coco)
    with_objects = {a["image_id"] for a in tiny_coco["annotations"] if not a.get("iscrowd")}
    assert len(with_objects) == 2 < len(tiny_coco["images"])
    elsewhere = write_json(tmp_path / "elsewhere.json", [])
    result = run("evaluate", elsewhere, "--annotations", gt, "--out", tmp_path / "o")
    assert result.exit_code == 0 and "detections on only 0 of the dataset's 2 images with objects" in result.output
    one = write_json(tmp_path / "one.json", [d for d in perfect if d["image_id"] == min(with_objects)])
    assert "detections on only" not in run("evaluate", one, "--annotations", gt, "--out", tmp_path / "o").output  # half
    everywhere = write_json(tmp_path / "all.json", perfect)
    assert "detections on only" not in run("evaluate", everywhere, "--annotations", gt, "--out", tmp_path / "o").output
    ids = sorted(c["id"] for c in tiny_coco["categories"])
    zero_based = write_json(tmp_path / "map.json", {str(i - 1): i for i in ids})
    result = run("evaluate", everywhere, "--annotations", gt, "--category-map", zero_based, "--out", tmp_path / "o")
    assert "kdeval: note:" in result.output and f"the map's ids {ids[0] - 1} occur in no detection" in result.output
    fitting = write_json(tmp_path / "fits.json", {str(i): i for i in ids})
    result = run("evaluate", everywhere, "--annotations", gt, "--category-map", fitting, "--out", tmp_path / "o")
    assert result.exit_code == 0 and "kdeval: note:" not in result.output


# ---------------------------------------------------------------- category maps


@pytest.mark.parametrize("suffix,text", [(".json", '{"0": 1, "1": 2}'), (".yaml", "0: 1\n1: 2\n")])
def test_category_map_fixes_zero_based_ids(tmp_path, tiny_coco, suffix, text):
    gt = write_json(tmp_path / "gt.json", tiny_coco)
    dets = write_json(tmp_path / "r.json", [dict(d, category_id=d["category_id"] - 1) for d in perfect_detections(tiny_coco)])
    mapping = tmp_path / f"map{suffix}"
    mapping.write_text(text)
    result = run("evaluate", f"m={dets}", "--annotations", gt, "--category-map", mapping, "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "o" / "coco_stats.json").read_text())["stats"]["m"]["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "text,fragment",
    [("[1, 2]", "mapping"), ('{"a": 1}', "not a mix"), ("{}", "non-empty"), ("{", "not a readable category map")],
)
def test_bad_category_maps_get_one_line(tmp_path, tiny_coco, text, fragment):
    gt = write_json(tmp_path / "gt.json", tiny_coco)
    dets = write_json(tmp_path / "r.json", perfect_detections(tiny_coco))
    mapping = tmp_path / "map.json"
    mapping.write_text(text)
    result = run("evaluate", dets, "--annotations", gt, "--category-map", mapping, "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert fragment in result.output and str(mapping) in result.output


def test_a_name_map_relabels_a_model(tiny_coco):
    model = LabelSpace((11, 12), ("kitty", "doggo"))
    mapped = CategoryMap(names={"kitty": "cat", "doggo": "dog"}).map_labels(model, tiny_coco["categories"])
    assert mapped == LabelSpace((1, 2), ("cat", "dog"))
    mapped.check_matches(tiny_coco["categories"], "gt.json")  # now matches
    ids = CategoryMap(ids={11: 1, 12: 2}).map_labels(LabelSpace((11, 12), ("cat", "dog")), tiny_coco["categories"])
    assert ids.category_ids == (1, 2)
    with pytest.raises(Exception, match="carry category ids"):
        CategoryMap(names={"a": "b"}, source="m.yaml").map_detections([{"category_id": 1}])


def test_extra_keys_and_integer_scores_from_other_toolkits_are_accepted(tmp_path, tiny_coco):
    gt = write_json(tmp_path / "gt.json", tiny_coco)
    dets = [dict(d, score=1, segmentation=[], id=i, area=4.0) for i, d in enumerate(perfect_detections(tiny_coco))]
    result = run("evaluate", write_json(tmp_path / "mmdet.json", copy.deepcopy(dets)), "--annotations", gt, "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output


def _loaded(path, gt):
    from kdeval.data.coco import load_results
    from kdeval.errors import KdevalError

    try:
        return load_results(path, gt)
    except KdevalError as exc:
        return f"error: {exc}"


@pytest.mark.parametrize("change", [
    {},
    {"bbox": [2**70, 1, 3, 4], "id": 2**80},  # integers beyond 64 bits: orjson makes them floats
    {"image_id": 2**64},
    {"category_id": -(2**63) - 1},
    {"score": float("nan")},
    {"score": True},
])
def test_results_files_load_alike_with_orjson_or_json(tmp_path, tiny_coco, monkeypatch, change):
    pytest.importorskip("orjson")
    import sys

    dets = [dict(d, score=0.5 + i / 10, area=4) for i, d in enumerate(perfect_detections(tiny_coco))]
    dets[1].update(change)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(dets, allow_nan=True))
    with_orjson = _loaded(path, tiny_coco)
    monkeypatch.setitem(sys.modules, "orjson", None)  # as where it is not installed
    with_json = _loaded(path, tiny_coco)
    assert with_orjson == with_json and repr(with_orjson) == repr(with_json)
    assert isinstance(with_json, list) == (change in ({}, {"bbox": [2**70, 1, 3, 4], "id": 2**80})), with_json
