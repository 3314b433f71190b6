"""mPC and rPC (Michaelis et al. 2019) from a tidy table of per-scenario COCO metrics: pure functions.

A tidy table has the columns model, corruption, severity, metric, value, one row per
(model, corruption, severity, metric), values 0–1 as COCOeval gives them (-1: no ground truth in
that range). Severity 0 is the clean image; its rows may be filed under `vocab.CLEAN` (as kdeval
writes them) or repeated under every corruption name (as the benchmark's own files and
mmdetection's robustness_eval do) — both read the same here.

    P    = metric at severity 0
    mPC  = mean metric over the 15 benchmark corruptions × severities 1–5 (never the 4 extras)
    rPC  = mPC / P
When only some benchmark scenarios were run, mPC is the mean over those that were, and the
`scenarios` column of the summary says how many of the 75 that is.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kdeval.vocab import ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS, ROBUSTNESS_TIDY_COLUMNS, SEVERITIES

BENCHMARK_SCENARIOS = len(BENCHMARK_CORRUPTIONS) * len(SEVERITIES)


def check_tidy(table: pd.DataFrame) -> None:
    """Raise ValueError for a table that is not tidy: a missing column, a severity outside 0–5,
    or two values for one (model, corruption, severity, metric)."""
    missing = [c for c in ROBUSTNESS_TIDY_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"tidy robustness table lacks column(s) {', '.join(missing)}")
    bad = sorted(set(table["severity"]) - {0, *SEVERITIES})
    if bad:
        raise ValueError(f"severities must be 0–5, got {bad}")
    if table.duplicated(list(ROBUSTNESS_TIDY_COLUMNS[:4])).any():
        raise ValueError("tidy robustness table has two values for one (model, corruption, severity, metric)")


def _values(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    check_tidy(table)
    rows = table[table["metric"] == metric].copy()
    # COCOeval's -1 (no ground truth in the range) is not a score: leave it out of every mean
    rows["value"] = rows["value"].astype(float).where(rows["value"] >= 0)
    return rows


def _models(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(table["model"]))  # first-seen order, as the models were given


def clean_scores(table: pd.DataFrame, metric: str = "AP") -> pd.Series:
    """P per model: the metric on clean images (severity 0), NaN where no clean row exists."""
    rows = _values(table, metric)
    clean = rows[rows["severity"] == 0].groupby("model", sort=False)["value"].mean()
    return clean.reindex(_models(table))


def benchmark_rows(table: pd.DataFrame, metric: str = "AP") -> pd.DataFrame:
    """The rows that enter mPC: the 15 benchmark corruptions at severities 1–5, never the extras."""
    rows = _values(table, metric)
    return rows[rows["corruption"].isin(BENCHMARK_CORRUPTIONS) & rows["severity"].isin(SEVERITIES)]


def robustness_summary(table: pd.DataFrame, metric: str = "AP") -> pd.DataFrame:
    """Per model: AP (P, clean), mPC, rPC (0–1, a ratio) and `scenarios`, how many of the 75
    benchmark scenarios the mPC averages (75: the full benchmark; fewer: a partial mPC)."""
    rows = benchmark_rows(table, metric)
    models = _models(table)
    clean = clean_scores(table, metric)
    mpc = rows.groupby("model", sort=False)["value"].mean().reindex(models)
    scenarios = rows.dropna(subset=["value"]).groupby("model", sort=False).size().reindex(models, fill_value=0)
    summary = pd.DataFrame({"AP": clean, "mPC": mpc, "rPC": mpc / clean.where(clean > 0), "scenarios": scenarios})
    summary.index.name = "model"
    return summary


def corruption_means(table: pd.DataFrame, metric: str = "AP") -> pd.DataFrame:
    """Model × corruption: the metric averaged over the corrupted severities that were run
    (benchmark corruptions first, then extras, each in the benchmark's order)."""
    rows = _values(table, metric)
    rows = rows[rows["severity"] > 0]
    means = rows.pivot_table(index="model", columns="corruption", values="value", aggfunc="mean", sort=False)
    order = [c for c in ALL_CORRUPTIONS if c in means.columns] + sorted(set(means.columns) - set(ALL_CORRUPTIONS))
    return means.reindex(index=[m for m in _models(table) if m in means.index], columns=order)


def severity_grid(table: pd.DataFrame, model: str, metric: str = "AP") -> pd.DataFrame:
    """Corruption × severity (0–5) of one model; severity 0 is its clean score on every row,
    NaN marks a scenario that was not run."""
    rows = _values(table, metric)
    rows = rows[rows["model"] == model]
    corrupted = rows[rows["severity"] > 0]
    grid = corrupted.pivot_table(index="corruption", columns="severity", values="value", aggfunc="mean")
    order = [c for c in ALL_CORRUPTIONS if c in grid.index] + sorted(set(grid.index) - set(ALL_CORRUPTIONS))
    grid = grid.reindex(index=order, columns=[0, *SEVERITIES])
    clean = rows.loc[rows["severity"] == 0, "value"]
    grid[0] = clean.mean() if len(clean) else np.nan
    grid.columns.name = "severity"
    return grid


def benchmark_severity_means(table: pd.DataFrame, metric: str = "AP") -> pd.DataFrame:
    """Model × severity: at 0 the clean score, at each corrupted severity run the metric averaged over
    the benchmark corruptions run at it (the mean of these over severities 1–5 is mPC)."""
    rows = benchmark_rows(table, metric)
    means = rows.pivot_table(index="model", columns="severity", values="value", aggfunc="mean", sort=False)
    means = means.reindex(index=_models(table), columns=sorted(means.columns))
    means.insert(0, 0, clean_scores(table, metric))
    means.columns.name = "severity"
    return means


def gains_over(summary: pd.DataFrame, baseline: str, columns) -> pd.DataFrame:
    """`<column>_gain` for each of `columns`: each row's value less the baseline row's."""
    return pd.DataFrame({f"{column}_gain": summary[column] - summary.loc[baseline, column] for column in columns},
                        index=summary.index)
