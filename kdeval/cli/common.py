"""What every command shares: the Typer app, the options defined once, the launcher that joins a
torchrun job and locks the output folder, and the wrapper that turns known input problems
(KdevalError) into one line on stderr and exit status 2."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from kdeval.errors import KdevalError
from kdeval.vocab import (
    ARCHS,
    BOX_FORMATS,
    DISTILL_LOSSES,
    HEAD_NORMS,
    NORMS,
    OPTIMIZERS,
    SCHEDULES,
    RECIPES,
    ROLES,
    SSIM_RESCALES,
    SSIM_WINDOW_SHAPES,
)


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
Schedule = _choices("Schedule", SCHEDULES)
BoxFormat = _choices("BoxFormat", BOX_FORMATS)
WorkersOpt = Annotated[Optional[int], typer.Option(min=0, help="DataLoader workers for inference (default: 0 on the CPU, up to 8 beside a GPU).")]
ModelsArg = Annotated[list[str], typer.Argument(help="Checkpoints or COCO results JSON files, optionally NAME=PATH; NAME=PATH,PATH,... for several training runs of one recipe (a comma always separates runs).")]
BatchSizeOpt = Annotated[int, typer.Option(min=1, help="Images per inference batch.")]
AmpOpt = Annotated[bool, typer.Option("--amp/--fp32", help="fp16 mixed-precision inference on CUDA (the default; within 0.1 AP of fp32 where measured); --fp32 for full precision. Inference on the CPU always runs fp32.")]
CudaGraphsOpt = Annotated[bool, typer.Option("--cuda-graphs", help="On CUDA, replay the backbone, FPN and head as CUDA graphs (one per batch shape, captured when a shape recurs): fewer kernel launches for the host; detections are the same up to float rounding.")]
TrustOpt = Annotated[bool, typer.Option("--trust-checkpoint", help="Load checkpoints that need full unpickling (old torchvision or mmdetection pickles). Unpickling can run code: only for files you trust.")]
BootstrapOpt = Annotated[int, typer.Option("--bootstrap", help="Paired bootstrap resamples of the images for every interval and gain (0: off).")]
ConfidenceOpt = Annotated[float, typer.Option("--confidence", help="Coverage of the bootstrap intervals.")]
BootstrapSeedOpt = Annotated[int, typer.Option("--bootstrap-seed", help="Seed of the resamples: the same seed, the same intervals.")]
BoxFormatOpt = Annotated[BoxFormat, typer.Option("--box-format", help="Box format of results files: xywh (COCO) or xyxy.")]


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise KdevalError(f"--device {name}: CUDA is not available on this machine")
    if name != "cpu" and not name.startswith("cuda"):
        raise KdevalError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    return name


def category_map_from(path: Path | None):
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

    def join(self, category_map: Path | None = None, runs_models: bool = True):
        """(this process's place in a torchrun job, the PredictSettings of its device). runs_models=False
        (every model a results file): see join_job."""
        from kdeval.engine.predict import PredictSettings

        job, device = join_job(self.device, runs_models)
        return job, PredictSettings(batch_size=self.batch_size, device=device, workers=self.workers, amp=self.amp,
                                    cuda_graphs=self.cuda_graphs, category_map=category_map_from(category_map))


def _option_group(parameter: str, gather, options: dict[str, tuple]):
    """A command's parameter `parameter` becomes the command-line options `options` (name →
    (annotation, default)), declared here once for every command that shares them; the values given
    reach the command gathered by `gather(**values)`."""

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        parameters = []
        for declared in signature.parameters.values():
            if declared.name == parameter:
                parameters += [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation)
                               for name, (annotation, default) in options.items()]
            else:
                parameters.append(declared)

        @functools.wraps(command)
        def with_group(*args, **kwargs):
            gathered = gather(**{name: kwargs.pop(name) for name in options})
            return command(*args, **{parameter: gathered}, **kwargs)

        with_group.__signature__ = signature.replace(parameters=parameters)
        return with_group

    return decorate


def inference_options(workers=WorkersOpt):
    """`inference: InferenceOptions` becomes --batch-size, --amp/--fp32, --cuda-graphs, --workers (with
    `workers`' help) and --device: the options of every command that runs models."""
    return _option_group("inference", InferenceOptions, {
        "batch_size": (BatchSizeOpt, 8), "amp": (AmpOpt, True), "cuda_graphs": (CudaGraphsOpt, False),
        "workers": (workers, None), "device": (DeviceOpt, "auto")})


@dataclass(frozen=True)
class DatasetOptions:
    """--data, --images and --annotations as given: a built-in dataset, or a COCO-format one of one's own."""

    data: str
    images: Path | None
    annotations: Path | None

    def split(self, kind: str = "val"):
        from kdeval.data.source import resolve_split

        return resolve_split(self.data, self.images, self.annotations, kind)


# `dataset: DatasetOptions` becomes --data, --images and --annotations
dataset_options = _option_group("dataset", DatasetOptions, {
    "data": (DataOpt, "shapes"), "images": (ImagesOpt, None), "annotations": (AnnotationsOpt, None)})


def _bootstrap_settings(bootstrap: int, confidence: float, bootstrap_seed: int):
    from kdeval.metrics.bootstrap import BootstrapSettings

    return BootstrapSettings(bootstrap, confidence, bootstrap_seed)  # checks the values: one line, exit 2


# `bootstrap: BootstrapSettings` becomes --bootstrap, --confidence and --bootstrap-seed
bootstrap_options = _option_group("bootstrap", _bootstrap_settings, {
    "bootstrap": (BootstrapOpt, 1000), "confidence": (ConfidenceOpt, 0.95), "bootstrap_seed": (BootstrapSeedOpt, 0)})


def join_job(device: str, runs_models: bool = True):
    """(this process's place in a torchrun job, its device); rank 0 of 1 when run plainly.

    A process alone that runs no model (runs_models=False) keeps --device auto as given: resolving it
    would import torch only to pick a device nothing uses. Any other device is checked as always, and
    under torchrun it still picks the process group's backend."""
    from kdeval.engine.distributed import Distributed, start_distributed

    job = Distributed.from_env()
    if not runs_models and device == "auto" and job.world == 1:
        return job, device
    return start_distributed(resolve_device(device))


@contextlib.contextmanager
def writing_to(folder: Path, what: str, job=None):
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


def _checkpoint_trust(trust: bool):
    """The context in which a command's checkpoints load with `trust` (models.checkpoint's
    trusting_checkpoints). Distrust needs no context while that module is not loaded: it imports torch,
    which a command reading only results files never needs, and once the command loads it, its trust
    starts at the default, False."""
    if not trust and "kdeval.models.checkpoint" not in sys.modules:
        return contextlib.nullcontext()
    from kdeval.models.checkpoint import trusting_checkpoints

    return trusting_checkpoints(trust)


def user_errors(command):
    """Turn KdevalError into one-line messages and exit status 2, never a traceback. A command's
    --trust-checkpoint (when it has one) holds for exactly that command's run. Under torchrun, a
    command that succeeds ends with every rank leaving the job together (distributed.leave); a rank
    whose share is done before rank 0 writes ends there with status 0 (distributed.RankDone); one
    that fails leaves alone (distributed.abandon)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        _notes_to_stderr()
        try:
            with _checkpoint_trust(bool(kwargs.get("trust_checkpoint", False))):
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
