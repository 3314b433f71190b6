"""The command line as a user runs it: one smoke test per command, and bad input → one line, exit 2."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from kdeval.cli import app

from conftest import TINY_TRAIN_ARGS, perfect_detections, shapes_args, write_json

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("kdeval: error:") and "\n" not in message, message
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in message, message


def test_help_lists_every_command_and_python_dash_m_works():
    result = subprocess.run([sys.executable, "-m", "kdeval", "--help"], capture_output=True, text=True, check=True)
    for command in ("data", "train", "predict", "evaluate"):
        assert command in result.stdout
    for command in (["train"], ["predict"], ["evaluate"], ["data", "shapes"]):
        assert "Example" in run(*command, "--help").output


def test_data_shapes_writes_a_coco_dataset(tmp_path):
    result = run("data", "shapes", tmp_path / "s", "--train", 3, "--val", 2, "--size", 64)
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "s" / "train").glob("*.png"))) == 3
    coco = json.loads((tmp_path / "s" / "annotations" / "instances_val.json").read_text())
    assert len(coco["images"]) == 2 and all("supercategory" in c for c in coco["categories"])


def test_train_predict_evaluate_end_to_end(tiny_shapes, trained, tmp_path):
    dets = tmp_path / "dets.json"
    result = run("predict", trained, *shapes_args(tiny_shapes), "-o", dets, "--no-progress")
    assert result.exit_code == 0, result.output
    detections = json.loads(dets.read_text())
    gt = json.loads((tiny_shapes / "annotations" / "instances_val.json").read_text())
    assert {d["image_id"] for d in detections} <= {i["id"] for i in gt["images"]}
    per_image = {}
    for d in detections:
        per_image[d["image_id"]] = per_image.get(d["image_id"], 0) + 1
        assert len(d["bbox"]) == 4 and 0 <= d["score"] <= 1 and d["category_id"] in range(1, 7)
    assert max(per_image.values(), default=0) <= 100

    perfect = write_json(tmp_path / "perfect.json", perfect_detections(gt))
    result = run(
        "evaluate", f"tiny={trained}", f"oracle={perfect}", f"same={dets}",
        *shapes_args(tiny_shapes), "--baseline", "tiny", "--out", tmp_path / "report", "--no-progress",
    )
    assert result.exit_code == 0, result.output
    assert re.search(r"^oracle\s+100\.0 \[100\.0, 100\.0\]", result.stdout, re.M), result.stdout  # perfect detections: AP 100
    # the gain over the baseline, its interval, and the mark of an interval that excludes 0
    assert re.search(r"^oracle − tiny\s+\+100\.0 \[\+100\.0, \+100\.0\]\*", result.stdout, re.M), result.stdout
    csv = (tmp_path / "report" / "ap_table.csv").read_text().splitlines()
    assert csv[0].startswith("model,AP,AP50,AP75,APs,APm,APl,AP_gain")
    rows = {line.split(",")[0]: line.split(",") for line in csv[1:]}
    assert rows["tiny"][1] == rows["same"][1]  # the checkpoint and its own results JSON score alike
    assert float(rows["oracle"][1]) == 1.0
    assert float(rows["tiny"][7]) == 0.0  # gain of the baseline over itself
    markdown = (tmp_path / "report" / "ap_table.md").read_text()
    assert markdown.startswith("| model | AP | AP50 | AP75 | APs | APm | APl |")
    latex = (tmp_path / "report" / "ap_table.tex").read_text()
    assert r"\begin{tabular}" in latex and r"AP$_{50}$" in latex and r"\textit{tiny}" in latex
    stats = json.loads((tmp_path / "report" / "coco_stats.json").read_text())["stats"]
    assert set(stats["oracle"]) >= {"AP", "AR100"} and not math.isnan(stats["tiny"]["AP"])


def test_data_names_the_built_in_datasets_the_study_quick_one_too(monkeypatch, tmp_path):
    import kdeval.data.shapes
    from kdeval.data.source import resolve_split
    from kdeval.errors import KdevalError

    monkeypatch.setattr(kdeval.data.shapes, "cached_shapes", lambda spec: tmp_path / spec.cache_key())
    quick, full = resolve_split("shapes-quick", None, None), resolve_split("shapes", None, None, "train")
    assert quick.name == "shapes-quick-val" and "train300-val60" in str(quick.annotations)
    assert full.name == "shapes-train" and "train2000-val300" in str(full.images)
    with pytest.raises(KdevalError, match="unknown --data 'coco': use 'shapes' or 'shapes-quick'"):
        resolve_split("coco", None, None)


def test_models_without_names_are_named_by_file_or_by_the_training_folder():
    from kdeval.engine.detections import ModelInput

    names = [ModelInput.parse(text).name for text in (
        "reports/baseline-r18/model.pt", "reports/distilled-ssim-r18/model.pt", "r50.bbox.json", "kd=reports/x/model.pt",
        "weights/retinanet_resnet50_fpn_coco-eeacb38b.pth")]
    assert names == ["baseline-r18", "distilled-ssim-r18", "r50.bbox", "kd", "retinanet_resnet50_fpn_coco-eeacb38b"]


def test_evaluate_results_json_needs_no_images(tmp_path, tiny_coco):
    gt = write_json(tmp_path / "gt.json", tiny_coco)
    dets = write_json(tmp_path / "d.json", perfect_detections(tiny_coco))
    empty = write_json(tmp_path / "empty.json", [])
    result = run("evaluate", f"good={dets}", f"none={empty}", "--annotations", gt, "--baseline", "none", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert re.search(r"^good − none\s+\+100\.0 \[\+100\.0, \+100\.0\]\*", result.stdout, re.M), result.stdout
    assert re.search(r"^none\s+0\.0\s", result.stdout, re.M), result.stdout


def test_predict_reuses_cached_detections(tiny_shapes, trained, tmp_path, monkeypatch):
    import kdeval.engine.detections as detections_module

    args = ["predict", trained, *shapes_args(tiny_shapes), "--no-progress"]
    assert run(*args, "-o", tmp_path / "a.json").exit_code == 0
    monkeypatch.setattr(detections_module, "predict", lambda *a, **k: pytest.fail("the model ran again"))
    assert run(*args, "-o", tmp_path / "b.json").exit_code == 0
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


@pytest.mark.parametrize(
    "results,fragments",
    [
        ([{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}], ["[0].image_id", "99"]),
        ([{"image_id": 1, "category_id": 5, "bbox": [0, 0, 1, 1], "score": 0.5}], ["[0].category_id", "5"]),
        ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, float("nan"), 1], "score": 0.5}], ["[0].bbox", "not finite"]),
        ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, -3, 1], "score": 0.5}], ["[0].bbox", "negative"]),
        ([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 0.5}], ["[0].bbox", "4 numbers"]),
        ([{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}], ["[0]", "category_id"]),
        ({"not": "a list"}, ["results list"]),
    ],
)
def test_bad_results_get_one_line_and_exit_2(tmp_path, tiny_coco, results, fragments):
    gt = write_json(tmp_path / "gt.json", tiny_coco)
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps(results))
    out = tmp_path / "out"
    out.mkdir()
    (out / "ap_table.csv").write_text("earlier result")
    result = run("evaluate", dets, "--annotations", gt, "--out", out)
    assert_user_error(result, str(dets), *fragments)
    assert (out / "ap_table.csv").read_text() == "earlier result"  # nothing already written is damaged


@pytest.mark.parametrize(
    "mutate,fragments",
    [
        (lambda c: c.pop("images"), ["'images'"]),
        (lambda c: c["annotations"][0].update(image_id=42), ["annotations[0].image_id", "42"]),
        (lambda c: c["annotations"][1].update(category_id=9), ["annotations[1].category_id"]),
        (lambda c: c["annotations"][2].update(bbox=[0, 0, -1, 4]), ["annotations[2].bbox", "negative"]),
        (lambda c: c["categories"][0].pop("name"), ["categories[0]", "'name'"]),
        (lambda c: c["images"].append(dict(c["images"][0])), ["duplicate image id"]),
    ],
)
def test_bad_annotations_get_one_line_and_exit_2(tmp_path, tiny_coco, mutate, fragments):
    mutate(tiny_coco)
    gt = write_json(tmp_path / "gt.json", tiny_coco)
    dets = write_json(tmp_path / "d.json", [])
    assert_user_error(run("evaluate", dets, "--annotations", gt, "--out", tmp_path / "o"), str(gt), *fragments)


def test_missing_and_malformed_files(tmp_path, tiny_coco, tiny_shapes, trained):
    gt = write_json(tmp_path / "gt.json", tiny_coco)
    assert_user_error(run("evaluate", "--out", tmp_path / "o", tmp_path / "nope.json", "--annotations", gt), "nope.json", "not found")
    assert_user_error(run("evaluate", "--out", tmp_path / "o", write_json(tmp_path / "d.json", []), "--annotations", tmp_path / "x.json"), "x.json", "not found")
    (tmp_path / "broken.json").write_text("{ not json")
    assert_user_error(run("evaluate", "--out", tmp_path / "o", tmp_path / "broken.json", "--annotations", gt), "broken.json", "not valid JSON")
    (tmp_path / "model.pt").write_bytes(b"junk")
    assert_user_error(run("evaluate", "--out", tmp_path / "o", tmp_path / "model.pt", *shapes_args(tiny_shapes)), "model.pt", "not a readable PyTorch file")
    assert_user_error(run("evaluate", "--out", tmp_path / "o", f"a={tmp_path / 'd.json'}", f"a={tmp_path / 'd.json'}", "--annotations", gt), "'a' appears twice")
    assert_user_error(run("evaluate", "--out", tmp_path / "o", tmp_path / "d.json", "--annotations", gt, "--baseline", "zzz"), "--baseline 'zzz'")
    # a checkpoint scored without its images, and a dataset whose images went missing
    assert_user_error(run("evaluate", "--out", tmp_path / "o", trained, "--annotations", tiny_shapes / "annotations" / "instances_val.json"), "needs the images")
    empty_dir = tmp_path / "noimages"
    empty_dir.mkdir()
    assert_user_error(
        run("evaluate", "--out", tmp_path / "o", trained, "--images", empty_dir, "--annotations", tiny_shapes / "annotations" / "instances_val.json"),
        "image file not found",
    )
    # a model trained on other categories than the dataset's
    assert_user_error(run("evaluate", "--out", tmp_path / "o", trained, "--images", tmp_path, "--annotations", gt),
                      "category id 1 is 'cat' in the dataset but 'circle' in the model", "--category-map FILE ('circle': 'cat')")


def test_a_model_whose_ids_are_shifted_is_told_how_to_map_them():
    from kdeval.errors import KdevalError
    from kdeval.labels import LabelSpace

    labels = LabelSpace((1, 2), ("circle", "ellipse"))
    with pytest.raises(KdevalError, match=r"trained on 1 circle, 2 ellipse; the model calls 'circle' id 1: .*--category-map"):
        labels.check_matches([{"id": 11, "name": "circle"}, {"id": 12, "name": "ellipse"}], "val.json")
    many = LabelSpace(tuple(range(1, 81)), tuple(f"c{i}" for i in range(1, 81)))
    with pytest.raises(KdevalError, match=r"8 c8, … \(80 in all\); `evaluate` and `errors` map"):
        many.check_matches([{"id": 90, "name": "toothbrush"}], "val.json")


def test_ctrl_c_during_training_says_how_to_go_on(tiny_shapes, tmp_path, monkeypatch):
    import kdeval.engine.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(kdeval.engine.train, "train", interrupted)
    result = run("train", *shapes_args(tiny_shapes, "train"), *TINY_TRAIN_ARGS, "--out", tmp_path / "run")
    assert result.exit_code == 130 and "with --resume continues" in result.output


def test_train_refuses_to_overwrite_a_finished_run(tiny_shapes, trained):
    result = run("train", *shapes_args(tiny_shapes, "train"), *TINY_TRAIN_ARGS, "--out", trained.parent)
    assert_user_error(result, "already there", "--overwrite")
    result = run("train", *shapes_args(tiny_shapes, "train"), *TINY_TRAIN_ARGS, "--out", trained.parent, "--resume")
    assert result.exit_code == 0 and "already finished" in result.stdout
    # --resume asking for a longer schedule than the finished one: said, not reported as finished
    longer = [*TINY_TRAIN_ARGS[:TINY_TRAIN_ARGS.index("--epochs") + 1], "7", *TINY_TRAIN_ARGS[TINY_TRAIN_ARGS.index("--epochs") + 2:]]
    result = run("train", *shapes_args(tiny_shapes, "train"), *longer, "--out", trained.parent, "--resume")
    assert_user_error(result, "finished with other settings", "now", "--overwrite")


def test_recipe_names_and_settings_agree():
    from kdeval.engine.train import RECIPES
    from kdeval.vocab import RECIPES as RECIPE_NAMES

    assert tuple(RECIPES) == RECIPE_NAMES


def test_inference_runs_fp16_on_cuda_by_default_and_fp32_when_asked(tiny_shapes, trained, tmp_path, monkeypatch):
    """AMP (fp16) is the default on CUDA, --fp32 turns it off; the CPU runs fp32 either way, so its
    cached detections are keyed as before."""
    import kdeval.engine.detections as detections_module
    from kdeval.engine.predict import PredictSettings

    assert PredictSettings(device="cuda").uses_amp() and not PredictSettings(device="cuda", amp=False).uses_amp()
    assert not PredictSettings(device="cpu").uses_amp()
    assert PredictSettings(device="cpu").cache_fields() == PredictSettings(device="cpu", amp=False).cache_fields() == {
        "device_type": "cpu", "amp": False}
    seen = []
    monkeypatch.setattr(detections_module, "cached_predict", lambda checkpoint, split, settings, **k: seen.append(settings.amp) or [])
    args = ["predict", trained, *shapes_args(tiny_shapes), "--no-progress", "--device", "cpu", "-o", tmp_path / "d.json"]
    assert run(*args).exit_code == 0 and run(*args, "--fp32").exit_code == 0
    assert seen == [True, False]


def test_cuda_graphs_are_asked_for_on_the_command_line_and_leave_the_cache_key(tiny_shapes, trained, tmp_path, monkeypatch):
    """--cuda-graphs reaches the inference settings (off by default); cached detections are keyed as
    without it, since graphs replay the same kernels."""
    import kdeval.engine.detections as detections_module
    from kdeval.engine.predict import PredictSettings

    assert PredictSettings(device="cuda", cuda_graphs=True).cache_fields() == PredictSettings(device="cuda").cache_fields()
    seen = []
    monkeypatch.setattr(detections_module, "cached_predict", lambda checkpoint, split, settings, **k: seen.append(settings.cuda_graphs) or [])
    args = ["predict", trained, *shapes_args(tiny_shapes), "--no-progress", "--device", "cpu", "-o", tmp_path / "d.json"]
    assert run(*args).exit_code == 0 and run(*args, "--cuda-graphs").exit_code == 0
    assert seen == [False, True]
