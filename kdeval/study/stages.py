"""The study's stages, each a function of the run's context that returns the files it wrote."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from kdeval.data.coco import load_coco_annotations
from kdeval.data.source import Split, resolve_split
from kdeval.errors import KdevalError
from kdeval.fileio import file_sha256, read_json_or_none, write_json_atomic
from kdeval.study.identity import TRAINED_WITH, training_identity
from kdeval.study.settings import DEFAULT_DISTILL_WEIGHTS, StudySettings

STAGES = ("data", "teacher", "baseline", "distilled", "unlabeled", "evaluate", "errors", "robustness", "visualize", "report")


@dataclass
class StudyContext:
    settings: StudySettings
    out: Path
    device: str
    progress: bool
    train_split: Split | None = None
    val_split: Split | None = None
    # display name → its checkpoints (relative or absolute), one per training seed in the order of
    # settings.training_seeds, or the one checkpoint given in their place (--teacher and the like)
    models: dict[str, list[str]] = field(default_factory=dict)
    echo: Callable[[str], None] = print

    def rel(self, path: Path) -> str:
        path = Path(path)
        return str(path.relative_to(self.out)) if path.is_relative_to(self.out) else str(path)

    def abs(self, path: str) -> Path:
        return Path(path) if Path(path).is_absolute() else self.out / path


def _splits(settings: StudySettings) -> tuple[Split, Split]:
    if settings.annotations or settings.val_annotations:
        if not (settings.images and settings.annotations and settings.val_images and settings.val_annotations):
            raise KdevalError("a study on your own data needs --images, --annotations, --val-images and --val-annotations")
        return (resolve_split(settings.data, Path(settings.images), Path(settings.annotations)),
                resolve_split(settings.data, Path(settings.val_images), Path(settings.val_annotations)))
    if settings.data != "shapes":
        raise KdevalError(f"unknown --data '{settings.data}': use 'shapes', or give your dataset's four paths")
    data = "shapes-quick" if settings.quick else "shapes"
    return resolve_split(data, None, None, "train"), resolve_split(data, None, None, "val")


def _train(ctx: StudyContext, name: str, resume: bool, seed: int, **overrides) -> dict:
    from kdeval.engine.train import RECIPES, train, warmup_for

    study = ctx.settings
    base = (RECIPES["shapes"] if not study.annotations else RECIPES["coco-1x"]).with_image_size(study.image_size)
    settings = replace(base, seed=seed, **{k: v for k, v in (("batch_size", study.batch_size),
                                                             ("fpn_channels", study.fpn_channels)) if v is not None}, **overrides)
    # the warm-up a short schedule gets (train's lr_at caps it too), recorded in the stage's settings
    n_images = len(load_coco_annotations(ctx.train_split.annotations)["images"])  # checked: a bad file is one line
    total = settings.epochs * max(1, n_images // settings.batch_size)
    settings = replace(settings, warmup_iters=warmup_for(settings.warmup_iters, total))
    out_dir = ctx.out / "models" / name
    identity = training_identity(settings, ctx.train_split)
    record_path, checkpoint = out_dir / TRAINED_WITH, out_dir / "model.pt"
    record = read_json_or_none(record_path)
    if (checkpoint.is_file() and isinstance(record, dict) and record.get("identity") == identity
            and record.get("model_sha256") == file_sha256(checkpoint)):  # not a model.pt put there since
        # a stage reruns as a whole (another loss added, say): a model it already has is kept
        ctx.echo(f"  {name}: trained earlier with the same settings, kept")
        return {"checkpoint": ctx.rel(checkpoint)}
    record_path.unlink(missing_ok=True)  # a model.pt without this record is never kept
    result = train(settings, ctx.train_split, out_dir, device=ctx.device, resume=resume, overwrite=not resume, progress=ctx.progress)
    write_json_atomic(record_path, {"identity": identity, "model_sha256": file_sha256(result.checkpoint)})
    return {"checkpoint": ctx.rel(result.checkpoint)}


def _folder(ctx: StudyContext, name: str, seed: int) -> str:
    """A model's folder under models/: the study's `seed` keeps the plain name, so that the models of a
    one-seed study are kept when --seeds adds others; every other seed's folder ends in -s<seed>."""
    return name if seed == ctx.settings.seed else f"{name}-s{seed}"


def _train_seeds(ctx: StudyContext, name: str, resume: bool, per_seed: Callable[[int], dict] = lambda index: {},
                 **overrides) -> str | list[str]:
    """`name` trained once per training seed (per_seed(index): the settings that differ by seed, such
    as its teacher): its checkpoint, or the list of them when there are several seeds."""
    checkpoints = [_train(ctx, _folder(ctx, name, seed), resume, seed, **overrides, **per_seed(index))["checkpoint"]
                   for index, seed in enumerate(ctx.settings.training_seeds)]
    return checkpoints[0] if len(checkpoints) == 1 else checkpoints


def _teacher_of(ctx: StudyContext, index: int) -> str:
    """The teacher of the index-th training seed: that seed's own, or the one teacher given."""
    teachers = ctx.models["teacher"]
    return str(ctx.abs(teachers[index] if len(teachers) > 1 else teachers[0]))


def _inference(ctx: StudyContext):
    """How the study runs its models for evaluate, errors, robustness and visualize: on its device, in
    fp16 on CUDA unless --fp32 (LATER_SETTINGS counts `amp` in those stages' identities)."""
    from kdeval.engine.predict import PredictSettings

    return PredictSettings(device=ctx.device, amp=ctx.settings.amp)


def stage_data(ctx: StudyContext, resume: bool) -> dict:
    ctx.train_split, ctx.val_split = _splits(ctx.settings)
    return {"train_annotations": str(ctx.train_split.annotations), "val_annotations": str(ctx.val_split.annotations)}


def stage_teacher(ctx: StudyContext, resume: bool) -> dict:
    if ctx.settings.teacher:
        return {"checkpoint": str(Path(ctx.settings.teacher).resolve())}
    return {"checkpoint": _train_seeds(ctx, "teacher", resume, arch=ctx.settings.teacher_arch, role="teacher",
                                       epochs=ctx.settings.teacher_epochs)}


def stage_baseline(ctx: StudyContext, resume: bool) -> dict:
    if ctx.settings.baseline:
        return {"checkpoint": str(Path(ctx.settings.baseline).resolve())}
    return {"checkpoint": _train_seeds(ctx, "baseline", resume, arch=ctx.settings.student_arch, role="baseline",
                                       epochs=ctx.settings.student_epochs)}


def stage_distilled(ctx: StudyContext, resume: bool) -> dict:
    if ctx.settings.distilled:
        return {ctx.settings.losses[0]: str(Path(ctx.settings.distilled).resolve())}
    return {
        loss: _train_seeds(ctx, f"distilled-{loss}", resume, lambda index: {"teacher": _teacher_of(ctx, index)},
                           arch=ctx.settings.student_arch, role="distilled", epochs=ctx.settings.student_epochs,
                           distill_loss=loss, distill_weight=ctx.settings.weight_of(loss))
        for loss in ctx.settings.losses
    }


def stage_unlabeled(ctx: StudyContext, resume: bool) -> dict:
    """Hard output distillation: the teacher's detections above the threshold as the only labels,
    with an ℓ2 or an SSIM feature loss beside them (the appendix's Table 2)."""
    if not ctx.settings.unlabeled:
        return {}

    def from_teacher(index: int) -> dict:
        return {"teacher": _teacher_of(ctx, index), "pseudo_labels": _teacher_of(ctx, index)}

    return {
        loss: _train_seeds(ctx, f"unlabeled-{loss}", resume, from_teacher, arch=ctx.settings.student_arch, role="distilled",
                           epochs=ctx.settings.student_epochs, distill_loss=loss, distill_weight=DEFAULT_DISTILL_WEIGHTS[loss],
                           pseudo_threshold=ctx.settings.pseudo_threshold)
        for loss in ("l2", "ssim")
    }


def _model_inputs(ctx: StudyContext, names: list[str], first_seed_only: bool = False):
    """The models by name, each with its runs (one per training seed), or its first seed's alone."""
    from kdeval.engine.detections import ModelInput

    return [ModelInput(name, tuple(ctx.abs(p) for p in (ctx.models[name][:1] if first_seed_only else ctx.models[name])))
            for name in names]


def _ordered(ctx: StudyContext, *prefixes: str) -> list[str]:
    """Model names as the paper's tables list them: baseline, the students, teacher."""
    students = [n for n in ctx.models if n.startswith(prefixes)] if prefixes else []
    return ["baseline", *students, "teacher"]


def stage_evaluate(ctx: StudyContext, resume: bool) -> dict:
    from kdeval.engine.evaluate import evaluate_models
    from kdeval.report.evaluation import write_ap_table, write_evaluation

    settings, bootstrap = _inference(ctx), ctx.settings.bootstrap_settings()
    out_dir = ctx.out / "evaluate"
    table1 = evaluate_models(_model_inputs(ctx, _ordered(ctx, "distilled")), ctx.val_split, settings, progress=ctx.progress,
                             baseline="baseline", bootstrap=bootstrap)
    outputs = {"table1": [ctx.rel(p) for p in write_evaluation(table1, out_dir, "baseline", ctx.val_split)]}
    if any(n.startswith("unlabeled") for n in ctx.models):
        table2 = evaluate_models(_model_inputs(ctx, _ordered(ctx, "unlabeled")), ctx.val_split, settings, progress=ctx.progress,
                                 baseline="baseline", bootstrap=bootstrap)
        outputs["table2"] = [ctx.rel(p) for p in write_ap_table(table2, out_dir, "table2_unlabeled", "baseline",
                                                                 f"Without annotations on {ctx.val_split.name}")]
    return outputs


def stage_errors(ctx: StudyContext, resume: bool) -> dict:
    from kdeval.engine.errors import analyze_models
    from kdeval.report.error_analysis import write_error_analysis

    analysis = analyze_models(_model_inputs(ctx, _ordered(ctx, "distilled")), ctx.val_split, _inference(ctx), progress=ctx.progress,
                              baseline="baseline", bootstrap=ctx.settings.bootstrap_settings())
    paths = write_error_analysis(analysis, ctx.out / "errors", "baseline", ctx.val_split)
    return {"files": [ctx.rel(p) for p in paths]}


def stage_robustness(ctx: StudyContext, resume: bool) -> dict:
    """Table 3: baseline, the first distilled student and the teacher under corruptions, the first
    training seed's of each (its own folder resumes scenario by scenario)."""
    from kdeval.data.corrupted import parse_corruptions
    from kdeval.engine.robustness import RobustnessSettings, run_robustness
    from kdeval.engine.robustness.intervals import run_intervals
    from kdeval.report.robustness_tables import write_robustness_report

    settings = RobustnessSettings(
        corruptions=parse_corruptions(ctx.settings.corruptions), severities=tuple(ctx.settings.severities),
        seed=ctx.settings.seed, max_images=ctx.settings.robustness_images, cache_dir=ctx.out / "corrupted-images",
        predict=_inference(ctx),
    )
    names = _ordered(ctx, f"distilled-{ctx.settings.losses[0]}")
    out_dir = ctx.out / "robustness"
    run = run_robustness(_model_inputs(ctx, names, first_seed_only=True), ctx.val_split, settings, out_dir, overwrite=not resume, progress=ctx.progress)
    bootstrap = ctx.settings.bootstrap_settings()
    intervals = run_intervals(out_dir, ctx.val_split, settings, names, "baseline", bootstrap)
    paths = write_robustness_report(run, settings, ctx.val_split, out_dir, "baseline", intervals=intervals, bootstrap=bootstrap)
    return {"files": [ctx.rel(p) for p in paths]}


def stage_visualize(ctx: StudyContext, resume: bool) -> dict:
    """Figures 3–6: the images where distillation gained most, baseline / distilled / teacher, the
    first training seed's of each."""
    from kdeval.analysis.gallery import VisualizeSettings
    from kdeval.engine.detections import model_paths
    from kdeval.engine.visualize import visualize_models
    from kdeval.report.gallery import write_visualization

    models = _model_inputs(ctx, _ordered(ctx, f"distilled-{ctx.settings.losses[0]}"), first_seed_only=True)
    for select in ("improved", "disagreement", "random"):  # weak models may improve on no image at all
        settings = VisualizeSettings(select=select, num=ctx.settings.visualize_images, seed=ctx.settings.seed)
        result = visualize_models(models, ctx.val_split, settings, _inference(ctx), progress=ctx.progress)
        if result.gallery.rows:
            break
        ctx.echo(f"  visualize: no image qualifies for --select {select}; trying the next strategy")
    paths = write_visualization(result, ctx.out / "visualize", ctx.val_split, model_paths(models))
    return {"files": [ctx.rel(p) for p in paths]}


def stage_report(ctx: StudyContext, resume: bool) -> dict:
    from kdeval.report.run_report import write_run_report

    page, _ = write_run_report(ctx.out)
    return {"page": ctx.rel(page)}


STAGE_FUNCTIONS: dict[str, Callable[[StudyContext, bool], dict]] = {
    "data": stage_data,
    "teacher": stage_teacher,
    "baseline": stage_baseline,
    "distilled": stage_distilled,
    "unlabeled": stage_unlabeled,
    "evaluate": stage_evaluate,
    "errors": stage_errors,
    "robustness": stage_robustness,
    "visualize": stage_visualize,
    "report": stage_report,
}


def remember_models(ctx: StudyContext, name: str, outputs: dict) -> None:
    """A training stage's outputs (a checkpoint, or a list of them, one per seed) as ctx.models' runs."""
    def runs(checkpoints: str | list[str]) -> list[str]:
        return [checkpoints] if isinstance(checkpoints, str) else list(checkpoints)

    if name in ("teacher", "baseline"):
        ctx.models[name] = runs(outputs["checkpoint"])
    elif name in ("distilled", "unlabeled"):
        for loss, checkpoints in outputs.items():
            ctx.models[f"{name}-{loss}"] = runs(checkpoints)
