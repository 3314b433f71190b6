"""The robustness benchmark: models × (clean + corruptions × severities) → a tidy table, resumably.

Each model is built once and every scenario runs through one DataLoader whose worker processes
corrupt the images while the main process runs the models; every model that still needs a
scenario sees the same batch of corrupted pixels, so corruption is paid once per run, not once per
model. Clean images are scenario (clean, 0), scored once per model.

The run folder (--out) holds
    run.json                               what the results depend on: data, seed, inference, models
    scenarios/<model>/<corruption>-<s>.json   the 12 COCO stats of one finished scenario (+ its key)
    detections/<model>/<corruption>-<s>.json.gz   that scenario's COCO results
Both per-scenario files are written atomically, detections first, so a scenario counts as finished
only when its stats file exists: a kill at any moment loses at most the scenarios in flight, and a
rerun skips every finished one. A rerun whose data, seed, image count or inference settings differ,
or that gives a model name another checkpoint, is refused rather than mixed in; more corruptions,
severities or models extend a run.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from kdeval.data.coco import image_path, load_coco_annotations, read_json
from kdeval.data.corrupted import (CACHE_VERSION, COMPILED_ON_FIRST_USE, MIN_SIDE, Scenario, ScenarioImages, corrupt_image,
                                   library_version, scenarios_of)
from kdeval.data.dataset import collate
from kdeval.data.source import Split
from kdeval.engine.evaluate import ModelInput
from kdeval.engine import distributed
from kdeval.engine.predict import (OverlappedPostprocessing, PredictSettings, batch_detections, batching_order, images_to_device, inference_model, loader_workers,
                                   merge_shards)
from kdeval.errors import KdevalError
from kdeval.fileio import file_sha256, remove_earlier_outputs, safe_file_stem, read_json_or_none, write_bytes_atomic, write_json_atomic, write_text_atomic
from kdeval.report.figures import save_figure
from kdeval.metrics.coco_ap import coco_stats
from kdeval.metrics.robustness import BENCHMARK_SCENARIOS, TIDY_COLUMNS, corruption_means, robustness_summary
from kdeval.models.checkpoint import LoadedModel, load_checkpoint
from kdeval.report.robustness_figures import severity_curves, severity_heatmap
from kdeval.report.tables import to_latex, to_markdown, to_text
from kdeval.vocab import ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS, COCO_STAT_NAMES, ROBUSTNESS_COLUMNS, SEVERITIES

RUN_FORMAT = "kdeval-robustness"
RUN_VERSION = 1


@dataclass(frozen=True)
class RobustnessSettings:
    corruptions: tuple[str, ...] = BENCHMARK_CORRUPTIONS
    severities: tuple[int, ...] = SEVERITIES
    seed: int = 0
    max_images: int | None = None  # the first N images by id; None: all
    cache_dir: Path | None = None  # corrupted images shared across runs; does not change results
    predict: PredictSettings = field(default_factory=PredictSettings)
    scoring_processes: int | None = None  # None: 1 beside a GPU, 0 (in the main process) on the CPU

    def scorers(self) -> int:
        """Processes that score finished scenarios (COCO stats, then the files) while the models go on.
        A COCO-sized scenario (5,000 images, 100 detections each) costs about 4.5 s of one core to
        score and write, 0.4 s to hand over (benchmarks/RESULTS.md): beside a GPU, whose inference of
        it takes some 40 s, one process spares it that tenth of idle time. On the CPU, where the
        models already use every core, scoring stays in the main process."""
        if self.scoring_processes is not None:
            return self.scoring_processes
        return 1 if torch.device(self.predict.device).type == "cuda" else 0

    @property
    def scenarios(self) -> list[Scenario]:
        return scenarios_of(self.corruptions, self.severities)


@dataclass
class RobustnessRun:
    table: pd.DataFrame  # tidy: model, corruption, severity, metric, value (0–1)
    computed: int  # (model, scenario) pairs run now
    reused: int  # (model, scenario) pairs read from an earlier run
    images: int  # images per scenario
    images_processed: int  # corrupted-or-clean images that went through the DataLoader now
    seconds: float
    scoring_seconds: float  # of those, the main process's time with finished scenarios: gathering them from the ranks
    # (under torchrun), scoring and writing them, or handing them to its scoring processes and waiting for those


# ---------------------------------------------------------------- the data the run is on


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


def _data_key(split: Split, gt: dict, settings: RobustnessSettings) -> dict:
    """Everything other than the model that the detections of a scenario depend on."""
    return {
        "annotations": file_sha256(split.annotations),
        "images": str(Path(split.images).resolve()),
        "image_count": len(gt["images"]),
        "image_ids_sha256": hashlib.sha256(json.dumps([image["id"] for image in gt["images"]]).encode()).hexdigest(),
        "max_images": settings.max_images,
        "seed": settings.seed,
        "imagecorruptions": library_version(),
        "corruption_version": CACHE_VERSION,
        **settings.predict.cache_fields(),
        # images of several sizes are batched by padded shape since 2026-11-28 (other detections than
        # in the dataset's order); runs on images of one size batch as before and keep their keys
        **({"batching": "by padded shape"} if len({(image.get("height"), image.get("width")) for image in gt["images"]}) > 1 else {}),
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


def _change(key: str, before, now) -> str:
    if len(repr(before)) + len(repr(now)) < 40:
        unset = lambda value: "unset" if value is None else value  # noqa: E731  (e.g. --max-images not given)
        return f"{key} {unset(before)} there, {unset(now)} now"
    return f"{key} differs"


def _finished_files(out_dir: Path, model: str | None = None) -> list[Path]:
    folder = out_dir / "scenarios" / (safe_file_stem(model) if model is not None else "")
    return [p for p in folder.rglob("*.json") if not p.name.startswith(".")] if folder.is_dir() else []


def _open_run(out_dir: Path, data_key: dict, checkpoints: dict[str, str]) -> None:
    """Check run.json against this run's settings and refuse to mix results made otherwise, then
    record the union. Settings of an earlier run that left no finished scenario do not count."""
    path = out_dir / "run.json"
    models = dict(checkpoints)
    if path.is_file():
        earlier = read_json(path, "robustness run")
        if not isinstance(earlier, dict) or earlier.get("format") != RUN_FORMAT:
            raise KdevalError(f"{path}: not a kdeval robustness run; choose another --out")
        before = earlier.get("data", {})
        differing = [_change(key, before.get(key), data_key.get(key)) for key in sorted(set(data_key) | set(before)) if before.get(key) != data_key.get(key)]
        if differing and _finished_files(out_dir):
            # fp32 on CUDA was the default before fp16 became it (2026-11-28): the flag continues such a run
            precision = (" (or --fp32 / --amp, to continue in the precision it was made with)"
                         if before.get("amp") != data_key.get("amp") else "")
            raise KdevalError(
                f"{out_dir} holds a robustness run made with other settings ({'; '.join(differing)}); "
                f"use another --out{precision}, or --overwrite to start over"
            )
        for name, sha in earlier.get("models", {}).items():
            if name in models and models[name] != sha and _finished_files(out_dir, name):
                raise KdevalError(
                    f"{out_dir} holds results of another checkpoint under the name '{name}'; "
                    "use NAME=PATH with a new name, another --out, or --overwrite"
                )
            if not differing:
                models.setdefault(name, sha)
    write_json_atomic(path, {"format": RUN_FORMAT, "version": RUN_VERSION, "data": data_key, "models": models})


def _clear_run(out_dir: Path) -> None:
    """--overwrite: forget the results of an earlier run (its report files are rewritten anyway)."""
    import shutil

    for name in ("scenarios", "detections"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    (out_dir / "run.json").unlink(missing_ok=True)


# ---------------------------------------------------------------- per-scenario files


def _stats_path(out_dir: Path, model: str, scenario: Scenario) -> Path:
    return out_dir / "scenarios" / safe_file_stem(model) / f"{scenario.slug}.json"


def _detections_path(out_dir: Path, model: str, scenario: Scenario) -> Path:
    return out_dir / "detections" / safe_file_stem(model) / f"{scenario.slug}.json.gz"


def _scenario_key(data_key: dict, checkpoint_sha: str, scenario: Scenario) -> dict:
    return {"data": data_key, "checkpoint": checkpoint_sha, "corruption": scenario.corruption, "severity": scenario.severity}


def _finished_stats(path: Path, key: dict) -> dict | None:
    """The stats of a finished scenario, or None when it must be (re)run."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("key") != key or set(record.get("stats", {})) != set(COCO_STAT_NAMES):
        return None
    return record["stats"]


def _save_scenario(out_dir: Path, model: str, scenario: Scenario, key: dict, detections: list[dict], stats: dict) -> None:
    payload = json.dumps(detections, separators=(",", ":")).encode()
    # level 1: a quarter of level 6's time for 7 % more bytes (a COCO-sized scenario: 0.6 s against 2.4 s)
    write_bytes_atomic(_detections_path(out_dir, model, scenario), gzip.compress(payload, compresslevel=1, mtime=0))
    write_json_atomic(
        _stats_path(out_dir, model, scenario),
        {"model": model, "corruption": scenario.corruption, "severity": scenario.severity, "key": key, "stats": stats},
    )


# ---------------------------------------------------------------- running


def _score_and_save(gt: dict, out_dir: Path, model: str, scenario: Scenario, key: dict, detections: list[dict]) -> dict:
    stats = coco_stats(gt, detections)
    _save_scenario(out_dir, model, scenario, key, detections, stats)
    return stats


_SCORER_GT: dict = {}


def _start_scorer(gt: dict) -> None:
    _SCORER_GT["gt"] = gt  # sent once per scorer process, not with every scenario


def _score_in_scorer(out_dir: Path, model: str, scenario: Scenario, key: dict, detections: list[dict]) -> dict:
    return _score_and_save(_SCORER_GT["gt"], out_dir, model, scenario, key, detections)


class ScoreHere:
    """Finished scenarios scored and written in this process, each before the models go on (on the
    CPU, where the models already use every core)."""

    def __init__(self, gt: dict):
        self.gt = gt
        self.stats: dict[tuple[str, Scenario], dict] = {}

    def submit(self, out_dir: Path, model: str, scenario: Scenario, key: dict, detections: list[dict]) -> None:
        self.stats[(model, scenario)] = _score_and_save(self.gt, out_dir, model, scenario, key, detections)

    def finish(self) -> dict[tuple[str, Scenario], dict]:
        return self.stats

    def stop(self) -> None:
        pass


class ScenarioScorers:
    """Finished scenarios scored and written by `processes` spawned processes while the models run on.
    At most two per process wait (their detections held in memory); a further one waits for the
    oldest. A scenario counts as finished only once its files are written, by whichever process
    scores it, so a kill at any moment still loses at most the scenarios not yet written."""

    def __init__(self, gt: dict, processes: int):
        import multiprocessing
        from collections import deque
        from concurrent.futures import ProcessPoolExecutor

        # spawned, not forked: the main process holds CUDA, OpenCV's thread pool and the loader's threads
        self.pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_start_scorer, initargs=(gt,))
        self.waiting: deque = deque()
        self.limit = 2 * processes
        self.stats: dict[tuple[str, Scenario], dict] = {}

    def submit(self, out_dir: Path, model: str, scenario: Scenario, key: dict, detections: list[dict]) -> None:
        while len(self.waiting) >= self.limit:
            self._collect_oldest()
        self.waiting.append(((model, scenario), self.pool.submit(_score_in_scorer, out_dir, model, scenario, key, detections)))

    def _collect_oldest(self) -> None:
        name, future = self.waiting[0]
        self.stats[name] = future.result()
        self.waiting.popleft()  # only now: `stop` must not wait for a scenario still being scored

    def finish(self) -> dict[tuple[str, Scenario], dict]:
        """Wait for every scenario handed over; the stats of all of them. The processes stay for more."""
        while self.waiting:
            self._collect_oldest()
        return self.stats

    def stop(self) -> None:
        """After an error or an interrupt: drop the scenarios not yet started. One being scored may be
        cut short (a Ctrl-C reaches the scorers too); unwritten, it runs again on the next run. After
        `finish`, it ends the idle processes."""
        self.pool.shutdown(wait=not self.waiting, cancel_futures=True)


@contextmanager
def scenario_scoring(gt: dict, settings: RobustnessSettings):
    """Where a run scores its finished scenarios, one for the whole run: its ScenarioScorers'
    processes (settings.scorers() of them; spawning them costs seconds) or this process."""
    scoring = ScenarioScorers(gt, settings.scorers()) if settings.scorers() > 0 else ScoreHere(gt)
    try:
        yield scoring
    finally:
        scoring.stop()


class ScenarioOwners:
    """Under torchrun with the images split across ranks: every finished (model, scenario) is gathered
    on one rank, the ranks taking turns, and only that rank merges, scores and writes it. Every rank
    finishes the same (model, scenario) pairs in the same order, so each gather is one collective that
    all ranks join. One (model, scenario) is gathered at a time (a COCO-sized one is about 200 MB as
    Python objects), and at most two per scoring process wait to be scored; the scoring is spread over
    the ranks, and runs beside the models where they have scoring processes (with none, the next
    gather waits for the owner's scoring)."""

    def __init__(self, image_ids: list[int]):
        self.image_ids = image_ids
        self.turn = 0

    def gather(self, found: list[dict]) -> list[dict] | None:
        """This rank's detections of the next (model, scenario) → all ranks' in single-process order,
        on the rank whose turn it is; None on the others."""
        owner = self.turn % distributed.current().world
        self.turn += 1
        shards = distributed.gather_lists(found, dst=owner)
        return None if shards is None else merge_shards(shards, self.image_ids)


def _batches(pending: dict[int, list[str]], positions: list[int], batch_size: int) -> list[list[tuple[int, int]]]:
    """Batches of (scenario index, image position), never crossing a scenario, so the same images
    are batched together in every run and a scenario ends with a known batch."""
    batches = []
    for scenario_index in sorted(pending):
        for start in range(0, len(positions), batch_size):
            batches.append([(scenario_index, p) for p in positions[start:start + batch_size]])
    return batches


def _run_pending(
    loaded: dict[str, LoadedModel], pending: dict[int, list[str]], scenarios: list[Scenario], gt: dict, split: Split,
    settings: RobustnessSettings, keys: dict[tuple[str, int], dict], out_dir: Path, progress: bool,
    scoring: ScoreHere | ScenarioScorers, positions: list[int] | None = None, sharded: bool = False,
) -> tuple[int, float]:
    """Run every pending (model, scenario) over the images, batched in `batching_order` (`positions`:
    this rank's positions in that order, default all); hand each
    scenario to `scoring` as soon as its last batch is done (its stats come from `scoring.finish()`).
    `sharded` (under torchrun, every rank running every scenario over its share of the images): each
    finished (model, scenario) is gathered on one rank, in turn, which scores and writes it
    (ScenarioOwners). Returns (images loaded, seconds spent gathering, scoring and handing over)."""
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
        # glass_blur and kdeval's compiled zoom, warp and HSV code are numba-compiled on first use
        # (2-3 s in all): compile them once here, and the forked workers inherit them instead of
        # each compiling its own
        for corruption in sorted({scenarios[i].corruption for i in pending} & set(COMPILED_ON_FIRST_USE)):
            corrupt_image(np.zeros((MIN_SIDE, MIN_SIDE, 3), np.uint8), corruption, 1, 0)
    # Workers are forked. Do not call cv2.setNumThreads in them: when the parent has used OpenCV's
    # thread pool, resizing the inherited pool in a forked child deadlocks (seen in the tests).
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
    owners = ScenarioOwners(image_ids) if sharded else None

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


# with fewer pending scenarios than this many per rank, ranks split the images instead (keeps all busy)
SCENARIOS_PER_RANK = 4


def split_scenarios(pending: dict[int, list[str]], world: int) -> tuple[list[list[int]], list[int]]:
    """How `world` ranks share the pending scenarios (index → models still to run on it): (the whole
    scenarios each rank runs alone, the scenarios whose images all ranks split). With at least
    SCENARIOS_PER_RANK per rank, whole scenarios go out so that every rank runs as many (model,
    scenario) pairs as it can (the heaviest first, each to the least loaded rank), and the remainder
    that would leave ranks idle at the end, fewer than `world`, is split by images; with fewer, every
    scenario is split by images."""
    if len(pending) < SCENARIOS_PER_RANK * world:
        return [[] for _ in range(world)], sorted(pending)
    heaviest_first = sorted(pending, key=lambda index: (-len(pending[index]), index))
    whole_count = len(heaviest_first) - len(heaviest_first) % world
    loads, whole = [0] * world, [[] for _ in range(world)]
    for index in heaviest_first[:whole_count]:
        rank = min(range(world), key=lambda r: (loads[r], r))
        whole[rank].append(index)
        loads[rank] += len(pending[index])
    return [sorted(indices) for indices in whole], sorted(heaviest_first[whole_count:])


def _finish_scoring(scoring: ScoreHere | ScenarioScorers) -> tuple[dict[tuple[str, Scenario], dict], float]:
    start = time.perf_counter()
    stats = scoring.finish()
    return stats, time.perf_counter() - start


def _run_alone(loaded, pending, scenarios, gt, split, settings, keys, out_dir, progress, scoring):
    processed, seconds = _run_pending(loaded, pending, scenarios, gt, split, settings, keys, out_dir, progress, scoring)
    stats, waited = _finish_scoring(scoring)
    return stats, processed, seconds + waited


def _run_sharded(loaded, pending, scenarios, gt, split, settings, keys, out_dir, progress, scoring, dist_env):
    """Under torchrun, the scenarios shared as `split_scenarios` says: first those whose images the
    ranks split, each finished one gathered and scored on the ranks in turn, then each rank's whole
    scenarios; a rank's scoring processes score both kinds, the split ones while the whole ones run.
    Every finished scenario is its own file, written by the rank that scored it, so a rerun after a
    kill of any rank resumes as alone."""
    whole, split_by_images = split_scenarios(pending, dist_env.world)
    show = progress and dist_env.is_main
    processed, seconds = 0, 0.0
    if split_by_images:
        processed, seconds = _run_pending(loaded, {index: pending[index] for index in split_by_images}, scenarios, gt, split,
                                          settings, keys, out_dir, show, scoring,
                                          positions=dist_env.shard(len(gt["images"]), settings.predict.batch_size),
                                          sharded=True)
    if whole[dist_env.rank]:
        more, more_seconds = _run_pending(loaded, {index: pending[index] for index in whole[dist_env.rank]}, scenarios, gt,
                                          split, settings, keys, out_dir, show, scoring)
        processed, seconds = processed + more, seconds + more_seconds
    _, waited = _finish_scoring(scoring)  # this rank's files are written; the others' are read below
    seconds += waited
    distributed.barrier()
    stats = {}
    for index, names in pending.items():
        for name in names:
            done = _finished_stats(_stats_path(out_dir, name, scenarios[index]), keys[(name, index)])
            if done is None:
                raise KdevalError(f"{out_dir}: scenario {scenarios[index].slug} of {name} is missing after the ranks finished")
            stats[(name, scenarios[index])] = done
    return stats, processed, seconds


def _tidy(stats: dict[tuple[str, Scenario], dict], models: list[ModelInput], scenarios: list[Scenario]) -> pd.DataFrame:
    rows = [
        (model.name, scenario.corruption, scenario.severity, metric, float(stats[(model.name, scenario)][metric]))
        for model in models
        for scenario in scenarios
        for metric in COCO_STAT_NAMES
    ]
    return pd.DataFrame(rows, columns=list(TIDY_COLUMNS))


def run_robustness(
    models: list[ModelInput], split: Split, settings: RobustnessSettings, out_dir: Path,
    overwrite: bool = False, progress: bool = True,
) -> RobustnessRun:
    """Score every model on clean images and on every (corruption, severity) of `settings`,
    reusing the finished scenarios of an earlier run in `out_dir`. Returns the tidy table."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    _check_model_names(models)
    images_dir = split.require_images()
    gt = select_images(load_coco_annotations(split.annotations), settings.max_images)
    if not gt["images"]:
        raise KdevalError(f"{split.annotations}: no images to score")
    for image in gt["images"]:
        if not image_path(images_dir, image["file_name"]).is_file():
            raise KdevalError(f"{image_path(images_dir, image['file_name'])}: image file not found")

    data_key = _data_key(split, gt, settings)
    checkpoints = {model.name: file_sha256(model.path) for model in models}
    if distributed.current().is_main:  # under torchrun, rank 0 keeps the run's books
        if overwrite:
            _clear_run(out_dir)
        _open_run(out_dir, data_key, checkpoints)
    distributed.barrier()

    scenarios = settings.scenarios
    keys, stats, pending = {}, {}, {}
    for model in models:
        for index, scenario in enumerate(scenarios):
            keys[(model.name, index)] = _scenario_key(data_key, checkpoints[model.name], scenario)
            done = _finished_stats(_stats_path(out_dir, model.name, scenario), keys[(model.name, index)])
            if done is None:
                pending.setdefault(index, []).append(model.name)
            else:
                stats[(model.name, scenario)] = done
    reused = len(stats)
    # every rank must see the same pending scenarios: none may write one before all have looked
    distributed.barrier()

    processed, scoring_seconds = 0, 0.0
    if pending:
        needed = [model for model in models if any(model.name in names for names in pending.values())]
        loaded = {}
        for model in needed:  # each model is built once, for all its scenarios
            checkpoint = load_checkpoint(model.path)
            checkpoint.labels.check_matches(gt["categories"], str(split.annotations))
            loaded[model.name] = replace(checkpoint, model=inference_model(checkpoint.model, settings.predict))
        dist_env = distributed.current()
        with scenario_scoring(gt, settings) as scoring:
            if dist_env.world == 1:
                computed, processed, scoring_seconds = _run_alone(loaded, pending, scenarios, gt, split, settings, keys, out_dir,
                                                                  progress, scoring)
            else:
                computed, processed, scoring_seconds = _run_sharded(loaded, pending, scenarios, gt, split, settings, keys, out_dir,
                                                                    progress, scoring, dist_env)
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


# ---------------------------------------------------------------- the report


def run_settings(settings: RobustnessSettings) -> dict:
    """Settings as JSON-ready data, saved beside the report."""
    data = asdict(settings)
    data["cache_dir"] = str(settings.cache_dir) if settings.cache_dir is not None else None
    return data


def partial_note(summary: pd.DataFrame) -> str | None:
    """None for a full benchmark; otherwise the sentence that says what the mPC is a mean of."""
    counts = set(summary["scenarios"])
    if counts == {BENCHMARK_SCENARIOS}:
        return None
    if counts == {0}:
        return "no benchmark corruption was run, so mPC and rPC are undefined (they average the 15 benchmark corruptions)"
    low, high = min(counts), max(counts)
    span = str(low) if low == high else f"between {low} and {high} (by model)"
    return (
        f"PARTIAL mPC: the mean over {span} of the {BENCHMARK_SCENARIOS} benchmark scenarios "
        "(15 corruptions × severities 1–5) that were run, not comparable with a full mPC"
    )


def summary_title(split: Split, run: RobustnessRun, seed: int) -> str:
    return f"Robustness on {split.name} ({run.images} images, corruption seed {seed}): clean AP, mPC, rPC (%)"


def write_robustness_report(
    run: RobustnessRun, settings: RobustnessSettings, split: Split, out_dir: Path, baseline: str | None = None,
    notes: tuple[str, ...] = (),
) -> list[Path]:
    """The tables and figures of `run.table` (write_robustness_tables) and the run's settings."""
    title = summary_title(split, run, settings.seed)
    paths = write_robustness_tables(run.table, out_dir, title, baseline, notes)
    return paths + [write_json_atomic(Path(out_dir) / "settings.json", run_settings(settings))]


def write_robustness_tables(
    table: pd.DataFrame, out_dir: Path, title: str, baseline: str | None = None, notes: tuple[str, ...] = ()
) -> list[Path]:
    """The tidy CSV, the summary (CSV, Markdown, LaTeX), the per-corruption table, the figures.
    `notes` are sentences shown under the summary (and in the LaTeX caption), e.g. where an
    imported model's numbers come from."""
    out_dir = Path(out_dir)
    summary = robustness_summary(table)
    shown = summary[list(ROBUSTNESS_COLUMNS)]
    notes = _all_notes(summary, notes)
    by_corruption = corruption_means(table)

    summary_csv = shown.copy()
    if baseline is not None:
        for column in ROBUSTNESS_COLUMNS:
            summary_csv[f"{column}_gain"] = shown[column] - shown.loc[baseline, column]
    summary_csv["scenarios"] = summary["scenarios"]
    markdown = [f"**{title}**", "", to_markdown(shown, baseline)]
    for note in notes:
        markdown += [f"*{note}*", ""]
    if not by_corruption.empty:
        markdown += ["**AP (%) per corruption, mean over the severities run**", "", to_markdown(by_corruption, baseline)]
    caption = ". ".join([title, *notes])

    # figures of models (or corruptions) an earlier run of this folder showed and this one does not
    remove_earlier_outputs(out_dir, ("robustness_by_corruption.csv",))
    remove_earlier_outputs(out_dir / "figures", ("ap_vs_severity.*", "heatmap-*.png", "heatmap-*.pdf"))
    paths = [
        write_text_atomic(out_dir / "robustness.csv", table.to_csv(index=False)),
        write_text_atomic(out_dir / "robustness_summary.csv", summary_csv.to_csv(float_format="%.6f")),
        write_text_atomic(out_dir / "robustness_summary.md", "\n".join(markdown)),
        write_text_atomic(out_dir / "robustness_summary.tex", to_latex(shown, baseline, caption)),
    ]
    if not by_corruption.empty:
        paths.append(write_text_atomic(out_dir / "robustness_by_corruption.csv", by_corruption.to_csv(float_format="%.6f")))
        paths += save_figure(severity_curves(table), out_dir / "figures", "ap_vs_severity")
        # one colour scale for every model's heat map, up to the highest AP any scenario reached
        top = table.loc[table["metric"] == "AP", "value"].max()
        for model in dict.fromkeys(table["model"]):
            heatmap = severity_heatmap(table, model, vmax=float(top) if top > 0 else None)
            paths += save_figure(heatmap, out_dir / "figures", f"heatmap-{safe_file_stem(model)}")
    return paths


def _all_notes(summary: pd.DataFrame, notes: tuple[str, ...]) -> list[str]:
    partial = partial_note(summary)
    return ([partial] if partial else []) + list(notes)


def summary_text(
    run: RobustnessRun, split: Split, settings: RobustnessSettings, baseline: str | None = None, notes: tuple[str, ...] = ()
) -> str:
    """The paper's Table 3 layout for the terminal: AP, mPC, rPC per model, gains in brackets."""
    return robustness_text(run.table, summary_title(split, run, settings.seed), baseline, notes)


def robustness_text(table: pd.DataFrame, title: str, baseline: str | None = None, notes: tuple[str, ...] = ()) -> str:
    summary = robustness_summary(table)
    text = to_text(summary[list(ROBUSTNESS_COLUMNS)], baseline, title=title)
    return "\n".join([text, *(f"note: {note}" for note in _all_notes(summary, notes))])


# ---------------------------------------------------------------- a run folder read back


def has_results(out_dir: Path, model: str) -> bool:
    """Whether the run folder holds any finished scenario of `model` (or of a name sharing its folder)."""
    return bool(_finished_files(Path(out_dir), model))


def stored_results(out_dir: Path) -> pd.DataFrame:
    """The tidy table of every finished scenario in a run folder, read back without running a model:
    the models recorded in run.json, in its order, each with the scenarios whose stats files match
    its recorded settings and checkpoint (those a rerun would reuse)."""
    out_dir = Path(out_dir)
    path = out_dir / "run.json"
    rows = []
    if path.is_file():
        record = read_json(path, "robustness run")
        if not isinstance(record, dict) or record.get("format") != RUN_FORMAT:
            raise KdevalError(f"{path}: not a kdeval robustness run; choose another --out")
        for model, checkpoint in record.get("models", {}).items():
            for stats_path in sorted(_finished_files(out_dir, model)):
                found = read_json_or_none(stats_path)
                if not isinstance(found, dict) or found.get("model") != model:
                    continue
                scenario = Scenario(found.get("corruption"), found.get("severity"))
                stats = _finished_stats(stats_path, _scenario_key(record.get("data"), checkpoint, scenario))
                if stats is not None:
                    rows += [(model, scenario.corruption, scenario.severity, m, float(stats[m])) for m in COCO_STAT_NAMES]
    table = pd.DataFrame(rows, columns=list(TIDY_COLUMNS))
    order = {name: i for i, name in enumerate(ALL_CORRUPTIONS)}
    keys = [table["model"].map({m: i for i, m in enumerate(dict.fromkeys(table["model"]))}),
            table["severity"] > 0, table["corruption"].map(order).fillna(-1), table["severity"],
            table["metric"].map({m: i for i, m in enumerate(COCO_STAT_NAMES)})]
    return table.iloc[np.lexsort(keys[::-1])].reset_index(drop=True) if len(table) else table
