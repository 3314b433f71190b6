"""`kdeval study`: the appendix's whole study as one resumable pipeline of stages.

    data → teacher → baseline → distilled (one per loss) → unlabeled (hard output distillation with
    ℓ2 and SSIM) → evaluate → errors → robustness → visualize → report

Each stage's identity is a hash of the settings it reads and of the identities of the stages it
reads from. The manifest (run folder/manifest.json, written atomically) records, per stage, the
identity it finished with. A rerun skips a stage whose identity is unchanged and whose outputs are
still there; a stage killed part-way resumes (training continues from its last saved state); a
changed setting reruns that stage and everything downstream of it, nothing else.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

from kdeval.data.coco import load_coco_annotations
from kdeval.data.source import Split, resolve_split
from kdeval.errors import KdevalError
from kdeval.fileio import file_sha256, read_json_or_none, write_json_atomic, write_text_atomic
from kdeval.vocab import ARCHS, DISTILL_LOSSES, SEVERITIES

# λ per feature loss: SSIM's 3 is the Shapes ablation's best; the others equalise the initial pull
# of each loss with SSIM's (benchmarks/RESULTS.md, Table 1 on Shapes)
DEFAULT_DISTILL_WEIGHTS = {"ssim": 3.0, "ms-ssim": 1.2, "l1+ms-ssim": 1.3, "smooth-l1": 0.049, "l2": 0.00038}
STAGES = ("data", "teacher", "baseline", "distilled", "unlabeled", "evaluate", "errors", "robustness", "visualize", "report")


@dataclass(frozen=True)
class StudySettings:
    """Every option of a study; a --config file (YAML or TOML) may set any of them."""

    data: str = "shapes"
    images: str | None = None  # training images and annotations (a COCO dataset of one's own)
    annotations: str | None = None
    val_images: str | None = None
    val_annotations: str | None = None
    teacher_arch: str = "r34"
    student_arch: str = "r18"
    teacher_epochs: int = 6
    student_epochs: int = 3  # the teacher > distilled > baseline ordering holds over seeds (benchmarks/RESULTS.md)
    losses: tuple[str, ...] = ("ssim",)
    distill_weights: tuple[float, ...] = ()  # one per loss; empty: DEFAULT_DISTILL_WEIGHTS
    unlabeled: bool = False
    pseudo_threshold: float = 0.3
    teacher: str | None = None  # existing checkpoints skip their training
    baseline: str | None = None
    distilled: str | None = None
    seed: int = 0
    image_size: int | None = None  # training and inference size (default: the recipe's, 128 on Shapes)
    batch_size: int | None = None
    fpn_channels: int | None = None
    robustness_images: int = 24
    corruptions: str = "benchmark"
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    visualize_images: int = 6
    quick: bool = False
    device: str = "auto"
    amp: bool = True  # fp16 inference on CUDA (evaluate, errors, robustness, visualize); False (--fp32): fp32

    def __post_init__(self) -> None:
        self._check_ranges()
        unknown = [loss for loss in self.losses if loss not in DISTILL_LOSSES]
        if unknown:
            raise KdevalError(f"losses: unknown {unknown[0]!r} (expected some of {', '.join(DISTILL_LOSSES)})")
        if len(set(self.losses)) != len(self.losses):
            twice = next(loss for loss in self.losses if self.losses.count(loss) > 1)
            raise KdevalError(f"losses: {twice!r} is given twice")
        if self.distill_weights and len(self.distill_weights) != len(self.losses):
            raise KdevalError(f"distill_weights: {len(self.distill_weights)} weights for {len(self.losses)} losses")
        if self.distilled is not None and len(self.losses) != 1:
            raise KdevalError("--distilled takes the checkpoint of one distilled student: give exactly one loss with it")

    def _check_ranges(self) -> None:
        """Values the command line bounds (typer's min=…) but a config file could set to anything."""
        from kdeval.data.corrupted import parse_corruptions

        for name, low in (("teacher_epochs", 1), ("student_epochs", 1), ("robustness_images", 1), ("visualize_images", 1),
                          ("image_size", 32), ("batch_size", 1), ("fpn_channels", 8)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise KdevalError(f"{name}: {value} is below {low}")
        for name in ("teacher_arch", "student_arch"):
            if getattr(self, name) not in ARCHS:
                raise KdevalError(f"{name}: unknown {getattr(self, name)!r} (expected one of {', '.join(ARCHS)})")
        if not self.severities or not set(self.severities) <= set(SEVERITIES):
            raise KdevalError(f"severities: {list(self.severities)} (expected some of {SEVERITIES[0]} to {SEVERITIES[-1]})")
        if not (0.0 <= self.pseudo_threshold <= 1.0):  # NaN fails too
            raise KdevalError(f"pseudo_threshold: {self.pseudo_threshold} (expected a score from 0 to 1)")
        if any(not (0.0 <= weight < float("inf")) for weight in self.distill_weights):
            raise KdevalError(f"distill_weights: {list(self.distill_weights)} (expected finite weights ≥ 0)")
        if not self.losses:
            raise KdevalError("losses: give at least one feature loss")
        parse_corruptions(self.corruptions)

    def weight_of(self, loss: str) -> float:
        if self.distill_weights:
            return self.distill_weights[self.losses.index(loss)]
        return DEFAULT_DISTILL_WEIGHTS[loss]


def study_settings(config: Path | None, given: dict) -> StudySettings:
    """The settings of a study: a --config file's (YAML or TOML), or the defaults, with the options
    `given` on the command line over them (those not None; paths as strings)."""
    from kdeval.config import read_settings_file, settings_from_mapping

    base = StudySettings()
    if config is not None:
        base = settings_from_mapping(StudySettings, read_settings_file(config), str(config))
    given = {k: (str(v) if isinstance(v, Path) else v) for k, v in given.items() if v is not None}
    return settings_from_mapping(StudySettings, given, "command line", base=base)


# --quick's ceilings. Its 5-epoch teacher scores few detections above the paper's 0.3 (the best near
# 0.29 on Shapes' quick set), so hard output distillation takes those above 0.1
QUICK_CEILINGS = {"teacher_epochs": 5, "student_epochs": 3, "robustness_images": 6, "visualize_images": 3,
                  "pseudo_threshold": 0.1}


def quick_settings(settings: StudySettings) -> StudySettings:
    """--quick: the same pipeline on a small Shapes set with short schedules (tests use it)."""
    capped = {name: min(getattr(settings, name), ceiling) for name, ceiling in QUICK_CEILINGS.items()}
    return replace(settings, severities=(3,), **capped)


def quick_changes(settings: StudySettings) -> str | None:
    """What --quick changes of `settings`, as one line (None when nothing)."""
    quick = quick_settings(settings)
    changes = [f"{f.name} {_shown(getattr(settings, f.name))} → {_shown(getattr(quick, f.name))}"
               for f in fields(StudySettings) if getattr(settings, f.name) != getattr(quick, f.name)]
    return "--quick sets " + ", ".join(changes) if changes else None


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


# ---------------------------------------------------------------- the manifest


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Manifest:
    path: Path
    stages: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        raw = read_json_or_none(path) or {}
        return cls(path, dict(raw.get("stages", {})))

    def finished(self, name: str, key: str) -> dict | None:
        record = self.stages.get(name)
        if record and record.get("key") == key and record.get("state") == "finished":
            outputs = record.get("outputs", {})
            if all((self.path.parent / p).exists() for p in _paths(outputs)):
                return outputs
        return None

    def started_with(self, name: str) -> str | None:
        record = self.stages.get(name) or {}
        return record.get("key") if record.get("state") == "started" else None

    def record(self, name: str, **entry) -> None:
        self.stages[name] = entry
        write_json_atomic(self.path, {"format": "kdeval-study-manifest", "stages": self.stages})


def _paths(outputs) -> list[str]:
    if isinstance(outputs, str):
        return [outputs]
    if isinstance(outputs, dict):
        return [p for v in outputs.values() for p in _paths(v)]
    if isinstance(outputs, list):
        return [p for v in outputs for p in _paths(v)]
    return []


# ---------------------------------------------------------------- stages


@dataclass
class StudyContext:
    settings: StudySettings
    out: Path
    device: str
    progress: bool
    train_split: Split | None = None
    val_split: Split | None = None
    models: dict[str, str] = field(default_factory=dict)  # display name → checkpoint (relative or absolute)
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


def _train(ctx: StudyContext, name: str, resume: bool, **overrides) -> dict:
    from kdeval.engine.train import RECIPES, train, warmup_for

    study = ctx.settings
    base = (RECIPES["shapes"] if not study.annotations else RECIPES["coco-1x"]).with_image_size(study.image_size)
    settings = replace(base, seed=study.seed, **{k: v for k, v in (("batch_size", study.batch_size),
                                                                   ("fpn_channels", study.fpn_channels)) if v is not None}, **overrides)
    # the warm-up a short schedule gets (train's lr_at caps it too), recorded in the stage's settings
    n_images = len(load_coco_annotations(ctx.train_split.annotations)["images"])  # checked: a bad file is one line
    total = settings.epochs * max(1, n_images // settings.batch_size)
    settings = replace(settings, warmup_iters=warmup_for(settings.warmup_iters, total))
    out_dir = ctx.out / "models" / name
    identity = _training_identity(settings, ctx.train_split)
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


# beside a model the study trained: the identity of what trained it (_training_identity)
TRAINED_WITH = "study_trained_with.json"


def _training_identity(settings, train_split: Split) -> str:
    """What a trained model depends on: its resolved training settings, the training data's paths (as
    the data stage counts them), and its teacher's bytes, by role, where it has one: not the
    teacher's path, which changes with the spelling of --out, while a retrained teacher keeps it."""
    values = asdict(settings)
    teachers = {role: _checkpoint_identity(values.pop(role)) for role in ("teacher", "pseudo_labels")}
    return _digest({"settings": values, "annotations": str(train_split.annotations),
                    "images": str(train_split.images), "teachers": teachers})


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
    return _train(ctx, "teacher", resume, arch=ctx.settings.teacher_arch, role="teacher", epochs=ctx.settings.teacher_epochs)


def stage_baseline(ctx: StudyContext, resume: bool) -> dict:
    if ctx.settings.baseline:
        return {"checkpoint": str(Path(ctx.settings.baseline).resolve())}
    return _train(ctx, "baseline", resume, arch=ctx.settings.student_arch, role="baseline", epochs=ctx.settings.student_epochs)


def stage_distilled(ctx: StudyContext, resume: bool) -> dict:
    if ctx.settings.distilled:
        return {ctx.settings.losses[0]: str(Path(ctx.settings.distilled).resolve())}
    teacher = str(ctx.abs(ctx.models["teacher"]))
    return {
        loss: _train(ctx, f"distilled-{loss}", resume, arch=ctx.settings.student_arch, role="distilled",
                     epochs=ctx.settings.student_epochs, teacher=teacher, distill_loss=loss,
                     distill_weight=ctx.settings.weight_of(loss))["checkpoint"]
        for loss in ctx.settings.losses
    }


def stage_unlabeled(ctx: StudyContext, resume: bool) -> dict:
    """Hard output distillation: the teacher's detections above the threshold as the only labels,
    with an ℓ2 or an SSIM feature loss beside them (the appendix's Table 2)."""
    if not ctx.settings.unlabeled:
        return {}
    teacher = str(ctx.abs(ctx.models["teacher"]))
    return {
        loss: _train(ctx, f"unlabeled-{loss}", resume, arch=ctx.settings.student_arch, role="distilled",
                     epochs=ctx.settings.student_epochs, teacher=teacher, distill_loss=loss,
                     distill_weight=DEFAULT_DISTILL_WEIGHTS[loss], pseudo_labels=teacher,
                     pseudo_threshold=ctx.settings.pseudo_threshold)["checkpoint"]
        for loss in ("l2", "ssim")
    }


def _model_inputs(ctx: StudyContext, names: list[str]):
    from kdeval.engine.detections import ModelInput

    return [ModelInput(name, ctx.abs(ctx.models[name])) for name in names]


def _ordered(ctx: StudyContext, *prefixes: str) -> list[str]:
    """Model names as the paper's tables list them: baseline, the students, teacher."""
    students = [n for n in ctx.models if n.startswith(prefixes)] if prefixes else []
    return ["baseline", *students, "teacher"]


def stage_evaluate(ctx: StudyContext, resume: bool) -> dict:
    from kdeval.engine.evaluate import evaluate_models
    from kdeval.report.evaluation import write_evaluation
    from kdeval.report.tables import write_tables

    settings = _inference(ctx)
    out_dir = ctx.out / "evaluate"
    table1 = evaluate_models(_model_inputs(ctx, _ordered(ctx, "distilled")), ctx.val_split, settings, progress=ctx.progress)
    outputs = {"table1": [ctx.rel(p) for p in write_evaluation(table1, out_dir, "baseline", ctx.val_split)]}
    if any(n.startswith("unlabeled") for n in ctx.models):
        table2 = evaluate_models(_model_inputs(ctx, _ordered(ctx, "unlabeled")), ctx.val_split, settings, progress=ctx.progress)
        outputs["table2"] = [ctx.rel(p) for p in write_tables(table2.table, out_dir, "table2_unlabeled", "baseline",
                                                               caption=f"Without annotations on {ctx.val_split.name}")]
    return outputs


def stage_errors(ctx: StudyContext, resume: bool) -> dict:
    from kdeval.engine.errors import analyze_models
    from kdeval.report.error_analysis import write_error_analysis

    analysis = analyze_models(_model_inputs(ctx, _ordered(ctx, "distilled")), ctx.val_split, _inference(ctx), progress=ctx.progress)
    paths = write_error_analysis(analysis, ctx.out / "errors", "baseline", ctx.val_split)
    return {"files": [ctx.rel(p) for p in paths]}


def stage_robustness(ctx: StudyContext, resume: bool) -> dict:
    """Table 3: baseline, the first distilled student and the teacher under corruptions (its own
    folder resumes scenario by scenario)."""
    from kdeval.data.corrupted import parse_corruptions
    from kdeval.engine.robustness import RobustnessSettings, run_robustness
    from kdeval.report.robustness_tables import write_robustness_report

    settings = RobustnessSettings(
        corruptions=parse_corruptions(ctx.settings.corruptions), severities=tuple(ctx.settings.severities),
        seed=ctx.settings.seed, max_images=ctx.settings.robustness_images, cache_dir=ctx.out / "corrupted-images",
        predict=_inference(ctx),
    )
    names = _ordered(ctx, f"distilled-{ctx.settings.losses[0]}")
    out_dir = ctx.out / "robustness"
    run = run_robustness(_model_inputs(ctx, names), ctx.val_split, settings, out_dir, overwrite=not resume, progress=ctx.progress)
    return {"files": [ctx.rel(p) for p in write_robustness_report(run, settings, ctx.val_split, out_dir, "baseline")]}


def stage_visualize(ctx: StudyContext, resume: bool) -> dict:
    """Figures 3–6: the images where distillation gained most, baseline / distilled / teacher."""
    from kdeval.analysis.gallery import VisualizeSettings
    from kdeval.engine.detections import model_paths
    from kdeval.engine.visualize import visualize_models
    from kdeval.report.gallery import write_visualization

    models = _model_inputs(ctx, _ordered(ctx, f"distilled-{ctx.settings.losses[0]}"))
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

# what each stage reads: settings fields, and the stages whose outputs it uses
_TRAINING = ("seed", "image_size", "batch_size", "fpn_channels")
STAGE_INPUTS = {
    "data": (("data", "images", "annotations", "val_images", "val_annotations", "quick"), ()),
    "teacher": (("teacher", "teacher_arch", "teacher_epochs", *_TRAINING), ("data",)),
    "baseline": (("baseline", "student_arch", "student_epochs", *_TRAINING), ("data",)),
    "distilled": (("distilled", "student_arch", "student_epochs", "losses", "distill_weights", *_TRAINING), ("data", "teacher")),
    "unlabeled": (("unlabeled", "student_arch", "student_epochs", "pseudo_threshold", *_TRAINING), ("data", "teacher")),
    "evaluate": ((), ("data", "teacher", "baseline", "distilled", "unlabeled")),
    "errors": ((), ("data", "teacher", "baseline", "distilled")),
    "robustness": (("robustness_images", "corruptions", "severities", "seed"), ("data", "teacher", "baseline", "distilled")),
    "visualize": (("visualize_images", "seed"), ("data", "teacher", "baseline", "distilled")),
    "report": ((), ("evaluate", "errors", "robustness", "visualize")),
}


def _checkpoint_identity(path: str | None) -> str | None:
    return file_sha256(Path(path)) if path and Path(path).is_file() else path


# settings added after studies existed: a stage that reads one counts it only when it differs from its
# default, so that a study made before keeps its stages' identities
LATER_SETTINGS = {"amp": ("evaluate", "errors", "robustness", "visualize")}


def stage_key(name: str, settings: StudySettings, keys: dict[str, str]) -> str:
    fields_read, upstream = STAGE_INPUTS[name]
    values = {f: getattr(settings, f) for f in fields_read}
    defaults = StudySettings()
    for f, readers in LATER_SETTINGS.items():
        if name in readers and getattr(settings, f) != getattr(defaults, f):
            values[f] = getattr(settings, f)
    for f in ("teacher", "baseline", "distilled"):
        if f in values:  # a given checkpoint counts by its bytes, not its path
            values[f] = _checkpoint_identity(values[f])
    return _digest({"stage": name, "settings": values, "upstream": [keys.get(u) for u in upstream]})


@dataclass
class StudyResult:
    out: Path
    ran: list[str]
    skipped: list[str]
    seconds: dict[str, float]


def run_study(settings: StudySettings, out: Path, device: str = "cpu", progress: bool = True,
              echo: Callable[[str], None] = print, stop_before: str | None = None) -> StudyResult:
    """Run (or continue) the study in `out`. `stop_before` ends it before that stage (tests use it)."""
    from kdeval.engine.distributed import Distributed

    if Distributed.from_env().world > 1:
        raise KdevalError("kdeval study runs in one process; under torchrun, run its steps instead "
                          "(torchrun ... -m kdeval train|evaluate|errors|visualize|robustness)")
    if settings.quick:
        changes = quick_changes(settings)
        if changes:
            echo(changes)
        settings = quick_settings(settings)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "study_settings.json", json.dumps(asdict(settings), indent=2, sort_keys=True) + "\n")
    manifest = Manifest.load(out / "manifest.json")
    ctx = StudyContext(settings, out, device, progress, echo=echo)
    keys: dict[str, str] = {}
    ran, skipped, seconds = [], [], {}
    stages = [s for s in STAGES if s in STAGE_FUNCTIONS]
    for index, name in enumerate(stages, 1):
        if name == stop_before:
            break
        key = stage_key(name, settings, keys)
        keys[name] = key
        label = f"[{index}/{len(stages)}] {name}"
        outputs = manifest.finished(name, key)
        if name == "data":  # cheap and needed by every later stage: always resolved
            outputs = stage_data(ctx, False)
            manifest.record(name, key=key, state="finished", outputs=outputs)
            echo(f"{label}: {ctx.train_split.name} ({ctx.train_split.annotations.parent.parent}), {ctx.val_split.name}")
        elif outputs is not None:
            echo(f"{label}: done earlier, kept")
            skipped.append(name)
        else:
            resume = manifest.started_with(name) == key
            echo(f"{label}: {'resuming' if resume else 'running'}")
            manifest.record(name, key=key, state="started")
            start = time.perf_counter()
            outputs = STAGE_FUNCTIONS[name](ctx, resume)
            seconds[name] = time.perf_counter() - start
            manifest.record(name, key=key, state="finished", outputs=outputs, seconds=round(seconds[name], 1))
            echo(f"{label}: finished in {_duration(seconds[name])}")
            ran.append(name)
        _remember_models(ctx, name, outputs)
    return StudyResult(out, ran, skipped, seconds)


def _remember_models(ctx: StudyContext, name: str, outputs: dict) -> None:
    if name in ("teacher", "baseline"):
        ctx.models[name] = outputs["checkpoint"]
    elif name == "distilled":
        for loss, checkpoint in outputs.items():
            ctx.models[f"distilled-{loss}"] = checkpoint
    elif name == "unlabeled":
        for loss, checkpoint in outputs.items():
            ctx.models[f"unlabeled-{loss}"] = checkpoint


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def study_summary(out: Path) -> str:
    """The tables a finished study prints, and where its report is."""
    out = Path(out)
    parts = []
    evaluated = (out / "evaluate" / "ap_table.md").is_file()
    unlabeled_hint = ("not run: `kdeval study --unlabeled` adds it (two more students, trained on the teacher's "
                      "detections with an l2 and an SSIM feature loss)")
    for title, path, when_missing in (("Table 1: feature distillation (COCO AP)", out / "evaluate" / "ap_table.md", None),
                                      ("Table 2: without annotations", out / "evaluate" / "table2_unlabeled.md", unlabeled_hint),
                                      ("Table 3: robustness", out / "robustness" / "robustness_summary.md", None)):
        if path.is_file():
            parts += [title, path.read_text(encoding="utf-8").rstrip(), ""]
        elif when_missing and evaluated:
            parts += [title, when_missing, ""]
    report = out / "index.html"
    parts.append(f"report: {report.resolve()}" if report.is_file() else f"results in {out.resolve()}/")
    return "\n".join(parts)
