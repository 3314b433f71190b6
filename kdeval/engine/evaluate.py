"""Score models side by side: checkpoints or COCO results JSON files → a table of COCO stats."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kdeval.data.coco import load_coco_annotations, load_results
from kdeval.data.source import Split
from kdeval.engine.predict import PredictSettings, cached_predict
from kdeval.errors import KdevalError
from kdeval.fileio import write_json_atomic
from kdeval.metrics.coco_ap import coco_stats
from kdeval.report.tables import write_tables
from kdeval.vocab import TABLE_METRICS

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


@dataclass(frozen=True)
class ModelInput:
    """A model on the command line: `path` or `name=path`; a checkpoint or a COCO results JSON."""

    name: str
    path: Path

    @classmethod
    def parse(cls, text: str) -> "ModelInput":
        name, sep, path = text.partition("=")
        if not sep:
            path, name = text, Path(text).stem
        if not name or not path:
            raise KdevalError(f"'{text}': expected PATH or NAME=PATH")
        return cls(name, Path(path))

    @property
    def is_results_json(self) -> bool:
        return self.path.suffix.lower() == ".json"


def parse_models(texts: list[str]) -> list[ModelInput]:
    models = [ModelInput.parse(text) for text in texts]
    names = [m.name for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise KdevalError(f"model names must differ, '{duplicates[0]}' appears twice (use NAME=PATH)")
    for model in models:
        if not model.path.is_file():
            raise KdevalError(f"{model.path}: model file not found")
        if not model.is_results_json and model.path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise KdevalError(f"{model.path}: expected a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}) or a COCO results .json")
    return models


def detections_of(model: ModelInput, split: Split, gt: dict, settings: PredictSettings, progress: bool = True) -> list[dict]:
    if model.is_results_json:
        return load_results(model.path, gt)
    split.require_images()
    return cached_predict(model.path, split, settings, progress=progress)


def resolve_baseline(models: list[ModelInput], baseline: str | None) -> str | None:
    names = [m.name for m in models]
    if baseline is not None and baseline not in names:
        raise KdevalError(f"--baseline '{baseline}' is not one of the models ({', '.join(names)})")
    return baseline


def evaluate_models(
    models: list[ModelInput], split: Split, settings: PredictSettings = PredictSettings(), progress: bool = True
) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """(table of the paper's six metrics, all 12 COCO stats per model); values 0–1."""
    gt = load_coco_annotations(split.annotations)
    stats = {}
    for model in models:
        stats[model.name] = coco_stats(gt, detections_of(model, split, gt, settings, progress))
    table = pd.DataFrame.from_dict(stats, orient="index")[list(TABLE_METRICS)]
    return table, stats


def write_evaluation(table: pd.DataFrame, stats: dict, out_dir: Path, baseline: str | None, split: Split) -> list[Path]:
    paths = write_tables(table, out_dir, "ap_table", baseline, caption=f"COCO bbox AP on {split.name}")
    paths.append(write_json_atomic(Path(out_dir) / "coco_stats.json", {"annotations": str(split.annotations), "stats": stats}))
    return paths
