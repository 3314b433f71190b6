"""Detections from other detectors, checked against the dataset before they are scored.

Each problem is said in one line, with its likely cause where one is recognisable: ids that look
0-based against a 1-based dataset, contiguous ids against COCO's 91-id space, boxes that look like
[x1, y1, x2, y2]. Nothing is fixed by guessing: `--category-map FILE` and `--box-format xyxy` fix
a mismatch explicitly.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import operator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kdeval.errors import KdevalError
from kdeval.labels import LabelSpace

log = logging.getLogger("kdeval")

# share of detections that must fit the image as [x1, y1, x2, y2] and spill out of it as
# [x, y, w, h] before boxes are called xyxy; below this the evidence is too thin to say so
_XYXY_MIN_DETECTIONS = 10
_XYXY_SPILL_SHARE = 0.2
# boxes looked at first: one among them that cannot be corners inside its image settles that the
# boxes are not xyxy, and in a results file of [x, y, w, h] boxes one almost always is there
_XYXY_PROBE = 1000


# ---------------------------------------------------------------- category maps


def _key(value, path: Path):
    if isinstance(value, bool):
        raise KdevalError(f"{path}: category map entries must be ids or names, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text.startswith("-") else text
        return int(text) if digits.isascii() and digits.isdigit() else text  # not "²": isdigit() but no int
    raise KdevalError(f"{path}: category map entries must be ids or names, got {value!r}")


@dataclass(frozen=True)
class CategoryMap:
    """id → id or name → name, read from JSON or YAML (a flat mapping)."""

    ids: dict[int, int] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @classmethod
    def load(cls, path: Path) -> "CategoryMap":
        path = Path(path)
        if not path.is_file():
            raise KdevalError(f"{path}: category map file not found")
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                raw = yaml.safe_load(text)
            else:
                raw = json.loads(text)
        except Exception as exc:  # yaml and json raise their own error types
            raise KdevalError(f"{path}: not a readable category map ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
        if not isinstance(raw, dict) or not raw:
            raise KdevalError(f"{path}: expected a non-empty mapping of category ids or names, e.g. {{\"0\": 1}}")
        pairs = [(_key(k, path), _key(v, path)) for k, v in raw.items()]
        if all(isinstance(k, int) and isinstance(v, int) for k, v in pairs):
            return cls(ids=dict(pairs), source=str(path))
        if all(isinstance(k, str) and isinstance(v, str) for k, v in pairs):
            return cls(names=dict(pairs), source=str(path))
        raise KdevalError(f"{path}: a category map is either id → id or name → name, not a mix")

    def digest(self) -> str:
        payload = json.dumps({"ids": sorted(self.ids.items()), "names": sorted(self.names.items())})
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def map_detections(self, detections: list[dict]) -> list[dict]:
        """Detections with their category ids mapped (ids not in the map stay as they are)."""
        if self.names:
            raise KdevalError(f"{self.source}: results files carry category ids, not names; map them id → id")
        return [dict(d, category_id=self.ids.get(d["category_id"], d["category_id"])) for d in detections]

    def map_labels(self, labels: LabelSpace, categories: list[dict]) -> LabelSpace:
        """A model's label space with its ids (or its names, matched to the dataset's) mapped."""
        if self.ids:
            return LabelSpace(tuple(self.ids.get(c, c) if c >= 0 else c for c in labels.category_ids), labels.names)
        dataset = {str(c["name"]): c for c in categories}
        ids, names = [], []
        for cid, name in zip(labels.category_ids, labels.names):
            target = self.names.get(name, name)
            if cid >= 0 and target in dataset:
                ids.append(dataset[target]["id"])
                names.append(str(dataset[target]["name"]))
            else:
                ids.append(cid if target == name else -1)
                names.append(target)
        return LabelSpace(tuple(ids), tuple(names))


# ---------------------------------------------------------------- diagnosis


def _examples(values, limit: int = 5) -> str:
    values = sorted(set(values))
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", … ({len(values)} in all)" if len(values) > limit else "")


def _category_cause(unknown: set[int], seen: set[int], dataset_ids: list[int]) -> str:
    dataset = sorted(dataset_ids)
    n = len(dataset)
    if seen and min(seen) == 0 and min(dataset) == 1 and {c + 1 for c in seen} <= set(dataset):
        return "they look 0-based against the dataset's 1-based ids (map c → c + 1 with --category-map)"
    sparse = dataset[-1] > n  # e.g. COCO: 80 categories with ids up to 90
    if sparse and (seen <= set(range(n)) or seen <= set(range(1, n + 1))):
        first = 0 if 0 in seen else 1
        return (f"they look contiguous ({first}–{first + n - 1}) against the dataset's {n} non-contiguous ids "
                f"(COCO's 91-id space: {dataset[0]}…{dataset[-1]}); map them with --category-map")
    return "map them with --category-map FILE (id → id)"


def _xyxy_evidence(rows: list[tuple]) -> tuple[bool, int]:
    """Of (bbox, image size) rows: (every box fits its image as [x1, y1, x2, y2], how many leave it as
    [x, y, w, h])."""
    if not rows:
        return True, 0
    boxes = np.array([b for b, _ in rows], dtype=float)
    wh = np.array([s for _, s in rows], dtype=float)
    x, y, a, b = boxes.T
    slack = 1.0 + 0.02 * wh
    spills_as_xywh = (x + a > wh[:, 0] + slack[:, 0]) | (y + b > wh[:, 1] + slack[:, 1])
    fits_as_xyxy = (a > x) & (b > y) & (a <= wh[:, 0] + slack[:, 0]) & (b <= wh[:, 1] + slack[:, 1])
    return bool(fits_as_xyxy.all()), int(spills_as_xywh.sum())


def _looks_xyxy(detections: list[dict], sizes: dict[int, tuple[float, float]]) -> tuple[int, int] | None:
    """(boxes that leave their image as [x, y, w, h], boxes on images of known size) where the boxes
    look like [x1, y1, x2, y2]: all fit their image so and enough leave it otherwise; else None. The
    first _XYXY_PROBE boxes are looked at before the rest, which a box among them that does not fit
    as corners makes needless."""
    rows = ((d["bbox"], sizes[d["image_id"]]) for d in detections if d["image_id"] in sizes)
    probe = list(itertools.islice(rows, _XYXY_PROBE))
    if len(probe) < _XYXY_MIN_DETECTIONS:  # every row, and too few to say
        return None
    fits, spill = _xyxy_evidence(probe)
    if not fits:
        return None
    rest = list(rows)
    fits, spill_in_rest = _xyxy_evidence(rest)
    n = len(probe) + len(rest)
    spill += spill_in_rest
    if n < _XYXY_MIN_DETECTIONS or not fits or spill < _XYXY_SPILL_SHARE * n:
        return None
    return spill, n


def _unknown(detections: list[dict], key: str, known: set) -> list[tuple[int, object]]:
    """(position, value) of every detection whose `key` is not in `known`. The distinct values are
    compared first: a results file holds a few thousand ids among hundreds of thousands of
    detections, and usually none unknown."""
    if set(map(operator.itemgetter(key), detections)) <= known:
        return []
    return [(i, d[key]) for i, d in enumerate(detections) if d[key] not in known]


def diagnose(detections: list[dict], gt: dict, path: Path | str) -> list[str]:
    """One line per problem that makes these detections unscorable against `gt` as they are."""
    problems = []
    image_ids = {image["id"] for image in gt["images"]}
    dataset_categories = [c["id"] for c in gt["categories"]]
    bad_images = _unknown(detections, "image_id", image_ids)
    if bad_images:
        i, value = bad_images[0]
        problems.append(f"{path}: [{i}].image_id: {value!r} is not an image of the dataset "
                        f"({len(bad_images)} detections with unknown image ids: {_examples(v for _, v in bad_images)})")
    known = set(dataset_categories)
    bad_categories = _unknown(detections, "category_id", known)
    if bad_categories:
        i, value = bad_categories[0]
        unknown = {v for _, v in bad_categories}
        seen = {d["category_id"] for d in detections}
        problems.append(f"{path}: [{i}].category_id: {value!r} is not a category of the dataset "
                        f"({len(bad_categories)} detections, ids {_examples(unknown)}); "
                        + _category_cause(unknown, seen, dataset_categories))
    sizes = {im["id"]: (float(im["width"]), float(im["height"])) for im in gt["images"]
             if isinstance(im.get("width"), (int, float)) and isinstance(im.get("height"), (int, float))}
    xyxy = _looks_xyxy(detections, sizes)
    if xyxy is not None:
        spill, n = xyxy
        problems.append(f"{path}: bbox: the boxes look like [x1, y1, x2, y2] ({spill} of {n} leave their image when read "
                        f"as [x, y, width, height], all fit as corners); COCO results need [x, y, width, height] — "
                        f"convert them or pass --box-format xyxy")
    return problems


def score_range_note(detections: list[dict], path: Path | str) -> str | None:
    """Scores outside [0, 1] (logits?) do not change AP, which uses only their order; say so once."""
    outside = [d["score"] for d in detections if not 0.0 <= d["score"] <= 1.0]
    if not outside:
        return None
    return (f"{path}: {len(outside)} scores lie outside [0, 1] (from {min(outside):g} to {max(outside):g}); "
            f"AP depends only on their order, so they are scored as they are")


# below this share of the dataset's images with any detection, a results file looks made on a subset
COVERED_SHARE = 0.5


def coverage_note(detections: list[dict], gt: dict, path: Path | str) -> str | None:
    """Images without a single detection count as all missed. A detector's results leave few such
    images; most of them empty suggests results made on a subset, scored against the whole dataset
    (e.g. --annotations forgotten, so the default dataset is scored): say so, as AP drops silently."""
    # over the images with objects: a dataset may hold many background-only ones a detector leaves empty
    images = {a["image_id"] for a in gt["annotations"] if not a.get("iscrowd")}
    covered = len(images & {d["image_id"] for d in detections})
    if not images or covered >= COVERED_SHARE * len(images):
        return None
    return (f"{path}: detections on only {covered} of the dataset's {len(images)} images with objects; the other "
            f"{len(images) - covered} count as all missed. If the results were made on a subset, give that "
            f"subset's --annotations")


def unused_map_note(detections: list[dict], category_map: CategoryMap) -> str | None:
    """A map that does not fit the results: some of its ids occur in no detection while some of the
    results' ids are not in it and pass unmapped (a map for 0-based ids applied to 1-based results
    maps 1 → 2 … 5 → 6 and leaves 6 as 6, merging two classes without an error)."""
    seen = {d["category_id"] for d in detections}
    unused, unmapped = set(category_map.ids) - seen, seen - set(category_map.ids)
    if not unused or not unmapped & set(category_map.ids.values()):  # only when classes would merge
        return None
    return (f"{category_map.source}: the map's ids {_examples(unused)} occur in no detection, and the results' ids "
            f"{_examples(unmapped)} are not in the map (they stay as they are): are the results' ids already the dataset's?")


def check_foreign_results(detections: list[dict], gt: dict, path: Path | str,
                          category_map: CategoryMap | None = None) -> list[dict]:
    """Map, then diagnose: raise with every problem, one line each; log a note on odd scores, on
    results that leave most images empty, and on a category map that does not fit the results."""
    notes = []
    if category_map is not None:
        notes.append(unused_map_note(detections, category_map) if category_map.ids else None)
        detections = category_map.map_detections(detections)
    problems = diagnose(detections, gt, path)
    if problems:
        raise KdevalError("\n".join(problems))
    notes += [score_range_note(detections, path), coverage_note(detections, gt, path)]
    for note in notes:
        if note:
            log.warning(note)
    return detections
