"""`kdeval errors`' result: where each model loses AP, as COCO-analyze curves by object size and
the TIDE breakdown, with intervals and gains over the baseline (kdeval.metrics.intervals)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from kdeval.analysis.runs import as_runs, resamples_of
from kdeval.metrics.analyze import (
    ErrorCurves,
    ap_long_table,
    error_curves,
    error_curves_and_resampled,
    resampled_error_aps,
    supercategories,
)
from kdeval.metrics.bootstrap import BootstrapSettings
from kdeval.metrics.detection_columns import DetectionColumns, detection_columns
from kdeval.metrics.intervals import interval_table
from kdeval.metrics.tide_errors import BREAKDOWN_KEYS, resampled_tide, resampled_tide_breakdown
from kdeval.vocab import ANALYSIS_SETTINGS, AREA_RANGES


@dataclass
class ErrorAnalysis:
    curves: dict[str, ErrorCurves]  # by model name, in the order given; precision averaged over runs
    tide_intervals: pd.DataFrame  # interval_table keyed by averaging ('coco', 'tidecv') and metric (BREAKDOWN_KEYS)
    notes: list[str]  # things the reader should know, e.g. categories without a supercategory
    ap_intervals: pd.DataFrame | None = None  # interval_table keyed by area, setting
    baseline: str | None = None
    bootstrap: BootstrapSettings | None = None

    @property
    def models(self) -> list[str]:
        return list(self.curves)

    def ap(self, per_category: bool = False) -> pd.DataFrame:
        return ap_long_table(self.curves, per_category)

    def ap_by_area(self, area: str) -> pd.DataFrame:
        """Models (rows) × settings (columns), AP 0–1, for one area."""
        return pd.DataFrame({m: [c.ap(s, area) for s in ANALYSIS_SETTINGS] for m, c in self.curves.items()},
                            index=list(ANALYSIS_SETTINGS)).T

    def tide_table(self, averaging: str = "coco") -> pd.DataFrame:
        """Models (rows) × AP50 and the dAP of each TIDE error (columns), fractions; the mean over runs."""
        rows = self.tide_intervals[self.tide_intervals["averaging"] == averaging]
        return rows.pivot(index="model", columns="metric", values="value").loc[self.models, list(BREAKDOWN_KEYS)]

    def coco_tide_intervals(self) -> pd.DataFrame:
        """The TIDE rows averaged as pycocotools averages (over the classes with ground truth)."""
        return self.tide_intervals[self.tide_intervals["averaging"] == "coco"].drop(columns="averaging")

    def ap_with_change(self, baseline: str | None) -> pd.DataFrame:
        """ap() with, given a baseline, `change_vs_baseline`: (AP − the baseline's) / the baseline's, for
        the same area and setting; empty where the baseline's AP is 0 or either has no ground truth."""
        ap = self.ap()
        relative = ap.copy()
        if baseline is not None:
            base = ap[ap["model"] == baseline].set_index(["area", "setting"])["AP"]
            reference = base.reindex(pd.MultiIndex.from_frame(ap[["area", "setting"]])).to_numpy()
            valid = (reference > 0) & (ap["AP"].to_numpy() >= 0)
            change = (ap["AP"].to_numpy() - reference) / np.where(valid, reference, 1.0)
            relative["change_vs_baseline"] = np.where(valid, change, np.nan)
        return relative


AP_KEYS = pd.DataFrame([(area, setting) for area in AREA_RANGES for setting in ANALYSIS_SETTINGS], columns=["area", "setting"])


def runs_as_columns(detections: Mapping[str, list | DetectionColumns]) -> dict[str, list[DetectionColumns]]:
    """Every model's runs (its value: one run, or a list of runs; a run: COCO detections or their
    columns), each turned into arrays once, for the curves and TIDE alike."""
    runs = {}
    for name, value in detections.items():
        if isinstance(value, DetectionColumns):
            value = [value]
        model_runs = value if value and isinstance(value[0], DetectionColumns) else as_runs({name: value})[name]
        runs[name] = [detection_columns(run) for run in model_runs]
    return runs


def analyze_detections(gt: dict, detections: Mapping[str, list | DetectionColumns], baseline: str | None = None,
                       bootstrap: BootstrapSettings | None = None) -> ErrorAnalysis:
    """The error curves and TIDE of every model's detections (one run, or a list of runs; see
    runs_as_columns); with `bootstrap`, the intervals of every COCO-analyze AP and of its gain over
    `baseline`."""
    _, lacking = supercategories(gt["categories"])
    notes = []
    if lacking:
        shown = ", ".join(lacking) if len(lacking) <= 6 else ", ".join(lacking[:5]) + f" and {len(lacking) - 5} more"
        notes.append(f"{len(lacking)} categories have no supercategory and count as their own for Sim: {shown}")
    runs = runs_as_columns(detections)
    counts = resamples_of(gt, bootstrap)
    curves_by_run, resampled = {}, None
    if counts is None:
        curves_by_run = {name: [error_curves(gt, run) for run in model_runs] for name, model_runs in runs.items()}
    else:
        resampled = {}
        for name, model_runs in runs.items():
            # one matching per run serves the curves and their resamples
            both = [error_curves_and_resampled(gt, run) for run in model_runs]
            curves_by_run[name] = [run_curves for run_curves, _ in both]
            # (resamples, settings, areas) per run → (resamples, runs, areas × settings), AP_KEYS' order
            resampled[name] = np.stack([resampled_error_aps(run_resampled, counts).transpose(0, 2, 1).reshape(len(counts), -1)
                                        for _, run_resampled in both], axis=1)
    curves = {name: _mean_curves(by_run) for name, by_run in curves_by_run.items()}
    point = {name: np.stack([c.ap_table().T.to_numpy().ravel() for c in by_run]) for name, by_run in curves_by_run.items()}
    confidence = bootstrap.confidence if bootstrap else 0.95
    intervals = interval_table(AP_KEYS, point, resampled, baseline, confidence)
    return ErrorAnalysis(curves, _tide_intervals(gt, runs, counts, baseline, confidence), notes, intervals, baseline, bootstrap)


TIDE_KEYS = pd.DataFrame({"metric": BREAKDOWN_KEYS})


def _tide_intervals(gt: dict, runs: dict[str, list], counts: np.ndarray | None, baseline: str | None,
                    confidence: float) -> pd.DataFrame:
    """TIDE's AP50 and dAPs (kdeval.metrics.tide_errors) per model: averaged over the classes with
    ground truth as pycocotools does, with intervals; and as tidecv averages them (its issue #28), the
    values alone, for comparison with tidecv's own numbers."""
    matched = {name: [resampled_tide(gt, run) for run in model_runs] for name, model_runs in runs.items()}
    frames = []
    for averaging in ("coco", "tidecv"):
        point = {name: np.array([_breakdown_row(m, averaging) for m in ms]) for name, ms in matched.items()}
        resampled = None
        if counts is not None and averaging == "coco":
            resampled = {name: np.stack([resampled_tide_breakdown(m, counts, averaging) for m in ms], axis=1)
                         for name, ms in matched.items()}
        frame = interval_table(TIDE_KEYS, point, resampled, baseline, confidence)
        frame.insert(1, "averaging", averaging)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _breakdown_row(tide, averaging: str) -> list[float]:
    """A run's AP50 and dAPs in BREAKDOWN_KEYS' order, from one breakdown (each walks every class's
    detections)."""
    breakdown = tide.breakdown(averaging)
    return [breakdown[key] for key in BREAKDOWN_KEYS]


def _mean_curves(by_run: list[ErrorCurves]) -> ErrorCurves:
    """The precision averaged over runs, entry by entry (its AP is the mean of the runs' APs);
    -1 (no ground truth) stays -1."""
    if len(by_run) == 1:
        return by_run[0]
    stack = np.stack([c.precision for c in by_run])
    return replace(by_run[0], precision=np.where((stack > -1).all(axis=0), stack.mean(axis=0), -1.0))
