"""A model of several runs (training seeds) under one name: NAME=PATH,PATH,... parsed, checked, turned
into one detection list per run, and shown as the mean over runs ± their sample std."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from kdeval.cli import app
from kdeval.data.source import Split
from kdeval.engine.detections import (
    ModelInput, check_runs_share_categories, detection_runs_by_model, detections_by_model, model_paths, parse_models,
    parse_named_models,
)
from kdeval.errors import KdevalError

from conftest import noisy_detections, perfect_detections, shapes_args, write_json

runner = CliRunner()


def assert_user_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("kdeval: error:") and "\n" not in message, message
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in message, message


def files(folder: Path, *names: str) -> list[Path]:
    for name in names:
        (folder / name).write_text("[]")
    return [folder / name for name in names]


def checkpoint(path: Path, categories: list[dict]) -> Path:
    """An untrained 64-px R18 checkpoint knowing `categories`: seconds to build, detections on demand."""
    from kdeval.models.checkpoint import save_checkpoint
    from kdeval.models.retinanet import ModelSpec, build_retinanet

    torch.manual_seed(0)
    spec = ModelSpec("r18", num_classes=len(categories), fpn_channels=8, min_size=64, max_size=64)
    return save_checkpoint(path, build_retinanet(spec), spec, categories, "baseline")


def shapes_categories(tiny_shapes: Path) -> list[dict]:
    return json.loads((tiny_shapes / "annotations" / "instances_val.json").read_text())["categories"]


# ---------------------------------------------------------------- parsing


def test_a_name_may_stand_for_several_runs(tmp_path):
    a, b, c = files(tmp_path, "a.json", "b.pt", "c.json")
    model = ModelInput.parse(f"ssim={a},{b},{c}")
    assert (model.name, model.paths, model.runs) == ("ssim", (a, b, c), 3)
    [parsed] = parse_models([f"ssim={a},{b},{c}"])
    assert parsed == model
    assert model_paths([model, ModelInput("one", a)]) == {"ssim": [str(a), str(b), str(c)], "one": str(a)}


def test_a_single_run_keeps_its_path_and_its_name():
    model = ModelInput.parse("reports/baseline-r18/model.pt")
    assert (model.name, model.runs, model.path) == ("baseline-r18", 1, Path("reports/baseline-r18/model.pt"))
    assert ModelInput("m", Path("x.json")).paths == (Path("x.json"),) and ModelInput("m", "x.json").is_results_json


def test_path_of_a_model_of_several_runs_is_one_line():
    model = ModelInput.parse("ssim=s0/model.pt,s1/model.pt,s2/model.pt,s3/model.pt")
    with pytest.raises(KdevalError) as error:
        _ = model.path
    assert "\n" not in str(error.value)
    assert "model 'ssim' has 4 runs" in str(error.value) and "one checkpoint or results file per model" in str(error.value)


@pytest.mark.parametrize("text,fragment", [
    ("a.pt,b.pt", "several runs of one model need a name: NAME=a.pt,b.pt"),
    ("ssim=a.pt,", "one path per run"),
    ("ssim=,a.pt", "one path per run"),
    ("=a.pt", "expected PATH, NAME=PATH"),
    ("ssim=", "expected PATH, NAME=PATH"),
])
def test_bad_model_arguments(text, fragment):
    with pytest.raises(KdevalError, match=fragment):
        ModelInput.parse(text)


def test_every_run_is_checked(tmp_path):
    a, b = files(tmp_path, "a.json", "b.txt")
    with pytest.raises(KdevalError, match="missing.pt: model file not found"):
        parse_models([f"m={a},{tmp_path / 'missing.pt'}"])
    with pytest.raises(KdevalError, match="b.txt: expected a checkpoint"):
        parse_models([f"m={a},{b}"])
    with pytest.raises(KdevalError, match="are the same file; give each run once"):
        parse_models([f"m={a},{tmp_path / '.' / 'a.json'}"])


def test_names_given_apart_take_runs_too(tmp_path):
    a, b, c = files(tmp_path, "a.json", "b.json", "c.json")
    models = parse_named_models([f"{a},{b}", str(c)], "kd,base")
    assert [(m.name, m.runs) for m in models] == [("kd", 2), ("base", 1)]
    with pytest.raises(KdevalError, match="model file not found"):
        parse_named_models([f"{a},{tmp_path / 'missing.json'}"], "kd")


# ---------------------------------------------------------------- detections of every run


@pytest.fixture
def tiny_split(tmp_path, tiny_coco) -> tuple[dict, Split]:
    annotations = write_json(tmp_path / "gt.json", tiny_coco)
    return tiny_coco, Split(annotations, None, "tiny")


def test_results_files_of_one_name_become_its_runs(tiny_split, tmp_path):
    gt, split = tiny_split
    perfect = perfect_detections(gt)
    shifted = [dict(d, bbox=[d["bbox"][0] + 3, *d["bbox"][1:]]) for d in perfect]
    first, second = write_json(tmp_path / "s0.json", perfect), write_json(tmp_path / "s1.json", shifted)
    models = parse_models([f"kd={first},{second}", f"base={first}"])
    runs = detection_runs_by_model(models, split, gt, progress=False)
    assert list(runs) == ["kd", "base"] and [len(r) for r in runs.values()] == [2, 1]
    assert [[d["bbox"] for d in run] for run in runs["kd"]] == [[d["bbox"] for d in perfect], [d["bbox"] for d in shifted]]
    # a command of one run per model refuses a model of several, before it reads anything
    with pytest.raises(KdevalError, match="model 'kd' has 2 runs; visualize takes one checkpoint or results file per model"):
        detections_by_model(models, split, gt, progress=False, command="visualize")
    single = detections_by_model(models[1:], split, gt, progress=False)
    assert single == {"base": runs["base"][0]}


def test_mean_and_std_over_runs_are_numpys_and_one_run_has_no_std(tiny_shapes, tmp_path):
    from kdeval.analysis.evaluation import evaluate_detections
    from kdeval.metrics.coco_ap import coco_stats

    split = Split(tiny_shapes / "annotations" / "instances_val.json", tiny_shapes / "val", "val")
    gt = json.loads(split.annotations.read_text())
    paths = [write_json(tmp_path / f"s{seed}.json", noisy_detections(gt, seed)) for seed in range(3)]
    models = parse_models([f"kd={','.join(map(str, paths))}", f"single={paths[0]}"])
    runs = detection_runs_by_model(models, split, gt, progress=False)
    evaluation = evaluate_detections(gt, runs)
    per_run = np.array([list(coco_stats(gt, run).values()) for run in runs["kd"]])
    assert per_run[:, 0].std() > 0  # the runs differ, so the spread is a real check
    table = evaluation.intervals.set_index(["model", "metric"])
    for index, metric in enumerate(evaluation.stats["kd"]):
        values = per_run[:, index]
        if (values > -1).all():
            assert evaluation.stats["kd"][metric] == pytest.approx(values.mean(), abs=1e-12)
            assert table.loc[("kd", metric), "std_over_runs"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
        assert table.loc[("kd", metric), "runs"] == 3
        assert table.loc[("single", metric), "runs"] == 1 and math.isnan(table.loc[("single", metric), "std_over_runs"])
    assert evaluation.stats["single"] == coco_stats(gt, runs["single"][0])


def test_checkpoints_of_one_name_must_share_their_categories(tiny_shapes, tmp_path):
    categories = shapes_categories(tiny_shapes)
    same = [checkpoint(tmp_path / f"s{seed}.pt", categories) for seed in range(2)]
    renamed = checkpoint(tmp_path / "renamed.pt", [dict(c, name="blob") if c["id"] == categories[0]["id"] else c for c in categories])
    fewer = checkpoint(tmp_path / "fewer.pt", categories[:-1])
    check_runs_share_categories(ModelInput("kd", tuple(same)))
    for other, shown in ((renamed, f"{categories[0]['id']} 'blob'"), (fewer, f"{categories[-1]['id']} '{categories[-1]['name']}'")):
        with pytest.raises(KdevalError) as error:
            check_runs_share_categories(ModelInput("kd", (same[0], other)))
        message = str(error.value)
        assert "\n" not in message and "model 'kd'" in message and "know different categories" in message and shown in message


def test_a_checkpoint_and_a_results_file_may_be_runs_of_one_name(tiny_shapes, tmp_path):
    split = Split(tiny_shapes / "annotations" / "instances_val.json", tiny_shapes / "val", "val")
    gt = json.loads(split.annotations.read_text())
    model = checkpoint(tmp_path / "s0.pt", shapes_categories(tiny_shapes))
    results = write_json(tmp_path / "s1.json", perfect_detections(gt))
    runs = detection_runs_by_model(parse_models([f"kd={model},{results}"]), split, gt, progress=False)
    assert len(runs["kd"]) == 2 and runs["kd"][1] == json.loads(results.read_text())
    assert {d["image_id"] for d in runs["kd"][0]} <= {image["id"] for image in gt["images"]}


def test_evaluate_models_counts_the_runs(tiny_split, tmp_path):
    from kdeval.engine.evaluate import evaluate_models

    gt, split = tiny_split
    first, second = write_json(tmp_path / "s0.json", perfect_detections(gt)), write_json(tmp_path / "s1.json", [])
    evaluation = evaluate_models(parse_models([f"kd={first},{second}"]), split, progress=False)
    assert set(evaluation.intervals["runs"]) == {2}
    assert evaluation.stats["kd"]["AP"] == pytest.approx(0.5)  # 1.0 and 0.0


# ---------------------------------------------------------------- the command line


def test_several_runs_without_a_name_is_one_line(tiny_split, tmp_path):
    _, split = tiny_split
    a, b = write_json(tmp_path / "a.json", []), write_json(tmp_path / "b.json", [])
    result = runner.invoke(app, ["evaluate", f"{a},{b}", "--annotations", str(split.annotations), "--out", str(tmp_path / "o")])
    assert_user_error(result, "several runs of one model need a name")


def test_runs_with_different_categories_are_one_line_and_exit_2(tiny_shapes, tmp_path):
    categories = shapes_categories(tiny_shapes)
    first, fewer = checkpoint(tmp_path / "s0.pt", categories), checkpoint(tmp_path / "s1.pt", categories[:-1])
    result = runner.invoke(app, ["evaluate", f"kd={first},{fewer}", *shapes_args(tiny_shapes), "--no-progress",
                                 "--device", "cpu", "--out", str(tmp_path / "o")])
    assert_user_error(result, "model 'kd'", "know different categories")


def test_visualize_takes_one_run_per_model(tiny_shapes, shapes_models, tmp_path):
    _, models = shapes_models
    first, second = models[0].split("=")[1], models[2].split("=")[1]
    result = runner.invoke(app, ["visualize", f"kd={first},{second}", models[1], *shapes_args(tiny_shapes), "--no-progress",
                                 "--out", str(tmp_path / "v")])
    assert_user_error(result, "model 'kd' has 2 runs; visualize takes one checkpoint or results file per model")


def test_robustness_takes_one_run_per_model(tiny_shapes, tmp_path):
    categories = shapes_categories(tiny_shapes)
    first, second = checkpoint(tmp_path / "s0.pt", categories), checkpoint(tmp_path / "s1.pt", categories)
    result = runner.invoke(app, ["robustness", f"kd={first},{second}", *shapes_args(tiny_shapes), "--corruptions", "fog",
                                 "--severities", "1", "--max-images", "2", "--no-progress", "--device", "cpu",
                                 "--out", str(tmp_path / "r")])
    assert_user_error(result, "model 'kd' has 2 runs", "one checkpoint or results file per model")
