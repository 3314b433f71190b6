"""Robustness results scored elsewhere (mmdetection's test_robustness.py), kept in a kdeval
robustness run folder so that its tables and figures show them beside kdeval's own models.

An import is not a run: it has no checkpoint, data key or scenario files, so it stays out of
run.json and its resume bookkeeping. Each imported model is two files in the run folder,
    imported/<name>.csv          its tidy table (model, corruption, severity, metric, value)
    imported/<name>.source.json  where it came from: the file, its sha256, the layout read
written atomically, table first. Every report written into the folder (a kdeval run, or an
import) includes every imported model; importing the same name again replaces it; `--overwrite`
discards kdeval's own results only; delete the two files to drop an import. A name is either
kdeval's or imported, never both, so no figure or row of one can overwrite the other's.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kdeval.data.mmdet_robustness import ImportedRobustness
from kdeval.data.coco import read_json
from kdeval.engine.robustness.store import has_results, stored_results
from kdeval.errors import KdevalError
from kdeval.fileio import file_sha256, read_json_or_none, safe_file_stem, write_json_atomic, write_text_atomic
from kdeval.metrics.robustness import check_tidy
from kdeval.vocab import ALL_CORRUPTIONS, CLEAN, ROBUSTNESS_TIDY_COLUMNS

IMPORTS_DIR = "imported"
SOURCE_FORMAT = "kdeval-robustness-import"


@dataclass(frozen=True)
class StoredImport:
    name: str
    table: pd.DataFrame
    source: str  # the file it was imported from, as given then


def _table_path(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / IMPORTS_DIR / f"{safe_file_stem(name)}.csv"


def _source_path(table_path: Path) -> Path:
    return table_path.with_name(table_path.stem + ".source.json")


def _read_import(path: Path) -> StoredImport:
    """One imported table, checked: it is a file kdeval wrote, but may have been edited since."""
    try:
        table = pd.read_csv(path)
        check_tidy(table)
    except (OSError, ValueError) as exc:
        raise KdevalError(f"{path}: not an imported robustness table ({' '.join(str(exc).split())[:100]}); delete it or import again") from None
    names = set(table["model"].astype(str))
    unknown = sorted(set(table["corruption"]) - {CLEAN, *ALL_CORRUPTIONS})
    if len(names) != 1 or unknown:
        problem = f"unknown corruption '{unknown[0]}'" if unknown else "not one model"
        raise KdevalError(f"{path}: {problem}; delete it or import again")
    record = read_json_or_none(_source_path(path))
    source = str(record.get("source", "?")) if isinstance(record, dict) else "?"
    return StoredImport(names.pop(), table.astype({"model": str, "severity": int, "value": float}), source)


def stored_imports(out_dir: Path) -> list[StoredImport]:
    """The models imported into a run folder, by file name."""
    folder = Path(out_dir) / IMPORTS_DIR
    paths = sorted(p for p in folder.glob("*.csv") if not p.name.startswith(".")) if folder.is_dir() else []
    return [_read_import(path) for path in paths]


def imported_names(out_dir: Path, adding: ImportedRobustness | None = None) -> list[str]:
    """The names of the models imported into `out_dir`, with the one being added."""
    names = [item.name for item in stored_imports(out_dir)]
    return names + ([adding.name] if adding is not None and adding.name not in names else [])


def folder_names(out_dir: Path, adding: ImportedRobustness | None = None) -> list[str]:
    """Every model a folder report shows: kdeval's with finished scenarios, then the imports."""
    own = stored_results(out_dir)["model"]
    return list(dict.fromkeys([*own, *imported_names(out_dir, adding)]))


def check_names(out_dir: Path, run_names: list[str], adding: ImportedRobustness | None = None) -> None:
    """Refuse, before anything is written or run, a name that would be both kdeval's and imported:
    a kdeval model under an imported name, or an import under the name of kdeval's results."""
    out_dir = Path(out_dir)
    if adding is not None:
        if adding.name in run_names:
            raise KdevalError(f"--name '{adding.name}' is also the name of a MODEL argument; give one of them another name")
        if has_results(out_dir, adding.name):
            raise KdevalError(f"{out_dir} holds kdeval's own robustness results under the name '{adding.name}'; import under another --name")
        path = _table_path(out_dir, adding.name)
        earlier = _imported_name(path)
        if earlier is not None and earlier != adding.name:
            raise KdevalError(f"imported model '{earlier}' in {out_dir} shares the file name {path.name} with '{adding.name}'; choose another --name")
    for name in run_names:
        path = _table_path(out_dir, name)
        if path.is_file():
            raise KdevalError(
                f"'{name}' is an imported model in {out_dir} ({IMPORTS_DIR}/{path.name}); give the checkpoint another "
                "name (NAME=PATH), or delete the import's two files"
            )


def _imported_name(path: Path) -> str | None:
    """The name an existing import file holds; None when there is none, or it is damaged (and will be replaced)."""
    if not path.is_file():
        return None
    try:
        return _read_import(path).name
    except KdevalError:
        return None


def store_import(out_dir: Path, imported: ImportedRobustness) -> Path:
    """Keep an import in the run folder, replacing an earlier import of the same name."""
    out_dir = Path(out_dir)
    check_names(out_dir, [], imported)
    path = _table_path(out_dir, imported.name)
    write_text_atomic(path, imported.table[list(ROBUSTNESS_TIDY_COLUMNS)].to_csv(index=False))
    write_json_atomic(_source_path(path), {
        "format": SOURCE_FORMAT,
        "name": imported.name,
        "source": str(imported.source),
        "sha256": file_sha256(imported.source),
        "reader": "mmdetection test_robustness.py results pickle",
        "layout": imported.layout,
        "scenarios": imported.scenarios,
        "notes": list(imported.notes),
        "imported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    })
    return path


def imports_note(imports: list[StoredImport]) -> tuple[str, ...]:
    """The sentence that says which rows were not scored by this run, for every table's notes."""
    if not imports:
        return ()
    sources = "; ".join(f"{item.name} from {Path(item.source).name}" for item in imports)
    return (f"imported from mmdetection's robustness results, scored on their own data and settings: {sources}",)


def with_imports(table: pd.DataFrame, out_dir: Path) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """kdeval's table with every model imported into `out_dir` appended, and the note saying so."""
    imports = stored_imports(out_dir)
    return _joined([table, *(item.table for item in imports)]), imports_note(imports)


def folder_results(out_dir: Path) -> tuple[pd.DataFrame, str, tuple[str, ...]]:
    """Everything a run folder holds — kdeval's finished scenarios and every import — as one tidy
    table, with a title and notes that say where each model's numbers come from."""
    out_dir = Path(out_dir)
    own = stored_results(out_dir)
    table, notes = with_imports(own, out_dir)
    if len(own):
        data = read_json(out_dir / "run.json", "robustness run").get("data", {})
        models = ", ".join(dict.fromkeys(own["model"]))
        notes = (f"run by kdeval on {data.get('image_count', '?')} images of {data.get('images', '?')}, "
                 f"corruption seed {data.get('seed', '?')}: {models}", *notes)
    return table, f"Robustness results in {out_dir}: clean AP, mPC, rPC (%)", notes


def _joined(tables: list[pd.DataFrame]) -> pd.DataFrame:
    tables = [t for t in tables if len(t)]
    if not tables:
        return pd.DataFrame(columns=list(ROBUSTNESS_TIDY_COLUMNS))
    return pd.concat(tables, ignore_index=True).astype({"severity": int, "value": float})


def check_baseline(baseline: str | None, names: list[str]) -> str | None:
    if baseline is not None and baseline not in names:
        raise KdevalError(f"--baseline '{baseline}' is not one of the models ({', '.join(names)})")
    return baseline
