"""`kdeval robustness`'s files and terminal text from a tidy table: the tidy CSV, the summary (clean AP,
mPC, rPC as CSV, Markdown and LaTeX), the per-corruption table and the figures; with a run's
intervals (kdeval.analysis.robustness), the summary shows them as kdeval.report.interval_tables
does, their tidy CSVs are written and the curves get error bars."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from kdeval.analysis.robustness import BENCHMARK_MEAN, RobustnessIntervals, summary_intervals
from kdeval.data.source import Split
from kdeval.fileio import remove_earlier_outputs, safe_file_stem, write_json_atomic, write_text_atomic
from kdeval.metrics.bootstrap import BootstrapSettings
from kdeval.metrics.robustness import BENCHMARK_SCENARIOS, corruption_means, gains_over, robustness_summary
from kdeval.report.figures import save_figure
from kdeval.report.interval_tables import (
    interval_cells, interval_latex, interval_markdown, interval_note, interval_text, intervals_csv, is_plain,
)
from kdeval.report.robustness_figures import severity_curves, severity_heatmap
from kdeval.report.tables import to_latex, to_markdown, to_text
from kdeval.vocab import ROBUSTNESS_COLUMNS

INTERVAL_FILES = ("robustness_summary_intervals.csv", "robustness_curve_intervals.csv")

if TYPE_CHECKING:  # the result and settings of a run, read here, never run
    from kdeval.engine.robustness import RobustnessRun, RobustnessSettings


def run_settings(settings: RobustnessSettings) -> dict:
    """Settings as JSON-ready data, saved beside the report."""
    data = asdict(settings)
    data["cache_dir"] = str(settings.cache_dir) if settings.cache_dir is not None else None
    return data


def partial_note(summary: pd.DataFrame) -> str | None:
    """None for a full benchmark; otherwise the sentence that says what the mPC is a mean of."""
    counts = set(summary["scenarios"])
    if counts == {BENCHMARK_SCENARIOS}:
        return None
    if counts == {0}:
        return "no benchmark corruption was run, so mPC and rPC are undefined (they average the 15 benchmark corruptions)"
    low, high = min(counts), max(counts)
    span = str(low) if low == high else f"between {low} and {high} (by model)"
    return (
        f"PARTIAL mPC: the mean over {span} of the {BENCHMARK_SCENARIOS} benchmark scenarios "
        "(15 corruptions × severities 1–5) that were run, not comparable with a full mPC"
    )


def summary_title(split: Split, run: RobustnessRun, seed: int) -> str:
    return f"Robustness on {split.name} ({run.images} images, corruption seed {seed}): clean AP, mPC, rPC (%)"


def write_robustness_report(
    run: RobustnessRun, settings: RobustnessSettings, split: Split, out_dir: Path, baseline: str | None = None,
    notes: tuple[str, ...] = (), intervals: RobustnessIntervals | None = None, bootstrap: BootstrapSettings | None = None,
) -> list[Path]:
    """The tables and figures of `run.table` (write_robustness_tables) and the run's settings, with the
    bootstrap's (`bootstrap`, or that of `intervals`) when there is one."""
    title = summary_title(split, run, settings.seed)
    paths = write_robustness_tables(run.table, out_dir, title, baseline, notes, intervals)
    bootstrap = bootstrap if bootstrap is not None else (intervals.bootstrap if intervals is not None else None)
    recorded = run_settings(settings) | ({"bootstrap": bootstrap.as_dict()} if bootstrap is not None else {})
    return paths + [write_json_atomic(Path(out_dir) / "settings.json", recorded)]


def write_robustness_tables(
    table: pd.DataFrame, out_dir: Path, title: str, baseline: str | None = None, notes: tuple[str, ...] = (),
    intervals: RobustnessIntervals | None = None,
) -> list[Path]:
    """The tidy CSV, the summary (CSV, Markdown, LaTeX), the per-corruption table, the figures.
    `notes` are sentences shown under the summary (and in the LaTeX caption), e.g. where an
    imported model's numbers come from. With `intervals` of some of the models, the summary shows
    them, robustness_summary_intervals.csv and robustness_curve_intervals.csv hold them (tidy) and
    the AP-against-severity figure gets error bars and a first panel of the benchmark's mean."""
    out_dir = Path(out_dir)
    intervals = None if intervals is None or is_plain(intervals.summary, intervals.bootstrap) else intervals
    summary = robustness_summary(table)
    shown = summary[list(ROBUSTNESS_COLUMNS)]
    notes = _all_notes(summary, notes)
    by_corruption = corruption_means(table)
    caption = ". ".join([title, *notes])

    summary_csv = shown.copy()
    if baseline is not None:
        summary_csv = summary_csv.join(gains_over(shown, baseline, ROBUSTNESS_COLUMNS))
    summary_csv["scenarios"] = summary["scenarios"]
    summary_markdown, summary_latex, every = _summary_tables(table, baseline, intervals, caption)
    markdown = [f"**{title}**", "", summary_markdown]
    for note in notes:
        markdown += [f"*{note}*", ""]
    if not by_corruption.empty:
        markdown += ["**AP (%) per corruption, mean over the severities run**", "", to_markdown(by_corruption, baseline)]

    # figures of models (or corruptions) an earlier run of this folder showed and this one does not
    remove_earlier_outputs(out_dir, ("robustness_by_corruption.csv", *INTERVAL_FILES))
    remove_earlier_outputs(out_dir / "figures", ("ap_vs_severity.*", "heatmap-*.png", "heatmap-*.pdf"))
    paths = [
        write_text_atomic(out_dir / "robustness.csv", table.to_csv(index=False)),
        write_text_atomic(out_dir / "robustness_summary.csv", summary_csv.to_csv(float_format="%.6f")),
        write_text_atomic(out_dir / "robustness_summary.md", "\n".join(markdown)),
        write_text_atomic(out_dir / "robustness_summary.tex", summary_latex),
    ]
    curves = curve_intervals(intervals) if intervals is not None else None
    if intervals is not None:
        paths += [write_text_atomic(out_dir / INTERVAL_FILES[0], intervals_csv(every)),
                  write_text_atomic(out_dir / INTERVAL_FILES[1], intervals_csv(curves))]
    if not by_corruption.empty:
        paths.append(write_text_atomic(out_dir / "robustness_by_corruption.csv", by_corruption.to_csv(float_format="%.6f")))
        note = curve_note(intervals.bootstrap) if intervals is not None and intervals.bootstrap.enabled else None
        paths += save_figure(severity_curves(table, intervals=curves, note=note), out_dir / "figures", "ap_vs_severity")
        # one colour scale for every model's heat map, up to the highest AP any scenario reached
        top = table.loc[table["metric"] == "AP", "value"].max()
        for model in dict.fromkeys(table["model"]):
            heatmap = severity_heatmap(table, model, vmax=float(top) if top > 0 else None)
            paths += save_figure(heatmap, out_dir / "figures", f"heatmap-{safe_file_stem(model)}")
    return paths


def _summary_tables(table: pd.DataFrame, baseline: str | None, intervals: RobustnessIntervals | None,
                    caption: str) -> tuple[str, str, pd.DataFrame | None]:
    """The summary as Markdown and LaTeX, and the interval table of every model it shows (None
    without intervals: the values and their gains, as they have always been shown)."""
    if intervals is None:
        shown = robustness_summary(table)[list(ROBUSTNESS_COLUMNS)]
        return to_markdown(shown, baseline), to_latex(shown, baseline, caption), None
    every = summary_intervals(table, intervals, baseline)
    cells = interval_cells(every, "metric", baseline, list(ROBUSTNESS_COLUMNS))
    note = _intervals_note(intervals, every, baseline)
    return interval_markdown(cells, note), interval_latex(cells, caption, note, baseline), every


def _intervals_note(intervals: RobustnessIntervals, every: pd.DataFrame, baseline: str | None) -> str:
    """interval_note's sentence, naming the models without intervals (imported: no detections here)."""
    note = interval_note(intervals.bootstrap, every, baseline)
    without = [m for m in dict.fromkeys(every["model"]) if m not in set(intervals.summary["model"])]
    if without and intervals.bootstrap.enabled:
        note = f"{note.rstrip('.')}; no interval for {', '.join(without)}: imported, without detections."
    return note


def curve_intervals(intervals: RobustnessIntervals) -> pd.DataFrame:
    """Tidy: model, corruption, severity, then the interval columns: each scenario's AP, and under
    BENCHMARK_MEAN the AP averaged over the benchmark corruptions at each severity (0: clean)."""
    mean = intervals.severities.copy()
    mean.insert(1, "corruption", BENCHMARK_MEAN)
    return pd.concat([mean, intervals.scenarios], ignore_index=True)


def curve_note(bootstrap: BootstrapSettings) -> str:
    """What the curves' error bars are, in one sentence."""
    return (f"Error bars: each model's {100 * bootstrap.confidence:g}% interval of AP, as the summary table computes it, "
            f"from {bootstrap.resamples} bootstrap resamples of the images (seed {bootstrap.seed}),\none resample for "
            "every scenario at once; the gains over the baseline, paired, are in the summary table.")


def _all_notes(summary: pd.DataFrame, notes: tuple[str, ...]) -> list[str]:
    partial = partial_note(summary)
    return ([partial] if partial else []) + list(notes)


def summary_text(
    run: RobustnessRun, split: Split, settings: RobustnessSettings, baseline: str | None = None, notes: tuple[str, ...] = (),
    intervals: RobustnessIntervals | None = None,
) -> str:
    """The paper's Table 3 layout for the terminal: AP, mPC, rPC per model, gains in brackets (or
    below the models, with their intervals)."""
    return robustness_text(run.table, summary_title(split, run, settings.seed), baseline, notes, intervals)


def robustness_text(table: pd.DataFrame, title: str, baseline: str | None = None, notes: tuple[str, ...] = (),
                    intervals: RobustnessIntervals | None = None) -> str:
    summary = robustness_summary(table)
    if intervals is None or is_plain(intervals.summary, intervals.bootstrap):
        text = to_text(summary[list(ROBUSTNESS_COLUMNS)], baseline, title=title)
    else:
        every = summary_intervals(table, intervals, baseline)
        cells = interval_cells(every, "metric", baseline, list(ROBUSTNESS_COLUMNS))
        text = interval_text(cells, title, _intervals_note(intervals, every, baseline))
    return "\n".join([text, *(f"note: {note}" for note in _all_notes(summary, notes))])
