"""`kdeval errors`' files: the COCO-analyze and TIDE tables (CSV, Markdown, LaTeX), the curves as a
tidy CSV, the appendix's Figures 1 and 2 and the TIDE bars."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdeval.analysis.error_analysis import ErrorAnalysis
from kdeval.data.source import Split
from kdeval.fileio import remove_earlier_outputs, safe_file_stem, write_json_atomic, write_text_atomic
from kdeval.metrics.analyze import curve_long_table
from kdeval.report.error_figures import error_curves_figure, size_gain_figure, tide_figure
from kdeval.report.figures import save_figure
from kdeval.report.interval_tables import (
    interval_cells,
    interval_latex,
    interval_markdown,
    interval_note,
    interval_text,
    intervals_csv,
    is_plain,
)
from kdeval.report.tables import to_latex, to_markdown, to_text
from kdeval.vocab import ANALYSIS_SETTINGS, AREA_RANGES


def _plain(analysis: ErrorAnalysis) -> bool:
    return is_plain(analysis.ap_intervals, analysis.bootstrap)


def _area_intervals(analysis: ErrorAnalysis, area: str):
    return analysis.ap_intervals[analysis.ap_intervals["area"] == area]


def tide_text(analysis: ErrorAnalysis, title: str) -> str:
    """TIDE's AP50 and dAPs for the terminal, with intervals when there are any."""
    if _plain(analysis):
        return to_text(analysis.tide_table(), analysis.baseline, title=title)
    rows = analysis.coco_tide_intervals()
    return interval_text(interval_cells(rows, "metric", analysis.baseline), title, interval_note(analysis.bootstrap, rows, analysis.baseline))


def error_analysis_text(analysis: ErrorAnalysis, title: str, area: str = "all") -> str:
    """The COCO-analyze APs of one area for the terminal: the change in per cent of the baseline's
    AP, or, with intervals, the APs and gains with theirs."""
    if _plain(analysis):
        return to_text(analysis.ap_by_area(area), analysis.baseline, relative=True,
                       title=f"{title} (change against {analysis.baseline or '–'})")
    intervals = _area_intervals(analysis, area)
    cells = interval_cells(intervals, "setting", analysis.baseline)
    return interval_text(cells, title, interval_note(analysis.bootstrap, intervals, analysis.baseline))


def write_error_analysis(analysis: ErrorAnalysis, out_dir: Path, baseline: str | None, split: Split,
                         per_category: bool = False) -> list[Path]:
    """Tables (CSV, Markdown, LaTeX), Figures 1 and 2 and the TIDE plots, each file written atomically."""
    out_dir = Path(out_dir)
    # an earlier run's per-category figures (other categories) and tidecv plots (other models) would
    # mislead beside this run's: removed, and only the files kdeval writes there (--out may be a folder
    # that holds other things called tide/, a clone of tidecv's repository, say)
    remove_earlier_outputs(out_dir / "per_category", ("error_analysis_per_category.*", "*_*.png", "*_*.pdf"))
    remove_earlier_outputs(out_dir / "tide", ("*_tidecv_summary.png",))  # tidecv's own plots, which earlier versions drew
    paths = []
    relative = analysis.ap_with_change(baseline)
    ap = relative.drop(columns="change_vs_baseline", errors="ignore")
    paths.append(write_text_atomic(out_dir / "error_analysis.csv", relative.to_csv(index=False, float_format="%.6f")))
    markdown, latex = [], []
    for area in AREA_RANGES:
        caption = f"COCO-analyze AP ({area} objects) on {split.name}"
        if _plain(analysis):
            table = analysis.ap_by_area(area)
            markdown += [f"### {area} objects\n", to_markdown(table, baseline, relative=True)]
            latex.append(to_latex(table, baseline, caption=caption, relative=True))
            continue
        intervals = _area_intervals(analysis, area)
        cells = interval_cells(intervals, "setting", baseline)
        note = interval_note(analysis.bootstrap, intervals, baseline)
        markdown += [f"### {area} objects\n", interval_markdown(cells, note)]
        latex.append(interval_latex(cells, caption, note, baseline))
    if analysis.ap_intervals is not None:
        paths.append(write_text_atomic(out_dir / "error_analysis_intervals.csv", intervals_csv(analysis.ap_intervals)))
    paths.append(write_text_atomic(out_dir / "error_analysis.md", "\n".join(markdown)))
    paths.append(write_text_atomic(out_dir / "error_analysis.tex", "\n".join(latex)))

    tide = analysis.tide_table()
    paths.append(write_text_atomic(out_dir / "tide.csv", intervals_csv(analysis.tide_intervals)))
    tide_caption = f"TIDE: AP50 and the dAP of each error on {split.name}"
    if _plain(analysis):
        paths.append(write_text_atomic(out_dir / "tide.md", to_markdown(tide, baseline)))
        paths.append(write_text_atomic(out_dir / "tide.tex", to_latex(tide, baseline, caption=tide_caption)))
    else:
        rows = analysis.coco_tide_intervals()
        cells = interval_cells(rows, "metric", baseline)
        note = interval_note(analysis.bootstrap, rows, baseline)
        paths.append(write_text_atomic(out_dir / "tide.md", interval_markdown(cells, note)))
        paths.append(write_text_atomic(out_dir / "tide.tex", interval_latex(cells, tide_caption, note, baseline)))

    curves = curve_long_table(analysis.curves)
    paths.append(write_text_atomic(out_dir / "error_curves.csv", curves.to_csv(index=False, float_format="%.6f")))
    models = analysis.models
    if baseline is not None:
        models = [baseline] + [m for m in models if m != baseline]
    paths += save_figure(error_curves_figure(curves, ap, models), out_dir, "figure1_error_curves")
    figure2_intervals = None if _plain(analysis) or not analysis.bootstrap else analysis.ap_intervals
    paths += save_figure(size_gain_figure(ap, baseline, models, intervals=figure2_intervals,
                                          confidence=analysis.bootstrap.confidence if analysis.bootstrap else None),
                         out_dir, "figure2_ap_by_size")
    tide_bars = None if figure2_intervals is None else analysis.coco_tide_intervals()
    paths += save_figure(tide_figure(tide.loc[models], intervals=tide_bars,
                                     confidence=analysis.bootstrap.confidence if analysis.bootstrap else None),
                         out_dir, "tide_errors")

    if per_category:
        per_cat = analysis.ap(per_category=True)
        paths.append(write_text_atomic(out_dir / "per_category" / "error_analysis_per_category.csv",
                                       per_cat.to_csv(index=False, float_format="%.6f")))
        markdown, latex = [], []
        for model, curves in analysis.curves.items():
            table = pd.DataFrame({f"{name} ({cid})": [curves.ap(s, "all", cid) for s in ANALYSIS_SETTINGS]
                                  for cid, name in zip(curves.category_ids, curves.category_names)},
                                 index=list(ANALYSIS_SETTINGS)).T
            markdown += [f"### {model}: COCO-analyze AP per category, all objects\n", to_markdown(table, row_label="category")]
            latex.append(to_latex(table, caption=f"{model}: COCO-analyze AP per category on {split.name}", row_label="Category"))
        paths.append(write_text_atomic(out_dir / "per_category" / "error_analysis_per_category.md", "\n".join(markdown)))
        paths.append(write_text_atomic(out_dir / "per_category" / "error_analysis_per_category.tex", "\n".join(latex)))
        first = next(iter(analysis.curves.values()))
        for category_id, name in zip(first.category_ids, first.category_names):
            curves_c = curve_long_table(analysis.curves, category_id)
            ap_c = per_cat[per_cat["category_id"] == category_id]
            figure = error_curves_figure(curves_c, ap_c, models, title=f"{name} (category {category_id})")
            paths += save_figure(figure, out_dir / "per_category", f"{category_id}_{safe_file_stem(name)}")
    paths.append(write_json_atomic(out_dir / "errors_settings.json", {
        "annotations": str(split.annotations), "models": models, "baseline": baseline, "notes": analysis.notes,
        "bootstrap": analysis.bootstrap.as_dict() if analysis.bootstrap else None,
    }))
    return paths

