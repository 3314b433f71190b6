"""Point estimates, runs and bootstrap resamples → one tidy table of values, intervals and gains.

Every analysis gives, per model, its statistics on the whole dataset for each run (training seed)
and, when the bootstrap is on, on each image resample for each run, the same resamples for every
model. From those:

    value          mean over runs of the statistic on the whole dataset
    std_over_runs  their sample standard deviation (empty for one run)
    ci_low/high    basic bootstrap interval of the run-mean: 2·value − the upper and lower
                   percentiles of its resampled values
    gain           value − the baseline's value
    gain_ci_*      percentile interval of the paired difference of run-means over the resamples
    p_gain_le_0    share of resamples where that difference is ≤ 0 (one-sided bootstrap p-value)

Why two kinds of interval. AP on a resample is biased upwards: a true positive drawn twice is a
run of two in the precision–recall curve, and interpolated precision takes the higher end of
every run, so resampled APs centre above the dataset's AP, often by more than the interval's
half-width (on 5,000 generated images: 9.52 against resampled 9.64–10.00). Their percentile
interval then misses the value it is about; the basic interval reflects the bias back and covered
the AP of a 20,000-image draw in 38–39 of 40 trials on 100 to 1,000 images, where the percentile
interval covered it in 7–9 (tests/test_bootstrap.py's generator). A gain is a difference of two such biased numbers on
the same resamples, the bias cancels, and its percentile interval covered a true zero in 92–96
of 100 draws for every stat, so gains keep the percentile interval the bootstrap p-value agrees
with.

COCOeval's -1 (no ground truth in a range, or in a resample) is no value: empty in the table and
left out of the percentiles. A pure function of arrays; no files.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

INTERVAL_COLUMNS = ("value", "ci_low", "ci_high", "gain", "gain_ci_low", "gain_ci_high", "p_gain_le_0", "runs",
                    "std_over_runs")


def _as_values(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array, dtype=float)
    return np.where(array > -1, array, np.nan)


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0, NaN-aware; NaN where no resample has a value."""
    tail = 100 * (1 - confidence) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no ground truth in any resample
        low, high = np.nanpercentile(samples, [tail, 100 - tail], axis=0)
    return low, high


def interval_table(keys: pd.DataFrame, point: dict[str, np.ndarray], resampled: dict[str, np.ndarray] | None,
                   baseline: str | None, confidence: float = 0.95, upper: float | np.ndarray = 1.0) -> pd.DataFrame:
    """One row per (model, key row): `keys`' columns, then INTERVAL_COLUMNS.

    point[model]: (runs, statistics), the whole dataset; resampled[model]: (resamples, runs,
    statistics), the same resamples, in the same order, for every model (None: no bootstrap). The
    statistics are `keys`' rows, in order. -1 means 'no value'.

    A value's interval is kept within [0, upper] (per statistic, or one for all): the basic interval
    reflects the resampled values about the value and can step outside the range a statistic has
    (an AP below 0 on a small set); every statistic here is ≥ 0, and AP-like ones ≤ 1."""
    frames = []
    base_point = _as_values(point[baseline]).mean(axis=0) if baseline is not None else None
    base_resampled = _as_values(resampled[baseline]).mean(axis=1) if baseline is not None and resampled else None
    for model, runs in point.items():
        runs = _as_values(runs)
        if runs.shape[1] != len(keys):
            raise ValueError(f"{model}: {runs.shape[1]} statistics for {len(keys)} keys")
        frame = keys.reset_index(drop=True).copy()
        frame.insert(0, "model", model)
        value = runs.mean(axis=0)
        frame["value"] = value
        frame["ci_low"] = frame["ci_high"] = np.nan
        frame["gain"] = frame["gain_ci_low"] = frame["gain_ci_high"] = frame["p_gain_le_0"] = np.nan
        if resampled:
            means = _as_values(resampled[model]).mean(axis=1)  # (resamples, statistics)
            low, high = _percentiles(means, confidence)
            top = np.broadcast_to(np.asarray(upper, dtype=float), value.shape)
            frame["ci_low"] = np.clip(2 * value - high, 0.0, top)  # the basic interval, within the statistic's range
            frame["ci_high"] = np.clip(2 * value - low, 0.0, top)
        if baseline is not None and model != baseline:
            frame["gain"] = value - base_point
            if resampled:
                difference = means - base_resampled
                frame["gain_ci_low"], frame["gain_ci_high"] = _percentiles(difference, confidence)
                valid = ~np.isnan(difference)
                with np.errstate(invalid="ignore"):
                    frame["p_gain_le_0"] = np.where(valid.any(axis=0), (valid & (difference <= 0)).sum(axis=0)
                                                    / np.maximum(valid.sum(axis=0), 1), np.nan)
        frame["runs"] = runs.shape[0]
        frame["std_over_runs"] = runs.std(axis=0, ddof=1) if runs.shape[0] > 1 else np.nan
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def gain_excludes_zero(row) -> bool:
    """The gain's interval lies wholly above or below 0."""
    low, high = row["gain_ci_low"], row["gain_ci_high"]
    return bool(np.isfinite(low) and np.isfinite(high) and (low > 0 or high < 0))
