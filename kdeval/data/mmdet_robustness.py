"""mmdetection's robustness results, read without running anything in the file, as kdeval's tidy table.

mmdetection's `tools/analysis_tools/test_robustness.py --out X.pkl` writes X_results.pkl, a pickle of
    {corruption: {severity: metrics}}      severity 0 = the clean images (copied under every corruption)
where `metrics` takes one of the forms mmdetection's versions wrote and its robustness_eval.py reads:
    {'bbox': {'AP': .., 'AP50': .., 'AP75': .., 'APs': .., 'APm': .., 'APl': .., 'AR1': .., ..}}
        COCOeval's stats as numpy float64 scalars (test_robustness.py's coco_eval_with_return);
    {'bbox_mAP': .., 'bbox_mAP_50': .., 'bbox_mAP_75': .., 'bbox_mAP_s': .., 'bbox_mAP_m': ..,
     'bbox_mAP_l': .., 'bbox_mAP_copypaste': '..'}   a dataset's evaluate(), possibly an OrderedDict;
    the same keys prefixed 'coco/' (mmdetection 3's metric names, as its robustness_eval.py reads them).
Values are fractions (0–1; COCOeval's -1 where a range has no ground truth). The corruption
names are imagecorruptions' own, kdeval's; 'None' is mmdetection's clean-only run.

A pickle can name any function for the reader to call. This reader refuses every such name except
the few that mmdetection's files need, and even for those it never calls the real thing:
  - numpy number scalars (`numpy.core.multiarray.scalar` / `numpy._core.multiarray.scalar` with a
    `numpy.dtype`): stand-ins decode the scalar's raw bytes with `struct`, for float and integer
    codes only, and return a Python number; numpy's own code never sees the file;
  - `_codecs.encode`: how pickle protocol 2 (mmcv's default) stores bytes; only ('…', 'latin1');
  - `collections.OrderedDict`: becomes a plain dict.
Anything else — numpy arrays, any other class or function — is refused with one line naming it.
"""

from __future__ import annotations

import io
import logging
import math
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kdeval.errors import KdevalError
from kdeval.vocab import ALL_CORRUPTIONS, CLEAN, COCO_STAT_NAMES, ROBUSTNESS_TIDY_COLUMNS, SEVERITIES

log = logging.getLogger("kdeval")

# A full 19-corruption result is about 50 kB; anything near this is not one, and pickle builds
# whatever the file describes in memory.
MAX_PICKLE_BYTES = 64 * 1024**2
MMDET_CLEAN_ONLY = "None"  # test_robustness.py --corruptions None: severity 0 only

# kdeval's metric names under each spelling mmdetection used (task 'bbox').
_MMDET_SPELLINGS = {
    "AP": "mAP", "AP50": "mAP_50", "AP75": "mAP_75", "APs": "mAP_s", "APm": "mAP_m", "APl": "mAP_l",
}
METRIC_KEYS = {
    **{name: name for name in COCO_STAT_NAMES},
    **{f"bbox_{spelling}": name for name, spelling in _MMDET_SPELLINGS.items()},
    **{f"coco/bbox_{spelling}": name for name, spelling in _MMDET_SPELLINGS.items()},
}
_OTHER_TASKS = ("segm", "proposal", "keypoints")


# ---------------------------------------------------------------- the restricted unpickler


class _Refused(Exception):
    """Something in the pickle that this reader does not build."""


# numpy dtype codes of plain numbers → struct formats; anything else (objects, strings, records,
# datetimes) is refused
_NUMBER_FORMATS = {
    "f8": "d", "f4": "f", "f2": "e",
    "i8": "q", "i4": "i", "i2": "h", "i1": "b",
    "u8": "Q", "u4": "I", "u2": "H", "u1": "B",
}


class _NumberDtype:
    """Stands in for `numpy.dtype(code, align, copy)`: remembers a number type and its byte order."""

    __slots__ = ("code", "byteorder")

    def __init__(self, code=None, align=False, copy=True):
        if code not in _NUMBER_FORMATS or align not in (0, 1) or copy not in (0, 1):
            raise _Refused(f"numpy.dtype{(code, align, copy)!r:.60} (only float and integer scalars are read)")
        self.code = code
        self.byteorder = "<"

    def __setstate__(self, state):
        # numpy's dtype state: (version, byte order, ...); only the byte order matters for a number
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise _Refused(f"a numpy.dtype state {state!r:.60}")
        self.byteorder = {"<": "<", ">": ">", "|": "<", "=": "="}[state[1]]


def _number_scalar(dtype=None, raw=None):
    """Stands in for numpy's scalar(dtype, raw bytes): the number those bytes hold, as Python's."""
    if not isinstance(dtype, _NumberDtype) or not isinstance(raw, bytes):
        raise _Refused("a numpy scalar that is not a plain number")
    layout = dtype.byteorder + _NUMBER_FORMATS[dtype.code]
    if len(raw) != struct.calcsize(layout):
        raise _Refused(f"a numpy {dtype.code} scalar of {len(raw)} bytes")
    return struct.unpack(layout, raw)[0]


def _latin1_bytes(text=None, encoding=None):
    """Stands in for `_codecs.encode(text, 'latin1')`, pickle protocol 2's way of storing bytes;
    no other encoding is looked up."""
    if not isinstance(text, str) or encoding != "latin1":
        raise _Refused(f"_codecs.encode with {encoding!r:.20}")
    return text.encode("latin-1")


def _plain_dict(items=()):
    return dict(items)


class _StandIn:
    """What find_class hands the unpickler instead of the real callable. Calling it builds plain
    data; the pickle cannot change it (BUILD on it is refused), so one file cannot alter another's reading."""

    __slots__ = ("_build", "_what")

    def __init__(self, build, what: str):
        self._build = build
        self._what = what

    def __call__(self, *args):
        return self._build(*args)

    def __setstate__(self, state):
        raise _Refused(f"a change to {self._what}")


_STAND_INS = {
    ("numpy.core.multiarray", "scalar"): _number_scalar,
    ("numpy._core.multiarray", "scalar"): _number_scalar,
    ("numpy", "dtype"): _NumberDtype,
    ("_codecs", "encode"): _latin1_bytes,
    ("collections", "OrderedDict"): _plain_dict,
}


class _PlainDataUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, strings, numbers, booleans and None, and the stand-ins above.
    Every other global a pickle names is refused before it is imported, so nothing in the file runs."""

    def find_class(self, module, name):
        stand_in = _STAND_INS.get((module, name))
        if stand_in is None:
            if module.startswith("numpy") and name in ("_reconstruct", "ndarray", "_frombuffer"):
                raise _Refused(f"{module}.{name} (a numpy array)")
            raise _Refused(f"{module}.{name}")
        return _StandIn(stand_in, f"{module}.{name}")

    def persistent_load(self, pid):
        raise _Refused(f"a persistent id {pid!r:.40}")


_UNREADABLE = (
    pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
    struct.error, RecursionError, MemoryError, OverflowError, UnicodeError, ImportError,
)


def load_plain_pickle(path: Path):
    """The data in a pickle file that holds only plain containers and numbers (see the module
    docstring); a file that names anything else is refused with a one-line KdevalError."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_PICKLE_BYTES:
            raise KdevalError(f"{path}: {size / 1024**2:.0f} MiB is far larger than a robustness results pickle; refused")
        data = path.read_bytes()
    except OSError as exc:
        raise KdevalError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return _PlainDataUnpickler(io.BytesIO(data)).load()
    except _Refused as exc:
        raise KdevalError(
            f"{path}: refused to unpickle {exc}: kdeval reads only dicts, lists, strings and numbers "
            "from a pickle, never code; convert the results to plain Python floats first"
        ) from None
    except _UNREADABLE as exc:
        detail = " ".join(str(exc).split())[:120]
        raise KdevalError(f"{path}: not a readable pickle ({type(exc).__name__}: {detail})") from None


# ---------------------------------------------------------------- structure → tidy table


@dataclass(frozen=True)
class ImportedRobustness:
    name: str
    source: Path
    table: pd.DataFrame  # tidy: model, corruption, severity, metric, value (0–1; -1 = no ground truth)
    layout: str  # which of mmdetection's metric spellings the file used
    notes: tuple[str, ...]  # what the reader left out or merged, for the user

    @property
    def scenarios(self) -> int:
        return len(self.table[["corruption", "severity"]].drop_duplicates())


def _where(path: Path, keys: tuple) -> str:
    return f"{path}: " + "".join(f"[{key!r}]" for key in keys)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _metrics_of(entry, path: Path, keys: tuple, skipped: set[str]) -> tuple[dict[str, float], str]:
    """kdeval's metric name → value of one scenario, and the spelling it used."""
    if isinstance(entry, list):
        raise KdevalError(f"{_where(path, keys)}: a list (Pascal VOC's per-class AP50); only COCO-style bbox metrics import")
    if not isinstance(entry, dict):
        raise KdevalError(f"{_where(path, keys)}: expected a dict of metrics, got {type(entry).__name__}")
    if "bbox" in entry:
        metrics, keys, layout = entry["bbox"], (*keys, "bbox"), "{'bbox': {'AP': ..}}"
        if not isinstance(metrics, dict):
            raise KdevalError(f"{_where(path, keys)}: expected a dict of metrics, got {type(metrics).__name__}")
        skipped.update(str(k) for k in entry if k != "bbox")
    else:
        metrics, layout = entry, "flat"
    found: dict[str, float] = {}
    spelled: dict[str, str] = {}
    for key, value in metrics.items():
        name = METRIC_KEYS.get(key) if isinstance(key, str) else None
        if name is None:
            if not (isinstance(key, str) and key.endswith("_copypaste")):  # mmdetection's summary string
                skipped.add(str(key))
            continue
        if name in found:
            raise KdevalError(f"{_where(path, (*keys, key))}: {name} is also given as {spelled[name]!r}; keep one spelling")
        if not _is_number(value) or not math.isfinite(value):
            raise KdevalError(f"{_where(path, (*keys, key))}: expected a finite number, got {value!r:.40}")
        if not (value == -1 or 0 <= value <= 1):
            hint = " (a percentage? mmdetection stores fractions 0–1)" if 1 < value <= 100 else ""
            raise KdevalError(f"{_where(path, (*keys, key))}: {value} is outside 0–1{hint}")
        found[name], spelled[name] = float(value), key
        if layout == "flat":
            layout = "{'coco/bbox_mAP': ..}" if key.startswith("coco/") else "{'bbox_mAP': ..}"
    if "AP" not in found:
        only = [t for t in _OTHER_TASKS if any(str(k).startswith((t, f"coco/{t}")) for k in (*entry, *metrics))]
        detail = (f" (only {', '.join(only)} results)" if only
                  else f"; keys {', '.join(map(str, list(metrics)[:6]))}" if metrics else " (no metrics at all)")
        raise KdevalError(f"{_where(path, keys)}: no bbox AP{detail}")
    return found, layout


def _clean_rows(clean: dict[str, dict[str, float]], notes: list[str]) -> dict[str, float]:
    """One set of clean metrics from mmdetection's copies under each corruption: equal copies are
    one; copies that differ (files merged from separate runs) are averaged, and the note says so."""
    merged = {}
    for metric in COCO_STAT_NAMES:
        values = [m[metric] for m in clean.values() if metric in m]
        if not values:
            continue
        if max(values) - min(values) <= 1e-12:
            merged[metric] = values[0]
            continue
        scored = [v for v in values if v >= 0]
        merged[metric] = sum(scored) / len(scored) if scored else -1.0
        if metric == "AP":
            notes.append(
                f"severity 0 (clean) differs between corruptions ({len(values)} copies, AP "
                f"{100 * min(values):.1f}–{100 * max(values):.1f}); P is their mean"
            )
    return merged


def _scenario_order(row: tuple) -> tuple:
    corruption, severity = row[1], row[2]
    return (severity > 0, ALL_CORRUPTIONS.index(corruption) if corruption in ALL_CORRUPTIONS else -1, severity,
            COCO_STAT_NAMES.index(row[3]))


def tidy_from_mmdet(data, name: str, path: Path) -> ImportedRobustness:
    """mmdetection's {corruption: {severity: metrics}} → kdeval's tidy rows for model `name`.
    Errors name the file and the key path of the first problem."""
    path = Path(path)
    if not isinstance(data, dict) or not data:
        kind = "an empty dict" if isinstance(data, dict) else type(data).__name__
        raise KdevalError(
            f"{path}: expected mmdetection's robustness results, a dict corruption → severity → metrics "
            f"(test_robustness.py's <out>_results.pkl), got {kind}"
        )
    rows: list[tuple] = []
    clean: dict[str, dict[str, float]] = {}
    layouts: set[str] = set()
    skipped: set[str] = set()
    for corruption, by_severity in data.items():
        if corruption != MMDET_CLEAN_ONLY and corruption not in ALL_CORRUPTIONS:
            raise KdevalError(
                f"{_where(path, (corruption,))}: unknown corruption; expected one of {', '.join(ALL_CORRUPTIONS)} (or 'None')"
            )
        if not isinstance(by_severity, dict) or not by_severity:
            raise KdevalError(f"{_where(path, (corruption,))}: expected a dict severity → metrics")
        for severity, entry in by_severity.items():
            keys = (corruption, severity)
            if not isinstance(severity, int) or isinstance(severity, bool) or not 0 <= severity <= SEVERITIES[-1]:
                raise KdevalError(f"{_where(path, keys)}: severities are the integers 0 (clean) to {SEVERITIES[-1]}")
            if corruption == MMDET_CLEAN_ONLY and severity != 0:
                raise KdevalError(f"{_where(path, keys)}: corruption 'None' is mmdetection's clean-only run; severity must be 0")
            metrics, layout = _metrics_of(entry, path, keys, skipped)
            layouts.add(layout)
            if severity == 0:
                clean[corruption] = metrics
            else:
                rows += [(name, corruption, severity, metric, value) for metric, value in metrics.items()]
    notes: list[str] = []
    rows += [(name, CLEAN, 0, metric, value) for metric, value in _clean_rows(clean, notes).items()]
    if not clean:
        notes.append(f"{path.name} has no severity 0 (clean) results: P and rPC of '{name}' are undefined")
    if skipped:
        notes.append(f"left out keys kdeval does not tabulate: {', '.join(sorted(skipped)[:8])}" + (" …" if len(skipped) > 8 else ""))
    rows.sort(key=_scenario_order)
    table = pd.DataFrame(rows, columns=list(ROBUSTNESS_TIDY_COLUMNS)).astype({"severity": int, "value": float})
    return ImportedRobustness(name, path, table, " and ".join(sorted(layouts)), tuple(notes))


def read_mmdet_robustness(path: Path, name: str) -> ImportedRobustness:
    """mmdetection's `<out>_results.pkl` as kdeval's tidy table for model `name`, read with the
    restricted unpickler; any refusal or malformed entry is a one-line KdevalError."""
    if not name or not name.strip():
        raise KdevalError("--name: give the imported model a name")
    path = Path(path)
    if not path.is_file():
        raise KdevalError(f"{path}: robustness results file not found")
    imported = tidy_from_mmdet(load_plain_pickle(path), name, path)
    for note in imported.notes:
        log.warning("%s: %s", path.name, note)
    return imported
