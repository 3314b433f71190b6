"""`kdeval errors`' result: where each model loses AP, as COCO-analyze curves by object size and
the TIDE breakdown."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kdeval.metrics.analyze import ErrorCurves, ap_long_table, error_curves, supercategories
from kdeval.metrics.tide import run_tide, tide_context, tide_table
from kdeval.vocab import ANALYSIS_SETTINGS


@dataclass
class ErrorAnalysis:
    curves: dict[str, ErrorCurves]  # by model name, in the order given
    tide: object  # tidecv.TIDE with one run per model
    notes: list[str]  # things the reader should know, e.g. categories without a supercategory

    @property
    def models(self) -> list[str]:
        return list(self.curves)

    def ap(self, per_category: bool = False) -> pd.DataFrame:
        return ap_long_table(self.curves, per_category)

    def ap_by_area(self, area: str) -> pd.DataFrame:
        """Models (rows) × settings (columns), AP 0–1, for one area."""
        return pd.DataFrame({m: [c.ap(s, area) for s in ANALYSIS_SETTINGS] for m, c in self.curves.items()},
                            index=list(ANALYSIS_SETTINGS)).T

    def tide_table(self) -> pd.DataFrame:
        return tide_table(self.tide)

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


def analyze_detections(gt: dict, detections: dict[str, list[dict]]) -> ErrorAnalysis:
    """The error curves and TIDE of every model's detections."""
    _, lacking = supercategories(gt["categories"])
    notes = []
    if lacking:
        shown = ", ".join(lacking) if len(lacking) <= 6 else ", ".join(lacking[:5]) + f" and {len(lacking) - 5} more"
        notes.append(f"{len(lacking)} categories have no supercategory and count as their own for Sim: {shown}")
    curves = {name: error_curves(gt, dets) for name, dets in detections.items()}
    with tide_context():
        tide = run_tide(gt, detections)
    return ErrorAnalysis(curves, tide, notes)
