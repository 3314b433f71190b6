"""What a robustness run is asked to do, and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from kdeval.data.corrupted import Scenario, scenarios_of
from kdeval.engine.predict import PredictSettings
from kdeval.vocab import BENCHMARK_CORRUPTIONS, SEVERITIES


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
        Scoring and writing a COCO-sized scenario costs one core seconds, handing it over a small part
        of that (benchmarks/RESULTS.md, "Robustness: scoring a scenario"): beside a GPU, one process
        keeps the GPU from waiting for it. On the CPU, where the models already use every core,
        scoring stays in the main process."""
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
