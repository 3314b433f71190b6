"""`kdeval visualize` and `kdeval report`: the gallery and the run's page."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from kdeval.cli.common import (
    DatasetOptions, InferenceOptions, OutOpt, ProgressOpt, TrustOpt, app, dataset_options, inference_options,
    reports_dir, user_errors, writing_to,
)
from kdeval.errors import KdevalError
from kdeval.vocab import GALLERY_SCORE_THRESHOLD, GALLERY_SELECTIONS


# ---------------------------------------------------------------- visualize and report


@app.command(short_help="Qualitative gallery: every model's detections on chosen images, as an offline page.")
@user_errors
@dataset_options
@inference_options()
def visualize(
    models: Annotated[list[str], typer.Argument(help="Checkpoints or COCO results JSON files, optionally NAME=PATH, one panel each, in order.")],
    dataset: DatasetOptions = None,
    names: Annotated[Optional[str], typer.Option(help="One name per model, comma-separated, e.g. baseline,distilled,teacher.")] = None,
    select: Annotated[Optional[str], typer.Option(help=f"Which images: {', '.join(GALLERY_SELECTIONS)}, or image ids such as 12,57 (default: improved with two models or more, else random).")] = None,
    num: Annotated[int, typer.Option(min=1, help="How many images to show.")] = 20,
    score_threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Detections the selection counts, and where the page's score slider starts.")] = GALLERY_SCORE_THRESHOLD,
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
      kdeval visualize base=b.json kd=kd.json --select 139,785,872 --score-threshold 0.3
    """
    from kdeval.analysis.gallery import VisualizeSettings, parse_selection
    from kdeval.engine.detections import model_paths, parse_named_models
    from kdeval.engine.visualize import visualize_models
    from kdeval.report.gallery import write_visualization

    parsed = parse_named_models(models, names)
    strategy, image_ids = parse_selection(select, len(parsed))
    settings = VisualizeSettings(select=strategy, image_ids=image_ids, num=num, score_threshold=score_threshold,
                                 min_score=min_score, seed=seed)
    split = dataset.split()
    job, predict_settings = inference.join(runs_models=any(model.runs_a_checkpoint for model in parsed))
    out_dir = reports_dir(out, "visualize")
    with writing_to(out_dir, "visualize", job):
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
    with writing_to(run_dir, "report"):
        page, summary = write_run_report(run_dir)
    for line in summary:
        typer.echo(line)
    typer.echo(f"report written to {page}")
