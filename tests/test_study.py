"""`kdeval study`: the stage pipeline, its manifest, resumption and reruns of what changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kdeval.cli import app
from kdeval.config import read_settings_file, settings_from_mapping
from kdeval.errors import KdevalError
from kdeval.study import StudySettings, run_study, study_summary

runner = CliRunner()


def tiny(tiny_shapes, **changes) -> StudySettings:
    """A study small enough for the test suite: tiny Shapes, 64 px, one epoch each."""
    base = StudySettings(
        images=str(tiny_shapes / "train"), annotations=str(tiny_shapes / "annotations" / "instances_train.json"),
        val_images=str(tiny_shapes / "val"), val_annotations=str(tiny_shapes / "annotations" / "instances_val.json"),
        teacher_epochs=1, student_epochs=1, image_size=64, batch_size=4, fpn_channels=16, teacher_arch="r18",
        corruptions="fog,contrast", severities=(2,), robustness_images=4, visualize_images=2,
    )
    return settings_from_mapping(StudySettings, changes, "test", base=base)


@pytest.mark.slow
def test_a_study_runs_then_a_rerun_keeps_everything(tiny_shapes, tmp_path):
    lines = []
    first = run_study(tiny(tiny_shapes), tmp_path, progress=False, echo=lines.append)
    assert first.ran == ["teacher", "baseline", "distilled", "unlabeled", "evaluate", "errors", "robustness", "visualize", "report"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert all(record["state"] == "finished" for record in manifest["stages"].values())
    for made in ("evaluate/ap_table.md", "errors/figure1_error_curves.png", "robustness/robustness_summary.md",
                 "visualize/index.html", "index.html"):
        assert (tmp_path / made).is_file(), made
    table = (tmp_path / "evaluate" / "ap_table.md").read_text()
    assert "| baseline |" in table and "| distilled-ssim |" in table and "| teacher |" in table
    summary = study_summary(tmp_path)
    assert "Table 1: feature distillation" in summary and "| distilled-ssim |" in summary and "Table 3: robustness" in summary
    assert "Table 2: without annotations\nnot run: `kdeval study --unlabeled`" in summary
    assert summary.endswith(f"report: {(tmp_path / 'index.html').resolve()}")
    second = run_study(tiny(tiny_shapes), tmp_path, progress=False, echo=lines.append)
    assert second.ran == [] and "teacher" in second.skipped
    # a changed student schedule reruns the students and what reads them, not the teacher
    third = run_study(tiny(tiny_shapes, student_epochs=2), tmp_path, progress=False, echo=lines.append)
    assert third.ran == ["baseline", "distilled", "unlabeled", "evaluate", "errors", "robustness", "visualize", "report"]
    # a changed robustness setting reruns robustness and the report only
    fourth = run_study(tiny(tiny_shapes, student_epochs=2, robustness_images=3), tmp_path, progress=False, echo=lines.append)
    assert fourth.ran == ["robustness", "report"]


@pytest.mark.slow
def test_adding_a_loss_trains_that_student_alone_and_a_new_teacher_retrains_them(tiny_shapes, tmp_path, monkeypatch):
    """The distilled stage reruns as a whole when a loss is added; the students it already has (same
    settings, same teacher bytes) are kept. A retrained teacher (same path) retrains them."""
    import kdeval.engine.train as train_module

    trained, lines, real_train = [], [], train_module.train
    monkeypatch.setattr(train_module, "train", lambda settings, split, out_dir, **kw: trained.append(out_dir.name) or real_train(
        settings, split, out_dir, **kw))
    run_study(tiny(tiny_shapes, losses=["ssim"]), tmp_path, progress=False, echo=lines.append, stop_before="unlabeled")
    assert trained == ["teacher", "baseline", "distilled-ssim"]
    ssim_student = (tmp_path / "models" / "distilled-ssim" / "model.pt").read_bytes()
    trained.clear()
    monkeypatch.chdir(tmp_path.parent)  # the same folder spelled otherwise: the teacher's path differs, not its bytes
    added = run_study(tiny(tiny_shapes, losses=["ssim", "l2"]), Path(tmp_path.name), progress=False, echo=lines.append,
                      stop_before="unlabeled")
    assert added.ran == ["distilled"] and trained == ["distilled-l2"]
    assert "  distilled-ssim: trained earlier with the same settings, kept" in lines
    assert (tmp_path / "models" / "distilled-ssim" / "model.pt").read_bytes() == ssim_student
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["stages"]["distilled"]["outputs"]) == {"ssim", "l2"}
    trained.clear()
    retaught = run_study(tiny(tiny_shapes, losses=["ssim", "l2"], teacher_epochs=2), tmp_path, progress=False, echo=lines.append,
                         stop_before="unlabeled")
    assert retaught.ran == ["teacher", "distilled"] and trained == ["teacher", "distilled-ssim", "distilled-l2"]
    # a model.pt put in a student's folder since (kdeval train --overwrite there, say) is not the one the study made;
    # the default weights given explicitly rerun the stage with every student's settings unchanged
    from kdeval.study import DEFAULT_DISTILL_WEIGHTS

    trained.clear()
    (tmp_path / "models" / "distilled-ssim" / "model.pt").write_bytes(ssim_student)
    replaced = run_study(tiny(tiny_shapes, losses=["ssim", "l2"], teacher_epochs=2, distill_weights=[DEFAULT_DISTILL_WEIGHTS["ssim"], DEFAULT_DISTILL_WEIGHTS["l2"]]), tmp_path,
                         progress=False, echo=lines.append, stop_before="unlabeled")
    assert replaced.ran == ["distilled"] and trained == ["distilled-ssim"]


@pytest.mark.slow
def test_a_study_killed_inside_a_stage_resumes_there(tiny_shapes, tmp_path, monkeypatch):
    import kdeval.study as study

    real = study.STAGE_FUNCTIONS["baseline"]
    calls = []

    def dies_after_starting(ctx, resume):
        calls.append(resume)
        if len(calls) == 1:
            raise KeyboardInterrupt  # as a kill would, after the manifest says 'started'
        return real(ctx, resume)

    monkeypatch.setitem(study.STAGE_FUNCTIONS, "baseline", dies_after_starting)
    with pytest.raises(KeyboardInterrupt):
        run_study(tiny(tiny_shapes), tmp_path, progress=False, echo=lambda line: None)
    assert json.loads((tmp_path / "manifest.json").read_text())["stages"]["baseline"]["state"] == "started"
    result = run_study(tiny(tiny_shapes), tmp_path, progress=False, echo=lambda line: None)
    assert calls == [False, True]  # the second call continued the interrupted stage
    assert result.skipped == ["teacher"] and result.ran[0] == "baseline"


def test_existing_checkpoints_skip_training(tiny_shapes, trained, tmp_path):
    result = run_study(tiny(tiny_shapes, teacher=str(trained), baseline=str(trained), distilled=str(trained)), tmp_path,
                       progress=False, echo=lambda line: None)
    assert not (tmp_path / "models").exists()
    assert result.ran[:3] == ["teacher", "baseline", "distilled"] and result.ran[-1] == "report"


@pytest.mark.slow
def test_a_study_distils_from_an_mmdet_teacher_and_evaluates_it(tiny_shapes, tmp_path):
    """--teacher takes mmdetection's checkpoint as it is: the students learn from its FPN maps, and it is
    evaluated at its own test-time scale beside them, its classes reaching the dataset by name."""
    from test_mmdet_models import _shapes_mmdet_checkpoint

    from kdeval.models.checkpoint import load_checkpoint

    teacher = _shapes_mmdet_checkpoint(tiny_shapes, tmp_path / "retinanet_r18_fpn_mm.pth")
    result = run_study(tiny(tiny_shapes, teacher=str(teacher)), tmp_path / "study", progress=False, echo=lambda line: None,
                       stop_before="errors")
    assert result.ran[:3] == ["teacher", "baseline", "distilled"] and "evaluate" in result.ran
    assert not (tmp_path / "study" / "models" / "teacher").exists()
    student = load_checkpoint(tmp_path / "study" / "models" / "distilled-ssim" / "model.pt")
    assert student.role == "distilled" and student.spec.style == "torchvision"
    table = (tmp_path / "study" / "evaluate" / "ap_table.md").read_text()
    assert "| teacher |" in table and "| distilled-ssim |" in table


@pytest.mark.parametrize("suffix,text", [
    (".yaml", "student_epochs: 3\nlosses: [ssim, l2]\nunlabeled: true\n"),
    (".toml", 'student-epochs = 3\nlosses = ["ssim", "l2"]\nunlabeled = true\n'),
])
def test_config_files_hold_any_setting(tmp_path, suffix, text):
    path = tmp_path / f"study{suffix}"
    path.write_text(text)
    settings = settings_from_mapping(StudySettings, read_settings_file(path), str(path))
    assert settings.student_epochs == 3 and settings.losses == ("ssim", "l2") and settings.unlabeled is True


@pytest.mark.parametrize("text,fragment", [
    ("student_epochs: three\n", "student_epochs: expected an integer"),
    ("colour: red\n", "unknown setting 'colour'"),
    ("losses: [ssim, cosine]\n", "unknown 'cosine'"),
    ("!!python/object/apply:os.system ['touch pwned']\n", "not a readable config file"),
    ("- a\n- b\n", "expected a mapping"),
])
def test_bad_config_files_get_one_line(tmp_path, text, fragment):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(KdevalError, match=fragment):
        settings_from_mapping(StudySettings, read_settings_file(path), str(path))
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_study_command_with_a_config_file(tiny_shapes, tmp_path):
    config = tmp_path / "study.yaml"
    config.write_text("\n".join(f"{k}: {v}" for k, v in {
        "images": tiny_shapes / "train", "annotations": tiny_shapes / "annotations" / "instances_train.json",
        "val_images": tiny_shapes / "val", "val_annotations": tiny_shapes / "annotations" / "instances_val.json",
        "teacher_epochs": 1, "student_epochs": 1, "image_size": 64, "batch_size": 4, "fpn_channels": 16, "teacher_arch": "r18",
        "corruptions": "fog", "severities": "[3]", "robustness_images": 3, "visualize_images": 2,
    }.items()) + "\n")
    result = runner.invoke(app, ["study", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "Table 1" in result.output and "| distilled-ssim |" in result.output and "Table 3" in result.output
    assert "report: " in result.output and (tmp_path / "run" / "index.html").is_file()
    saved = json.loads((tmp_path / "run" / "study_settings.json").read_text())
    assert saved["image_size"] == 64 and saved["teacher_arch"] == "r18"


def test_study_refuses_to_run_under_torchrun(tmp_path, monkeypatch):
    """Every stage would run on every rank (and evaluation gathers on rank 0 alone): one line, exit 2."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(KdevalError, match="one process"):
        run_study(StudySettings(quick=True), tmp_path / "study")
    result = CliRunner().invoke(app, ["study", "--quick", "--out", str(tmp_path / "cli")])
    assert result.exit_code == 2 and "runs in one process" in result.output
    assert not (tmp_path / "study").exists()


def test_quick_says_what_it_changes_of_the_settings():
    from kdeval.study import quick_changes, quick_settings

    asked = StudySettings(quick=True, teacher_epochs=9, visualize_images=2)
    quick = quick_settings(asked)
    assert (quick.teacher_epochs, quick.visualize_images, quick.severities, quick.pseudo_threshold) == (5, 2, (3,), 0.1)
    line = quick_changes(asked)
    assert line.startswith("--quick sets ") and "teacher_epochs 9 → 5" in line and "visualize_images" not in line
    assert quick_changes(quick) is None  # nothing left to change


def test_a_config_files_device_is_used_unless_the_command_line_names_one(tmp_path, monkeypatch):
    import kdeval.cli
    import kdeval.study

    used = []
    monkeypatch.setattr(kdeval.cli.study, "resolve_device", lambda name: name)  # no CUDA needed to see which is asked for
    monkeypatch.setattr(kdeval.study, "run_study", lambda settings, out, device, **kwargs: used.append(device))
    monkeypatch.setattr(kdeval.study, "study_summary", lambda out: "")
    config = tmp_path / "study.yaml"
    config.write_text("device: cuda:1\n")
    for args in ([], ["--device", "cpu"]):
        result = runner.invoke(app, ["study", "--config", str(config), "--out", str(tmp_path / f"run{len(args)}"), *args])
        assert result.exit_code == 0, result.output
    assert used == ["cuda:1", "cpu"]  # the file's, then the command line's over it


def test_a_loss_given_twice_is_refused_before_any_training():
    with pytest.raises(KdevalError, match="losses: 'ssim' is given twice"):
        StudySettings(losses=("ssim", "l2", "ssim"))


def test_fp32_reruns_the_inference_stages_only_and_the_default_keeps_earlier_keys(tiny_shapes, monkeypatch):
    """--fp32 (amp: false) changes the identity of the stages that run models for evaluation, not of
    the training stages; the default adds nothing to any stage's identity, so a study made before the
    setting existed keeps its stages."""
    import kdeval.study as study

    default, fp32 = tiny(tiny_shapes), tiny(tiny_shapes, amp=False)
    keys = {}
    for name in study.STAGES:
        upstream = study.STAGE_INPUTS[name][1]
        keys[name] = (study.stage_key(name, default, {u: keys[u][0] for u in upstream}),
                      study.stage_key(name, fp32, {u: keys[u][1] for u in upstream}))
    assert [name for name, (a, b) in keys.items() if a != b] == ["evaluate", "errors", "robustness", "visualize", "report"]
    fields_read, upstream = study.STAGE_INPUTS["robustness"]
    before = study.digest({"stage": "robustness", "settings": {f: getattr(default, f) for f in fields_read},
                            "upstream": [keys[u][0] for u in upstream]})
    assert keys["robustness"][0] == before  # the identity a study computed before `amp` existed

    seen = []
    monkeypatch.setattr(study, "run_study", lambda settings, out, **kw: seen.append(settings.amp))
    monkeypatch.setattr(study, "study_summary", lambda out: "")
    assert runner.invoke(app, ["study", "--fp32", "--out", "x", "--device", "cpu"]).exit_code == 0
    assert runner.invoke(app, ["study", "--out", "x", "--device", "cpu"]).exit_code == 0
    assert seen == [False, True]


@pytest.mark.slow
def test_fp32_reaches_the_inference_of_every_evaluation_stage(tiny_shapes, trained, tmp_path, monkeypatch):
    from kdeval.engine.predict import PredictSettings

    precision, cache_fields = [], PredictSettings.cache_fields
    monkeypatch.setattr(PredictSettings, "cache_fields", lambda self: precision.append(self.amp) or cache_fields(self))
    given = {"teacher": str(trained), "baseline": str(trained), "distilled": str(trained)}
    run_study(tiny(tiny_shapes, amp=False, **given), tmp_path / "fp32", progress=False, echo=lambda line: None, stop_before="report")
    assert precision and set(precision) == {False}
    precision.clear()
    run_study(tiny(tiny_shapes, **given), tmp_path / "amp", progress=False, echo=lambda line: None, stop_before="report")
    assert precision and set(precision) == {True}


# ---------------------------------------------------------------- seeds as replicates, and intervals


def test_seeds_and_intervals_are_checked_settings():
    from kdeval.metrics.bootstrap import BootstrapSettings

    assert StudySettings(seeds=(0, 1, 2)).training_seeds == (0, 1, 2) and StudySettings(seed=4).training_seeds == (4,)
    assert StudySettings(bootstrap=200, confidence=0.9, bootstrap_seed=3).bootstrap_settings() == BootstrapSettings(200, 0.9, 3)
    for changes, fragment in (({"seeds": (0, 1, 0)}, "seeds: 0 is given twice"), ({"bootstrap": -1}, "bootstrap: -1"),
                              ({"confidence": 1.5}, "confidence: 1.5"), ({"confidence": 0.0}, "confidence: 0.0"),
                              ({"confidence": float("nan")}, "confidence: nan")):
        with pytest.raises(KdevalError, match=fragment):
            StudySettings(**changes)


@pytest.mark.parametrize("args,fragment", [
    (["--bootstrap", "-1"], "bootstrap: -1"),
    (["--confidence", "1.5"], "confidence: 1.5"),
    (["--seeds", "0,x"], "--seeds 0,x: expected whole numbers"),
    (["--seeds", "1,1"], "seeds: 1 is given twice"),
])
def test_bad_seeds_and_intervals_on_the_command_line_are_one_line(tmp_path, args, fragment):
    result = runner.invoke(app, ["study", *args, "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("kdeval: error:") and "\n" not in message and fragment in message, message
    assert not (tmp_path / "run").exists()


def test_seeds_and_intervals_reach_the_study(monkeypatch):
    import kdeval.study as study

    seen = []
    monkeypatch.setattr(study, "run_study", lambda settings, out, **kw: seen.append(settings))
    monkeypatch.setattr(study, "study_summary", lambda out: "")
    args = ["study", "--seeds", "0, 1,2", "--bootstrap", "200", "--confidence", "0.9", "--bootstrap-seed", "3", "--out", "x",
            "--device", "cpu"]
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, ["study", "--out", "x", "--device", "cpu"]).exit_code == 0
    assert [(s.seeds, s.bootstrap, s.confidence, s.bootstrap_seed) for s in seen] == [((0, 1, 2), 200, 0.9, 3), ((), 1000, 0.95, 0)]


def _keys(settings: StudySettings) -> dict[str, str]:
    import kdeval.study as study

    keys = {}
    for name in study.STAGES:
        keys[name] = study.stage_key(name, settings, keys)
    return keys


def test_seeds_rerun_every_model_and_intervals_the_analyses_only(tiny_shapes):
    import kdeval.study as study

    default = _keys(tiny(tiny_shapes))
    seeded = _keys(tiny(tiny_shapes, seeds=[0, 1, 2]))
    assert [name for name in study.STAGES if seeded[name] != default[name]] == list(study.STAGES[1:])
    other_order = _keys(tiny(tiny_shapes, seeds=[1, 0, 2]))  # the first seed's models are robustness's and visualize's
    assert other_order["teacher"] != seeded["teacher"]
    intervals = _keys(tiny(tiny_shapes, bootstrap=200))
    assert [name for name in study.STAGES if intervals[name] != default[name]] == ["evaluate", "errors", "robustness", "report"]
    assert _keys(tiny(tiny_shapes, confidence=0.9))["errors"] != default["errors"]
    assert _keys(tiny(tiny_shapes, bootstrap_seed=1))["evaluate"] != default["evaluate"]
    # without --seeds a training stage's identity is the one a study computed before seeds existed
    fields_read, upstream = study.STAGE_INPUTS["teacher"]
    before = study.digest({"stage": "teacher", "settings": {f: getattr(tiny(tiny_shapes), f) for f in fields_read},
                           "upstream": [default[u] for u in upstream]})
    assert default["teacher"] == before


@pytest.fixture
def fake_training(monkeypatch):
    """The study's _train without training: a model.pt written per folder; the calls recorded."""
    import kdeval.study.stages as stages

    calls = []

    def fake(ctx, name, resume, seed, **overrides):
        checkpoint = ctx.out / "models" / name / "model.pt"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_bytes(b"")
        calls.append((name, seed, overrides.get("teacher"), overrides.get("pseudo_labels")))
        return {"checkpoint": ctx.rel(checkpoint)}

    monkeypatch.setattr(stages, "_train", fake)
    return calls


def test_every_model_is_trained_once_per_seed_each_student_from_its_seeds_teacher(tiny_shapes, tmp_path, fake_training):
    settings = tiny(tiny_shapes, seeds=[0, 3, 5], unlabeled=True)
    run_study(settings, tmp_path, progress=False, echo=lambda line: None, stop_before="evaluate")
    teachers = {seed: str(tmp_path / "models" / folder / "model.pt") for seed, folder in ((0, "teacher"), (3, "teacher-s3"), (5, "teacher-s5"))}
    assert sorted(fake_training) == sorted(
        [(f"{model}{'' if seed == 0 else f'-s{seed}'}", seed, teachers[seed] if teacher else None,
          teachers[seed] if pseudo else None)
         for seed in (0, 3, 5)
         for model, teacher, pseudo in (("teacher", False, False), ("baseline", False, False), ("distilled-ssim", True, False),
                                        ("unlabeled-l2", True, True), ("unlabeled-ssim", True, True))])
    outputs = json.loads((tmp_path / "manifest.json").read_text())["stages"]
    assert outputs["teacher"]["outputs"] == {"checkpoint": ["models/teacher/model.pt", "models/teacher-s3/model.pt",
                                                            "models/teacher-s5/model.pt"]}
    assert outputs["distilled"]["outputs"]["ssim"][2] == "models/distilled-ssim-s5/model.pt"
    fake_training.clear()
    again = run_study(settings, tmp_path, progress=False, echo=lambda line: None, stop_before="evaluate")
    assert again.ran == [] and fake_training == []
    # one seed, the study's own: the models of the seeded study's first seed, in their plain folders
    run_study(tiny(tiny_shapes, unlabeled=True), tmp_path, progress=False, echo=lambda line: None, stop_before="evaluate")
    assert {call[0] for call in fake_training} == {"teacher", "baseline", "distilled-ssim", "unlabeled-l2", "unlabeled-ssim"}


def test_the_analyses_get_every_run_robustness_and_visualize_the_first_seeds(tiny_shapes, tmp_path, monkeypatch):
    """evaluate and errors: each name with its runs, the baseline and the bootstrap; robustness and
    visualize: the first seed's models. A manifest's single checkpoint (a study made before seeds) reads
    as one run."""
    import kdeval.engine.errors
    import kdeval.engine.evaluate
    import kdeval.engine.robustness
    import kdeval.engine.robustness.intervals
    import kdeval.engine.visualize
    import kdeval.report.error_analysis
    import kdeval.report.evaluation
    import kdeval.report.gallery
    import kdeval.report.robustness_tables
    from kdeval.metrics.bootstrap import BootstrapSettings
    from kdeval.study.stages import StudyContext, remember_models, stage_errors, stage_evaluate, stage_robustness, stage_visualize

    ctx = StudyContext(tiny(tiny_shapes, seeds=[0, 1], bootstrap=50, confidence=0.9), tmp_path, "cpu", False)
    remember_models(ctx, "teacher", {"checkpoint": "models/teacher/model.pt"})
    remember_models(ctx, "baseline", {"checkpoint": ["models/baseline/model.pt", "models/baseline-s1/model.pt"]})
    remember_models(ctx, "distilled", {"ssim": ["models/distilled-ssim/model.pt", "models/distilled-ssim-s1/model.pt"]})
    seen = {}

    def record(what, result=None):
        def function(models, *args, **kwargs):
            seen[what] = ({m.name: [p.relative_to(tmp_path).as_posix() for p in m.paths] for m in models}, kwargs)
            return result
        return function

    class Gallery:
        rows = (1,)

    class Visualization:
        gallery = Gallery()

    monkeypatch.setattr(kdeval.engine.evaluate, "evaluate_models", record("evaluate"))
    monkeypatch.setattr(kdeval.report.evaluation, "write_evaluation", lambda *args, **kwargs: [])
    monkeypatch.setattr(kdeval.engine.errors, "analyze_models", record("errors"))
    monkeypatch.setattr(kdeval.report.error_analysis, "write_error_analysis", lambda *args, **kwargs: [])
    monkeypatch.setattr(kdeval.engine.robustness, "run_robustness", record("robustness"))
    monkeypatch.setattr(kdeval.report.robustness_tables, "write_robustness_report", lambda *args, **kwargs: [])
    monkeypatch.setattr(kdeval.engine.robustness.intervals, "run_intervals", lambda *args, **kwargs: None)
    monkeypatch.setattr(kdeval.engine.visualize, "visualize_models", record("visualize", Visualization()))
    monkeypatch.setattr(kdeval.report.gallery, "write_visualization", lambda *args, **kwargs: [])
    for stage in (stage_evaluate, stage_errors, stage_robustness, stage_visualize):
        stage(ctx, False)
    every_run = {"baseline": ["models/baseline/model.pt", "models/baseline-s1/model.pt"],
                 "distilled-ssim": ["models/distilled-ssim/model.pt", "models/distilled-ssim-s1/model.pt"],
                 "teacher": ["models/teacher/model.pt"]}
    for analysis in ("evaluate", "errors"):
        models, kwargs = seen[analysis]
        assert models == every_run and list(models) == ["baseline", "distilled-ssim", "teacher"]
        assert kwargs["baseline"] == "baseline" and kwargs["bootstrap"] == BootstrapSettings(50, 0.9, 0)
    for shown in ("robustness", "visualize"):
        assert seen[shown][0] == {name: runs[:1] for name, runs in every_run.items()}


@pytest.mark.slow
def test_a_study_of_two_seeds_reports_each_model_over_its_runs(tiny_shapes, tmp_path):
    import pandas as pd
    import torch

    lines = []
    result = run_study(tiny(tiny_shapes, seeds=[0, 1], bootstrap=20), tmp_path, progress=False, echo=lines.append)
    assert result.ran[-1] == "report" and (tmp_path / "index.html").is_file()
    for folder in ("teacher", "teacher-s1", "baseline", "baseline-s1", "distilled-ssim", "distilled-ssim-s1"):
        assert (tmp_path / "models" / folder / "model.pt").is_file(), folder
    settings = torch.load(tmp_path / "models" / "distilled-ssim-s1" / "model.pt", weights_only=True)["train_settings"]
    assert settings["seed"] == 1 and Path(settings["teacher"]).parent.name == "teacher-s1"
    table = (tmp_path / "evaluate" / "ap_table.md").read_text()
    assert "| baseline" in table and "| distilled-ssim" in table
    intervals = pd.read_csv(tmp_path / "evaluate" / "ap_table_intervals.csv")
    assert intervals.groupby("model")["runs"].unique().map(list).to_dict() == {"baseline": [2], "distilled-ssim": [2], "teacher": [2]}
    again = run_study(tiny(tiny_shapes, seeds=[0, 1], bootstrap=20), tmp_path, progress=False, echo=lines.append)
    assert again.ran == []


def test_the_shipped_gpu_config_is_the_whole_appendix_study_and_quick_shrinks_it():
    """configs/gpu-study.yaml: Table 1 with every feature loss, Table 2, three seeds, on CUDA; with
    --quick its schedules fall to --quick's ceilings and the command line's --device wins."""
    from pathlib import Path

    from kdeval.study.settings import quick_settings, study_settings
    from kdeval.vocab import DISTILL_LOSSES

    config = Path(__file__).resolve().parents[1] / "configs" / "gpu-study.yaml"
    settings = study_settings(config, {})
    assert settings.device == "cuda" and settings.seeds == (0, 1, 2) and settings.unlabeled
    assert set(settings.losses) == set(DISTILL_LOSSES)
    assert settings.teacher_epochs > settings.student_epochs
    quick = quick_settings(study_settings(config, {"device": "cpu"}))
    assert quick.device == "cpu" and quick.teacher_epochs <= 5 and quick.student_epochs <= 3 and quick.seeds == (0, 1, 2)
