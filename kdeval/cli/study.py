"""`kdeval study`: the appendix's whole study in one resumable command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kdeval.cli.common import (
    Arch, DatasetOptions, DeviceOpt, ProgressOpt, TrustOpt, app, dataset_options, resolve_device, user_errors,
    writing_to,
)
from kdeval.errors import KdevalError


# ---------------------------------------------------------------- study


@app.command(short_help="The appendix's whole study in one resumable command.")
@user_errors
@dataset_options
def study(
    dataset: DatasetOptions = None,
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
    seeds: Annotated[Optional[str], typer.Option(help="Train every model once per seed, comma-separated (e.g. 0,1,2): evaluate and errors show the mean over seeds ± their std; robustness and visualize use the first seed's models.")] = None,
    bootstrap: Annotated[Optional[int], typer.Option(help="Image resamples for the intervals of evaluate, errors and robustness (default 1000; 0: none).")] = None,
    confidence: Annotated[Optional[float], typer.Option(help="Confidence level of the intervals (default 0.95).")] = None,
    bootstrap_seed: Annotated[Optional[int], typer.Option(help="Seed of the image resamples (default 0).")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML or TOML file holding any of these settings.")] = None,
    quick: Annotated[Optional[bool], typer.Option("--quick/--full", help="A small Shapes set and short schedules (minutes).")] = None,
    amp: Annotated[Optional[bool], typer.Option("--amp/--fp32", help="fp16 inference on CUDA for evaluate, errors, robustness and visualize (the default), or fp32. Training stays in bf16 mixed precision, on CUDA and on CPUs with native bf16; inference on the CPU runs fp32.")] = None,
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
      kdeval study --seeds 0,1,2                     # every model three times: mean ± std, intervals
      kdeval study --teacher t.pt --baseline b.pt --distilled d.pt --images ... --val-images ...
      kdeval study --config study.yaml
    """
    from kdeval.study import run_study, study_settings, study_summary

    settings = study_settings(config, {
        "data": dataset.data if dataset.data != "shapes" else None,  # a config file's data, unless the command line names other
        "images": dataset.images, "annotations": dataset.annotations, "val_images": val_images, "val_annotations": val_annotations,
        "teacher_arch": teacher_arch.value if teacher_arch else None, "student_arch": student_arch.value if student_arch else None,
        "teacher_epochs": teacher_epochs, "student_epochs": student_epochs,
        "losses": [v.strip() for v in losses.split(",") if v.strip()] if losses else None,
        "unlabeled": unlabeled, "teacher": teacher, "baseline": baseline, "distilled": distilled, "seed": seed, "quick": quick,
        "seeds": _seeds(seeds), "bootstrap": bootstrap, "confidence": confidence, "bootstrap_seed": bootstrap_seed,
        "amp": amp, "device": device if device != "auto" else None,  # the command line's --device over a config file's
    })
    with writing_to(out, "study"):
        run_study(settings, out, device=resolve_device(settings.device), progress=progress, echo=typer.echo)
        typer.echo(study_summary(out))


def _seeds(text: str | None) -> list[int] | None:
    """--seeds 0,1,2 → [0, 1, 2]."""
    if text is None:
        return None
    pieces = [piece.strip() for piece in text.split(",")]
    try:
        return [int(piece) for piece in pieces]
    except ValueError:
        raise KdevalError(f"--seeds {text}: expected whole numbers separated by commas, e.g. 0,1,2") from None
