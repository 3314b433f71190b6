"""`kdeval robustness`'s files and terminal text from a tidy table: the tidy CSV, the summary (clean AP,
mPC, rPC as CSV, Markdown and LaTeX), the per-corruption table and the figures."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from kdeval.data.source import Split
from kdeval.fileio import remove_earlier_outputs, safe_file_stem, write_json_atomic, write_text_atomic
from kdeval.metrics.robustness import BENCHMARK_SCENARIOS, corruption_means, gains_over, robustness_summary
from kdeval.report.figures import save_figure
from kdeval.report.robustness_figures import severity_curves, severity_heatmap
from kdeval.report.tables import to_latex, to_markdown, to_text
from kdeval.vocab import ROBUSTNESS_COLUMNS

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
    notes: tuple[str, ...] = (),
) -> list[Path]:
    """The tables and figures of `run.table` (write_robustness_tables) and the run's settings."""
    title = summary_title(split, run, settings.seed)
    paths = write_robustness_tables(run.table, out_dir, title, baseline, notes)
    return paths + [write_json_atomic(Path(out_dir) / "settings.json", run_settings(settings))]


def write_robustness_tables(
    table: pd.DataFrame, out_dir: Path, title: str, baseline: str | None = None, notes: tuple[str, ...] = ()
) -> list[Path]:
    """The tidy CSV, the summary (CSV, Markdown, LaTeX), the per-corruption table, the figures.
    `notes` are sentences shown under the summary (and in the LaTeX caption), e.g. where an
    imported model's numbers come from."""
    out_dir = Path(out_dir)
    summary = robustness_summary(table)
    shown = summary[list(ROBUSTNESS_COLUMNS)]
    notes = _all_notes(summary, notes)
    by_corruption = corruption_means(table)

    summary_csv = shown.copy()
    if baseline is not None:
        summary_csv = summary_csv.join(gains_over(shown, baseline, ROBUSTNESS_COLUMNS))
    summary_csv["scenarios"] = summary["scenarios"]
    markdown = [f"**{title}**", "", to_markdown(shown, baseline)]
    for note in notes:
        markdown += [f"*{note}*", ""]
    if not by_corruption.empty:
        markdown += ["**AP (%) per corruption, mean over the severities run**", "", to_markdown(by_corruption, baseline)]
    caption = ". ".join([title, *notes])

    # figures of models (or corruptions) an earlier run of this folder showed and this one does not
    remove_earlier_outputs(out_dir, ("robustness_by_corruption.csv",))
    remove_earlier_outputs(out_dir / "figures", ("ap_vs_severity.*", "heatmap-*.png", "heatmap-*.pdf"))
    paths = [
        write_text_atomic(out_dir / "robustness.csv", table.to_csv(index=False)),
        write_text_atomic(out_dir / "robustness_summary.csv", summary_csv.to_csv(float_format="%.6f")),
        write_text_atomic(out_dir / "robustness_summary.md", "\n".join(markdown)),
        write_text_atomic(out_dir / "robustness_summary.tex", to_latex(shown, baseline, caption)),
    ]
    if not by_corruption.empty:
        paths.append(write_text_atomic(out_dir / "robustness_by_corruption.csv", by_corruption.to_csv(float_format="%.6f")))
        paths += save_figure(severity_curves(table), out_dir / "figures", "ap_vs_severity")
        # one colour scale for every model's heat map, up to the highest AP any scenario reached
        top = table.loc[table["metric"] == "AP", "value"].max()
        for model in dict.fromkeys(table["model"]):
            heatmap = severity_heatmap(table, model, vmax=float(top) if top > 0 else None)
            paths += save_figure(heatmap, out_dir / "figures", f"heatmap-{safe_file_stem(model)}")
    return paths


def _all_notes(summary: pd.DataFrame, notes: tuple[str, ...]) -> list[str]:
    partial = partial_note(summary)
    return ([partial] if partial else []) + list(notes)


def summary_text(
    run: RobustnessRun, split: Split, settings: RobustnessSettings, baseline: str | None = None, notes: tuple[str, ...] = ()
) -> str:
    """The paper's Table 3 layout for the terminal: AP, mPC, rPC per model, gains in brackets."""
    return robustness_text(run.table, summary_title(split, run, settings.seed), baseline, notes)


def robustness_text(table: pd.DataFrame, title: str, baseline: str | None = None, notes: tuple[str, ...] = ()) -> str:
    summary = robustness_summary(table)
    text = to_text(summary[list(ROBUSTNESS_COLUMNS)], baseline, title=title)
    return "\n".join([text, *(f"note: {note}" for note in _all_notes(summary, notes))])
