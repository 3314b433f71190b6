"""Figures of the error analysis, drawn from its tidy tables (see kdeval.metrics.analyze):
appendix Figure 1 (stacked PR curves per model and object size) and Figure 2 (AP per object size
and setting, the baseline hatched and the gain over it solid)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from kdeval.vocab import ANALYSIS_SETTINGS, AREA_RANGES

# C75 and C50 in greys, the rest as COCO's analyze() and mmdetection draw them
SETTING_COLORS = {
    "C75": "#a6a6a6",
    "C50": "#d9d9d9",
    "Loc": (0.31, 0.51, 0.74),
    "Sim": (0.75, 0.31, 0.30),
    "Oth": (0.36, 0.90, 0.38),
    "BG": (0.50, 0.39, 0.64),
    "FN": (1.0, 0.6, 0.0),
}
SIZE_COLORS = {"small": "#4c72b0", "medium": "#55a868", "large": "#c44e52"}
AREA_TITLES = {"all": "all objects", "small": "small objects", "medium": "medium objects", "large": "large objects"}
GAIN_EDGE = "black"
LOSS_COLOR = "#d62728"
ERROR_BAR_COLOR = "#222222"


def ap_label(ap: float) -> str:
    """The paper's legend number: .431, 1.00 stays 1.000; '–' without ground truth."""
    if ap < 0:
        return "–"
    text = f"{ap:.3f}"
    return text[1:] if text.startswith("0") else text


def _ap_of(ap: pd.DataFrame, model: str, area: str, setting: str) -> float:
    hit = ap[(ap["model"] == model) & (ap["area"] == area) & (ap["setting"] == setting)]["AP"]
    return float(hit.iloc[0]) if len(hit) else -1.0


def error_curves_figure(curves: pd.DataFrame, ap: pd.DataFrame, models: list[str] | None = None,
                        areas: tuple[str, ...] = tuple(AREA_RANGES), title: str | None = None) -> Figure:
    """Appendix Figure 1: for each model (columns) and area (rows), the seven PR curves stacked,
    the band under each filled, its area in the legend ("[.431] C75")."""
    models = list(dict.fromkeys(curves["model"])) if models is None else models
    figure = Figure(figsize=(3.3 * len(models), 3.0 * len(areas)), layout="constrained")
    axes = np.atleast_2d(figure.subplots(len(areas), len(models), squeeze=False))
    for row, area in enumerate(areas):
        for col, model in enumerate(models):
            ax = axes[row, col]
            panel = curves[(curves["model"] == model) & (curves["area"] == area)]
            below = None
            for setting in ANALYSIS_SETTINGS:
                line = panel[panel["setting"] == setting].sort_values("recall")
                recall, precision = line["recall"].to_numpy(), line["precision"].to_numpy()
                lower = np.zeros_like(precision) if below is None else below
                label = f"[{ap_label(_ap_of(ap, model, area, setting))}] {setting}"
                ax.fill_between(recall, lower, precision, color=SETTING_COLORS[setting], label=label, linewidth=0)
                ax.plot(recall, precision, color="black", linewidth=0.5)
                below = precision
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_title(f"{model} · {AREA_TITLES.get(area, area)}", fontsize=9)
            ax.tick_params(labelsize=7)
            if row == len(areas) - 1:
                ax.set_xlabel("recall", fontsize=8)
            if col == 0:
                ax.set_ylabel("precision", fontsize=8)
            # reversed, so the legend reads top-down as the bands do
            handles, labels = ax.get_legend_handles_labels()
            ax.legend(handles[::-1], labels[::-1], loc="lower left", fontsize=6.5, frameon=True, framealpha=0.85)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def _interval_of(intervals: pd.DataFrame, model: str, area: str, setting: str, low: str, high: str) -> tuple[float, float]:
    hit = intervals[(intervals["model"] == model) & (intervals["area"] == area) & (intervals["setting"] == setting)]
    return (float(hit[low].iloc[0]), float(hit[high].iloc[0])) if len(hit) else (np.nan, np.nan)


def size_gain_figure(ap: pd.DataFrame, baseline: str | None, models: list[str] | None = None,
                     settings: tuple[str, ...] = tuple(s for s in ANALYSIS_SETTINGS if s != "FN"),
                     title: str | None = None, intervals: pd.DataFrame | None = None,
                     confidence: float | None = None) -> Figure:
    """Appendix Figure 2: AP per object size for each setting. With a baseline, one panel per other
    model: the baseline's AP hatched, the gain solid on top, a loss as a red-edged empty band from
    the model's AP up to the baseline's. Without one, one panel of plain bars per model.
    FN is left out: its AP is 1 by definition.

    With `intervals` (kdeval.metrics.intervals' table keyed by area and setting), each bar carries an
    error bar: the gain's interval drawn from the baseline's AP (so a whisker that stays clear of
    the hatched top is a gain whose interval excludes 0), or, without a baseline, the AP's interval."""
    models = list(dict.fromkeys(ap["model"])) if models is None else models
    compared = [m for m in models if m != baseline] if baseline is not None else models
    if not compared:  # the baseline alone: its own bars, nothing to compare with
        baseline, compared = None, models
    sizes = [s for s in SIZE_COLORS if s in set(ap["area"])]
    figure = Figure(figsize=(max(5.0, 1.0 * len(settings) + 1.5), 3.2 * len(compared)), layout="constrained")
    axes = figure.subplots(len(compared), 1, squeeze=False)[:, 0]
    width = 0.8 / len(sizes)
    x = np.arange(len(settings))
    for ax, model in zip(axes, compared):
        for i, size in enumerate(sizes):
            pos = x - 0.4 + width * (i + 0.5)
            value = np.array([_ap_of(ap, model, size, s) for s in settings])
            color = SIZE_COLORS[size]
            if baseline is None:
                ax.bar(pos, np.clip(value, 0, None), width, color=color, edgecolor="white", linewidth=0.5)
                if intervals is not None:
                    bounds = np.array([_interval_of(intervals, model, size, s, "ci_low", "ci_high") for s in settings])
                    _error_bars(ax, pos, bounds[:, 0], bounds[:, 1])
                continue
            base = np.array([_ap_of(ap, baseline, size, s) for s in settings])
            base, value = np.clip(base, 0, None), np.clip(value, 0, None)
            ax.bar(pos, np.minimum(base, value), width, facecolor="white", edgecolor=color, hatch="////", linewidth=0.8)
            gain = np.clip(value - base, 0, None)
            ax.bar(pos, gain, width, bottom=base, color=color, edgecolor=GAIN_EDGE, linewidth=0.4)
            loss = np.clip(base - value, 0, None)
            ax.bar(pos, loss, width, bottom=value, facecolor="none", edgecolor=LOSS_COLOR, hatch="xx", linewidth=0.8)
            if intervals is not None:
                bounds = np.array([_interval_of(intervals, model, size, s, "gain_ci_low", "gain_ci_high") for s in settings])
                _error_bars(ax, pos, base + bounds[:, 0], base + bounds[:, 1])
        ax.set_xticks(x, settings, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("AP", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.set_title(model if baseline is None else f"{model} against {baseline}", fontsize=9)
    handles = [Patch(color=SIZE_COLORS[s], label=s) for s in sizes]
    if baseline is not None:
        handles += [
            Patch(facecolor="white", edgecolor="grey", hatch="////", label=f"baseline ({baseline})"),
            Patch(facecolor="grey", edgecolor=GAIN_EDGE, label="gain"),
            Patch(facecolor="none", edgecolor=LOSS_COLOR, hatch="xx", label="loss"),
        ]
    if intervals is not None:
        shown = f"{100 * confidence:g}% " if confidence else ""
        what = "the gain" if baseline is not None else "the AP"
        handles.append(Line2D([], [], color=ERROR_BAR_COLOR, marker="_", linestyle="-", linewidth=0.8,
                              label=f"{shown}bootstrap interval of {what}"))
    figure.legend(handles=handles, fontsize=7, ncol=len(handles), loc="outside lower center", frameon=False)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def _error_bars(ax, x: np.ndarray, low: np.ndarray, high: np.ndarray) -> None:
    keep = np.isfinite(low) & np.isfinite(high)
    if not keep.any():
        return
    middle = (low[keep] + high[keep]) / 2
    ax.errorbar(x[keep], middle, yerr=[middle - low[keep], high[keep] - middle], fmt="none",
                ecolor=ERROR_BAR_COLOR, elinewidth=0.8, capsize=2, capthick=0.8)


def tide_figure(table: pd.DataFrame, title: str | None = None, intervals: pd.DataFrame | None = None,
                confidence: float | None = None) -> Figure:
    """dAP of each TIDE error type (AP points at IoU .5), models side by side; with `intervals`
    (kdeval.metrics.intervals' table keyed by metric), each bar's interval as an error bar."""
    errors = [c for c in table.columns if c != "AP50"]
    models = list(table.index)
    figure = Figure(figsize=(min(9.0, max(5.0, 1.0 + 0.3 * len(errors) * len(models))), 3.0), layout="constrained")
    ax = figure.subplots()
    width = 0.8 / max(1, len(models))
    x = np.arange(len(errors))
    for i, model in enumerate(models):
        values = 100 * table.loc[model, errors].to_numpy(dtype=float)
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, values, width, label=f"{model} (AP50 {100 * table.loc[model, 'AP50']:.1f})")
        top = values.copy()
        if intervals is not None:
            rows = intervals[intervals["model"] == model].set_index("metric")
            high = 100 * rows.loc[errors, "ci_high"].to_numpy(float)
            _error_bars(ax, pos, 100 * rows.loc[errors, "ci_low"].to_numpy(float), high)
            top = np.fmax(top, high)  # the label above the whisker, not on it
        for x_pos, y_pos, value in zip(pos, top, values):
            if np.isfinite(value):
                ax.annotate(f"{value:.1f}", (x_pos, max(y_pos, 0)), xytext=(0, 2), textcoords="offset points",
                            ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x, errors, fontsize=8)
    ax.set_ylabel("dAP (AP points)", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    handles, _ = ax.get_legend_handles_labels()
    if intervals is not None:
        shown = f"{100 * confidence:g}% " if confidence else ""
        handles.append(Line2D([], [], color=ERROR_BAR_COLOR, marker="_", linestyle="-", linewidth=0.8,
                              label=f"{shown}bootstrap interval"))
    ax.legend(handles=handles, fontsize=7, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if title:
        ax.set_title(title, fontsize=9)
    return figure
