"""`kdeval robustness`'s uncertainty: clean AP (P), mPC and rPC of every model with their bootstrap
intervals and paired gains, and the AP of every scenario and every severity for the curves' error
bars, as kdeval.metrics.intervals' tidy tables.

An image resample applies to every scenario at once: it draws the dataset's images, and each drawn
image counts that many times on the clean images and under every corruption, for every model. So
on each resample every scenario's AP is computed with the same counts, and mPC (the mean over the
benchmark scenarios run) and rPC = mPC / P are taken from those, as robustness_summary takes them
from the whole dataset. Each (model, scenario) is matched once and accumulated on the whole dataset
(every count 1: the values themselves) and on every resample in one pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kdeval.metrics.bootstrap import BootstrapSettings, ResampledAP, masked_mean, resample_counts
from kdeval.metrics.coco_ap import ALL, resampled_coco
from kdeval.metrics.intervals import interval_table
from kdeval.metrics.robustness import robustness_summary
from kdeval.vocab import ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS, ROBUSTNESS_COLUMNS, SEVERITIES

ScenarioKey = tuple[str, int]  # (corruption, severity); severity 0 is the clean image
ScenarioDetections = Mapping[ScenarioKey, list]  # each scenario's COCO results, read when first asked for
BENCHMARK_MEAN = "benchmark mean"  # the curves' panel of AP averaged over the benchmark corruptions


@dataclass(frozen=True)
class RobustnessIntervals:
    """interval_table's tidy tables (value, ci_low, ci_high, gain, …; 0–1) of the models whose
    detections were given."""

    summary: pd.DataFrame  # model, metric ∈ ROBUSTNESS_COLUMNS: AP (P, on clean images), mPC, rPC
    severities: pd.DataFrame  # model, severity: 0 the clean AP; s the AP averaged over the benchmark corruptions run at s
    scenarios: pd.DataFrame  # model, corruption, severity: the AP of each scenario
    baseline: str | None
    bootstrap: BootstrapSettings


def robustness_intervals(gt: dict, detections: Mapping[str, ScenarioDetections | Sequence[ScenarioDetections]],
                         baseline: str | None, bootstrap: BootstrapSettings) -> RobustnessIntervals:
    """P, mPC and rPC (and per-severity and per-scenario AP) of each model: `detections[model]` maps
    (corruption, severity) to that scenario's detections, or is a list of such mappings, one per run.
    The resamples (bootstrap; off: values only) draw the ground truth's images in id order and are
    shared by every model and scenario, so gains over `baseline` are paired."""
    if baseline is not None and baseline not in detections:
        raise ValueError(f"baseline '{baseline}' has no detections among {', '.join(detections)}")
    runs = {model: [value] if isinstance(value, Mapping) else list(value) for model, value in detections.items()}
    scenarios = _scenario_order({key for model_runs in runs.values() for run in model_runs for key in run})
    severities = [0, *sorted({s for c, s in scenarios if c in BENCHMARK_CORRUPTIONS and s in SEVERITIES})]

    n_images = len({image["id"] for image in gt["images"]})
    whole = np.ones((1, n_images), np.int32)
    counts = np.vstack([whole, resample_counts(n_images, bootstrap.resamples, bootstrap.seed)])
    point, resampled = {}, {}
    for model, model_runs in runs.items():
        by_run = np.stack([_statistics(_scenario_aps(gt, run, scenarios, counts), scenarios, severities)
                           for run in model_runs], axis=1)  # (1 + resamples, runs, statistics)
        point[model], resampled[model] = by_run[0], by_run[1:]
    if not bootstrap.enabled:
        resampled = None

    n_summary, n_severities = len(ROBUSTNESS_COLUMNS), len(severities)
    parts = {"summary": (pd.DataFrame({"metric": list(ROBUSTNESS_COLUMNS)}), slice(0, n_summary)),
             "severities": (pd.DataFrame({"severity": severities}), slice(n_summary, n_summary + n_severities)),
             "scenarios": (pd.DataFrame(scenarios, columns=["corruption", "severity"]), slice(n_summary + n_severities, None))}
    tables = {name: interval_table(keys, {m: p[:, part] for m, p in point.items()},
                                   {m: r[:, :, part] for m, r in resampled.items()} if resampled else None,
                                   baseline, bootstrap.confidence, upper=_upper(keys))
              for name, (keys, part) in parts.items()}
    return RobustnessIntervals(**tables, baseline=baseline, bootstrap=bootstrap)


def _scenario_order(keys: set[ScenarioKey]) -> list[ScenarioKey]:
    """Clean first, then the corruptions in the benchmark's order (unknown names after), by severity."""
    rank = {name: i for i, name in enumerate(ALL_CORRUPTIONS)}
    return sorted(keys, key=lambda key: (key[1] > 0, rank.get(key[0], len(rank)), key[0], key[1]))


def _scenario_aps(gt: dict, run: ScenarioDetections, scenarios: list[ScenarioKey], counts: np.ndarray) -> np.ndarray:
    """(counts' rows, scenarios): each scenario's COCO AP under each row of counts; NaN where the run
    lacks the scenario or the images counted hold no ground truth."""
    aps = np.full((len(counts), len(scenarios)), np.nan)
    for column, key in enumerate(scenarios):
        if key in run:
            aps[:, column] = resampled_ap(resampled_coco(gt, run[key]), counts)
    return aps


def resampled_ap(resampled: ResampledAP, counts: np.ndarray) -> np.ndarray:
    """COCO AP (resampled_stats' first column) under each row of counts: (rows,), NaN without ground truth."""
    ap = _what_ap_reads(resampled).accumulate(counts)[0][:, :, :, ALL]  # (rows, IoU thresholds, categories)
    mean = masked_mean(ap, (1, 2))
    return np.where(mean > -1, mean, np.nan)


def _upper(keys: pd.DataFrame) -> np.ndarray:
    """AP and mPC lie within [0, 1]; rPC, a ratio, may exceed 1."""
    metric = keys["metric"] if "metric" in keys else pd.Series([""] * len(keys))
    return np.where(metric.to_numpy() == "rPC", np.inf, 1.0)


def _what_ap_reads(resampled: ResampledAP) -> ResampledAP:
    """The same matches cut to what AP reads, area 'all' alone: the small, medium and large areas'
    segments emptied and their ground truth removed, so that each is skipped (-1) without a visit;
    about half the accumulation."""
    n_segments = len(resampled.seg_start)
    other_area = np.arange(n_segments) % resampled.n_areas != ALL
    positives = resampled.positives_by_image.copy()
    positives[:, other_area] = 0.0  # positives_by_image's columns follow the segments' (category, area) order
    seg_end = np.where(other_area, resampled.seg_start, resampled.seg_end)
    return dataclasses.replace(resampled, seg_end=seg_end, positives_by_image=positives)


def _statistics(aps: np.ndarray, scenarios: list[ScenarioKey], severities: list[int]) -> np.ndarray:
    """Per row of `aps` (rows, scenarios): P, mPC, rPC, then the AP at each of `severities` (0: P;
    otherwise the mean over the benchmark corruptions at that severity), then each scenario's AP."""
    corruption = np.array([c for c, _ in scenarios], dtype=object)
    severity = np.array([s for _, s in scenarios])
    benchmark = np.isin(corruption, BENCHMARK_CORRUPTIONS) & np.isin(severity, SEVERITIES)
    clean = _row_mean(aps, severity == 0)
    mpc = _row_mean(aps, benchmark)
    with np.errstate(invalid="ignore", divide="ignore"):
        rpc = np.where(clean > 0, mpc / clean, np.nan)
    by_severity = [clean if s == 0 else _row_mean(aps, benchmark & (severity == s)) for s in severities]
    return np.column_stack([clean, mpc, rpc, *by_severity, aps])


def _row_mean(values: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """The mean of the chosen columns in each row, skipping NaN; NaN where none has a value."""
    chosen = values[:, columns]
    valid = ~np.isnan(chosen)
    total = np.where(valid, chosen, 0.0).sum(axis=1)
    count = valid.sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def summary_intervals(table: pd.DataFrame, intervals: RobustnessIntervals | None, baseline: str | None) -> pd.DataFrame:
    """The summary interval table of every model in the tidy `table`: the rows of `intervals` for the
    models it holds, and for the others (imported results, whose detections are not at hand) the
    values of robustness_summary without intervals. A gain is the value less the baseline's; its
    interval is there only when both have resamples (the baseline is that of `intervals`)."""
    summary = robustness_summary(table)
    keys = pd.DataFrame({"metric": list(ROBUSTNESS_COLUMNS)})
    point = {model: summary.loc[[model], list(ROBUSTNESS_COLUMNS)].to_numpy(float) for model in summary.index}
    plain = interval_table(keys, point, None, baseline).set_index(["model", "metric"])
    if intervals is None:
        return plain.reset_index()
    own = intervals.summary.set_index(["model", "metric"])
    paired = intervals.baseline == baseline  # else (an imported baseline) the gains are the values' differences
    kept = [c for c in own.columns if paired or not (c.startswith("gain") or c == "p_gain_le_0")]
    plain.loc[own.index, kept] = own[kept]
    return plain.reset_index()
