"""COCO-analyze error curves: seven ever more permissive precision–recall curves per category and
object size, as the COCO API's analyze() defines them (mmdetection's coco_error_analysis.py ignores
no sibling for Sim, so its Sim is its Loc: docs/evaluation-and-errors.md).

  C75, C50  PR at IoU .75 and .50
  Loc       PR at IoU .10: localisation errors forgiven, duplicates still false positives
  Sim       Loc, with the ground truth of c's supercategory siblings turned into crowd (ignore) regions of c
  Oth       Loc, with the ground truth of every other category turned into crowd regions of c
  BG        precision 1 wherever Oth's is above 0 (background false positives removed)
  FN        precision 1 everywhere (what remains are the false negatives)

All at maxDets 100, for the areas all/small/medium/large. The reference way runs COCOeval once and
then twice per category (161 runs on COCO). Here the array form of COCOeval (kdeval.metrics.cocoeval)
matches once, for every setting and area together, and gives the same numbers:

- A detection's match against non-ignored ground truth of its own class is the same under Loc, Sim
  and Oth, because pycocotools tries non-ignored ground truth first and stops there when it matches.
- Only a detection left unmatched can fall on an ignored region, and the regions Sim and Oth add are
  crowds, which any number of detections may share. Per detection it is enough to know the best
  such region (largest intersection over the detection's area, later in the file on ties), and to
  run the greedy pass over the class's own ground truth with that candidate beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kdeval.metrics.bootstrap import ResampledAP, masked_mean
from kdeval.metrics.cocoeval import (
    FP,
    RECALL_THRESHOLDS,
    TP,
    DetectionArrays,
    accumulation_order,
    bb_iou,
    detection_arrays,
    groups,
    last_argmax,
    match,
    positives,
    precision_curve,
    summary_mean,
)
from kdeval.metrics.detection_columns import DetectionColumns
from kdeval.vocab import ANALYSIS_SETTINGS, AREA_RANGES

MAX_DETS = 100
# The five settings that match detections; BG and FN follow from Oth. IoU .75 and .50 are the
# values of COCOeval's own iouThrs (linspace(.5, .95, 10)), so C75 and C50 equal its AP75 and AP50.
_MATCHED_SETTINGS = (("C75", 0.75), ("C50", 0.5), ("Loc", 0.1), ("Sim", 0.1), ("Oth", 0.1))
_MATCHED_NAMES = tuple(name for name, _ in _MATCHED_SETTINGS)
_CONVERTED = {"Sim": "siblings", "Oth": "others"}  # whose ground truth becomes crowd regions of c


@dataclass(frozen=True)
class ErrorCurves:
    """precision has dims (setting, recall threshold, category, area), as COCOeval's eval['precision']
    without the IoU and maxDets dims; -1 where a category has no ground truth in that area."""

    precision: np.ndarray
    category_ids: tuple[int, ...]
    category_names: tuple[str, ...]
    settings: tuple[str, ...] = ANALYSIS_SETTINGS
    areas: tuple[str, ...] = tuple(AREA_RANGES)

    @property
    def recall_thresholds(self) -> np.ndarray:
        return RECALL_THRESHOLDS

    def _block(self, setting: str, area: str, category_id: int | None) -> np.ndarray:
        s, a = self.settings.index(setting), self.areas.index(area)
        if category_id is None:
            return self.precision[s, :, :, a]
        return self.precision[s, :, self.category_ids.index(category_id), a]

    def ap(self, setting: str, area: str = "all", category_id: int | None = None) -> float:
        """Area under the curve: COCOeval.summarize's mean over the entries that are not -1 (-1 if none)."""
        return summary_mean(self._block(setting, area, category_id))

    def curve(self, setting: str, area: str = "all", category_id: int | None = None) -> np.ndarray:
        """Precision at each recall threshold, averaged over the categories with ground truth."""
        block = self._block(setting, area, category_id)
        if block.ndim == 1:
            return block.copy() if block[0] > -1 else np.zeros_like(block)
        valid = block[:, block[0] > -1]
        return valid.mean(axis=1) if valid.shape[1] else np.zeros(block.shape[0])

    def ap_table(self, category_id: int | None = None) -> pd.DataFrame:
        """AP (0–1) of every setting (rows) and area (columns)."""
        return pd.DataFrame(
            {area: [self.ap(s, area, category_id) for s in self.settings] for area in self.areas},
            index=pd.Index(self.settings, name="setting"),
        )


def supercategories(categories: list[dict]) -> tuple[dict[int, str], list[str]]:
    """Category id → supercategory; a category without one is its own (named in the second value)."""
    lacking = [c["name"] for c in categories if not c.get("supercategory")]
    return {c["id"]: c.get("supercategory") or f"\0{c['id']}" for c in categories}, lacking


# ---------------------------------------------------------------- matching


def _supercategory_codes(gt: dict, arr: DetectionArrays) -> np.ndarray:
    """A code for the supercategory of each category, by position in arr.category_ids."""
    super_of, _ = supercategories(gt["categories"])
    codes = {name: code for code, name in enumerate(sorted(set(super_of.values())))}
    return np.array([codes[super_of[int(c)]] for c in arr.category_ids], dtype=np.int64)


def _converted_candidates(arr: DetectionArrays, category_super: np.ndarray, iou_threshold: float,
                          chunk: int = 4096) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For each detection, the best crowd region Sim and Oth add: (IoU, file position), (-inf, -1) if none.

    Regions are the image's ground truth of other classes (Sim: of the same supercategory only);
    a detection may use one when its intersection covers ≥ iou_threshold of the detection's area.
    """
    n = len(arr.det_image)
    out = {name: (np.full(n, -np.inf), np.full(n, -1, np.int64)) for name in _CONVERTED}
    if n == 0 or len(arr.gt_image) == 0:
        return out
    gt_super = category_super[arr.gt_category]
    # ground truth per image, file order, padded into a table
    order = np.argsort(arr.gt_image, kind="stable")
    images, starts, counts = groups(arr.gt_image[order])
    width = int(counts.max())
    table = np.full((len(arr.image_ids), width), -1, np.int64)
    column = np.arange(len(order)) - np.repeat(starts, counts)
    table[arr.gt_image[order], column] = order
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        cols = table[arr.det_image[lo:hi]]  # (d, width) gt index or -1
        valid = cols >= 0
        safe = np.where(valid, cols, 0)
        iou = bb_iou(arr.det_box[lo:hi, None, :], arr.gt_box[safe], np.ones(cols.shape, bool))
        other = valid & (arr.gt_category[safe] != arr.det_category[lo:hi, None])
        sibling = other & (gt_super[safe] == category_super[arr.det_category[lo:hi]][:, None])
        for name, eligible in (("Sim", sibling), ("Oth", other)):
            candidate = eligible & (iou >= iou_threshold)
            scored = np.where(candidate, iou, -np.inf)
            pick = last_argmax(scored)
            rows = np.arange(hi - lo)
            found = candidate[rows, pick]
            out[name][0][lo:hi] = np.where(found, scored[rows, pick], -np.inf)
            out[name][1][lo:hi] = np.where(found, cols[rows, pick], -1)  # gt index = file position
    return out


def _match_settings(arr: DetectionArrays, category_super: np.ndarray) -> np.ndarray:
    """Outcome (FP, TP, IGNORED) of every kept detection under each of _MATCHED_SETTINGS and area:
    shape (detections, settings, areas); Sim and Oth also match the crowd regions they add."""
    n, n_settings = len(arr.det_image), len(_MATCHED_SETTINGS)
    conv_iou = np.full((n, n_settings), -np.inf)
    conv_pos = np.full((n, n_settings), -1, np.int64)
    converted = {name: s for s, (name, _) in enumerate(_MATCHED_SETTINGS) if name in _CONVERTED}
    threshold = min(min(_MATCHED_SETTINGS[s][1] for s in converted.values()), 1 - 1e-10)
    for name, (iou, pos) in _converted_candidates(arr, category_super, threshold).items():
        conv_iou[:, converted[name]], conv_pos[:, converted[name]] = iou, pos
    return match(arr, [t for _, t in _MATCHED_SETTINGS], (conv_iou, conv_pos))


# ---------------------------------------------------------------- the curves


def _matched(gt: dict, detections: list[dict] | DetectionColumns) -> tuple[DetectionArrays, np.ndarray]:
    arr = detection_arrays(gt, detections, MAX_DETS)
    return arr, _match_settings(arr, _supercategory_codes(gt, arr))


def error_curves(gt: dict, detections: list[dict] | DetectionColumns) -> ErrorCurves:
    """The seven COCO-analyze curves of `detections` (COCO results, xywh, or their columns) against
    `gt` (a COCO dict)."""
    return _curves(gt, *_matched(gt, detections))


def _curves(gt: dict, arr: DetectionArrays, outcome: np.ndarray) -> ErrorCurves:
    n_cat, n_areas = len(arr.category_ids), len(AREA_RANGES)
    n_matched = len(_MATCHED_SETTINGS)
    precision = np.full((len(ANALYSIS_SETTINGS), len(RECALL_THRESHOLDS), n_cat, n_areas), -1.0)

    n_positive = positives(arr)

    for k, dets in enumerate(accumulation_order(arr)):
        for a in range(n_areas):
            if n_positive[k, a] == 0:
                continue
            flags = outcome[dets, :, a].T  # (settings, dets)
            precision[:n_matched, :, k, a] = precision_curve(flags == TP, flags == FP, int(n_positive[k, a]))
    oth = precision[ANALYSIS_SETTINGS.index("Oth")]
    precision[ANALYSIS_SETTINGS.index("BG")] = np.where(oth > -1, (oth > 0).astype(float), -1.0)
    precision[ANALYSIS_SETTINGS.index("FN")] = np.where(oth > -1, 1.0, -1.0)
    names = {c["id"]: c["name"] for c in gt["categories"]}
    return ErrorCurves(
        precision=precision,
        category_ids=tuple(int(c) for c in arr.category_ids),
        category_names=tuple(str(names[int(c)]) for c in arr.category_ids),
    )


# ---------------------------------------------------------------- on image resamples


def resampled_error_curves(gt: dict, detections: list[dict] | DetectionColumns) -> ResampledAP:
    """The detections matched once under the five matched settings, for resampled_error_aps."""
    arr, outcome = _matched(gt, detections)
    return ResampledAP.from_outcome(arr, outcome, (MAX_DETS,))


def error_curves_and_resampled(gt: dict, detections: list[dict] | DetectionColumns) -> tuple[ErrorCurves, ResampledAP]:
    """error_curves and resampled_error_curves from one matching, the costly part of each."""
    arr, outcome = _matched(gt, detections)
    return _curves(gt, arr, outcome), ResampledAP.from_outcome(arr, outcome, (MAX_DETS,))


def resampled_error_aps(resampled: ResampledAP, counts: np.ndarray) -> np.ndarray:
    """ErrorCurves.ap of every setting (ANALYSIS_SETTINGS' order) and area, over all categories, on
    each resample: (resamples, settings, areas); -1 without ground truth."""
    ap, positive_share, _ = resampled.accumulate(counts)  # (R, 5, K, A)
    oth = _MATCHED_NAMES.index("Oth")
    by_setting = {name: ap[:, s] for s, name in enumerate(_MATCHED_NAMES)}
    by_setting["BG"] = positive_share[:, oth]
    by_setting["FN"] = np.where(ap[:, oth] > -1, 1.0, -1.0)
    return np.stack([masked_mean(by_setting[name], (1,)) for name in ANALYSIS_SETTINGS], axis=1)


# ---------------------------------------------------------------- tables


def ap_long_table(curves_by_model: dict[str, ErrorCurves], per_category: bool = False) -> pd.DataFrame:
    """Tidy AP table: model, area, setting (and category), AP (0–1, -1 without ground truth)."""
    rows = []
    for model, curves in curves_by_model.items():
        categories = list(zip(curves.category_ids, curves.category_names)) if per_category else [(None, None)]
        for category_id, category_name in categories:
            for area in curves.areas:
                for setting in curves.settings:
                    row = {"model": model, "area": area, "setting": setting, "AP": curves.ap(setting, area, category_id)}
                    if per_category:
                        row = {"model": model, "category_id": category_id, "category": category_name, **{k: row[k] for k in ("area", "setting", "AP")}}
                    rows.append(row)
    return pd.DataFrame(rows)


def curve_long_table(curves_by_model: dict[str, ErrorCurves], category_id: int | None = None) -> pd.DataFrame:
    """Tidy curves: model, area, setting, recall, precision (averaged over categories, or one category)."""
    frames = []
    for model, curves in curves_by_model.items():
        for area in curves.areas:
            for setting in curves.settings:
                frames.append(pd.DataFrame({
                    "model": model, "area": area, "setting": setting,
                    "recall": curves.recall_thresholds, "precision": curves.curve(setting, area, category_id),
                }))
    return pd.concat(frames, ignore_index=True)
