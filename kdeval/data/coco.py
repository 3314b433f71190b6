"""COCO-format ground truth and results: loading, checking, and the dataset that feeds a model.

Every check raises KdevalError with a one-line message that names the file and the field, so a
malformed input never surfaces as a traceback or, worse, as a silently wrong number.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from kdeval.errors import KdevalError

# ---------------------------------------------------------------- reading JSON


def read_json(path: Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise KdevalError(f"{path}: {what} file not found")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise KdevalError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KdevalError(f"{path}: cannot read {what} file ({exc})") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_bbox(bbox: Any, where: str) -> None:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise KdevalError(f"{where}.bbox: expected [x, y, width, height] as 4 numbers, got {bbox!r}")
    if not all(math.isfinite(v) for v in bbox):
        raise KdevalError(f"{where}.bbox: not finite ({bbox!r})")
    if bbox[2] < 0 or bbox[3] < 0:
        raise KdevalError(f"{where}.bbox: negative width or height ({bbox!r})")


def _require(record: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(record, dict):
        raise KdevalError(f"{where}: expected an object, got {type(record).__name__}")
    for key in keys:
        if key not in record:
            raise KdevalError(f"{where}: missing field '{key}'")


# ---------------------------------------------------------------- ground truth


def _unique_int_ids(records: list, section: str, noun: str, keys: tuple[str, ...], path: Path | str) -> set[int]:
    """The ids of a COCO section, checked to be integers, present, and unique."""
    ids: set[int] = set()
    for i, record in enumerate(records):
        where = f"{path}: {section}[{i}]"
        _require(record, keys, where)
        if not _is_int(record["id"]):
            raise KdevalError(f"{where}.id: expected an integer, got {record['id']!r}")
        if record["id"] in ids:
            raise KdevalError(f"{where}.id: duplicate {noun} id {record['id']}")
        ids.add(record["id"])
    return ids


def check_coco_annotations(coco: Any, path: Path | str) -> dict:
    """Validate a COCO instances dict; returns it unchanged. Raises KdevalError naming the field."""
    if not isinstance(coco, dict):
        raise KdevalError(f"{path}: expected a COCO object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise KdevalError(f"{path}: missing or malformed '{key}' (expected a list)")
    image_ids = _unique_int_ids(coco["images"], "images", "image", ("id", "file_name"), path)
    category_ids = _unique_int_ids(coco["categories"], "categories", "category", ("id", "name"), path)
    for i, category in enumerate(coco["categories"]):
        if not isinstance(category.get("supercategory", ""), (str, type(None))):
            raise KdevalError(f"{path}: categories[{i}].supercategory: expected a name, got {category['supercategory']!r}")
    if not category_ids:
        raise KdevalError(f"{path}: 'categories' is empty")
    annotation_ids = set()
    for i, ann in enumerate(coco["annotations"]):
        where = f"{path}: annotations[{i}]"
        _require(ann, ("id", "image_id", "category_id", "bbox"), where)
        for key in ("id", "image_id", "category_id"):
            if not _is_int(ann[key]):
                raise KdevalError(f"{where}.{key}: expected an integer, got {ann[key]!r}")
        if ann["id"] in annotation_ids:
            raise KdevalError(f"{where}.id: duplicate annotation id {ann['id']}")
        annotation_ids.add(ann["id"])
        if ann["image_id"] not in image_ids:
            raise KdevalError(f"{where}.image_id: {ann['image_id']!r} is not in 'images'")
        if ann["category_id"] not in category_ids:
            raise KdevalError(f"{where}.category_id: {ann['category_id']!r} is not in 'categories'")
        _check_bbox(ann["bbox"], where)
        if "area" in ann and not (_is_number(ann["area"]) and math.isfinite(ann["area"]) and ann["area"] >= 0):
            raise KdevalError(f"{where}.area: expected a non-negative number, got {ann['area']!r}")
        if ann.get("iscrowd", 0) not in (0, 1):
            raise KdevalError(f"{where}.iscrowd: expected 0 or 1, got {ann['iscrowd']!r}")
    return coco


def load_coco_annotations(path: Path) -> dict:
    """Read and validate a COCO instances file."""
    return check_coco_annotations(read_json(path, "annotation"), path)


# ---------------------------------------------------------------- results (detections)


def check_results(results: Any, gt: dict, path: Path | str, box_format: str = "xywh") -> list[dict]:
    """Validate the form of a COCO results list; returns a cleaned copy (xywh boxes).

    Each detection keeps image_id, category_id, bbox (xywh, floats) and score; extra keys that
    other toolkits write (segmentation, id, area) are dropped so they cannot confuse scoring.
    Whether the ids belong to the dataset is checked by foreign_results.check_foreign_results.
    """
    if not isinstance(results, list):
        raise KdevalError(f"{path}: expected a COCO results list of detections, got {type(results).__name__}")
    cleaned = _cleaned_if_well_formed(results, box_format)
    if cleaned is not None:
        return cleaned
    cleaned = []
    for i, det in enumerate(results):
        where = f"{path}: [{i}]"
        _require(det, ("image_id", "category_id", "bbox", "score"), where)
        for key in ("image_id", "category_id"):
            if not _is_int(det[key]):
                raise KdevalError(f"{where}.{key}: expected an integer id, got {det[key]!r}")
        bbox = det["bbox"]
        if box_format == "xyxy" and isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_is_number(v) for v in bbox):
            bbox = _xywh(bbox)
        _check_bbox(bbox, where)
        if not _is_number(det["score"]) or not math.isfinite(det["score"]):
            raise KdevalError(f"{where}.score: expected a finite number, got {det['score']!r}")
        cleaned.append(
            {
                "image_id": det["image_id"],
                "category_id": det["category_id"],
                "bbox": [float(v) for v in bbox],
                "score": float(det["score"]),
            }
        )
    return cleaned


def _xywh(bbox) -> list:
    return [bbox[0], bbox[1], bbox[2] - bbox[0], bbox[3] - bbox[1]]


def _cleaned_if_well_formed(results: list, box_format: str) -> list[dict] | None:
    """check_results' cleaned copy, checked field by field over all detections at once rather than
    number by number as the loop above does (a results file holds hundreds of thousands); None at
    the first doubt, so that the loop names the problem. Exact built-in types only: a bool, a numpy
    scalar or a dict subclass goes to the loop, which decides as it always has."""
    try:
        if not set(map(type, results)) <= {dict}:
            return None
        image_ids = [det["image_id"] for det in results]
        category_ids = [det["category_id"] for det in results]
        boxes = [det["bbox"] for det in results]
        scores = [det["score"] for det in results]
        if not set(map(type, itertools.chain(image_ids, category_ids))) <= {int}:
            return None
        if not set(map(type, boxes)) <= {list, tuple} or not set(map(len, boxes)) <= {4}:
            return None
        if not set(map(type, itertools.chain.from_iterable(boxes))) <= {int, float} or not set(map(type, scores)) <= {int, float}:
            return None
        if box_format == "xyxy":
            boxes = [_xywh(bbox) for bbox in boxes]
        # float64, as float() converts each number in the loop (ints too large for a float raise here
        # as they do there, and go to the loop)
        xywh = np.fromiter(itertools.chain.from_iterable(boxes), np.float64, 4 * len(boxes)).reshape(len(boxes), 4)
        score = np.array(scores, dtype=np.float64)
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    if not (np.isfinite(xywh).all() and np.isfinite(score).all() and (xywh[:, 2:] >= 0).all()):
        return None
    return [{"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": value}
            for image_id, category_id, bbox, value in zip(image_ids, category_ids, xywh.tolist(), score.tolist())]


@contextlib.contextmanager
def _collector_paused():
    """Reading a results file builds millions of dicts, lists and floats, none in a reference cycle;
    the cyclic collector would walk them over and over as they pile up. Paused while they are read
    and checked, then as it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_results(path: Path, gt: dict, category_map=None, box_format: str = "xywh") -> list[dict]:
    """Read and validate a COCO results JSON (from kdeval, mmdetection, detectron2, ...): its form,
    then its ids and boxes against the dataset, every problem named (see foreign_results)."""
    from kdeval.data.foreign_results import check_foreign_results

    with _collector_paused():
        detections = _checked_as_orjson_reads_them(path, gt, box_format)
        if detections is None:
            detections = check_results(read_json(path, "results"), gt, path, box_format)
        return check_foreign_results(detections, gt, path, category_map)


def _checked_as_orjson_reads_them(path: Path, gt: dict, box_format: str) -> list[dict] | None:
    """check_results of the file as orjson parses it, where orjson is installed (it parses a results
    file in well under json's time); else None, and json reads it.

    orjson reads every JSON value as json does but integers beyond 64 bits, which it makes the
    nearest float, the one float() makes of json's integer: as a box or a score that is what the
    check makes of it too, and as an id it fails the check. So a file that passes is cleaned exactly
    as from json; a file orjson refuses, or one that fails the check, is read again by json, whose
    reading and check name the problem as they always have."""
    try:
        import orjson
    except ImportError:
        return None
    try:
        parsed = orjson.loads(Path(path).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    try:
        return check_results(parsed, gt, path, box_format)
    except KdevalError:
        return None


# ---------------------------------------------------------------- paths


def image_path(images_dir: Path, file_name: str) -> Path:
    """The file of an image, refusing names that would leave the images folder."""
    images_dir = Path(images_dir)
    candidate = (images_dir / file_name).resolve()
    root = images_dir.resolve()
    if Path(file_name).is_absolute() or not candidate.is_relative_to(root):
        raise KdevalError(f"{file_name!r}: image file_name points outside the images folder {images_dir}")
    return candidate
