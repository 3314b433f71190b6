"""`kdeval robustness`: clean AP, mPC and rPC under corruptions, and mmdetection's results imported."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from kdeval.cli.common import (
    DatasetOptions, InferenceOptions, OutOpt, ProgressOpt, TrustOpt, app, bootstrap_options, dataset_options,
    inference_options, reports_dir, user_errors, writing_to,
)
from kdeval.errors import KdevalError
from kdeval.metrics.bootstrap import BootstrapSettings


# ---------------------------------------------------------------- robustness


@app.command(short_help="Clean AP, mPC and rPC under the 15 benchmark corruptions × 5 severities.")
@user_errors
@dataset_options
@inference_options(workers=Annotated[Optional[int], typer.Option(min=0, help="Processes that corrupt images while the models run (default: CPU cores, at most 8, on CUDA; 0 on the CPU, where inference already uses every core).")])
@bootstrap_options
def robustness(
    models: Annotated[Optional[list[str]], typer.Argument(help="Checkpoints, optionally NAME=PATH (none needed with --import).")] = None,
    dataset: DatasetOptions = None,
    corruptions: Annotated[str, typer.Option(help="'benchmark' (the 15 of mPC), 'all' (+ 4 extras), 'extra', or NAME,NAME,...")] = "benchmark",
    severities: Annotated[str, typer.Option(help="Severities to run, e.g. 1-5, 3 or 1,3,5 (clean, 0, always runs).")] = "1-5",
    max_images: Annotated[Optional[int], typer.Option(min=1, help="Score only the first N images by id (a quick, partial look).")] = None,
    baseline: Annotated[Optional[str], typer.Option(help="Model name to show gains against.")] = None,
    import_file: Annotated[Optional[Path], typer.Option("--import", help="mmdetection's robustness results (<out>_results.pkl of tools/analysis_tools/test_robustness.py) to add to --out as model --name; read without running any code in it.")] = None,
    name: Annotated[Optional[str], typer.Option(help="The name an --import is shown under (importing a name again replaces it).")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="Folder of corrupted images (PNG) that later models and runs reuse.")] = None,
    seed: Annotated[int, typer.Option(help="Corruption seed; every model sees the same pixels for the same seed.")] = 0,
    inference: InferenceOptions = None,
    bootstrap: BootstrapSettings = None,
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

    Clean AP, mPC and rPC come with --confidence intervals over --bootstrap resamples of the images
    (one resample applies to every scenario and every model, so gains over --baseline are paired),
    computed afterwards from the detections --out keeps: robustness_summary_intervals.csv and
    robustness_curve_intervals.csv, and error bars on the AP-against-severity curves.

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
    from kdeval.engine.detections import parse_models
    from kdeval.engine.robustness import RobustnessSettings, imports, run_robustness
    from kdeval.engine.robustness.intervals import run_intervals
    from kdeval.report.robustness_tables import summary_text, write_robustness_report

    if (import_file is None) != (name is None):
        raise KdevalError("--import FILE and --name NAME go together: the file to import and the name to show it under")
    if not models and import_file is None:
        raise KdevalError("give MODEL checkpoints to run, or --import FILE --name NAME")
    imported = read_mmdet_robustness(import_file, name) if import_file is not None else None
    out_dir = reports_dir(out, "robustness")
    if not models:
        run_only = {"--corruptions": corruptions != "benchmark", "--severities": severities != "1-5", "--max-images": max_images,
                    "--cache": cache, "--images": dataset.images, "--annotations": dataset.annotations, "--overwrite": overwrite}
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
    split = dataset.split()
    with writing_to(out_dir, "robustness", job):
        run = run_robustness(parsed, split, settings, out_dir, overwrite=overwrite, progress=progress, imported=imported)
        table, notes = imports.with_imports(run.table, out_dir)
        run = replace(run, table=table)
        intervals = run_intervals(out_dir, split, settings, [model.name for model in parsed], baseline, bootstrap)
        write_robustness_report(run, settings, split, out_dir, baseline, notes, intervals, bootstrap)
    typer.echo(summary_text(run, split, settings, baseline, notes, intervals))
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
    with writing_to(out_dir, "robustness"):
        imports.check_baseline(baseline, imports.folder_names(out_dir, imported))
        imports.store_import(out_dir, imported)
        table, title, notes = imports.folder_results(out_dir)
        write_robustness_tables(table, out_dir, title, baseline, notes)
    typer.echo(robustness_text(table, title, baseline, notes))
    typer.echo(f"imported '{imported.name}' ({imported.scenarios} scenarios) from {imported.source}; "
               f"tables and figures written to {out_dir}/")
