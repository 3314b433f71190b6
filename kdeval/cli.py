"""The kdeval command line: each command parses its options, checks them, and delegates.

Known input problems (KdevalError) become one line on stderr and exit status 2.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import sys
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from kdeval.errors import KdevalError
from kdeval.vocab import ARCHS, BOX_FORMATS, DISTILL_LOSSES, GALLERY_SELECTIONS, HEAD_NORMS, NORMS, OPTIMIZERS, RECIPES, ROLES, SSIM_RESCALES, SSIM_WINDOW_SHAPES

app = typer.Typer(
    name="kdeval",
    help="Train, distil and evaluate RetinaNet detectors, and show what distillation bought, table by table.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Generate datasets (the embedded Shapes benchmark).", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(data_app, name="data")


# ---------------------------------------------------------------- shared options

DataOpt = Annotated[str, typer.Option("--data", help="Built-in dataset, generated and cached on first use: 'shapes', or 'shapes-quick' (what `study --quick` uses).")]
ImagesOpt = Annotated[Optional[Path], typer.Option("--images", help="Folder of a COCO-format dataset's images.")]
AnnotationsOpt = Annotated[Optional[Path], typer.Option("--annotations", help="COCO instances JSON (replaces --data).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Output folder (default reports/<run>/).")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
CategoryMapOpt = Annotated[Optional[Path], typer.Option("--category-map", help="JSON/YAML map of the models' category ids (id → id) or names (name → name) to the dataset's.")]


def _choices(name: str, values) -> type[Enum]:
    """A str Enum of the given choices, for Typer; the choices themselves are defined once elsewhere."""
    return Enum(name, {value: value for value in values}, type=str)


Arch = _choices("Arch", ARCHS)
Role = _choices("Role", ROLES)
Norm = _choices("Norm", NORMS)
HeadNorm = _choices("HeadNorm", HEAD_NORMS)
DistillLoss = _choices("DistillLoss", DISTILL_LOSSES)
WindowShape = _choices("WindowShape", SSIM_WINDOW_SHAPES)
Rescale = _choices("Rescale", SSIM_RESCALES)
Recipe = _choices("Recipe", RECIPES)
Optimizer = _choices("Optimizer", OPTIMIZERS)
BoxFormat = _choices("BoxFormat", BOX_FORMATS)
WorkersOpt = Annotated[Optional[int], typer.Option(min=0, help="DataLoader workers for inference (default: 0 on the CPU, up to 8 beside a GPU).")]
ModelsArg = Annotated[list[str], typer.Argument(help="Checkpoints or COCO results JSON files, optionally NAME=PATH.")]
BatchSizeOpt = Annotated[int, typer.Option(min=1, help="Images per inference batch.")]
AmpOpt = Annotated[bool, typer.Option("--amp/--fp32", help="fp16 mixed-precision inference on CUDA (the default); --fp32 for full precision. The CPU always runs fp32.")]
CudaGraphsOpt = Annotated[bool, typer.Option("--cuda-graphs", help="On CUDA, replay the backbone, FPN and head as CUDA graphs (one per batch shape, captured when a shape recurs): fewer kernel launches for the host; detections are the same up to float rounding.")]
TrustOpt = Annotated[bool, typer.Option("--trust-checkpoint", help="Load checkpoints that need full unpickling (old torchvision or mmdetection pickles). Unpickling can run code: only for files you trust.")]
BoxFormatOpt = Annotated[BoxFormat, typer.Option("--box-format", help="Box format of results files: xywh (COCO) or xyxy.")]


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise KdevalError(f"--device {name}: CUDA is not available on this machine")
    if name != "cpu" and not name.startswith("cuda"):
        raise KdevalError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    return name


def _category_map(path: Path | None):
    if path is None:
        return None
    from kdeval.data.foreign_results import CategoryMap

    return CategoryMap.load(path)


@dataclass(frozen=True)
class InferenceOptions:
    """The options of every command that runs models, as given on its command line."""

    batch_size: int
    amp: bool
    cuda_graphs: bool
    workers: int | None
    device: str

    def join(self, category_map: Path | None = None):
        """(this process's place in a torchrun job, the PredictSettings of its device)."""
        from kdeval.engine.predict import PredictSettings

        job, device = _join_job(self.device)
        return job, PredictSettings(batch_size=self.batch_size, device=device, workers=self.workers, amp=self.amp,
                                    cuda_graphs=self.cuda_graphs, category_map=_category_map(category_map))


def inference_options(workers=WorkersOpt):
    """A command's parameter `inference: InferenceOptions` becomes the options --batch-size, --amp/--fp32,
    --cuda-graphs, --workers (with `workers`' help) and --device, defined here once for every command
    that runs models, and handed to it gathered."""
    group = {"batch_size": (BatchSizeOpt, 8), "amp": (AmpOpt, True), "cuda_graphs": (CudaGraphsOpt, False),
             "workers": (workers, None), "device": (DeviceOpt, "auto")}

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        parameters = []
        for parameter in signature.parameters.values():
            if parameter.name == "inference":
                parameters += [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation)
                               for name, (annotation, default) in group.items()]
            else:
                parameters.append(parameter)

        @functools.wraps(command)
        def with_options(*args, **kwargs):
            options = InferenceOptions(**{name: kwargs.pop(name) for name in group})
            return command(*args, inference=options, **kwargs)

        with_options.__signature__ = signature.replace(parameters=parameters)
        return with_options

    return decorate


def _join_job(device: str):
    """(this process's place in a torchrun job, its device); rank 0 of 1 when run plainly."""
    from kdeval.engine.distributed import start_distributed

    return start_distributed(_device(device))


@contextlib.contextmanager
def _writing(folder: Path, what: str, job=None):
    """The output folder checked (writable, space left) and locked against a second kdeval, on the
    rank that writes; other ranks go on."""
    from kdeval.engine.distributed import Distributed
    from kdeval.fileio import run_lock

    job = job if job is not None else Distributed.from_env()
    if not job.is_main:
        yield folder
        return
    with run_lock(folder, what):
        yield folder


def reports_dir(out: Path | None, run: str) -> Path:
    return out if out is not None else Path("reports") / run


class _NoteHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(f"kdeval: note: {record.getMessage()}", err=True)


def _notes_to_stderr() -> None:
    """Library warnings (logger 'kdeval') reach the user as 'kdeval: note: ...' lines."""
    logger = logging.getLogger("kdeval")
    if not any(isinstance(h, _NoteHandler) for h in logger.handlers):
        logger.addHandler(_NoteHandler(level=logging.WARNING))
        logger.propagate = False


def user_errors(command):
    """Turn KdevalError into one-line messages and exit status 2, never a traceback. A command's
    --trust-checkpoint (when it has one) holds for exactly that command's run. Under torchrun, a
    command that succeeds ends with every rank leaving the job together (distributed.leave); a rank
    whose share is done before rank 0 writes ends there with status 0 (distributed.RankDone); one
    that fails leaves alone (distributed.abandon)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        _notes_to_stderr()
        from kdeval.models.checkpoint import trusting_checkpoints

        try:
            with trusting_checkpoints(bool(kwargs.get("trust_checkpoint", False))):
                result = command(*args, **kwargs)
            distributed = sys.modules.get("kdeval.engine.distributed")  # only a command that joined a job imported it
            if distributed is not None:
                distributed.leave()  # under torchrun, the ranks end together
            return result
        except Exception as exc:
            distributed = sys.modules.get("kdeval.engine.distributed")
            if distributed is not None and isinstance(exc, distributed.RankDone):
                return None  # this rank's share is done and the job left: rank 0 writes alone
            if distributed is not None:
                distributed.abandon()  # this rank alone: the others may never get here
            if not isinstance(exc, KdevalError):
                raise
            for line in str(exc).splitlines() or [""]:
                typer.echo(f"kdeval: error: {line}", err=True)
            raise typer.Exit(2) from None

    return wrapper


# ---------------------------------------------------------------- data


@data_app.command("shapes", short_help="Write the embedded Shapes benchmark (COCO format).")
@user_errors
def data_shapes(
    out: Annotated[Path, typer.Argument(help="Folder to write train/, val/ and annotations/ into.")],
    train: Annotated[int, typer.Option(help="Training images.", min=1)] = 2000,
    val: Annotated[int, typer.Option(help="Validation images.", min=1)] = 300,
    size: Annotated[int, typer.Option(help="Image side in pixels.", min=32)] = 128,
    seed: Annotated[int, typer.Option(help="Seed; the same arguments give byte-identical files.")] = 0,
    clutter: Annotated[float, typer.Option(help="Background texture and distractors, 0 (plain) to 1.", min=0.0, max=1.0)] = 0.5,
):
    """Write the embedded Shapes benchmark as a COCO-format dataset.

    \b
    Example:
      kdeval data shapes data/shapes --train 2000 --val 300 --size 128
    """
    from kdeval.data.shapes import ShapesSpec, generate_shapes

    spec = ShapesSpec(train=train, val=val, size=size, seed=seed, clutter=clutter)
    generate_shapes(out, spec)
    typer.echo(f"wrote {train} train and {val} val images to {out}")


# ---------------------------------------------------------------- train


@app.command(short_help="Train a teacher, baseline or distilled student.")
@user_errors
def train(
    data: DataOpt = "shapes",
    images: ImagesOpt = None,
    annotations: AnnotationsOpt = None,
    arch: Annotated[Arch, typer.Option(help="Backbone: ResNet-18/34/50/101 + FPN.")] = Arch("r18"),
    role: Annotated[Optional[Role], typer.Option(help="Recorded in the checkpoint (default: distilled with a teacher, else baseline).")] = None,
    recipe: Annotated[Recipe, typer.Option(help="Default schedule: 'shapes' (small enough for a CPU) or 'coco-1x' (the paper's).")] = Recipe("shapes"),
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Epochs (recipe default).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Images per iteration (recipe default).")] = None,
    lr: Annotated[Optional[float], typer.Option(min=0.0, help="Peak learning rate (recipe default).")] = None,
    optimizer: Annotated[Optional[Optimizer], typer.Option(help="adamw or sgd (recipe default).")] = None,
    image_size: Annotated[Optional[int], typer.Option(min=32, help="Resize the short side to this (recipe default); long side ≤ max(this, recipe max).")] = None,
    fpn_channels: Annotated[Optional[int], typer.Option(min=8, help="FPN and head width (recipe default: 64 shapes, 256 coco-1x).")] = None,
    norm: Annotated[Optional[Norm], typer.Option(help="Backbone normalisation (recipe default).")] = None,
    head_norm: Annotated[Optional[HeadNorm], typer.Option(help="GroupNorm in the head ('gn', as torchvision's RetinaNet v2) or none (recipe default: gn shapes, none coco-1x).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of weights, batch order and augmentation.")] = 0,
    teacher: Annotated[Optional[Path], typer.Option(help="Teacher checkpoint for feature distillation (with --distill).")] = None,
    distill: Annotated[Optional[DistillLoss], typer.Option(help="Loss between student and teacher FPN maps.")] = None,
    distill_weight: Annotated[float, typer.Option(min=0.0, help="λ, the weight of the feature loss (3: best of 1 and 3 for SSIM on Shapes).")] = 3.0,
    ssim_window: Annotated[int, typer.Option(min=2, help="SSIM window side P = Q (shrunk on smaller maps).")] = 3,
    ssim_window_shape: Annotated[WindowShape, typer.Option(help="Uniform P×Q patch (appendix D) or Gaussian (σ 1.5).")] = WindowShape("uniform"),
    ssim_rescale: Annotated[Rescale, typer.Option(help="Min–max rescaling of maps to [0, 1] before SSIM: per sample and channel, sample, batch, or none.")] = Rescale("channel"),
    pseudo_labels: Annotated[Optional[Path], typer.Option(help="Hard output distillation: train on this checkpoint's detections instead of the ground truth.")] = None,
    pseudo_threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Score above which a teacher detection becomes a label.")] = 0.3,
    backbone_weights: Annotated[Optional[Path], typer.Option(help="ImageNet ResNet state_dict on disk (nothing is downloaded).")] = None,
    amp: Annotated[bool, typer.Option("--amp/--fp32", help="Mixed precision on CUDA (bf16 where supported); with --pseudo-labels the teacher's inference too (fp16).")] = True,
    workers: Annotated[Optional[int], typer.Option(min=0, help="DataLoader worker processes (default: 0 on the CPU, up to 8 beside a GPU).")] = None,
    device: DeviceOpt = "auto",
    out: OutOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in --out.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Start over even if --out holds a run.")] = False,
    progress: ProgressOpt = True,
    trust_checkpoint: TrustOpt = False,
):
    """Train a RetinaNet detector: a teacher, a baseline, or a student distilled from a teacher.

    \b
    Examples:
      kdeval train                                   # R18 baseline on Shapes, reports/baseline-r18/model.pt
      kdeval train --arch r34 --role teacher --epochs 16
      kdeval train --recipe coco-1x --arch r50 --images coco/train2017 \\
          --annotations coco/annotations/instances_train2017.json --backbone-weights resnet50-0676ba61.pth
      kdeval train --resume                          # after a kill: continue where it stopped
      kdeval train --teacher reports/teacher-r34/model.pt --distill ssim           # λ = 3 by default
      kdeval train --pseudo-labels reports/teacher-r34/model.pt --teacher reports/teacher-r34/model.pt --distill ssim
      torchrun --nproc-per-node 8 -m kdeval train --recipe coco-1x --arch r50 ...   # DistributedDataParallel
    """
    from kdeval.data.source import resolve_split
    from kdeval.engine.train import RECIPES as RECIPE_SETTINGS, train as run_training

    split = resolve_split(data, images, annotations, split="train")
    settings = RECIPE_SETTINGS[recipe.value].with_image_size(image_size)
    if role is None:
        role = Role("distilled" if (distill is not None or pseudo_labels is not None) else "baseline")
    if teacher is not None and distill is None:
        raise KdevalError("--teacher needs --distill LOSS (ssim, ms-ssim, l1+ms-ssim, smooth-l1 or l2)")
    overrides = {
        "arch": arch.value,
        "role": role.value,
        "teacher": str(teacher) if teacher is not None else None,
        "distill_loss": distill.value if distill is not None else None,
        "distill_weight": distill_weight,
        "ssim_window": ssim_window,
        "ssim_window_shape": ssim_window_shape.value,
        "ssim_rescale": ssim_rescale.value,
        "pseudo_labels": str(pseudo_labels) if pseudo_labels is not None else None,
        "pseudo_threshold": pseudo_threshold,
        "seed": seed,
        "amp": amp,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": optimizer.value if optimizer else None,
        "fpn_channels": fpn_channels,
        "norm": norm.value if norm else None,
        "head_norm": head_norm.value if head_norm else None,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    run_name = "-".join(filter(None, [role.value, "pseudo" if pseudo_labels else None, distill.value if distill else None, arch.value]))
    out_dir = reports_dir(out, run_name)
    with _writing(out_dir, "train"):
        try:
            result = run_training(
                settings, split, out_dir, device=_device(device), resume=resume, overwrite=overwrite,
                workers=workers, backbone_weights=backbone_weights, progress=progress,
            )
        except KeyboardInterrupt:
            typer.echo(f"interrupted: the same command with --resume continues {out_dir} from its last saved state", err=True)
            raise typer.Exit(130) from None
    if result.resumed_from < 0:
        typer.echo(f"{result.checkpoint} is already finished; nothing to resume")
    else:
        typer.echo(f"saved {result.checkpoint} ({result.iterations} iterations in {result.seconds:.0f} s)")


# ---------------------------------------------------------------- predict


@app.command(short_help="Run a model; write COCO results JSON.")
@user_errors
@inference_options()
def predict(
    checkpoint: Annotated[Path, typer.Argument(help="A kdeval checkpoint or torchvision's COCO RetinaNet weights.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="COCO results JSON to write.")],
    data: DataOpt = "shapes",
    images: ImagesOpt = None,
    annotations: AnnotationsOpt = None,
    inference: InferenceOptions = None,
    cache: Annotated[bool, typer.Option(help="Reuse detections cached for the same checkpoint and data.")] = True,
    progress: ProgressOpt = True,
    trust_checkpoint: TrustOpt = False,
):
    """Run a model over a dataset and write its detections as COCO results JSON.

    \b
    Examples:
      kdeval predict reports/baseline-r18/model.pt -o dets.json
      kdeval predict model.pt --images coco/val2017 --annotations instances_val2017.json -o dets.json
    """
    from kdeval.data.source import resolve_split
    from kdeval.engine.detections import detections_of_checkpoint
    from kdeval.fileio import write_json_atomic

    split = resolve_split(data, images, annotations)
    split.require_images()
    _, settings = inference.join()
    detections = detections_of_checkpoint(checkpoint, split, settings, use_cache=cache, progress=progress)
    write_json_atomic(output, detections, indent=None)
    typer.echo(f"wrote {len(detections)} detections on {split.name} to {output}")


# ---------------------------------------------------------------- evaluate


@app.command(short_help="COCO AP table of models, with gains over a baseline.")
@user_errors
@inference_options()
def evaluate(
    models: ModelsArg,
    data: DataOpt = "shapes",
    images: ImagesOpt = None,
    annotations: AnnotationsOpt = None,
    baseline: Annotated[Optional[str], typer.Option(help="Model name to show gains against.")] = None,
    per_class: Annotated[bool, typer.Option("--per-class", help="Also AP, AP50, AP75, APs/m/l of every category.")] = False,
    category_map: CategoryMapOpt = None,
    box_format: BoxFormatOpt = BoxFormat.xywh,
    inference: InferenceOptions = None,
    out: OutOpt = None,
    progress: ProgressOpt = True,
    trust_checkpoint: TrustOpt = False,
):
    """COCO AP, AP50, AP75, APs, APm, APl of models side by side, with gains over a baseline.

    Writes ap_table.csv, .md and .tex and coco_stats.json to --out (default reports/evaluate/);
    with --per-class also per_class.csv, .md and .tex. Results files from other detectors are
    checked against the dataset first; --category-map and --box-format fix a mismatch explicitly.

    \b
    Examples:
      kdeval evaluate baseline=reports/baseline-r18/model.pt teacher=reports/teacher-r34/model.pt --baseline baseline
      kdeval evaluate mmdet=results.bbox.json --annotations coco/annotations/instances_val2017.json --per-class
      kdeval evaluate yolo=dets.json --annotations instances_val2017.json --category-map coco80_to_91.yaml
    """
    from kdeval.data.source import resolve_split
    from kdeval.engine.detections import parse_models, resolve_baseline
    from kdeval.engine.evaluate import evaluate_models
    from kdeval.report.evaluation import write_evaluation
    from kdeval.report.tables import to_text

    parsed = parse_models(models)
    baseline = resolve_baseline(parsed, baseline)
    split = resolve_split(data, images, annotations)
    job, settings = inference.join(category_map)
    out_dir = reports_dir(out, "evaluate")
    with _writing(out_dir, "evaluate", job):
        evaluation = evaluate_models(parsed, split, settings, progress=progress, box_format=box_format.value, per_class=per_class)
        write_evaluation(evaluation, out_dir, baseline, split)
    typer.echo(to_text(evaluation.table, baseline, title=f"COCO bbox AP on {split.name} ({split.annotations})"))
    typer.echo(f"tables written to {out_dir}/ap_table.{{csv,md,tex}}" + (" and per_class.{csv,md,tex}" if per_class else ""))


@app.command(short_help="Error analysis: COCO-analyze curves by object size and TIDE.")
@user_errors
@inference_options()
def errors(
    models: ModelsArg,
    data: DataOpt = "shapes",
    images: ImagesOpt = None,
    annotations: AnnotationsOpt = None,
    baseline: Annotated[Optional[str], typer.Option(help="Model to compare against (default: the first).")] = None,
    per_category: Annotated[bool, typer.Option("--per-category", help="Also curves and a table for each category.")] = False,
    category_map: CategoryMapOpt = None,
    box_format: BoxFormatOpt = BoxFormat.xywh,
    inference: InferenceOptions = None,
    out: OutOpt = None,
    progress: ProgressOpt = True,
    trust_checkpoint: TrustOpt = False,
):
    """Where each model loses AP: COCO-analyze PR curves (C75, C50, Loc, Sim, Oth, BG, FN) overall
    and per object size, and the TIDE breakdown.

    Writes error_analysis.{csv,md,tex}, tide.{csv,md,tex}, error_curves.csv, the appendix's
    figure1_error_curves and figure2_ap_by_size (PNG and PDF), tide_errors and tidecv's own summary
    plots to --out (default reports/errors/).

    \b
    Examples:
      kdeval errors baseline=reports/baseline-r18/model.pt distilled=reports/distilled-ssim-r18/model.pt
      kdeval errors r50=r50.bbox.json r50kd=r50kd.bbox.json --annotations instances_val2017.json --per-category
    """
    from kdeval.data.source import resolve_split
    from kdeval.engine.detections import parse_models, resolve_baseline
    from kdeval.engine.errors import analyze_models
    from kdeval.report.error_analysis import write_error_analysis
    from kdeval.report.tables import to_text

    parsed = parse_models(models)
    baseline = resolve_baseline(parsed, baseline) or (parsed[0].name if len(parsed) > 1 else None)
    split = resolve_split(data, images, annotations)
    job, settings = inference.join(category_map)
    out_dir = reports_dir(out, "errors")
    with _writing(out_dir, "errors", job):
        analysis = analyze_models(parsed, split, settings, progress=progress, box_format=box_format.value)
        write_error_analysis(analysis, out_dir, baseline, split, per_category=per_category)
    for note in analysis.notes:
        typer.echo(f"note: {note}")
    typer.echo(to_text(analysis.ap_by_area("all"), baseline, relative=True,
                       title=f"COCO-analyze AP, all objects, on {split.name} (change against {baseline or '–'})"))
    typer.echo("")
    typer.echo(to_text(analysis.tide_table(), baseline, title="TIDE: AP50 and the dAP each error type costs"))
    typer.echo(f"tables and figures written to {out_dir}/")


# ---------------------------------------------------------------- study


@app.command(short_help="The appendix's whole study in one resumable command.")
@user_errors
def study(
    data: DataOpt = "shapes",
    images: ImagesOpt = None,
    annotations: AnnotationsOpt = None,
    val_images: Annotated[Optional[Path], typer.Option("--val-images", help="Validation images (your own dataset).")] = None,
    val_annotations: Annotated[Optional[Path], typer.Option("--val-annotations", help="Validation annotations (your own dataset).")] = None,
    teacher_arch: Annotated[Optional[Arch], typer.Option(help="Teacher backbone (default r34).")] = None,
    student_arch: Annotated[Optional[Arch], typer.Option(help="Student backbone (default r18).")] = None,
    teacher_epochs: Annotated[Optional[int], typer.Option(min=1)] = None,
    student_epochs: Annotated[Optional[int], typer.Option(min=1)] = None,
    losses: Annotated[Optional[str], typer.Option(help="Feature losses to compare, comma-separated (default ssim).")] = None,
    unlabeled: Annotated[Optional[bool], typer.Option("--unlabeled/--labeled-only", help="Also hard output distillation without annotations (Table 2).")] = None,
    teacher: Annotated[Optional[Path], typer.Option(help="Use this teacher checkpoint instead of training one.")] = None,
    baseline: Annotated[Optional[Path], typer.Option(help="Use this baseline checkpoint instead of training one.")] = None,
    distilled: Annotated[Optional[Path], typer.Option(help="Use this distilled checkpoint (one loss) instead of training one.")] = None,
    seed: Annotated[Optional[int], typer.Option()] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML or TOML file holding any of these settings.")] = None,
    quick: Annotated[Optional[bool], typer.Option("--quick/--full", help="A small Shapes set and short schedules (minutes).")] = None,
    amp: Annotated[Optional[bool], typer.Option("--amp/--fp32", help="fp16 inference on CUDA for evaluate, errors, robustness and visualize (the default), or fp32; training stays bf16 mixed precision. The CPU always runs fp32.")] = None,
    device: DeviceOpt = "auto",
    out: Annotated[Path, typer.Option("--out", help="Run folder.")] = Path("reports/study"),
    progress: ProgressOpt = True,
    trust_checkpoint: TrustOpt = False,
):
    """Teacher, baseline and distilled students trained, then evaluated, analysed and reported:
    the paper's appendix tables and figures for your data or the embedded Shapes benchmark.

    Every stage is recorded in OUT/manifest.json: a rerun after a kill continues at the first
    unfinished stage, and a changed setting reruns only what depends on it.

    \b
    Examples:
      kdeval study                                   # everything on Shapes, reports/study/
      kdeval study --quick --out reports/quick
      kdeval study --teacher t.pt --baseline b.pt --distilled d.pt --images ... --val-images ...
      kdeval study --config study.yaml
    """
    from kdeval.study import run_study, study_settings, study_summary

    settings = study_settings(config, {
        "data": data if data != "shapes" else None,  # a config file's data, unless the command line names other
        "images": images, "annotations": annotations, "val_images": val_images, "val_annotations": val_annotations,
        "teacher_arch": teacher_arch.value if teacher_arch else None, "student_arch": student_arch.value if student_arch else None,
        "teacher_epochs": teacher_epochs, "student_epochs": student_epochs,
        "losses": [v.strip() for v in losses.split(",") if v.strip()] if losses else None,
        "unlabeled": unlabeled, "teacher": teacher, "baseline": baseline, "distilled": distilled, "seed": seed, "quick": quick,
        "amp": amp, "device": device if device != "auto" else None,  # the command line's --device over a config file's
    })
    with _writing(out, "study"):
        run_study(settings, out, device=_device(settings.device), progress=progress, echo=typer.echo)
        typer.echo(study_summary(out))


# ---------------------------------------------------------------- visualize and report


@app.command(short_help="Qualitative gallery: every model's detections on chosen images, as an offline page.")
@user_errors
@inference_options()
def visualize(
    models: Annotated[list[str], typer.Argument(help="Checkpoints or COCO results JSON files, optionally NAME=PATH, one panel each, in order.")],
    data: DataOpt = "shapes",
    images: ImagesOpt = None,
    annotations: AnnotationsOpt = None,
    names: Annotated[Optional[str], typer.Option(help="One name per model, comma-separated, e.g. baseline,distilled,teacher.")] = None,
    select: Annotated[Optional[str], typer.Option(help=f"Which images: {', '.join(GALLERY_SELECTIONS)}, or image ids such as 12,57 (default: improved with two models or more, else random).")] = None,
    num: Annotated[int, typer.Option(min=1, help="How many images to show.")] = 20,
    score_threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Detections the selection counts, and where the page's score slider starts.")] = 0.3,
    min_score: Annotated[float, typer.Option(min=0.0, max=1.0, help="Detections below this are left out of the page: the slider's lower end.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Seed of --select random.")] = 0,
    inference: InferenceOptions = None,
    out: OutOpt = None,
    progress: ProgressOpt = True,
    trust_checkpoint: TrustOpt = False,
):
    """Qualitative comparison as in the paper's appendix C: one row per image, one panel per model;
    ground truth white, correct detections yellow (IoU >= 0.5 with an unmatched ground-truth box of
    their class), wrong ones red, each labelled with its class and score.

    Writes index.html (open it from the file system: no network needed), detections.js, images/,
    selection.csv and visualize_settings.json to --out (default reports/visualize/). The page has a
    score slider and toggles for the ground truth and each model.

    \b
    Examples:
      kdeval visualize reports/baseline-r18/model.pt reports/distilled-ssim-r18/model.pt \\
          reports/teacher-r34/model.pt --names baseline,distilled,teacher --select improved
      kdeval visualize base=r50.bbox.json kd=r50kd.bbox.json --images coco/val2017 \\
          --annotations instances_val2017.json --select large --num 10
      kdeval visualize base=b.json kd=kd.json --select 139,785,872 --score-threshold 0.5
    """
    from kdeval.analysis.gallery import VisualizeSettings, parse_selection
    from kdeval.data.source import resolve_split
    from kdeval.engine.detections import model_paths, parse_named_models
    from kdeval.engine.visualize import visualize_models
    from kdeval.report.gallery import write_visualization

    parsed = parse_named_models(models, names)
    strategy, image_ids = parse_selection(select, len(parsed))
    settings = VisualizeSettings(select=strategy, image_ids=image_ids, num=num, score_threshold=score_threshold,
                                 min_score=min_score, seed=seed)
    split = resolve_split(data, images, annotations)
    job, predict_settings = inference.join()
    out_dir = reports_dir(out, "visualize")
    with _writing(out_dir, "visualize", job):
        result = visualize_models(parsed, split, settings, predict_settings, progress=progress)
        write_visualization(result, out_dir, split, model_paths(parsed))
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"{len(result.gallery.rows)} images {result.gallery.selection}")
    typer.echo(f"gallery written to {out_dir / 'index.html'}")


@app.command(short_help="One HTML page gathering a run's tables, figures, gallery and settings.")
@user_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="The folder holding evaluate/, errors/, robustness/ and visualize/ (e.g. reports).")] = Path("reports"),
):
    """Gather what evaluate, errors, robustness and visualize wrote under RUN_DIR into RUN_DIR/index.html:
    their tables, figures (each linked to its PDF), the qualitative gallery, the settings files and
    package versions, and a list of what is missing. Reads files only: no model is run.

    \b
    Examples:
      kdeval report                  # reports/index.html from reports/evaluate, reports/errors, ...
      kdeval report reports/study
    """
    from kdeval.report.run_report import write_run_report

    if not Path(run_dir).is_dir():  # before the lock, which would create it
        raise KdevalError(f"{run_dir}: run folder not found")
    with _writing(run_dir, "report"):
        page, summary = write_run_report(run_dir)
    for line in summary:
        typer.echo(line)
    typer.echo(f"report written to {page}")


# ---------------------------------------------------------------- robustness


@app.command(short_help="Clean AP, mPC and rPC under the 15 benchmark corruptions × 5 severities.")
@user_errors
@inference_options(workers=Annotated[Optional[int], typer.Option(min=0, help="Processes that corrupt images while the models run (default: CPU cores, at most 8, on CUDA; 0 on the CPU, where inference already uses every core).")])
def robustness(
    models: Annotated[Optional[list[str]], typer.Argument(help="Checkpoints, optionally NAME=PATH (none needed with --import).")] = None,
    data: DataOpt = "shapes",
    images: ImagesOpt = None,
    annotations: AnnotationsOpt = None,
    corruptions: Annotated[str, typer.Option(help="'benchmark' (the 15 of mPC), 'all' (+ 4 extras), 'extra', or NAME,NAME,...")] = "benchmark",
    severities: Annotated[str, typer.Option(help="Severities to run, e.g. 1-5, 3 or 1,3,5 (clean, 0, always runs).")] = "1-5",
    max_images: Annotated[Optional[int], typer.Option(min=1, help="Score only the first N images by id (a quick, partial look).")] = None,
    baseline: Annotated[Optional[str], typer.Option(help="Model name to show gains against.")] = None,
    import_file: Annotated[Optional[Path], typer.Option("--import", help="mmdetection's robustness results (<out>_results.pkl of tools/analysis_tools/test_robustness.py) to add to --out as model --name; read without running any code in it.")] = None,
    name: Annotated[Optional[str], typer.Option(help="The name an --import is shown under (importing a name again replaces it).")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="Folder of corrupted images (PNG) that later models and runs reuse.")] = None,
    seed: Annotated[int, typer.Option(help="Corruption seed; every model sees the same pixels for the same seed.")] = 0,
    inference: InferenceOptions = None,
    scoring_processes: Annotated[Optional[int], typer.Option(min=0, help="Processes that score and write finished scenarios (a few seconds each on COCO) while the models run on (default: 1 on CUDA; 0, the main process, on the CPU).")] = None,
    out: OutOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Discard kdeval's results already in --out and start over (imported ones stay).")] = False,
    progress: ProgressOpt = True,
    trust_checkpoint: TrustOpt = False,
):
    """Benchmark robustness (Michaelis et al. 2019): every model on the clean images and on each
    corruption at each severity; mPC is the mean AP over the 15 benchmark corruptions × severities
    1–5, rPC = mPC / clean AP. Each finished (model, corruption, severity) is saved in --out
    (default reports/robustness/) at once: rerun the same command after a kill to continue.

    Writes robustness.csv (all 12 COCO stats per scenario), robustness_summary.{csv,md,tex},
    robustness_by_corruption.csv and figures/ (AP against severity, a heat map per model).

    --import FILE --name NAME adds mmdetection's robustness results to --out (imported/NAME.csv):
    every table and figure written there then shows NAME beside kdeval's models. Without MODEL
    arguments it rewrites them from everything --out holds, running nothing.

    \b
    Examples:
      kdeval robustness baseline=reports/baseline-r18/model.pt ssim=reports/distilled-ssim-r18/model.pt --baseline baseline
      kdeval robustness model.pt --corruptions fog,snow --severities 3 --max-images 50   # a partial mPC
      kdeval robustness r50=model.pt --images coco/val2017 \\
          --annotations coco/annotations/instances_val2017.json --cache ~/corrupted-coco --device cuda
      kdeval robustness --import work_dirs/retinanet_results.pkl --name mmdet-r50 --baseline baseline
    """
    from kdeval.data.corrupted import parse_corruptions, parse_severities
    from kdeval.data.mmdet_robustness import read_mmdet_robustness
    from kdeval.data.source import resolve_split
    from kdeval.engine.detections import parse_models
    from kdeval.engine.robustness import RobustnessSettings, imports, run_robustness
    from kdeval.report.robustness_tables import summary_text, write_robustness_report

    if (import_file is None) != (name is None):
        raise KdevalError("--import FILE and --name NAME go together: the file to import and the name to show it under")
    if not models and import_file is None:
        raise KdevalError("give MODEL checkpoints to run, or --import FILE --name NAME")
    imported = read_mmdet_robustness(import_file, name) if import_file is not None else None
    out_dir = reports_dir(out, "robustness")
    if not models:
        run_only = {"--corruptions": corruptions != "benchmark", "--severities": severities != "1-5", "--max-images": max_images,
                    "--cache": cache, "--images": images, "--annotations": annotations, "--overwrite": overwrite}
        _import_only(imported, out_dir, baseline, [flag for flag, given in run_only.items() if given])
        return

    job, predict_settings = inference.join()
    settings = RobustnessSettings(
        corruptions=parse_corruptions(corruptions),
        severities=parse_severities(severities),
        seed=seed,
        max_images=max_images,
        cache_dir=cache,
        predict=predict_settings,
        scoring_processes=scoring_processes,
    )
    parsed = parse_models(models)
    # every rank checks names before any work, so a refusal never leaves a torchrun job waiting
    imports.check_names(out_dir, [model.name for model in parsed], imported)
    imports.check_baseline(baseline, [model.name for model in parsed] + imports.imported_names(out_dir, imported))
    split = resolve_split(data, images, annotations)
    with _writing(out_dir, "robustness", job):
        run = run_robustness(parsed, split, settings, out_dir, overwrite=overwrite, progress=progress, imported=imported)
        table, notes = imports.with_imports(run.table, out_dir)
        run = replace(run, table=table)
        write_robustness_report(run, settings, split, out_dir, baseline, notes)
    typer.echo(summary_text(run, split, settings, baseline, notes))
    typer.echo(
        f"{run.computed} scenario(s) run, {run.reused} reused from {out_dir}; "
        f"tables and figures written to {out_dir}/"
    )


def _import_only(imported, out_dir: Path, baseline: str | None, run_only_flags: list[str]) -> None:
    """`kdeval robustness --import FILE --name NAME` without MODELs: store the import and rewrite
    the folder's tables and figures from everything it holds; nothing runs."""
    from kdeval.engine.robustness import imports
    from kdeval.report.robustness_tables import robustness_text, write_robustness_tables

    if run_only_flags:
        raise KdevalError(f"{', '.join(run_only_flags)}: for running MODEL checkpoints; an --import keeps the scenarios its file holds")
    imports.check_names(out_dir, [], imported)
    with _writing(out_dir, "robustness"):
        imports.check_baseline(baseline, imports.folder_names(out_dir, imported))
        imports.store_import(out_dir, imported)
        table, title, notes = imports.folder_results(out_dir)
        write_robustness_tables(table, out_dir, title, baseline, notes)
    typer.echo(robustness_text(table, title, baseline, notes))
    typer.echo(f"imported '{imported.name}' ({imported.scenarios} scenarios) from {imported.source}; "
               f"tables and figures written to {out_dir}/")


def main() -> None:
    app(prog_name="kdeval")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
