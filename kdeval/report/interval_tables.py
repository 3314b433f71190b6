"""Tables of values with their uncertainty, from kdeval.metrics.intervals' tidy table.

A value reads `12.3 [11.4, 13.2]` (×100; its bootstrap interval in brackets, see kdeval.metrics.intervals), `12.3 ± 0.4 [11.4, 13.2]`
when a model has several runs (± their sample std), and a gain over the baseline `+3.5 [+2.6, +4.4]`,
followed by MARK when its interval excludes 0 (bold in LaTeX). Gains have rows of their own,
`ssim − baseline`, below the models. The note under each table says what the brackets are.
"""

from __future__ import annotations


import numpy as np
import pandas as pd

from kdeval.metrics.bootstrap import BootstrapSettings
from kdeval.metrics.intervals import gain_excludes_zero
from kdeval.report.tables import MARK, cells_to_latex, cells_to_markdown, cells_to_text

MISSING = "–"


def _number(value: float, signed: bool = False) -> str:
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def value_text(row) -> str:
    """`12.3`, `12.3 ± 0.4`, `12.3 [11.4, 13.2]` or `12.3 ± 0.4 [11.4, 13.2]`."""
    value = row["value"]
    if value is None or not np.isfinite(value):
        return MISSING
    text = _number(value)
    if row["runs"] > 1 and np.isfinite(row["std_over_runs"]):
        text += f" ± {_number(row['std_over_runs'])}"
    if np.isfinite(row["ci_low"]) and np.isfinite(row["ci_high"]):
        text += f" [{_number(row['ci_low'])}, {_number(row['ci_high'])}]"
    return text


def gain_text(row) -> str:
    """`+3.5`, or `+3.5 [+2.6, +4.4]` followed by MARK when the interval excludes 0."""
    gain = row["gain"]
    if gain is None or not np.isfinite(gain):
        return MISSING
    text = _number(gain, signed=True).replace("-0.0", "+0.0")
    if np.isfinite(row["gain_ci_low"]) and np.isfinite(row["gain_ci_high"]):
        text += f" [{_number(row['gain_ci_low'], True)}, {_number(row['gain_ci_high'], True)}]"
        if gain_excludes_zero(row):
            text += MARK
    return text


def gain_label(model: str, baseline: str) -> str:
    return f"{model} − {baseline}"


def interval_cells(intervals: pd.DataFrame, column: str, baseline: str | None, columns: list | None = None) -> pd.DataFrame:
    """Rows: the models, then one gain row per model other than the baseline; columns: the values
    of `column` (e.g. metric), in `columns`' order if given."""
    models = list(dict.fromkeys(intervals["model"]))
    columns = list(dict.fromkeys(intervals[column])) if columns is None else list(columns)
    cells: dict[str, dict] = {}
    for model in models:
        rows = intervals[intervals["model"] == model].set_index(column)
        cells[model] = {c: value_text(rows.loc[c]) for c in columns}
    if baseline is not None:
        for model in models:
            if model != baseline:
                rows = intervals[intervals["model"] == model].set_index(column)
                cells[gain_label(model, baseline)] = {c: gain_text(rows.loc[c]) for c in columns}
    return pd.DataFrame.from_dict(cells, orient="index", columns=columns)


def model_columns(intervals: pd.DataFrame, row: str, baseline: str | None) -> pd.DataFrame:
    """Rows: the values of `row` (e.g. category); columns: the models, then a gain column per model
    other than the baseline; for tables whose rows are not models (per category)."""
    models = list(dict.fromkeys(intervals["model"]))
    rows = list(dict.fromkeys(intervals[row]))
    cells = {}
    for model in models:
        by_row = intervals[intervals["model"] == model].set_index(row)
        cells[model] = [value_text(by_row.loc[r]) for r in rows]
    if baseline is not None:
        for model in models:
            if model != baseline:
                by_row = intervals[intervals["model"] == model].set_index(row)
                cells[gain_label(model, baseline)] = [gain_text(by_row.loc[r]) for r in rows]
    return pd.DataFrame(cells, index=rows)


def interval_note(bootstrap: BootstrapSettings | None, intervals: pd.DataFrame, baseline: str | None) -> str:
    """One sentence on what the numbers mean: the brackets, the ±, the mark."""
    parts = []
    if bootstrap is not None and bootstrap.enabled:
        parts.append(f"[brackets]: {100 * bootstrap.confidence:g}% intervals from {bootstrap.resamples} paired bootstrap "
                     f"resamples of the images (seed {bootstrap.seed}), basic for a value (AP on finite data runs high, "
                     "so its interval may lie below it), percentile for a gain")
        if baseline is not None:
            parts.append(f"{MARK} after a gain: its interval excludes 0")
    if (intervals["runs"] > 1).any():
        runs = sorted(set(int(r) for r in intervals["runs"]))
        parts.append(f"± : sample std over training runs ({'/'.join(map(str, runs))} runs; values are their mean)")
    return "; ".join(parts) + "." if parts else ""


def interval_markdown(cells: pd.DataFrame, note: str, row_label: str = "model") -> str:
    return cells_to_markdown(cells, row_label) + (f"\n{note}\n" if note else "")


def interval_latex(cells: pd.DataFrame, caption: str, note: str, baseline: str | None, row_label: str = "Model") -> str:
    latex_note = note.replace(f"{MARK} after a gain", "a bold gain")
    return cells_to_latex(cells, f"{caption}. {latex_note}" if latex_note else caption, row_label, italic_row=baseline,
                          bold_marked=True)


def interval_text(cells: pd.DataFrame, title: str | None, note: str) -> str:
    return cells_to_text(cells, title) + (f"\n{note}" if note else "")


def intervals_csv(intervals: pd.DataFrame) -> str:
    """Tidy: one row per (model, key), values 0–1; empty cells where there is no value."""
    return intervals.to_csv(index=False, float_format="%.6f")


def is_plain(intervals: pd.DataFrame | None, bootstrap: BootstrapSettings | None) -> bool:
    """Nothing to show beyond the value and its gain: one run per model and no bootstrap."""
    return intervals is None or ((bootstrap is None or not bootstrap.enabled) and bool((intervals["runs"] <= 1).all()))

