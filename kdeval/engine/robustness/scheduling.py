"""Who runs which scenario: one process alone, or torchrun's ranks, which share the pending scenarios
whole or split their images, and take turns at gathering and scoring the split ones."""

from __future__ import annotations

from pathlib import Path

from kdeval.data.corrupted import Scenario
from kdeval.data.source import Split
from kdeval.engine import distributed
from kdeval.engine.detections import merge_shards
from kdeval.engine.robustness.inference import run_pending
from kdeval.engine.robustness.scoring import Scoring, finish_scoring
from kdeval.engine.robustness.settings import RobustnessSettings
from kdeval.models.checkpoint import LoadedModel

# with fewer pending scenarios than this many per rank, ranks split the images instead (keeps all busy)
SCENARIOS_PER_RANK = 4


class ScenarioOwners:
    """Under torchrun with the images split across ranks: every finished (model, scenario) is gathered
    on one rank, the ranks taking turns, and only that rank merges, scores and writes it. Every rank
    finishes the same (model, scenario) pairs in the same order, so each gather is one collective that
    all ranks join. One (model, scenario) is gathered at a time (a COCO-sized one is hundreds of
    megabytes as Python objects; benchmarks/RESULTS.md), and at most two per scoring process wait to
    be scored; the scoring is spread over the ranks, and runs beside the models where they have
    scoring processes (with none, the next gather waits for the owner's scoring)."""

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


def run_alone(
    loaded: dict[str, LoadedModel], pending: dict[int, list[str]], scenarios: list[Scenario], gt: dict, split: Split,
    settings: RobustnessSettings, keys: dict[tuple[str, int], dict], out_dir: Path, progress: bool, scoring: Scoring,
) -> tuple[dict[tuple[str, Scenario], dict], int, float]:
    """One process runs every pending scenario: (their stats, images loaded, seconds with finished scenarios)."""
    processed, seconds = run_pending(loaded, pending, scenarios, gt, split, settings, keys, out_dir, progress, scoring)
    stats, waited = finish_scoring(scoring)
    return stats, processed, seconds + waited


def run_sharded(
    loaded: dict[str, LoadedModel], pending: dict[int, list[str]], scenarios: list[Scenario], gt: dict, split: Split,
    settings: RobustnessSettings, keys: dict[tuple[str, int], dict], out_dir: Path, progress: bool, scoring: Scoring,
    dist_env: distributed.Distributed,
) -> tuple[int, float]:
    """Under torchrun, the scenarios shared as `split_scenarios` says: first those whose images the
    ranks split, each finished one gathered and scored on the ranks in turn, then each rank's whole
    scenarios; a rank's scoring processes score both kinds, the split ones while the whole ones run.
    Every finished scenario is its own file, written by the rank that scored it, so a rerun after a
    kill of any rank resumes as alone. Returns when this rank's files are written: (images loaded,
    seconds with finished scenarios); the stats are read back from every rank's files once all are done."""
    whole, split_by_images = split_scenarios(pending, dist_env.world)
    shows_progress = progress and dist_env.is_main  # one bar for the job
    processed, seconds = 0, 0.0
    if split_by_images:
        processed, seconds = run_pending(loaded, {index: pending[index] for index in split_by_images}, scenarios, gt, split,
                                         settings, keys, out_dir, shows_progress, scoring,
                                         positions=dist_env.shard(len(gt["images"]), settings.predict.batch_size),
                                         owners=ScenarioOwners([image["id"] for image in gt["images"]]))
    if whole[dist_env.rank]:
        more, more_seconds = run_pending(loaded, {index: pending[index] for index in whole[dist_env.rank]}, scenarios, gt,
                                         split, settings, keys, out_dir, shows_progress, scoring)
        processed, seconds = processed + more, seconds + more_seconds
    _, waited = finish_scoring(scoring)  # this rank's files are written; the others' are read later
    return processed, seconds + waited
