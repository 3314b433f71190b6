"""`kdeval evaluate`'s files: the AP table (CSV, Markdown, LaTeX) with intervals when there are any,
every COCO stat's interval as a tidy CSV, all COCO stats as JSON, and the per-category tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdeval.analysis.evaluation import Evaluation
from kdeval.data.source import Split
from kdeval.fileio import remove_earlier_outputs, write_json_atomic, write_text_atomic
from kdeval.report.interval_tables import (
    MISSING,
    interval_cells,
    interval_latex,
    interval_markdown,
    interval_note,
    interval_text,
    intervals_csv,
    is_plain,
    model_columns,
)
from kdeval.report.tables import cells_to_markdown, to_latex, to_markdown, to_text, write_tables
from kdeval.vocab import TABLE_METRICS

PER_CLASS_FILES = ("per_class.csv", "per_class.md", "per_class.tex")
PER_CLASS_COLUMNS = ("category_id", "category", "model", "metric")


def evaluation_text(evaluation: Evaluation, title: str) -> str:
    """The AP table for the terminal: with intervals and gain rows when there are any."""
    if is_plain(evaluation.intervals, evaluation.bootstrap):
        return to_text(evaluation.table, evaluation.baseline, title=title)
    cells = interval_cells(evaluation.intervals, "metric", evaluation.baseline, list(TABLE_METRICS))
    return interval_text(cells, title, interval_note(evaluation.bootstrap, evaluation.intervals, evaluation.baseline))


def write_evaluation(evaluation: Evaluation, out_dir: Path, baseline: str | None, split: Split) -> list[Path]:
    """ap_table.{csv,md,tex} (the six metrics), ap_table_intervals.csv (tidy: all 12 stats with
    intervals, gains and runs), coco_stats.json; with per-class results, per_class.{csv,md,tex}."""
    out_dir = Path(out_dir)
    paths = write_ap_table(evaluation, out_dir, "ap_table", baseline, f"COCO bbox AP on {split.name}")
    settings = {"annotations": str(split.annotations), "baseline": baseline, "runs": _runs(evaluation),
                "bootstrap": evaluation.bootstrap.as_dict() if evaluation.bootstrap else None}
    paths.append(write_json_atomic(out_dir / "coco_stats.json", {**settings, "stats": evaluation.stats}))
    paths.append(write_json_atomic(out_dir / "evaluate_settings.json", settings))
    if evaluation.per_class:
        paths += write_per_class(evaluation, out_dir, baseline, split)
    else:  # an earlier run's per-class tables are of other models or data
        remove_earlier_outputs(out_dir, PER_CLASS_FILES)
    return paths


def write_ap_table(evaluation: Evaluation, out_dir: Path, stem: str, baseline: str | None, caption: str) -> list[Path]:
    """`stem`.csv (means over runs, gain columns), `stem`.md and .tex (with intervals and gain rows
    when there are any) and `stem`_intervals.csv (tidy, all 12 stats)."""
    out_dir = Path(out_dir)
    if is_plain(evaluation.intervals, evaluation.bootstrap):
        paths = write_tables(evaluation.table, out_dir, stem, baseline, caption=caption)
    else:
        paths = write_tables(evaluation.table, out_dir, stem, baseline, caption=caption)[:1]  # the CSV of means
        cells = interval_cells(evaluation.intervals, "metric", baseline, list(TABLE_METRICS))
        note = interval_note(evaluation.bootstrap, evaluation.intervals, baseline)
        paths.append(write_text_atomic(out_dir / f"{stem}.md", interval_markdown(cells, note)))
        paths.append(write_text_atomic(out_dir / f"{stem}.tex", interval_latex(cells, caption, note, baseline)))
    if evaluation.intervals is not None:
        paths.append(write_text_atomic(out_dir / f"{stem}_intervals.csv", intervals_csv(evaluation.intervals)))
    return paths


def _runs(evaluation: Evaluation) -> dict[str, int] | None:
    if evaluation.intervals is None:
        return None
    return {model: int(runs) for model, runs in evaluation.intervals.groupby("model", sort=False)["runs"].first().items()}


def write_per_class(evaluation: Evaluation, out_dir: Path, baseline: str | None, split: Split) -> list[Path]:
    """per_class.csv (tidy: values, intervals, gains) and, per metric, categories × models in
    Markdown and LaTeX."""
    intervals = evaluation.per_class_intervals
    columns = list(PER_CLASS_COLUMNS) + [c for c in intervals.columns if c not in PER_CLASS_COLUMNS]
    paths = [write_text_atomic(out_dir / "per_class.csv", intervals[columns].to_csv(index=False, float_format="%.6f"))]
    plain = is_plain(intervals, evaluation.bootstrap)
    note = "" if plain else interval_note(evaluation.bootstrap, intervals, baseline)
    per_class = evaluation.per_class
    labels = next(iter(per_class.values()))["category"]
    markdown, latex = [], []
    for metric in TABLE_METRICS:
        caption = f"{metric} per category on {split.name}"
        if plain:
            wide = pd.DataFrame({model: t[metric] for model, t in per_class.items()})
            wide.index = [f"{labels[i]} ({i})" for i in wide.index]
            by_model = wide.T  # gains are taken between rows, so models are rows until shown
            markdown += [f"### {metric} per category\n", to_markdown(by_model, baseline, transpose=True, row_label="category")]
            latex.append(to_latex(by_model, baseline, caption=caption, transpose=True, row_label="Category"))
            continue
        rows = intervals[intervals["metric"] == metric].assign(row=lambda f: f["category"].astype(str) + " (" + f["category_id"].astype(str) + ")")
        cells = model_columns(rows, "row", baseline).fillna(MISSING)
        markdown += [f"### {metric} per category\n", cells_to_markdown(cells, "category"), note, ""]
        latex.append(interval_latex(cells, caption, note, None, "Category"))
    paths.append(write_text_atomic(out_dir / "per_class.md", "\n".join(markdown)))
    paths.append(write_text_atomic(out_dir / "per_class.tex", "\n".join(latex)))
    return paths
