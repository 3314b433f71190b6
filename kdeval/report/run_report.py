"""`kdeval report RUN_DIR`: one page, RUN_DIR/index.html, that gathers what the analysis commands
wrote under RUN_DIR/{evaluate,errors,robustness,visualize}/ — tables, figures, the gallery, the
settings files — with the package versions and a list of what is missing.

It reads files only, never re-runs a model, and knows no command's file names beyond these rules:
tables are *.md (pipe tables, '#' headings) and *.csv without a .md of the same name; figures are
*.png, each linked to the .pdf beside it; settings are *settings*.json; a gallery is index.html.
So a command's new outputs show up without a change here.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from kdeval.errors import KdevalError
from kdeval.fileio import write_text_atomic
from kdeval.report.html import content_security_policy, new_nonce, render
from kdeval.versions import package_versions

PAGE_FILE = "index.html"
SECTIONS = {
    "evaluate": ("COCO AP", "kdeval evaluate MODEL... --out {run}/evaluate"),
    "errors": ("Error analysis", "kdeval errors MODEL... --out {run}/errors"),
    "robustness": ("Robustness under corruptions", "kdeval robustness MODEL... --out {run}/robustness"),
    "visualize": ("Qualitative comparison", "kdeval visualize MODEL... --out {run}/visualize"),
}
GALLERY_IMAGES = Path("visualize") / "images"  # the gallery's copies of dataset images, not figures
CSV_PREVIEW_ROWS = 20
_CELL_SPLIT = re.compile(r"(?<!\\)\|")


@dataclass(frozen=True)
class Block:
    """A piece of a table file, in order: a heading, a table, or a line of text."""

    kind: str  # "heading", "table" or "text"
    text: str = ""
    emphasis: str = ""  # a text line wholly in **…** ("strong") or *…* ("em"), its markers removed
    header: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    numeric: tuple[bool, ...] = ()  # per column: right-aligned


@dataclass(frozen=True)
class TableFile:
    path: str  # relative to the run folder
    blocks: tuple[Block, ...]
    formats: tuple[str, ...]  # sibling files of the same name: relative paths of .md, .csv, .tex
    preview: str | None = None  # "first 20 of 1,204 rows" when a CSV is cut short
    collapsed: bool = False  # CSV-only tables: shown folded


@dataclass(frozen=True)
class FigureFile:
    png: str  # relative to the run folder
    pdf: str | None
    title: str


@dataclass(frozen=True)
class SettingsFile:
    path: str
    items: tuple[tuple[str, str], ...]


@dataclass
class Section:
    key: str
    title: str
    present: bool
    tables: list[TableFile] = field(default_factory=list)
    figures: list[FigureFile] = field(default_factory=list)  # in the section's folder itself
    figure_groups: dict[str, list[FigureFile]] = field(default_factory=dict)  # by subfolder
    settings: list[SettingsFile] = field(default_factory=list)
    gallery: str | None = None  # relative link to the gallery page
    gallery_summary: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class RunReport:
    run_dir: Path
    sections: list[Section]
    missing: list[str]
    recorded_versions: list[tuple[str, dict]]  # (settings file, its "versions")
    versions: dict[str, str]  # of the environment that wrote this page


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


# ---------------------------------------------------------------- reading tables


def _cells(line: str) -> list[str]:
    parts = _CELL_SPLIT.split(line.strip())
    if parts and parts[0].strip() == "":
        parts = parts[1:]
    if parts and parts[-1].strip() == "":
        parts = parts[:-1]
    return [part.strip().replace("\\|", "|") for part in parts]


def _is_separator(cells: list[str]) -> bool:
    return bool(cells) and all(re.fullmatch(r":?-{2,}:?", c.replace(" ", "")) for c in cells)


def _text_block(line: str) -> Block:
    for marker, emphasis in (("**", "strong"), ("*", "em")):
        inner = line[len(marker):-len(marker)]
        if len(line) > 2 * len(marker) and line.startswith(marker) and line.endswith(marker) and not inner.startswith("*") \
                and not inner.endswith("*"):
            return Block("text", text=inner, emphasis=emphasis)
    return Block("text", text=line)


def markdown_blocks(text: str) -> list[Block]:
    """Headings, pipe tables and lines of text (a whole line in bold or italics, as the robustness
    summary's title and notes are) of a Markdown file: the subset kdeval's tables use."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("|"):
            table_lines = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                table_lines.append(_cells(lines[i]))
                i += 1
            header, body = table_lines[0], table_lines[1:]
            numeric = tuple(False for _ in header)
            if body and _is_separator(body[0]):
                numeric = tuple(c.replace(" ", "").endswith(":") for c in body[0])
                body = body[1:]
            width = len(header)
            rows = tuple(tuple((row + [""] * width)[:width]) for row in body)
            blocks.append(Block("table", header=tuple(header), rows=rows, numeric=(numeric + (False,) * width)[:width]))
            continue
        if line.startswith("#"):
            blocks.append(Block("heading", text=line.lstrip("#").strip()))
        elif line:
            blocks.append(_text_block(line))
        i += 1
    return blocks


def csv_block(path: Path, max_rows: int = CSV_PREVIEW_ROWS) -> tuple[Block, int]:
    """The first rows of a CSV as a table block, and its number of data rows."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return Block("table"), 0
    header, body = rows[0], rows[1:]
    shown = tuple(tuple(row) for row in body[:max_rows])
    numeric = tuple(
        bool(shown) and all(re.fullmatch(r"-?[\d.eE+-]+|nan|", row[c] if c < len(row) else "") for row in shown)
        for c in range(len(header))
    )
    return Block("table", header=tuple(header), rows=shown, numeric=numeric), len(body)


# ---------------------------------------------------------------- gathering a section


def _relative(path: Path, run_dir: Path) -> str:
    return path.relative_to(run_dir).as_posix()


def _files(folder: Path, pattern: str, run_dir: Path) -> list[Path]:
    """Matching files under folder, the folder's own first, then by subfolder; never the gallery's images."""
    found = [p for p in folder.rglob(pattern) if p.is_file() and not p.is_relative_to(run_dir / GALLERY_IMAGES)]
    return sorted(found, key=lambda p: (len(p.relative_to(folder).parts) > 1, p.relative_to(folder).as_posix()))


def _siblings(path: Path, run_dir: Path) -> tuple[str, ...]:
    return tuple(_relative(path.with_suffix(s), run_dir) for s in (".md", ".csv", ".tex") if path.with_suffix(s).is_file())


def _tables(folder: Path, run_dir: Path, missing: list[str]) -> list[TableFile]:
    tables = []
    for path in _files(folder, "*.md", run_dir):
        try:
            blocks = markdown_blocks(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            missing.append(f"{_relative(path, run_dir)}: unreadable ({exc.__class__.__name__})")
            continue
        tables.append(TableFile(_relative(path, run_dir), tuple(blocks), _siblings(path, run_dir)))
    for path in _files(folder, "*.csv", run_dir):
        if path.with_suffix(".md").is_file():
            continue
        try:
            block, count = csv_block(path)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            missing.append(f"{_relative(path, run_dir)}: unreadable ({exc.__class__.__name__})")
            continue
        preview = f"first {len(block.rows)} of {count:,} rows" if count > len(block.rows) else None
        tables.append(TableFile(_relative(path, run_dir), (block,), _siblings(path, run_dir), preview, collapsed=True))
    return tables


def _figures(folder: Path, run_dir: Path) -> tuple[list[FigureFile], dict[str, list[FigureFile]]]:
    own, groups = [], {}
    for png in _files(folder, "*.png", run_dir):
        pdf = png.with_suffix(".pdf")
        figure = FigureFile(_relative(png, run_dir), _relative(pdf, run_dir) if pdf.is_file() else None,
                            png.stem.replace("_", " "))
        if png.parent == folder:
            own.append(figure)
        else:
            groups.setdefault(_relative(png.parent, run_dir), []).append(figure)
    return own, groups


def _display(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _settings(folder: Path, run_dir: Path, missing: list[str],
              recorded: list[tuple[str, dict]]) -> list[SettingsFile]:
    files = []
    for path in _files(folder, "*settings*.json", run_dir):
        name = _relative(path, run_dir)
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            missing.append(f"{name}: not valid JSON")
            continue
        if not isinstance(content, dict):
            content = {"value": content}
        versions = content.get("versions")
        if isinstance(versions, dict):
            recorded.append((name, {str(k): _display(v) for k, v in versions.items()}))
        files.append(SettingsFile(name, tuple((str(k), _display(v)) for k, v in content.items() if k != "versions")))
    return files


def _gallery_summary(folder: Path) -> list[tuple[str, str]]:
    try:
        settings = json.loads((folder / "visualize_settings.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return []
    if not isinstance(settings, dict):
        return []
    summary = []
    if isinstance(settings.get("models"), dict):
        summary.append(("models", ", ".join(str(m) for m in settings["models"])))
    if "select" in settings:
        summary.append(("selection", _display(settings["select"])))
    if isinstance(settings.get("shown_image_ids"), list):
        summary.append(("images shown", str(len(settings["shown_image_ids"]))))
    if "score_threshold" in settings:
        summary.append(("score threshold", _display(settings["score_threshold"])))
    return summary


def gather_section(run_dir: Path, key: str, missing: list[str], recorded: list[tuple[str, dict]]) -> Section:
    title, command = SECTIONS[key]
    folder = run_dir / key
    if not folder.is_dir():
        missing.append(f"{key}/: not found — run `{command.format(run=run_dir.as_posix())}`")
        return Section(key, title, present=False)
    section = Section(key, title, present=True)
    section.tables = _tables(folder, run_dir, missing)
    section.figures, section.figure_groups = _figures(folder, run_dir)
    section.settings = _settings(folder, run_dir, missing, recorded)
    if key == "visualize":
        if (folder / PAGE_FILE).is_file():
            section.gallery = _relative(folder / PAGE_FILE, run_dir)
            section.gallery_summary = _gallery_summary(folder)
        else:
            missing.append(f"visualize/{PAGE_FILE}: not found — the gallery page was not written")
    if not (section.tables or section.figures or section.figure_groups or section.gallery):
        missing.append(f"{key}/: holds no tables, figures or gallery")
    return section


def gather_run(run_dir: Path) -> RunReport:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise KdevalError(f"{run_dir}: run folder not found")
    if not any((run_dir / key).is_dir() for key in SECTIONS):
        raise KdevalError(f"{run_dir}: holds none of {', '.join(k + '/' for k in SECTIONS)}; nothing to report")
    missing: list[str] = []
    recorded: list[tuple[str, dict]] = []
    sections = [gather_section(run_dir, key, missing, recorded) for key in SECTIONS]
    return RunReport(run_dir, sections, missing, recorded, package_versions())


def write_run_report(run_dir: Path) -> tuple[Path, list[str]]:
    """RUN_DIR/index.html, written atomically; and a line per section for the terminal."""
    report = gather_run(run_dir)
    nonce = new_nonce()
    page = render(
        "report.html.j2",
        report=report,
        run_name=report.run_dir.resolve().name,
        written=dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        csp=content_security_policy(nonce),
        nonce=nonce,
    )
    path = write_text_atomic(report.run_dir / PAGE_FILE, page)
    summary = []
    for section in report.sections:
        if section.present:
            figures = len(section.figures) + sum(len(g) for g in section.figure_groups.values())
            summary.append(f"{section.key}/: {plural(len(section.tables), 'table')}, {plural(figures, 'figure')}"
                           + (", gallery" if section.gallery else ""))
        else:
            summary.append(f"{section.key}/: missing")
    return path, summary
