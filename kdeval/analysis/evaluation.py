"""`kdeval evaluate`'s result: the COCO stats of every model, and optionally of every category."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from kdeval.metrics.coco_ap import coco_stats, per_category_stats
from kdeval.vocab import TABLE_METRICS


@dataclass(frozen=True)
class Evaluation:
    """COCO bbox stats of models on one dataset; values 0–1, -1 where COCOeval has no ground truth."""

    stats: dict[str, dict[str, float]]  # by model, in the order given: all 12 COCO stats
    per_class: dict[str, pd.DataFrame] | None = None  # by model: per_category_stats, when asked for

    @property
    def table(self) -> pd.DataFrame:
        """Models (rows) × the paper's six metrics (columns)."""
        return pd.DataFrame.from_dict(self.stats, orient="index")[list(TABLE_METRICS)]


def evaluate_detections(gt: dict, detections: dict[str, list[dict]], per_class: bool = False) -> Evaluation:
    """The 12 COCO stats of each model's detections and, with `per_class`, each category's six."""
    stats = {name: coco_stats(gt, found) for name, found in detections.items()}
    tables = {name: per_category_stats(gt, found) for name, found in detections.items()} if per_class else None
    return Evaluation(stats, tables)


def per_class_long(per_class: dict[str, pd.DataFrame], baseline: str | None) -> pd.DataFrame:
    """Tidy: category_id, category, model, metric, value (0–1; empty where COCOeval gives -1, no ground
    truth of the category in that size range), gain over the baseline."""
    rows = []
    for model, table in per_class.items():
        for category_id, row in table.iterrows():
            for metric in TABLE_METRICS:
                value = float(row[metric])
                gain = float("nan")
                if baseline is not None and model != baseline:
                    base = float(per_class[baseline].loc[category_id, metric])
                    gain = value - base if value >= 0 and base >= 0 else float("nan")
                rows.append({"category_id": category_id, "category": row["category"], "model": model,
                             "metric": metric, "value": value if value >= 0 else float("nan"), "gain": gain})
    return pd.DataFrame(rows)
