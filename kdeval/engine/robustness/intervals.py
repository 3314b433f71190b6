"""A run's intervals (kdeval.analysis.robustness) from the detections its folder keeps: nothing runs a
model and the run's books are left as they are, so bootstrap settings never make a scenario run again."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from kdeval.analysis.robustness import RobustnessIntervals, ScenarioKey, robustness_intervals
from kdeval.data.coco import load_coco_annotations
from kdeval.data.corrupted import Scenario
from kdeval.data.source import Split
from kdeval.engine.robustness.run import select_images
from kdeval.engine.robustness.settings import RobustnessSettings
from kdeval.engine.robustness.store import stored_detections
from kdeval.metrics.bootstrap import BootstrapSettings


class StoredScenarios(Mapping):
    """(corruption, severity) → one model's detections of that finished scenario, read from the folder
    when asked for, so that one scenario's detections at a time are held in memory."""

    def __init__(self, out_dir: Path, model: str, scenarios: list[Scenario]):
        self.out_dir = Path(out_dir)
        self.model = model
        self.scenarios = {(scenario.corruption, scenario.severity): scenario for scenario in scenarios}

    def __getitem__(self, key: ScenarioKey) -> list[dict]:
        return stored_detections(self.out_dir, self.model, self.scenarios[key])

    def __contains__(self, key) -> bool:  # Mapping's own would read the file to answer
        return key in self.scenarios

    def __iter__(self) -> Iterator[ScenarioKey]:
        return iter(self.scenarios)

    def __len__(self) -> int:
        return len(self.scenarios)


def run_intervals(out_dir: Path, split: Split, settings: RobustnessSettings, models: list[str], baseline: str | None,
                  bootstrap: BootstrapSettings) -> RobustnessIntervals | None:
    """The intervals of `models`, each over the scenarios of `settings`, all finished in `out_dir`, on
    the images the run scored; None with the bootstrap off. A baseline that is not among them (an
    imported model) pairs nothing."""
    if not bootstrap.enabled:
        return None
    gt = select_images(load_coco_annotations(split.annotations), settings.max_images)
    detections = {model: StoredScenarios(out_dir, model, settings.scenarios) for model in models}
    return robustness_intervals(gt, detections, baseline if baseline in models else None, bootstrap)
