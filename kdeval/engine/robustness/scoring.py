"""Scoring finished scenarios (COCO stats) and writing their files: in this process, or in a pool of
spawned processes while the models run on."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from kdeval.data.corrupted import Scenario
from kdeval.engine.robustness.settings import RobustnessSettings
from kdeval.engine.robustness.store import save_scenario
from kdeval.metrics.coco_ap import coco_stats


def score_and_save(gt: dict, out_dir: Path, model: str, scenario: Scenario, key: dict, detections: list[dict]) -> dict:
    stats = coco_stats(gt, detections)
    save_scenario(out_dir, model, scenario, key, detections, stats)
    return stats


_SCORER_GT: dict = {}


def _start_scorer(gt: dict) -> None:
    _SCORER_GT["gt"] = gt  # sent once per scorer process, not with every scenario


def _score_in_scorer(out_dir: Path, model: str, scenario: Scenario, key: dict, detections: list[dict]) -> dict:
    return score_and_save(_SCORER_GT["gt"], out_dir, model, scenario, key, detections)


class ScoreHere:
    """Finished scenarios scored and written in this process, each before the models go on (on the
    CPU, where the models already use every core)."""

    def __init__(self, gt: dict):
        self.gt = gt
        self.stats: dict[tuple[str, Scenario], dict] = {}

    def submit(self, out_dir: Path, model: str, scenario: Scenario, key: dict, detections: list[dict]) -> None:
        self.stats[(model, scenario)] = score_and_save(self.gt, out_dir, model, scenario, key, detections)

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


Scoring = ScoreHere | ScenarioScorers


@contextmanager
def scenario_scoring(gt: dict, settings: RobustnessSettings):
    """Where a run scores its finished scenarios, one for the whole run: its ScenarioScorers'
    processes (settings.scorers() of them; spawning them costs seconds) or this process."""
    scoring = ScenarioScorers(gt, settings.scorers()) if settings.scorers() > 0 else ScoreHere(gt)
    try:
        yield scoring
    finally:
        scoring.stop()


def finish_scoring(scoring: Scoring) -> tuple[dict[tuple[str, Scenario], dict], float]:
    """Every scenario handed to `scoring` scored and written: their stats, and the seconds waited."""
    start = time.perf_counter()
    stats = scoring.finish()
    return stats, time.perf_counter() - start
