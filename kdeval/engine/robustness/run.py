"""One robustness run from start to end: check the inputs, keep the folder's books, find the pending
scenarios, run them (alone or across ranks) and return the tidy table."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from kdeval.data.coco import image_path, load_coco_annotations
from kdeval.data.corrupted import Scenario
from kdeval.data.mmdet_robustness import ImportedRobustness
from kdeval.data.source import Split
from kdeval.engine import distributed
from kdeval.engine.detections import ModelInput
from kdeval.engine.predict import inference_model
from kdeval.engine.robustness import store
from kdeval.engine.robustness.imports import store_import
from kdeval.engine.robustness.scheduling import run_alone, run_sharded
from kdeval.engine.robustness.scoring import scenario_scoring
from kdeval.engine.robustness.settings import RobustnessRun, RobustnessSettings
from kdeval.errors import KdevalError
from kdeval.fileio import file_sha256, safe_file_stem
from kdeval.models.checkpoint import LoadedModel, dataset_labels, load_checkpoint
from kdeval.vocab import COCO_STAT_NAMES, ROBUSTNESS_TIDY_COLUMNS


def select_images(gt: dict, max_images: int | None) -> dict:
    """The ground truth restricted to the first `max_images` images by id (a new dict)."""
    images = sorted(gt["images"], key=lambda image: image["id"])
    if max_images is not None:
        images = images[:max_images]
    ids = {image["id"] for image in images}
    return {
        "images": images,
        "annotations": [ann for ann in gt["annotations"] if ann["image_id"] in ids],
        "categories": list(gt["categories"]),
    }


def _check_model_names(models: list[ModelInput]) -> None:
    folders: dict[str, str] = {}
    for model in models:
        if model.is_results_json:
            raise KdevalError(f"{model.path}: robustness runs models on corrupted images; give a checkpoint, not a results JSON")
        folder = safe_file_stem(model.name)
        if folder in folders:
            raise KdevalError(f"model names '{folders[folder]}' and '{model.name}' share the folder name '{folder}'; rename one")
        folders[folder] = model.name


def _ground_truth(split: Split, settings: RobustnessSettings) -> dict:
    images_dir = split.require_images()
    gt = select_images(load_coco_annotations(split.annotations), settings.max_images)
    if not gt["images"]:
        raise KdevalError(f"{split.annotations}: no images to score")
    for image in gt["images"]:
        if not image_path(images_dir, image["file_name"]).is_file():
            raise KdevalError(f"{image_path(images_dir, image['file_name'])}: image file not found")
    return gt


def _load_models(models: list[ModelInput], pending: dict[int, list[str]], gt: dict, split: Split,
                 settings: RobustnessSettings) -> dict[str, LoadedModel]:
    """The models that still have a scenario to run, each built once for all its scenarios."""
    loaded = {}
    for model in models:
        if any(model.name in names for names in pending.values()):
            checkpoint = load_checkpoint(model.path)
            labels = dataset_labels(checkpoint, gt["categories"], str(split.annotations))
            loaded[model.name] = replace(checkpoint, labels=labels, model=inference_model(checkpoint.model, settings.predict))
    return loaded


def _tidy(stats: dict[tuple[str, Scenario], dict], models: list[ModelInput], scenarios: list[Scenario]) -> pd.DataFrame:
    rows = [
        (model.name, scenario.corruption, scenario.severity, metric, float(stats[(model.name, scenario)][metric]))
        for model in models
        for scenario in scenarios
        for metric in COCO_STAT_NAMES
    ]
    return pd.DataFrame(rows, columns=list(ROBUSTNESS_TIDY_COLUMNS))


def run_robustness(
    models: list[ModelInput], split: Split, settings: RobustnessSettings, out_dir: Path,
    overwrite: bool = False, progress: bool = True, imported: ImportedRobustness | None = None,
) -> RobustnessRun:
    """Score every model on clean images and on every (corruption, severity) of `settings`,
    reusing the finished scenarios of an earlier run in `out_dir`. Returns the tidy table.
    `imported` (mmdetection's results to show beside the models) is stored in the folder before
    anything else, so it stays there whatever becomes of the run.

    This is the command's last collective: under torchrun, the ranks other than 0 end here
    (distributed.RankDone) once every rank's scenarios are written."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    dist_env = distributed.current()
    keeps_books = dist_env.is_main  # the folder's bookkeeping is one rank's, so no two write run.json
    if imported is not None and keeps_books:
        store_import(out_dir, imported)
    _check_model_names(models)
    gt = _ground_truth(split, settings)

    data_key = store.data_key(split, gt, settings)
    checkpoints = {model.name: file_sha256(model.path) for model in models}
    if keeps_books:
        if overwrite:
            store.clear_run(out_dir)
        store.open_run(out_dir, data_key, checkpoints)
    distributed.barrier()

    scenarios = settings.scenarios
    keys, stats, pending = {}, {}, {}
    for model in models:
        for index, scenario in enumerate(scenarios):
            keys[(model.name, index)] = store.scenario_key(data_key, checkpoints[model.name], scenario)
            done = store.finished_stats(store.stats_path(out_dir, model.name, scenario), keys[(model.name, index)])
            if done is None:
                pending.setdefault(index, []).append(model.name)
            else:
                stats[(model.name, scenario)] = done
    reused = len(stats)
    # every rank must see the same pending scenarios: none may write one before all have looked
    distributed.barrier()

    processed, scoring_seconds, computed = 0, 0.0, {}
    if pending:
        loaded = _load_models(models, pending, gt, split, settings)
        with scenario_scoring(gt, settings) as scoring:
            if dist_env.world == 1:
                computed, processed, scoring_seconds = run_alone(loaded, pending, scenarios, gt, split, settings, keys, out_dir,
                                                                 progress, scoring)
            else:
                processed, scoring_seconds = run_sharded(loaded, pending, scenarios, gt, split, settings, keys, out_dir,
                                                         progress, scoring, dist_env)
    distributed.continue_on_main_rank()  # waits for every rank: their scenario files are all written now
    if pending and dist_env.world > 1:
        computed = store.written_stats(out_dir, pending, scenarios, keys)
    stats.update(computed)

    return RobustnessRun(
        table=_tidy(stats, models, scenarios),
        computed=len(stats) - reused,
        reused=reused,
        images=len(gt["images"]),
        images_processed=processed,
        seconds=time.perf_counter() - start,
        scoring_seconds=scoring_seconds,
    )
