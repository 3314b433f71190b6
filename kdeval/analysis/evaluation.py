"""`kdeval evaluate`'s result: the COCO stats of every model, and optionally of every category,
with their intervals and gains (kdeval.metrics.intervals)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kdeval.analysis.runs import as_runs, resamples_of
from kdeval.metrics.bootstrap import BootstrapSettings
from kdeval.metrics.coco_ap import coco_stats, per_category_stats, resampled_coco, resampled_stats
from kdeval.metrics.intervals import interval_table
from kdeval.vocab import COCO_STAT_NAMES, TABLE_METRICS


@dataclass(frozen=True)
class Evaluation:
    """COCO bbox stats of models on one dataset; values 0–1, -1 where COCOeval has no ground truth."""

    stats: dict[str, dict[str, float]]  # by model, in the order given: all 12 COCO stats, mean over runs
    per_class: dict[str, pd.DataFrame] | None = None  # by model: per_category_stats (mean over runs), when asked for
    intervals: pd.DataFrame | None = None  # interval_table of the 12 stats: model, metric, value, ci_low, …
    per_class_intervals: pd.DataFrame | None = None  # the same per category: model, category_id, category, metric, …
    baseline: str | None = None
    bootstrap: BootstrapSettings | None = None

    @property
    def table(self) -> pd.DataFrame:
        """Models (rows) × the paper's six metrics (columns)."""
        return pd.DataFrame.from_dict(self.stats, orient="index")[list(TABLE_METRICS)]

    @property
    def has_intervals(self) -> bool:
        return self.bootstrap is not None and self.bootstrap.enabled


def evaluate_detections(gt: dict, detections: Mapping[str, list], per_class: bool = False, baseline: str | None = None,
                        bootstrap: BootstrapSettings | None = None) -> Evaluation:
    """The 12 COCO stats of each model's detections (one list, or a list per run) and, with
    `per_class`, each category's six; with `bootstrap`, their intervals over image resamples
    shared by every model, and of the gains over `baseline`."""
    runs = as_runs(detections)
    point = {name: np.array([list(coco_stats(gt, run).values()) for run in model_runs]) for name, model_runs in runs.items()}
    stats = {name: dict(zip(COCO_STAT_NAMES, _mean_keeping_missing(values))) for name, values in point.items()}
    counts = resamples_of(gt, bootstrap)
    matched = {name: [resampled_coco(gt, run) for run in model_runs] for name, model_runs in runs.items()} if counts is not None else None
    resampled = None
    if matched is not None:
        resampled = {name: np.stack([resampled_stats(m, counts) for m in ms], axis=1) for name, ms in matched.items()}
    confidence = bootstrap.confidence if bootstrap else 0.95
    intervals = interval_table(pd.DataFrame({"metric": COCO_STAT_NAMES}), point, resampled, baseline, confidence)

    tables = per_class_intervals = None
    if per_class:
        by_run = {name: [per_category_stats(gt, run) for run in model_runs] for name, model_runs in runs.items()}
        first = next(iter(by_run.values()))[0]
        keys = pd.DataFrame([(category_id, first.loc[category_id, "category"], metric)
                             for category_id in first.index for metric in TABLE_METRICS],
                            columns=["category_id", "category", "metric"])
        class_point = {name: np.stack([t[list(TABLE_METRICS)].to_numpy(float).ravel() for t in tables_]) for name, tables_ in by_run.items()}
        class_resampled = None
        if matched is not None:
            class_resampled = {name: np.stack([resampled_stats(m, counts, per_category=True).reshape(len(counts), -1) for m in ms], axis=1)
                               for name, ms in matched.items()}
        per_class_intervals = interval_table(keys, class_point, class_resampled, baseline, confidence)
        tables = {}
        for name, tables_ in by_run.items():
            mean = tables_[0].copy()
            mean[list(TABLE_METRICS)] = _mean_keeping_missing(np.stack([t[list(TABLE_METRICS)].to_numpy(float) for t in tables_]))
            tables[name] = mean
    return Evaluation(stats, tables, intervals, per_class_intervals, baseline, bootstrap)


def _mean_keeping_missing(values: np.ndarray) -> np.ndarray:
    """Mean over runs (axis 0); -1 (COCOeval's 'no ground truth') stays -1."""
    values = np.asarray(values, dtype=float)
    return np.where((values > -1).all(axis=0), values.mean(axis=0), -1.0)
