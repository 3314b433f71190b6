"""`kdeval predict`, `evaluate` and `errors`: models run or read, then scored."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kdeval.cli.common import (
    BoxFormat, BoxFormatOpt, CategoryMapOpt, DatasetOptions, InferenceOptions, ModelsArg, OutOpt, ProgressOpt,
    TrustOpt, app, bootstrap_options, dataset_options, inference_options, reports_dir, user_errors, writing_to,
)
from kdeval.metrics.bootstrap import BootstrapSettings


# ---------------------------------------------------------------- predict


@app.command(short_help="Run a model; write COCO results JSON.")
@user_errors
@dataset_options
@inference_options()
def predict(
    checkpoint: Annotated[Path, typer.Argument(help="A kdeval checkpoint, torchvision's COCO RetinaNet weights or an mmdetection RetinaNet checkpoint.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="COCO results JSON to write.")],
    dataset: DatasetOptions = None,
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
    from kdeval.engine.detections import detections_of_checkpoint
    from kdeval.fileio import write_json_atomic

    split = dataset.split()
    split.require_images()
    _, settings = inference.join()
    detections = detections_of_checkpoint(checkpoint, split, settings, use_cache=cache, progress=progress)
    write_json_atomic(output, detections, indent=None)
    typer.echo(f"wrote {len(detections)} detections on {split.name} to {output}")


# ---------------------------------------------------------------- evaluate


@app.command(short_help="COCO AP table of models, with gains over a baseline.")
@user_errors
@dataset_options
@inference_options()
@bootstrap_options
def evaluate(
    models: ModelsArg,
    dataset: DatasetOptions = None,
    baseline: Annotated[Optional[str], typer.Option(help="Model name to show gains against.")] = None,
    per_class: Annotated[bool, typer.Option("--per-class", help="Also AP, AP50, AP75, APs/m/l of every category.")] = False,
    category_map: CategoryMapOpt = None,
    box_format: BoxFormatOpt = BoxFormat.xywh,
    inference: InferenceOptions = None,
    bootstrap: BootstrapSettings = None,
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
    from kdeval.engine.detections import parse_models, resolve_baseline
    from kdeval.engine.evaluate import evaluate_models
    from kdeval.report.evaluation import evaluation_text, write_evaluation

    parsed = parse_models(models)
    baseline = resolve_baseline(parsed, baseline)
    split = dataset.split()
    job, settings = inference.join(category_map, runs_models=any(model.runs_a_checkpoint for model in parsed))
    out_dir = reports_dir(out, "evaluate")
    with writing_to(out_dir, "evaluate", job):
        evaluation = evaluate_models(parsed, split, settings, progress=progress, box_format=box_format.value,
                                     per_class=per_class, baseline=baseline, bootstrap=bootstrap)
        write_evaluation(evaluation, out_dir, baseline, split)
    typer.echo(evaluation_text(evaluation, f"COCO bbox AP on {split.name} ({split.annotations})"))
    typer.echo(f"tables written to {out_dir}/ap_table.{{csv,md,tex}}" + (" and per_class.{csv,md,tex}" if per_class else ""))


@app.command(short_help="Error analysis: COCO-analyze curves by object size and TIDE.")
@user_errors
@dataset_options
@inference_options()
@bootstrap_options
def errors(
    models: ModelsArg,
    dataset: DatasetOptions = None,
    baseline: Annotated[Optional[str], typer.Option(help="Model to compare against (default: the first).")] = None,
    per_category: Annotated[bool, typer.Option("--per-category", help="Also curves and a table for each category.")] = False,
    category_map: CategoryMapOpt = None,
    box_format: BoxFormatOpt = BoxFormat.xywh,
    inference: InferenceOptions = None,
    bootstrap: BootstrapSettings = None,
    out: OutOpt = None,
    progress: ProgressOpt = True,
    trust_checkpoint: TrustOpt = False,
):
    """Where each model loses AP: COCO-analyze PR curves (C75, C50, Loc, Sim, Oth, BG, FN) overall
    and per object size, and the TIDE breakdown.

    Writes error_analysis.{csv,md,tex}, tide.{csv,md,tex}, error_curves.csv, the appendix's
    figure1_error_curves and figure2_ap_by_size (PNG and PDF) and the tide_errors bars to
    --out (default reports/errors/).

    \b
    Examples:
      kdeval errors baseline=reports/baseline-r18/model.pt distilled=reports/distilled-ssim-r18/model.pt
      kdeval errors r50=r50.bbox.json r50kd=r50kd.bbox.json --annotations instances_val2017.json --per-category
    """
    from kdeval.engine.detections import parse_models, resolve_baseline
    from kdeval.engine.errors import analyze_models
    from kdeval.report.error_analysis import error_analysis_text, tide_text, write_error_analysis

    parsed = parse_models(models)
    baseline = resolve_baseline(parsed, baseline) or (parsed[0].name if len(parsed) > 1 else None)
    split = dataset.split()
    job, settings = inference.join(category_map, runs_models=any(model.runs_a_checkpoint for model in parsed))
    out_dir = reports_dir(out, "errors")
    with writing_to(out_dir, "errors", job):
        analysis = analyze_models(parsed, split, settings, progress=progress, box_format=box_format.value,
                                  baseline=baseline, bootstrap=bootstrap)
        write_error_analysis(analysis, out_dir, baseline, split, per_category=per_category)
    for note in analysis.notes:
        typer.echo(f"note: {note}")
    typer.echo(error_analysis_text(analysis, f"COCO-analyze AP, all objects, on {split.name}"))
    typer.echo("")
    typer.echo(tide_text(analysis, "TIDE: AP50 and the dAP each error type costs"))
    typer.echo(f"tables and figures written to {out_dir}/")
