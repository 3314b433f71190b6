"""Metric tables as text, CSV, Markdown and LaTeX, in the paper's layout.

A table is a DataFrame indexed by model name with metric columns holding values in 0–1; it is
shown ×100 with one decimal, and with the gain over a baseline row in brackets (the difference of
the shown values; the CSVs keep the exact gains).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from kdeval.fileio import write_text_atomic


def _cell(value: float, base: float | None, relative: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value < 0:
        return "–"  # COCOeval's -1: no ground truth in this range
    text = f"{100 * value:.1f}"
    if base is None or math.isnan(base) or base < 0:
        return text
    if not relative:
        # the difference of the numbers as shown, so a reader's subtraction agrees ('1.6 (+0.2)' against
        # 1.4, where the unrounded gain 0.11 would read +0.1); + 0.0 turns -0.0 into 0.0
        return text + f" ({round(round(100 * value, 1) - round(100 * base, 1), 1) + 0.0:+.1f})"
    if round(100 * base, 1) <= 0:  # a baseline shown as 0.0: '0.1 (+487.4%)' would say nothing readable
        return text
    return text + f" ({100 * (value - base) / base:+.1f}%)"


def display_cells(table: pd.DataFrame, baseline: str | None, relative: bool = False) -> pd.DataFrame:
    """Strings ×100, with '(+x.x)' gains over the baseline row for every other row; with
    `relative`, the change in per cent of the baseline's value, '(+11.4%)', as the paper writes it
    (none where the baseline's value shows as 0.0; the CSV keeps the exact change)."""
    if baseline is not None and baseline not in table.index:
        raise KeyError(baseline)
    cells = {}
    for model, row in table.iterrows():
        compare = baseline is not None and model != baseline
        cells[model] = {
            metric: _cell(float(row[metric]), float(table.loc[baseline, metric]) if compare else None, relative)
            for metric in table.columns
        }
    return pd.DataFrame.from_dict(cells, orient="index", columns=list(table.columns))


def cells_to_text(cells: pd.DataFrame, title: str | None = None, row_label: str = "model") -> str:
    """A table of strings as aligned plain text."""
    header = [row_label, *map(str, cells.columns)]
    rows = [[str(model), *row] for model, row in cells.iterrows()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [title] if title else []
    lines.append("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join(lines)


def to_text(table: pd.DataFrame, baseline: str | None = None, title: str | None = None, relative: bool = False) -> str:
    return cells_to_text(display_cells(table, baseline, relative), title)


def cells_to_markdown(cells: pd.DataFrame, row_label: str = "model") -> str:
    lines = [f"| {row_label} | " + " | ".join(str(c).replace("|", "\\|") for c in cells.columns) + " |", "|---|" + "---:|" * len(cells.columns)]
    for model, row in cells.iterrows():
        name = str(model).replace("|", "\\|")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def to_markdown(table: pd.DataFrame, baseline: str | None = None, relative: bool = False, transpose: bool = False,
                row_label: str = "model") -> str:
    """With `transpose`, models become the columns (e.g. categories × models)."""
    cells = display_cells(table, baseline, relative)
    return cells_to_markdown(cells.T if transpose else cells, row_label)


_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "−": "$-$", "±": r"$\pm$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def _latex_metric(name: str) -> str:
    # AP50 → AP$_{50}$, APs → AP$_{S}$, as the paper typesets them; other columns (mPC, rPC,
    # corruption names) as they are, escaped
    suffix = name[2:]
    if not suffix or name[:2] not in ("AP", "AR"):
        return latex_escape(name)
    return f"{name[:2]}$_{{{suffix.upper() if suffix.isalpha() else suffix}}}$"


def cells_to_latex(cells: pd.DataFrame, caption: str | None = None, row_label: str = "Model",
                   italic_row: str | None = None, bold_marked: bool = False) -> str:
    """A table of strings as a booktabs table; with `bold_marked`, a cell ending in MARK is set in
    bold without it."""
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{l" + "r" * len(cells.columns) + "}",
        r"\toprule",
        latex_escape(row_label) + " & " + " & ".join(_latex_metric(str(c)) for c in cells.columns) + r" \\",
        r"\midrule",
    ]
    for model, row in cells.iterrows():
        name = latex_escape(model)
        if model == italic_row:
            name = rf"\textit{{{name}}}"
        lines.append(name + " & " + " & ".join(_latex_cell(c, bold_marked) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


MARK = "*"  # after a gain whose interval excludes 0


def _latex_cell(text: str, bold_marked: bool) -> str:
    marked = bold_marked and text.endswith(MARK)
    body = latex_escape(text[:-1] if marked else text).replace("–", "--")
    return rf"\textbf{{{body}}}" if marked else body


def to_latex(table: pd.DataFrame, baseline: str | None = None, caption: str | None = None, relative: bool = False,
             transpose: bool = False, row_label: str = "Model") -> str:
    cells = display_cells(table, baseline, relative)
    return cells_to_latex(cells.T if transpose else cells, caption, row_label, italic_row=baseline)


def to_csv(table: pd.DataFrame, baseline: str | None = None) -> str:
    """Raw values (0–1) and, with a baseline, one gain column per metric. COCOeval's -1 (no ground
    truth in that range), shown as '–', is an empty cell, so that a mean over a column stays right."""
    frame = table.where(table >= 0)
    if baseline is not None:
        for metric in table.columns:
            frame[f"{metric}_gain"] = frame[metric] - frame.loc[baseline, metric]
    frame.index.name = "model"
    return frame.to_csv(float_format="%.6f")


def write_tables(table: pd.DataFrame, out_dir: Path, stem: str, baseline: str | None = None, caption: str | None = None) -> list[Path]:
    """`stem`.csv, .md and .tex under out_dir, each written atomically."""
    out_dir = Path(out_dir)
    return [
        write_text_atomic(out_dir / f"{stem}.csv", to_csv(table, baseline)),
        write_text_atomic(out_dir / f"{stem}.md", to_markdown(table, baseline)),
        write_text_atomic(out_dir / f"{stem}.tex", to_latex(table, baseline, caption)),
    ]
