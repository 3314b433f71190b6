"""`kdeval data shapes` and `kdeval train`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from kdeval.cli.common import (
    Arch, DatasetOptions, DeviceOpt, DistillLoss, HeadNorm, Norm, Optimizer, OutOpt, ProgressOpt, Recipe,
    Rescale, Role, Schedule, TrustOpt, WindowShape, app, data_app, dataset_options, reports_dir, resolve_device,
    user_errors, writing_to,
)
from kdeval.errors import KdevalError
from kdeval.vocab import DEFAULT_DISTILL_WEIGHTS


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
@dataset_options
def train(
    dataset: DatasetOptions = None,
    arch: Annotated[Arch, typer.Option(help="Backbone: ResNet-18/34/50/101 + FPN.")] = Arch("r18"),
    role: Annotated[Optional[Role], typer.Option(help="Recorded in the checkpoint (default: distilled with a teacher, else baseline).")] = None,
    recipe: Annotated[Recipe, typer.Option(help="Default schedule: 'shapes' (small enough for a CPU) or 'coco-1x' (the paper's).")] = Recipe("shapes"),
    epochs: Annotated[Optional[int], typer.Option(min=1, help="Epochs (recipe default).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Images per iteration (recipe default).")] = None,
    lr: Annotated[Optional[float], typer.Option(min=0.0, help="Peak learning rate (recipe default).")] = None,
    optimizer: Annotated[Optional[Optimizer], typer.Option(help="adamw or sgd (recipe default).")] = None,
    schedule: Annotated[Optional[Schedule], typer.Option(help="After the warm-up: 'step' decays at 8/12 and 11/12 of the run, 'cosine' down to 0 (recipe default: cosine shapes, step coco-1x).")] = None,
    image_size: Annotated[Optional[int], typer.Option(min=32, help="Resize the short side to this (recipe default); long side ≤ max(this, recipe max).")] = None,
    fpn_channels: Annotated[Optional[int], typer.Option(min=8, help="FPN and head width (recipe default: 64 shapes, 256 coco-1x).")] = None,
    norm: Annotated[Optional[Norm], typer.Option(help="Backbone normalisation (recipe default).")] = None,
    head_norm: Annotated[Optional[HeadNorm], typer.Option(help="GroupNorm in the head ('gn', as torchvision's RetinaNet v2) or none (recipe default: gn shapes, none coco-1x).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of weights, batch order and augmentation.")] = 0,
    teacher: Annotated[Optional[Path], typer.Option(help="Teacher checkpoint for feature distillation (with --distill).")] = None,
    distill: Annotated[Optional[DistillLoss], typer.Option(help="Loss between student and teacher FPN maps.")] = None,
    distill_weight: Annotated[Optional[float], typer.Option(min=0.0, help=f"λ, the weight of the feature loss (default {DEFAULT_DISTILL_WEIGHTS['ssim']:g}, SSIM's on Shapes; the point-wise losses need far smaller).")] = None,
    ssim_window: Annotated[int, typer.Option(min=2, help="SSIM window side P = Q (shrunk on smaller maps).")] = 3,
    ssim_window_shape: Annotated[WindowShape, typer.Option(help="Uniform P×Q patch (appendix D) or Gaussian (σ 1.5).")] = WindowShape("uniform"),
    ssim_rescale: Annotated[Rescale, typer.Option(help="Min–max rescaling of maps to [0, 1] before SSIM: per sample and channel, sample, batch, or none.")] = Rescale("channel"),
    pseudo_labels: Annotated[Optional[Path], typer.Option(help="Hard output distillation: train on this checkpoint's detections instead of the ground truth.")] = None,
    pseudo_threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Score above which a teacher detection becomes a label.")] = 0.3,
    backbone_weights: Annotated[Optional[Path], typer.Option(help="ImageNet ResNet state_dict on disk (nothing is downloaded).")] = None,
    amp: Annotated[bool, typer.Option("--amp/--fp32", help="Mixed precision: bf16 on CUDA (fp16 where bf16 is missing) and on CPUs with native bf16 (AVX512-BF16, AMX), elsewhere fp32; with --pseudo-labels the teacher's inference too (fp16, CUDA only).")] = True,
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
      kdeval train --teacher reports/teacher-r34/model.pt --distill ssim           # λ = 20 by default
      kdeval train --pseudo-labels reports/teacher-r34/model.pt --teacher reports/teacher-r34/model.pt --distill ssim
      torchrun --nproc-per-node 8 -m kdeval train --recipe coco-1x --arch r50 ...   # DistributedDataParallel
    """
    from kdeval.engine.train import RECIPES as RECIPE_SETTINGS
    from kdeval.engine.train import train as run_training

    split = dataset.split("train")
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
        "schedule": schedule.value if schedule else None,
        "fpn_channels": fpn_channels,
        "norm": norm.value if norm else None,
        "head_norm": head_norm.value if head_norm else None,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    run_name = "-".join(filter(None, [role.value, "pseudo" if pseudo_labels else None, distill.value if distill else None, arch.value]))
    out_dir = reports_dir(out, run_name)
    with writing_to(out_dir, "train"):
        try:
            result = run_training(
                settings, split, out_dir, device=resolve_device(device), resume=resume, overwrite=overwrite,
                workers=workers, backbone_weights=backbone_weights, progress=progress,
            )
        except KeyboardInterrupt:
            typer.echo(f"interrupted: the same command with --resume continues {out_dir} from its last saved state", err=True)
            raise typer.Exit(130) from None
    if result.resumed_from < 0:
        typer.echo(f"{result.checkpoint} is already finished; nothing to resume")
    else:
        typer.echo(f"saved {result.checkpoint} ({result.iterations} iterations in {result.seconds:.0f} s)")
