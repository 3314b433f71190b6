"""`kdeval evaluate`'s files: the AP table (CSV, Markdown, LaTeX), all COCO stats as JSON, and the
per-category tables."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kdeval.analysis.evaluation import Evaluation, per_class_long
from kdeval.data.source import Split
from kdeval.fileio import remove_earlier_outputs, write_json_atomic, write_text_atomic
from kdeval.report.tables import to_latex, to_markdown, write_tables
from kdeval.vocab import TABLE_METRICS

PER_CLASS_FILES = ("per_class.csv", "per_class.md", "per_class.tex")


def write_evaluation(evaluation: Evaluation, out_dir: Path, baseline: str | None, split: Split) -> list[Path]:
    out_dir = Path(out_dir)
    paths = write_tables(evaluation.table, out_dir, "ap_table", baseline, caption=f"COCO bbox AP on {split.name}")
    paths.append(write_json_atomic(out_dir / "coco_stats.json", {"annotations": str(split.annotations), "stats": evaluation.stats}))
    if evaluation.per_class:
        paths += write_per_class(evaluation.per_class, out_dir, baseline, split)
    else:  # an earlier run's per-class tables are of other models or data
        remove_earlier_outputs(out_dir, PER_CLASS_FILES)
    return paths


def write_per_class(per_class: dict[str, pd.DataFrame], out_dir: Path, baseline: str | None, split: Split) -> list[Path]:
    """per_class.csv (tidy, with gains) and, per metric, categories × models in Markdown and LaTeX."""
    paths = [write_text_atomic(out_dir / "per_class.csv", per_class_long(per_class, baseline).to_csv(index=False, float_format="%.6f"))]
    markdown, latex = [], []
    labels = next(iter(per_class.values()))["category"]
    for metric in TABLE_METRICS:
        wide = pd.DataFrame({model: t[metric] for model, t in per_class.items()})
        wide.index = [f"{labels[i]} ({i})" for i in wide.index]
        by_model = wide.T  # gains are taken between rows, so models are rows until shown
        markdown += [f"### {metric} per category\n", to_markdown(by_model, baseline, transpose=True, row_label="category")]
        latex.append(to_latex(by_model, baseline, caption=f"{metric} per category on {split.name}", transpose=True, row_label="Category"))
    paths.append(write_text_atomic(out_dir / "per_class.md", "\n".join(markdown)))
    paths.append(write_text_atomic(out_dir / "per_class.tex", "\n".join(latex)))
    return paths
