"""COCO results as columns: the arrays every metric reads of a list of detections, made once.

Walking a results list in Python is most of what turning it into arrays costs (a COCO-sized file
holds half a million detections). The COCO-analyze curves and TIDE both read the same four fields, so
`kdeval errors` converts each run once and hands both metrics the columns; either also takes the
list itself and converts it.
"""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)  # compared by identity: == on arrays has no single truth value
class DetectionColumns:
    """A list of COCO results, field by field, in the list's order."""

    image_id: np.ndarray  # int64 where every id is a Python int that fits one, else the ids as given (dtype object)
    category_id: np.ndarray
    score: np.ndarray  # float64
    bbox: np.ndarray  # (detections, 4) float64, xywh

    def __len__(self) -> int:
        return len(self.score)


def detection_columns(detections: list[dict] | DetectionColumns) -> DetectionColumns:
    """The columns of `detections` (COCO results with image_id, category_id, bbox and score); columns
    are returned as they are."""
    if isinstance(detections, DetectionColumns):
        return detections
    return DetectionColumns(
        image_id=_ids(detections, "image_id"),
        category_id=_ids(detections, "category_id"),
        score=np.fromiter(map(operator.itemgetter("score"), detections), np.float64, len(detections)),
        bbox=_boxes(detections),
    )


def _ids(records: list[dict], key: str) -> np.ndarray:
    ids = list(map(operator.itemgetter(key), records))
    # exact ints only: numpy would truncate a float id, or parse a numeric string, into an int64 that
    # then matches an id the value is not equal to
    if set(map(type, ids)) <= {int}:
        try:
            return np.fromiter(ids, np.int64, len(ids))
        except OverflowError:  # an id beyond int64
            pass
    column = np.empty(len(ids), dtype=object)
    column[:] = ids
    return column


def _boxes(records: list[dict]) -> np.ndarray:
    boxes = list(map(operator.itemgetter("bbox"), records))
    if set(map(len, boxes)) <= {4}:
        return np.fromiter(itertools.chain.from_iterable(boxes), np.float64, 4 * len(boxes)).reshape(-1, 4)
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)  # raises, naming the ragged boxes


def positions(ids: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each id (a column of DetectionColumns) in the sorted int64 `table`, and whether it
    is there at all; ids given as other objects than ints are looked up as Python compares them (3.0
    is id 3, "3" is none)."""
    if not len(table) or not len(ids):
        return np.zeros(len(ids), np.int64), np.zeros(len(ids), bool)
    if ids.dtype == np.int64:
        where = np.minimum(np.searchsorted(table, ids), len(table) - 1)
        return where, table[where] == ids
    lookup = {int(v): p for p, v in enumerate(table)}
    found = [lookup.get(v) for v in ids.tolist()]
    return (np.array([0 if p is None else p for p in found], np.int64),
            np.array([p is not None for p in found], bool))
