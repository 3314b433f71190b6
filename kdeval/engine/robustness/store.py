"""A robustness run folder: what its results depend on (run.json), the finished scenarios' files, and
the folder read back without running a model.

    run.json                                      the data key (data, seed, inference) and each model's checkpoint
    scenarios/<model>/<corruption>-<s>.json       the 12 COCO stats of one finished scenario (+ its key)
    detections/<model>/<corruption>-<s>.json.gz   that scenario's COCO results
Both per-scenario files are written atomically, detections first, so a scenario counts as finished
only when its stats file exists and its key matches: a kill at any moment loses at most the
scenarios in flight, and a rerun skips every finished one. A rerun whose data key differs, or that
gives a model name another checkpoint, is refused rather than mixed in.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from kdeval.data.coco import read_json
from kdeval.data.corrupted import CACHE_VERSION, Scenario, library_version
from kdeval.data.source import Split
from kdeval.engine.robustness.settings import RobustnessSettings
from kdeval.errors import KdevalError
from kdeval.fileio import file_sha256, read_json_or_none, safe_file_stem, write_bytes_atomic, write_json_atomic
from kdeval.vocab import ALL_CORRUPTIONS, COCO_STAT_NAMES, ROBUSTNESS_TIDY_COLUMNS

RUN_FORMAT = "kdeval-robustness"
RUN_VERSION = 1


# ---------------------------------------------------------------- run.json


def data_key(split: Split, gt: dict, settings: RobustnessSettings) -> dict:
    """Everything other than the model that the detections of a scenario depend on."""
    return {
        "annotations": file_sha256(split.annotations),
        "images": str(Path(split.images).resolve()),
        "image_count": len(gt["images"]),
        "image_ids_sha256": hashlib.sha256(json.dumps([image["id"] for image in gt["images"]]).encode()).hexdigest(),
        "max_images": settings.max_images,
        "seed": settings.seed,
        "imagecorruptions": library_version(),
        "corruption_version": CACHE_VERSION,
        **settings.predict.cache_fields(),
        # images of several sizes are batched by padded shape, which gives other detections than
        # batches in the dataset's order; on images of one size both batch alike, so their keys omit it
        **({"batching": "by padded shape"} if len({(image.get("height"), image.get("width")) for image in gt["images"]}) > 1 else {}),
    }


def _change(key: str, before, now) -> str:
    if len(repr(before)) + len(repr(now)) < 40:
        unset = lambda value: "unset" if value is None else value  # noqa: E731  (e.g. --max-images not given)
        return f"{key} {unset(before)} there, {unset(now)} now"
    return f"{key} differs"


def _finished_files(out_dir: Path, model: str | None = None) -> list[Path]:
    folder = out_dir / "scenarios" / (safe_file_stem(model) if model is not None else "")
    return [p for p in folder.rglob("*.json") if not p.name.startswith(".")] if folder.is_dir() else []


def _read_run(path: Path) -> dict:
    record = read_json(path, "robustness run")
    if not isinstance(record, dict) or record.get("format") != RUN_FORMAT:
        raise KdevalError(f"{path}: not a kdeval robustness run; choose another --out")
    return record


def open_run(out_dir: Path, key: dict, checkpoints: dict[str, str]) -> None:
    """Check run.json against this run's settings and refuse to mix results made otherwise, then
    record the union. Settings of an earlier run that left no finished scenario do not count."""
    path = out_dir / "run.json"
    models = dict(checkpoints)
    if path.is_file():
        earlier = _read_run(path)
        before = earlier.get("data", {})
        differing = [_change(name, before.get(name), key.get(name)) for name in sorted(set(key) | set(before)) if before.get(name) != key.get(name)]
        if differing and _finished_files(out_dir):
            # a run made in the other precision goes on under the flag that selects it
            precision = (" (or --fp32 / --amp, to continue in the precision it was made with)"
                         if before.get("amp") != key.get("amp") else "")
            raise KdevalError(
                f"{out_dir} holds a robustness run made with other settings ({'; '.join(differing)}); "
                f"use another --out{precision}, or --overwrite to start over"
            )
        for name, sha in earlier.get("models", {}).items():
            if name in models and models[name] != sha and _finished_files(out_dir, name):
                raise KdevalError(
                    f"{out_dir} holds results of another checkpoint under the name '{name}'; "
                    "use NAME=PATH with a new name, another --out, or --overwrite"
                )
            if not differing:
                models.setdefault(name, sha)
    write_json_atomic(path, {"format": RUN_FORMAT, "version": RUN_VERSION, "data": key, "models": models})


def clear_run(out_dir: Path) -> None:
    """--overwrite: forget the results of an earlier run (its report files are rewritten anyway)."""
    import shutil

    for name in ("scenarios", "detections"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    (out_dir / "run.json").unlink(missing_ok=True)


# ---------------------------------------------------------------- per-scenario files


def stats_path(out_dir: Path, model: str, scenario: Scenario) -> Path:
    return out_dir / "scenarios" / safe_file_stem(model) / f"{scenario.slug}.json"


def _detections_path(out_dir: Path, model: str, scenario: Scenario) -> Path:
    return out_dir / "detections" / safe_file_stem(model) / f"{scenario.slug}.json.gz"


def stored_detections(out_dir: Path, model: str, scenario: Scenario) -> list[dict]:
    """The COCO results a finished scenario of `model` left in the folder."""
    path = _detections_path(Path(out_dir), model, scenario)
    try:
        return json.loads(gzip.decompress(path.read_bytes()))
    except (OSError, ValueError) as exc:
        raise KdevalError(f"{path}: the detections of a finished scenario cannot be read ({exc}); rerun with --overwrite") from None


def scenario_key(key: dict, checkpoint_sha: str, scenario: Scenario) -> dict:
    return {"data": key, "checkpoint": checkpoint_sha, "corruption": scenario.corruption, "severity": scenario.severity}


def finished_stats(path: Path, key: dict) -> dict | None:
    """The stats of a finished scenario, or None when it must be (re)run."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("key") != key or set(record.get("stats", {})) != set(COCO_STAT_NAMES):
        return None
    return record["stats"]


def save_scenario(out_dir: Path, model: str, scenario: Scenario, key: dict, detections: list[dict], stats: dict) -> None:
    payload = json.dumps(detections, separators=(",", ":")).encode()
    # level 1: a fraction of the default level's time for a few percent more bytes
    # (benchmarks/RESULTS.md, "Robustness: scoring a scenario")
    write_bytes_atomic(_detections_path(out_dir, model, scenario), gzip.compress(payload, compresslevel=1, mtime=0))
    write_json_atomic(
        stats_path(out_dir, model, scenario),
        {"model": model, "corruption": scenario.corruption, "severity": scenario.severity, "key": key, "stats": stats},
    )


def written_stats(out_dir: Path, pending: dict[int, list[str]], scenarios: list[Scenario],
                  keys: dict[tuple[str, int], dict]) -> dict[tuple[str, Scenario], dict]:
    """The stats of every pending (model, scenario), read from the files the ranks wrote."""
    stats = {}
    for index, names in pending.items():
        for name in names:
            done = finished_stats(stats_path(out_dir, name, scenarios[index]), keys[(name, index)])
            if done is None:
                raise KdevalError(f"{out_dir}: scenario {scenarios[index].slug} of {name} is missing after the ranks finished")
            stats[(name, scenarios[index])] = done
    return stats


# ---------------------------------------------------------------- a run folder read back


def has_results(out_dir: Path, model: str) -> bool:
    """Whether the run folder holds any finished scenario of `model` (or of a name sharing its folder)."""
    return bool(_finished_files(Path(out_dir), model))


def stored_results(out_dir: Path) -> pd.DataFrame:
    """The tidy table of every finished scenario in a run folder, read back without running a model:
    the models recorded in run.json, in its order, each with the scenarios whose stats files match
    its recorded settings and checkpoint (those a rerun would reuse)."""
    out_dir = Path(out_dir)
    path = out_dir / "run.json"
    rows = []
    if path.is_file():
        record = _read_run(path)
        for model, checkpoint in record.get("models", {}).items():
            for found_path in sorted(_finished_files(out_dir, model)):
                found = read_json_or_none(found_path)
                if not isinstance(found, dict) or found.get("model") != model:
                    continue
                scenario = Scenario(found.get("corruption"), found.get("severity"))
                stats = finished_stats(found_path, scenario_key(record.get("data"), checkpoint, scenario))
                if stats is not None:
                    rows += [(model, scenario.corruption, scenario.severity, m, float(stats[m])) for m in COCO_STAT_NAMES]
    table = pd.DataFrame(rows, columns=list(ROBUSTNESS_TIDY_COLUMNS))
    order = {name: i for i, name in enumerate(ALL_CORRUPTIONS)}
    sort_keys = [table["model"].map({m: i for i, m in enumerate(dict.fromkeys(table["model"]))}),
                 table["severity"] > 0, table["corruption"].map(order).fillna(-1), table["severity"],
                 table["metric"].map({m: i for i, m in enumerate(COCO_STAT_NAMES)})]
    return table.iloc[np.lexsort(sort_keys[::-1])].reset_index(drop=True) if len(table) else table
