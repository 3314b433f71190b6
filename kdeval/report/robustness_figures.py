"""Robustness figures from a tidy table (model, corruption, severity, metric, value): each function
returns a matplotlib Figure and changes no global state; saving is the caller's business."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from kdeval.analysis.robustness import BENCHMARK_MEAN
from kdeval.metrics.robustness import benchmark_severity_means, check_tidy, severity_grid
from kdeval.vocab import ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS, EXTRA_CORRUPTIONS, SEVERITIES

SEVERITY_AXIS = (0, *SEVERITIES)


def _corruptions(table: pd.DataFrame) -> list[str]:
    present = set(table.loc[table["severity"] > 0, "corruption"])
    return [c for c in ALL_CORRUPTIONS if c in present] + sorted(present - set(ALL_CORRUPTIONS))


def _title(corruption: str) -> str:
    return corruption.replace("_", " ") + (" (extra)" if corruption in EXTRA_CORRUPTIONS else "")


def _models(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(table["model"]))


def severity_curves(table: pd.DataFrame, metric: str = "AP", columns: int = 5, intervals: pd.DataFrame | None = None,
                    note: str | None = None) -> Figure:
    """Small multiples, one panel per corruption: `metric` (×100) against severity, clean at 0,
    one line per model; panels share the y axis so corruptions compare at a glance.

    `intervals` (tidy: model, corruption, severity, value, ci_low, ci_high, 0–1) give a model's
    points error bars; its rows under BENCHMARK_MEAN add a first panel, the metric averaged over the
    benchmark corruptions at each severity. The models' points then sit side by side at each
    severity, so that their bars do not hide one another. `note` (what the bars are) heads the legend."""
    check_tidy(table)
    corruptions = _corruptions(table)
    models = _models(table)
    columns = max(1, min(columns, len(corruptions)))
    means = benchmark_severity_means(table, metric) if intervals is not None else None
    if means is not None and (intervals["corruption"] == BENCHMARK_MEAN).any() and means.shape[1] > 1:
        corruptions = [BENCHMARK_MEAN, *corruptions]
        columns = min(columns, len(corruptions))
        if columns > 2 and len(corruptions) % columns and len(corruptions) % (columns - 1) == 0:
            columns -= 1  # the benchmark's 15 and their mean: four rows of four, not a fourth row of one
    rows = max(1, math.ceil(len(corruptions) / columns))
    figure = Figure(figsize=(2.5 * columns + 0.4, 2.1 * rows + 0.7 + (0.2 if note else 0.0)), layout="constrained")
    axes = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    grids = {model: severity_grid(table, model, metric) for model in models}
    top = max((np.nanmax(g.to_numpy()) for g in grids.values() if np.isfinite(g.to_numpy()).any()), default=0.0)
    if intervals is not None and intervals["ci_high"].notna().any():
        top = max(top, float(intervals["ci_high"].max()))
    for panel, corruption in zip(axes.flat, corruptions):
        for number, model in enumerate(models):
            if corruption == BENCHMARK_MEAN:
                values = means.loc[model] if model in means.index else pd.Series(np.nan, index=list(SEVERITY_AXIS))
            else:
                grid = grids[model]
                values = grid.loc[corruption] if corruption in grid.index else pd.Series(np.nan, index=list(SEVERITY_AXIS))
            values = values.dropna()  # severities not run: the line joins the ones that were
            offset = 0.0 if intervals is None else 0.09 * (number - (len(models) - 1) / 2)
            x = values.index.to_numpy(dtype=float) + offset
            panel.plot(x, 100 * values.to_numpy(dtype=float), marker="o", markersize=3, color=f"C{number}", label=model)
            bars = _bars(intervals, model, corruption, values.index)
            if bars is not None:
                panel.vlines(x, 100 * bars[0], 100 * bars[1], color=f"C{number}", linewidth=0.9)
        mean_panel = corruption == BENCHMARK_MEAN
        panel.set_title(_mean_title(table) if mean_panel else _title(corruption), fontsize=9,
                        fontweight="bold" if mean_panel else "normal")
        panel.grid(alpha=0.3)
    for panel in axes.flat[len(corruptions):]:
        panel.set_visible(False)
    for panel in axes[:, 0]:
        panel.set_ylabel(f"{metric} (%)")
    for column in range(columns):
        # the lowest visible panel of each column carries the x labels
        lowest = max(r for r in range(rows) if r * columns + column < max(1, len(corruptions)))
        axes[lowest, column].set_xlabel("severity")
        axes[lowest, column].xaxis.set_tick_params(labelbottom=True)
    axes[0, 0].set_xticks(SEVERITY_AXIS, ["0"] + [str(s) for s in SEVERITIES])
    axes[0, 0].set_ylim(0, max(1.0, 100 * top * 1.08))
    figure.suptitle(f"{metric} against corruption severity (0 = clean)", fontsize=11)
    if models:
        handles, labels = axes.flat[0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside lower center", ncols=min(len(models), 6), fontsize=9, frameon=False,
                      title=note, title_fontsize=8)
    return figure


def _bars(intervals: pd.DataFrame | None, model: str, corruption: str, severities: pd.Index):
    """(low, high) of `model`'s intervals at `severities` in one panel, NaN where there is none; None
    without any."""
    if intervals is None:
        return None
    rows = intervals[(intervals["model"] == model) & (intervals["corruption"] == corruption)].set_index("severity")
    if corruption != BENCHMARK_MEAN and 0 not in rows.index:
        # a corruption's panel starts at the clean images, whose interval is filed under severity 0 of the mean
        rows = pd.concat([rows, intervals[(intervals["model"] == model) & (intervals["corruption"] == BENCHMARK_MEAN)
                                          & (intervals["severity"] == 0)].set_index("severity")])
    if rows.empty:
        return None
    rows = rows.reindex(severities)
    return rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float)


def _mean_title(table: pd.DataFrame) -> str:
    run = set(table.loc[table["severity"] > 0, "corruption"]) & set(BENCHMARK_CORRUPTIONS)
    return f"mean of the {len(run)} benchmark corruption{'s' if len(run) != 1 else ''}"


def severity_heatmap(table: pd.DataFrame, model: str, metric: str = "AP", vmax: float | None = None) -> Figure:
    """Corruption × severity heat map of one model's `metric` (×100, written in each cell);
    column 'clean' is severity 0. Pass the same `vmax` (0–1) to compare models by colour."""
    check_tidy(table)
    grid = severity_grid(table, model, metric)
    grid = grid.loc[:, grid.notna().any() | (grid.columns == 0)]  # only the severities that were run
    values = 100 * grid.to_numpy(dtype=float)
    top = 100 * vmax if vmax is not None else (np.nanmax(values) if np.isfinite(values).any() else 1.0)
    figure = Figure(figsize=(5.6, 0.32 * len(grid) + 1.5), layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=max(top, 1e-9), aspect="auto")
    for (row, column), value in np.ndenumerate(values):
        if np.isfinite(value):
            dark = value < 0.6 * top  # white text on the dark end of viridis
            axes.text(column, row, f"{value:.1f}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
    axes.set_xticks(range(len(grid.columns)), ["clean" if s == 0 else str(s) for s in grid.columns])
    axes.set_yticks(range(len(grid)), [_title(c) for c in grid.index], fontsize=8)
    axes.set_xlabel("severity")
    extras = [i for i, c in enumerate(grid.index) if c in EXTRA_CORRUPTIONS]
    if extras and extras[0] > 0:
        axes.axhline(extras[0] - 0.5, color="white", linewidth=2)  # extras below the line: not in mPC
    axes.set_title(f"{model}: {metric} (%) by corruption and severity", fontsize=10)
    figure.colorbar(image, ax=axes, label=f"{metric} (%)", shrink=0.9)
    return figure
