"""The models over corrupted images: one DataLoader whose worker processes corrupt the images while
this process runs every model that still needs the scenario on the same batch of pixels, handing
each scenario to scoring as soon as its last batch is done."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from kdeval.data.corrupted import COMPILED_ON_FIRST_USE, MIN_SIDE, Scenario, ScenarioImages, corrupt_image
from kdeval.data.dataset import collate
from kdeval.data.source import Split
from kdeval.engine.detections import merge_shards
from kdeval.engine.predict import OverlappedPostprocessing, batch_detections, batching_order, images_to_device, loader_workers
from kdeval.engine.robustness.scoring import Scoring
from kdeval.engine.robustness.settings import RobustnessSettings
from kdeval.models.checkpoint import LoadedModel

if TYPE_CHECKING:
    from kdeval.engine.robustness.scheduling import ScenarioOwners


def _batches(pending: dict[int, list[str]], positions: list[int], batch_size: int) -> list[list[tuple[int, int]]]:
    """Batches of (scenario index, image position), never crossing a scenario, so the same images
    are batched together in every run and a scenario ends with a known batch."""
    batches = []
    for scenario_index in sorted(pending):
        for start in range(0, len(positions), batch_size):
            batches.append([(scenario_index, p) for p in positions[start:start + batch_size]])
    return batches


def _compile_corruptions(corruptions: set[str]) -> None:
    """glass_blur and kdeval's compiled zoom, warp and HSV code are numba-compiled on first use:
    compiled once here, the forked workers inherit them instead of each compiling its own."""
    for corruption in sorted(corruptions & set(COMPILED_ON_FIRST_USE)):
        corrupt_image(np.zeros((MIN_SIDE, MIN_SIDE, 3), np.uint8), corruption, 1, 0)


def run_pending(
    loaded: dict[str, LoadedModel], pending: dict[int, list[str]], scenarios: list[Scenario], gt: dict, split: Split,
    settings: RobustnessSettings, keys: dict[tuple[str, int], dict], out_dir: Path, progress: bool,
    scoring: Scoring, positions: list[int] | None = None, owners: ScenarioOwners | None = None,
) -> tuple[int, float]:
    """Run every pending (model, scenario) over the images, batched in `batching_order` (`positions`:
    this rank's positions in that order, default all); hand each
    scenario to `scoring` as soon as its last batch is done (its stats come from `scoring.finish()`).
    `owners` (under torchrun, every rank running every scenario over its share of the images): each
    finished (model, scenario) is gathered on one rank, in turn, which scores and writes it.
    Returns (images loaded, seconds spent gathering, scoring and handing over)."""
    predict = settings.predict
    device = torch.device(predict.device)
    images = gt["images"]
    # the models' inputs are sized alike in a study: the first one's transform orders the batches
    order = batching_order(next(iter(loaded.values())).model if loaded else None, images)
    positions = order if positions is None else [order[p] for p in positions]
    dataset = ScenarioImages(split.require_images(), images, scenarios, settings.seed, settings.cache_dir)
    batches = _batches(pending, positions, predict.batch_size)
    workers = loader_workers(predict, torch.device(predict.device))
    if workers > 0:
        _compile_corruptions({scenarios[i].corruption for i in pending})
    # Workers are forked. Do not call cv2.setNumThreads in them: when the parent has used OpenCV's
    # thread pool, resizing the inherited pool in a forked child deadlocks.
    loader = DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
    )
    batches_left = {index: -(-len(positions) // predict.batch_size) for index in pending}
    detections: dict[tuple[str, int], list[dict]] = {}
    scoring_seconds = 0.0
    processed = 0
    image_ids = [image["id"] for image in images]

    def finish_scenario(scenario_index: int) -> None:
        nonlocal scoring_seconds
        start = time.perf_counter()
        scenario = scenarios[scenario_index]
        for name in pending[scenario_index]:
            found = detections.pop((name, scenario_index), [])
            if owners is not None:
                found = owners.gather(found)
                if found is None:  # another rank scores this one
                    continue
            else:
                found = merge_shards([found], image_ids)  # batching order → the dataset's
            scoring.submit(out_dir, name, scenario, keys[(name, scenario_index)], found)
        scoring_seconds += time.perf_counter() - start

    if not batches:  # no images for this rank: it still takes its turns at gathering and scoring
        for scenario_index in sorted(pending):
            finish_scenario(scenario_index)

    def collect(finished: list) -> None:
        # a batch's models are postprocessed one push later (OverlappedPostprocessing), in order; a
        # scenario is finished when its last batch's last model is
        nonlocal processed
        for (name, scenario_index, targets, last_model), outputs in finished:
            found = detections.setdefault((name, scenario_index), [])
            found.extend(batch_detections(outputs, targets, loaded[name].labels))
            if last_model:
                processed += len(targets)
                batches_left[scenario_index] -= 1
                if batches_left[scenario_index] == 0:
                    finish_scenario(scenario_index)

    overlapped = OverlappedPostprocessing(device)
    with torch.inference_mode(), predict.autocast():
        bar = tqdm(loader, total=len(batches), desc="robustness", unit="batch", disable=not progress)
        for batch_images, targets in bar:
            scenario_index = targets[0]["scenario"]
            bar.set_postfix_str(scenarios[scenario_index].slug, refresh=False)
            inputs = images_to_device(batch_images, device)
            names = pending[scenario_index]  # never empty
            for position, name in enumerate(names):
                collect(overlapped.push(loaded[name].model, inputs, (name, scenario_index, targets, position == len(names) - 1)))
        collect(overlapped.drain())
    return processed, scoring_seconds
