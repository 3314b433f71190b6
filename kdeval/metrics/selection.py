"""Which images a qualitative gallery shows: per-image counts of objects and of correct and wrong
detections, and the strategies that rank images by them. Pure functions of (ground truth,
detections, verdicts); the verdicts come from kdeval.metrics.matching.

Strategies (vocab.GALLERY_SELECTIONS), each best first, ties by image id:
- improved:     the second model finds the most objects the first does not (correct detections,
                second − first > 0); then the fewest extra wrong ones
- degraded:     the same gain, most negative first
- large, small: the most large (> 96² px) or small (< 32² px) objects, by COCO area; then the
                largest share of such objects (appendix C: distillation helps large objects most)
- disagreement: objects found by some models but not all, plus the spread of the models' wrong
                detection counts (max − min)
- random:       a seeded sample, in image id order
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pandas as pd

from kdeval.errors import KdevalError
from kdeval.metrics.matching import Match
from kdeval.vocab import AREA_RANGES, GALLERY_SELECTIONS, WRONG_VERDICTS

NEEDS_TWO_MODELS = ("improved", "degraded", "disagreement")


@dataclass(frozen=True)
class ImageCounts:
    """Per-image counts, every table indexed by image_id (all images of the dataset, sorted).

    objects: non-crowd ground truth, columns all / small / medium / large (COCO area ranges)
    correct, wrong: detections with score >= threshold, one column per model (crowd ones in neither)
    found_by_some_not_all, wrong_spread: the two terms of the disagreement score
    """

    objects: pd.DataFrame
    correct: pd.DataFrame
    wrong: pd.DataFrame
    found_by_some_not_all: pd.Series
    wrong_spread: pd.Series

    @property
    def models(self) -> list[str]:
        return list(self.correct.columns)

    @property
    def disagreement(self) -> pd.Series:
        return self.found_by_some_not_all + self.wrong_spread

    def table(self) -> pd.DataFrame:
        """One flat table for a CSV: objects_*, correct_<model>, wrong_<model>, disagreement."""
        return pd.concat(
            [self.objects.add_prefix("objects_"), self.correct.add_prefix("correct_"),
             self.wrong.add_prefix("wrong_"), self.disagreement.rename("disagreement")],
            axis=1,
        )


def _area(annotation: dict) -> float:
    return float(annotation["area"]) if "area" in annotation else float(annotation["bbox"][2] * annotation["bbox"][3])


def count_images(gt: dict, detections: dict[str, list[dict]], matches: dict[str, list[Match]],
                 score_threshold: float) -> ImageCounts:
    """Counts per image from each model's detections and their verdicts (aligned lists)."""
    image_ids = sorted(image["id"] for image in gt["images"])
    index = pd.Index(image_ids, name="image_id")
    by_area: dict[str, Counter] = {name: Counter() for name in AREA_RANGES}
    for ann in gt["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        area = _area(ann)
        for name, (low, high) in AREA_RANGES.items():
            if low <= area < high:
                by_area[name][ann["image_id"]] += 1
    correct_of: dict[str, Counter] = {model: Counter() for model in detections}
    wrong_of: dict[str, Counter] = {model: Counter() for model in detections}
    found: dict[str, dict[int, set[int]]] = {model: {} for model in detections}
    for model, dets in detections.items():
        for det, match in zip(dets, matches[model], strict=True):
            if det["score"] < score_threshold:
                continue
            if match.verdict == "correct":
                correct_of[model][det["image_id"]] += 1
                found[model].setdefault(det["image_id"], set()).add(match.annotation_id)
            elif match.verdict in WRONG_VERDICTS:
                wrong_of[model][det["image_id"]] += 1

    def table(counters: dict[str, Counter]) -> pd.DataFrame:
        return pd.DataFrame({name: [c[i] for i in image_ids] for name, c in counters.items()}, index=index, dtype="int64")

    objects, correct, wrong = table(by_area), table(correct_of), table(wrong_of)
    some_not_all = []
    for image_id in image_ids:
        sets = [found[model].get(image_id, set()) for model in detections]
        some_not_all.append(len(set().union(*sets)) - len(set.intersection(*sets)) if sets else 0)
    found_by_some_not_all = pd.Series(some_not_all, index=objects.index, name="found_by_some_not_all")
    wrong_spread = (wrong.max(axis=1) - wrong.min(axis=1)).rename("wrong_spread")
    return ImageCounts(objects, correct, wrong, found_by_some_not_all, wrong_spread)


def _objects(count) -> str:
    return f"{int(count)} object{'' if int(count) == 1 else 's'}"


def _ranked(keys: pd.DataFrame, ascending: list[bool], keep: pd.Series, num: int) -> list[int]:
    """Image ids where `keep`, sorted by the key columns then by image id, the first `num`."""
    frame = keys[keep].reset_index()
    frame = frame.sort_values([*keys.columns, "image_id"], ascending=[*ascending, True], kind="mergesort")
    return [int(i) for i in frame["image_id"].head(num)]


def check_selection(strategy: str, image_ids: tuple[int, ...], dataset_image_ids, num_models: int) -> None:
    """A KdevalError if the selection cannot be made: an image id not in `dataset_image_ids`, an
    unknown strategy, or one that compares models given fewer than two. Needs no detections, so a
    command can check it before running any model."""
    if strategy == "ids":
        known = set(dataset_image_ids)
        unknown = [i for i in image_ids if i not in known]
        if unknown:
            raise KdevalError(f"--select: image id {unknown[0]} is not in the dataset")
        return
    if strategy not in GALLERY_SELECTIONS:
        raise KdevalError(f"--select {strategy}: expected one of {', '.join(GALLERY_SELECTIONS)} or image ids such as 12,57")
    if strategy in NEEDS_TWO_MODELS and num_models < 2:
        raise KdevalError(f"--select {strategy} compares models: give at least two")


def select_images(counts: ImageCounts, strategy: str, num: int, seed: int = 0,
                  image_ids: tuple[int, ...] = ()) -> list[tuple[int, str]]:
    """(image id, why it was chosen) for each image to show, in the order to show them.

    `strategy` is one of GALLERY_SELECTIONS or "ids" (then `image_ids`, in the order given).
    Fewer than `num` come back when fewer images qualify (e.g. no image improved).
    """
    models = counts.models
    check_selection(strategy, image_ids, counts.objects.index, len(models))
    if strategy == "ids":
        return [(int(i), "chosen by id") for i in dict.fromkeys(image_ids)]
    if strategy in ("improved", "degraded"):
        first, second = models[0], models[1]
        gain = counts.correct[second] - counts.correct[first]
        extra_wrong = counts.wrong[second] - counts.wrong[first]
        sign = 1 if strategy == "improved" else -1
        keys = pd.DataFrame({"gain": sign * gain, "extra_wrong": sign * extra_wrong})
        chosen = _ranked(keys, [False, True], keys["gain"] > 0, num)
        return [(i, f"{second} {int(gain[i]):+d} correct against {first}") for i in chosen]
    if strategy in ("large", "small"):
        share = counts.objects[strategy] / counts.objects["all"].clip(lower=1)
        keys = pd.DataFrame({"count": counts.objects[strategy], "share": share})
        chosen = _ranked(keys, [False, False], keys["count"] > 0, num)
        return [(i, f"{int(counts.objects.loc[i, strategy])} {strategy} of {_objects(counts.objects.loc[i, 'all'])}")
                for i in chosen]
    if strategy == "disagreement":
        keys = pd.DataFrame({"score": counts.disagreement})
        chosen = _ranked(keys, [False], keys["score"] > 0, num)
        return [(i, f"{_objects(counts.found_by_some_not_all[i])} found by some models only, "
                    f"wrong detections differ by {int(counts.wrong_spread[i])}") for i in chosen]
    ids = list(counts.objects.index)
    chosen = sorted(random.Random(seed).sample(ids, min(num, len(ids))))
    return [(int(i), f"random (seed {seed})") for i in chosen]
