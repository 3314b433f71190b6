"""COCO-analyze error curves: seven ever more permissive precision–recall curves per category and
object size, as the COCO API's analyze() and mmdetection's coco_error_analysis define them.

  C75, C50  PR at IoU .75 and .50
  Loc       PR at IoU .10: localisation errors forgiven, duplicates still false positives
  Sim       Loc, with the ground truth of c's supercategory siblings turned into crowd (ignore) regions of c
  Oth       Loc, with the ground truth of every other category turned into crowd regions of c
  BG        precision 1 wherever Oth's is above 0 (background false positives removed)
  FN        precision 1 everywhere (what remains are the false negatives)

All at maxDets 100, for the areas all/small/medium/large. The reference way runs COCOeval once and
then twice per category (161 runs on COCO). Here pycocotools' greedy matching is re-implemented once
over numpy arrays, for every setting and area together, and gives the same numbers:

- A detection's match against non-ignored ground truth of its own class is the same under Loc, Sim
  and Oth, because pycocotools tries non-ignored ground truth first and stops there when it matches.
- Only a detection left unmatched can fall on an ignored region, and the regions Sim and Oth add are
  crowds, which any number of detections may share. Per detection it is enough to know the best
  such region (largest intersection over the detection's area, later in the file on ties), and to
  run the greedy pass over the class's own ground truth with that candidate beside it.

IoU is computed with the operations, in the order, of pycocotools' C bbIou, so that thresholds and
ties fall the same way; precision is accumulated as COCOeval.accumulate does it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kdeval.vocab import ANALYSIS_SETTINGS, AREA_RANGES

MAX_DETS = 100
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, 101, endpoint=True)  # COCOeval Params.recThrs
# The five settings that match detections; BG and FN follow from Oth. IoU .75 and .50 are the
# values of COCOeval's own iouThrs (linspace(.5, .95, 10)), so C75 and C50 equal its AP75 and AP50.
_MATCHED_SETTINGS = (("C75", 0.75), ("C50", 0.5), ("Loc", 0.1), ("Sim", 0.1), ("Oth", 0.1))
_CONVERTED = {"Sim": "siblings", "Oth": "others"}  # whose ground truth becomes crowd regions of c
FP, TP, IGNORED = 0, 1, 2


def summary_mean(block: np.ndarray) -> float:
    """COCOeval.summarize's mean: over the entries that are not -1, in C order; -1 if none."""
    valid = block[block > -1]
    return float(np.mean(valid)) if valid.size else -1.0


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


# ---------------------------------------------------------------- boxes


def _iou(det_xywh: np.ndarray, gt_xywh: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """pycocotools' bbIou, broadcast: det (..., 4), gt (..., 4), crowd (...) → IoU (...); a crowd
    region's 'IoU' is the intersection over the detection's area."""
    dx, dy, dw, dh = np.moveaxis(det_xywh, -1, 0)
    gx, gy, gw, gh = np.moveaxis(gt_xywh, -1, 0)
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    overlap = (w > 0) & (h > 0)
    inter = w * h
    det_area = dw * dh
    union = np.where(crowd, det_area, det_area + gw * gh - inter)
    out = np.zeros(np.broadcast(inter, union).shape)
    np.divide(inter, union, out=out, where=overlap & (union != 0))
    return out


def _last_argmax(values: np.ndarray) -> np.ndarray:
    """Index of the maximum along the last axis, the last one on ties (pycocotools keeps a later
    candidate whose IoU equals the best so far)."""
    return values.shape[-1] - 1 - np.argmax(values[..., ::-1], axis=-1)


# ---------------------------------------------------------------- inputs as arrays


@dataclass
class _Arrays:
    image_ids: np.ndarray  # sorted
    category_ids: np.ndarray  # sorted
    gt_image: np.ndarray  # position in image_ids; annotations in file order
    gt_category: np.ndarray  # position in category_ids
    gt_box: np.ndarray  # (G, 4) xywh
    gt_area: np.ndarray
    gt_crowd: np.ndarray
    gt_id_zero: np.ndarray  # annotation id 0: pycocotools counts a match to it as no match (see _match_bucket)
    gt_super: np.ndarray  # supercategory code of the gt's category
    det_image: np.ndarray  # kept detections: by image, category, descending score, at most MAX_DETS each
    det_category: np.ndarray
    det_box: np.ndarray
    det_score: np.ndarray
    det_rank: np.ndarray  # rank within its (image, category)
    category_super: np.ndarray


def _arrays(gt: dict, detections: list[dict], max_dets: int = MAX_DETS) -> _Arrays:
    image_ids = np.array(sorted({image["id"] for image in gt["images"]}), dtype=np.int64)
    category_ids = np.array(sorted({c["id"] for c in gt["categories"]}), dtype=np.int64)
    image_pos = {int(i): p for p, i in enumerate(image_ids)}
    category_pos = {int(c): p for p, c in enumerate(category_ids)}
    super_of, _ = supercategories(gt["categories"])
    super_codes = {name: code for code, name in enumerate(sorted(set(super_of.values())))}
    category_super = np.array([super_codes[super_of[int(c)]] for c in category_ids], dtype=np.int64)

    anns = [a for a in gt["annotations"] if a["image_id"] in image_pos and a["category_id"] in category_pos]
    gt_box = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    gt_area = np.array([a["area"] if "area" in a else a["bbox"][2] * a["bbox"][3] for a in anns], dtype=np.float64)
    gt_category = np.array([category_pos[a["category_id"]] for a in anns], dtype=np.int64)

    dets = [d for d in detections if d["image_id"] in image_pos and d["category_id"] in category_pos]
    det_image = np.array([image_pos[d["image_id"]] for d in dets], dtype=np.int64)
    det_category = np.array([category_pos[d["category_id"]] for d in dets], dtype=np.int64)
    det_score = np.array([d["score"] for d in dets], dtype=np.float64)
    det_box = np.array([d["bbox"] for d in dets], dtype=np.float64).reshape(-1, 4)
    # pycocotools: per (image, category), a stable sort by descending score, then the first max_dets
    order = np.lexsort((np.arange(len(dets)), -det_score, det_category, det_image))
    group = det_image[order] * len(category_ids) + det_category[order]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]]) if len(order) else np.zeros(0, np.int64)
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    keep = order[rank < max_dets]
    return _Arrays(
        image_ids=image_ids,
        category_ids=category_ids,
        gt_image=np.array([image_pos[a["image_id"]] for a in anns], dtype=np.int64),
        gt_category=gt_category,
        gt_box=gt_box,
        gt_area=gt_area,
        gt_crowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
        gt_id_zero=np.array([a.get("id") == 0 for a in anns], dtype=bool),
        gt_super=category_super[gt_category],
        det_image=det_image[keep],
        det_category=det_category[keep],
        det_box=det_box[keep],
        det_score=det_score[keep],
        det_rank=rank[rank < max_dets],
        category_super=category_super,
    )


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For keys sorted ascending: (unique keys, start of each, count of each)."""
    if not len(keys):
        return keys, np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[starts], starts, np.diff(np.r_[starts, len(keys)])


# ---------------------------------------------------------------- matching


def _converted_candidates(arr: _Arrays, iou_threshold: float, chunk: int = 4096) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For each detection, the best crowd region Sim and Oth add: (IoU, file position), (-inf, -1) if none.

    Regions are the image's ground truth of other classes (Sim: of the same supercategory only);
    a detection may use one when its intersection covers ≥ iou_threshold of the detection's area.
    """
    n = len(arr.det_image)
    out = {name: (np.full(n, -np.inf), np.full(n, -1, np.int64)) for name in _CONVERTED}
    if n == 0 or len(arr.gt_image) == 0:
        return out
    # ground truth per image, file order, padded into a table
    order = np.argsort(arr.gt_image, kind="stable")
    images, starts, counts = _groups(arr.gt_image[order])
    width = int(counts.max())
    table = np.full((len(arr.image_ids), width), -1, np.int64)
    column = np.arange(len(order)) - np.repeat(starts, counts)
    table[arr.gt_image[order], column] = order
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        cols = table[arr.det_image[lo:hi]]  # (d, width) gt index or -1
        valid = cols >= 0
        safe = np.where(valid, cols, 0)
        iou = _iou(arr.det_box[lo:hi, None, :], arr.gt_box[safe], np.ones(cols.shape, bool))
        other = valid & (arr.gt_category[safe] != arr.det_category[lo:hi, None])
        sibling = other & (arr.gt_super[safe] == arr.category_super[arr.det_category[lo:hi]][:, None])
        for name, eligible in (("Sim", sibling), ("Oth", other)):
            candidate = eligible & (iou >= iou_threshold)
            scored = np.where(candidate, iou, -np.inf)
            pick = _last_argmax(scored)
            rows = np.arange(hi - lo)
            found = candidate[rows, pick]
            out[name][0][lo:hi] = np.where(found, scored[rows, pick], -np.inf)
            out[name][1][lo:hi] = np.where(found, cols[rows, pick], -1)  # gt index = file position
    return out


def _match(arr: _Arrays, settings: tuple[tuple[str, float], ...] = _MATCHED_SETTINGS) -> np.ndarray:
    """Outcome (FP, TP, IGNORED) of every kept detection under each (name, IoU threshold) setting and
    area: shape (detections, settings, areas), following COCOeval.evaluateImg. Settings named Sim or
    Oth also match the crowd regions they add; any other name is plain COCOeval at its threshold."""
    n_settings, n_areas = len(settings), len(AREA_RANGES)
    thresholds = np.array([min(t, 1 - 1e-10) for _, t in settings])
    ranges = np.array(list(AREA_RANGES.values()))
    n = len(arr.det_image)
    outcome = np.full((n, n_settings, n_areas), FP, np.int8)
    if n == 0:
        return outcome

    # the crowd candidate each setting adds (none for C75, C50, Loc, or COCOeval's own thresholds)
    conv_iou = np.full((n, n_settings), -np.inf)
    conv_pos = np.full((n, n_settings), -1, np.int64)
    converted = {name: s for s, (name, _) in enumerate(settings) if name in _CONVERTED}
    if converted:
        threshold = min(min(settings[s][1] for s in converted.values()), 1 - 1e-10)
        for name, (iou, pos) in _converted_candidates(arr, threshold).items():
            if name in converted:
                conv_iou[:, converted[name]], conv_pos[:, converted[name]] = iou, pos

    # (image, category) pairs of the detections and their own ground truth
    n_cat = len(arr.category_ids)
    det_key = arr.det_image * n_cat + arr.det_category  # detections are sorted by it, then rank
    pair_keys, pair_start, pair_count = _groups(det_key)
    gt_key = arr.gt_image * n_cat + arr.gt_category
    gt_order = np.argsort(gt_key, kind="stable")  # file order within a pair
    gt_keys, gt_start, gt_count = _groups(gt_key[gt_order])
    where = np.minimum(np.searchsorted(gt_keys, pair_keys), max(len(gt_keys) - 1, 0))
    has_gt = gt_keys[where] == pair_keys if len(gt_keys) else np.zeros(len(pair_keys), bool)
    own_count = np.where(has_gt, gt_count[where], 0) if len(gt_keys) else np.zeros(len(pair_keys), np.int64)
    own_start = np.where(has_gt, gt_start[where], 0) if len(gt_keys) else np.zeros(len(pair_keys), np.int64)

    det_area = arr.det_box[:, 2] * arr.det_box[:, 3]
    det_outside = (det_area[:, None] < ranges[:, 0]) | (det_area[:, None] > ranges[:, 1])  # (n, areas)

    # pairs without ground truth of their class: only the added crowd regions can claim a detection
    lone = np.repeat(~has_gt, pair_count)
    outcome[lone] = np.where(np.isfinite(conv_iou[lone])[:, :, None], IGNORED, FP)

    # pairs with ground truth, in buckets of similar width, one greedy step per detection rank
    widths = own_count[has_gt]
    pairs = np.flatnonzero(has_gt)
    bucket_of = np.ceil(np.log2(np.maximum(widths, 1))).astype(int)
    for bucket in np.unique(bucket_of):
        _match_bucket(arr, outcome, pairs[bucket_of == bucket], pair_start, pair_count, own_start, own_count,
                      gt_order, thresholds, ranges, conv_iou, conv_pos)

    # unmatched detections outside the area range are ignored (COCOeval's dtIg for a = out of range)
    outcome[(outcome == FP) & det_outside[:, None, :]] = IGNORED
    return outcome


def _match_bucket(arr, outcome, pairs, pair_start, pair_count, own_start, own_count, gt_order,
                  thresholds, ranges, conv_iou, conv_pos) -> None:
    n_settings, n_areas = len(thresholds), len(ranges)
    width = int(own_count[pairs].max())
    column = np.arange(width)
    valid = column[None, :] < own_count[pairs][:, None]  # (P, G)
    gt_index = gt_order[np.where(valid, own_start[pairs][:, None] + column[None, :], 0)]
    box = arr.gt_box[gt_index]
    crowd = arr.gt_crowd[gt_index] & valid
    area = arr.gt_area[gt_index]
    outside = (area[:, None, :] < ranges[None, :, 0, None]) | (area[:, None, :] > ranges[None, :, 1, None])
    ignored = crowd[:, None, :] | outside  # (P, A, G)
    ignored = np.broadcast_to(ignored[:, None], (len(pairs), n_settings, n_areas, width))
    thr = thresholds[None, :, None, None]
    taken = np.zeros((len(pairs), n_settings, n_areas, width), bool)  # COCOeval's gtm
    for rank in range(int(pair_count[pairs].max())):
        active = np.flatnonzero(pair_count[pairs] > rank)
        det = pair_start[pairs[active]] + rank
        iou = _iou(arr.det_box[det][:, None, :], box[active], crowd[active])  # (p, G)
        iou4 = iou[:, None, None, :]
        available = valid[active][:, None, None, :] & (crowd[active][:, None, None, :] | ~taken[active])
        candidate = available & (iou4 >= thr)
        ign = ignored[active]
        to_real = candidate & ~ign
        to_ignored = candidate & ign
        real_pick = _last_argmax(np.where(to_real, iou4, -np.inf))
        ign_scores = np.where(to_ignored, iou4, -np.inf)
        ign_pick = _last_argmax(ign_scores)
        has_real = to_real.any(-1)
        has_ign = to_ignored.any(-1)
        ign_iou = np.take_along_axis(ign_scores, ign_pick[..., None], -1)[..., 0]
        ign_pos = np.where(has_ign, gt_index[active][np.arange(len(active))[:, None, None], ign_pick], -1)
        c_iou = conv_iou[det][:, :, None]
        c_pos = conv_pos[det][:, :, None]
        crowd_wins = ~has_real & np.isfinite(c_iou) & ((c_iou > ign_iou) | ((c_iou == ign_iou) & (c_pos > ign_pos)))
        own_ign_wins = ~has_real & has_ign & ~crowd_wins
        # pycocotools records a match as the annotation's id and reads id 0 as "unmatched": a detection
        # that takes annotation 0 is a false positive, and annotation 0 is taken all the same
        real_gt = gt_index[active][np.arange(len(active))[:, None, None], real_pick]
        true_positive = has_real & ~arr.gt_id_zero[real_gt]
        result = np.where(true_positive, TP, np.where(own_ign_wins | crowd_wins, IGNORED, FP)).astype(np.int8)
        outcome[det] = result
        # mark the matched ground truth as taken (harmless for crowds, which stay available)
        pick = np.where(has_real, real_pick, ign_pick)
        mark = has_real | own_ign_wins
        p_idx, s_idx, a_idx = np.nonzero(mark)
        taken[active[p_idx], s_idx, a_idx, pick[p_idx, s_idx, a_idx]] = True


# ---------------------------------------------------------------- accumulation


def _positives(arr: _Arrays) -> np.ndarray:
    """COCOeval's npig: ground truth that is neither crowd nor outside the area, per (category, area)."""
    ranges = np.array(list(AREA_RANGES.values()))
    real = ~arr.gt_crowd[:, None] & (arr.gt_area[:, None] >= ranges[:, 0]) & (arr.gt_area[:, None] <= ranges[:, 1])
    n_positive = np.zeros((len(arr.category_ids), len(ranges)), np.int64)
    np.add.at(n_positive, arr.gt_category, real.astype(np.int64))
    return n_positive


def _accumulation_order(arr: _Arrays) -> list[np.ndarray]:
    """Per category, its kept detections in COCOeval.accumulate's order: images in id order
    concatenated, then a stable (mergesort) sort by descending score."""
    order = np.lexsort((arr.det_rank, arr.det_image, -arr.det_score, arr.det_category))
    categories, starts, counts = _groups(arr.det_category[order])
    span = {int(c): order[s : s + k] for c, s, k in zip(categories, starts, counts)}
    empty = np.zeros(0, np.int64)
    return [span.get(k, empty) for k in range(len(arr.category_ids))]


def _precision_curve(tp: np.ndarray, fp: np.ndarray, n_positive: int) -> np.ndarray:
    """COCOeval.accumulate for one category and area: rows of tp/fp flags in score order → (rows, R)."""
    tp_sum = np.cumsum(tp, axis=1).astype(float)
    fp_sum = np.cumsum(fp, axis=1).astype(float)
    recall = tp_sum / n_positive
    precision = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]  # the interpolated envelope
    out = np.zeros((tp.shape[0], len(RECALL_THRESHOLDS)))
    n = tp.shape[1]
    for row in range(tp.shape[0]):
        inds = np.searchsorted(recall[row], RECALL_THRESHOLDS, side="left")
        hit = inds < n
        out[row, hit] = precision[row, inds[hit]]
    return out


def error_curves(gt: dict, detections: list[dict]) -> ErrorCurves:
    """The seven COCO-analyze curves of `detections` (COCO results, xywh) against `gt` (a COCO dict)."""
    arr = _arrays(gt, detections)
    outcome = _match(arr)
    n_cat, n_areas = len(arr.category_ids), len(AREA_RANGES)
    n_matched = len(_MATCHED_SETTINGS)
    precision = np.full((len(ANALYSIS_SETTINGS), len(RECALL_THRESHOLDS), n_cat, n_areas), -1.0)

    n_positive = _positives(arr)

    for k, dets in enumerate(_accumulation_order(arr)):
        for a in range(n_areas):
            if n_positive[k, a] == 0:
                continue
            flags = outcome[dets, :, a].T  # (settings, dets)
            precision[:n_matched, :, k, a] = _precision_curve(flags == TP, flags == FP, int(n_positive[k, a]))
    oth = precision[ANALYSIS_SETTINGS.index("Oth")]
    precision[ANALYSIS_SETTINGS.index("BG")] = np.where(oth > -1, (oth > 0).astype(float), -1.0)
    precision[ANALYSIS_SETTINGS.index("FN")] = np.where(oth > -1, 1.0, -1.0)
    names = {c["id"]: c["name"] for c in gt["categories"]}
    return ErrorCurves(
        precision=precision,
        category_ids=tuple(int(c) for c in arr.category_ids),
        category_names=tuple(str(names[int(c)]) for c in arr.category_ids),
    )


def cocoeval_arrays(gt: dict, detections: list[dict], iou_thresholds: np.ndarray,
                    max_dets: tuple[int, ...] = (1, 10, 100)) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """COCOeval's bbox evaluate + accumulate in one pass over arrays: (precision, recall, category ids).

    precision has dims (IoU threshold, recall threshold, category, area) at max(max_dets), as
    COCOeval's eval['precision'][..., -1]; recall has dims (IoU threshold, category, area, max dets),
    as eval['recall']; -1 where a category has no ground truth in the area. As in COCOeval, matching
    is done once with the top max(max_dets) detections of each (image, category), and a smaller
    maxDets keeps the first ones of each, matched as they were."""
    arr = _arrays(gt, detections, max(max_dets))
    outcome = _match(arr, tuple((f"IoU {t}", float(t)) for t in iou_thresholds))
    n_t, n_cat, n_areas = len(iou_thresholds), len(arr.category_ids), len(AREA_RANGES)
    precision = np.full((n_t, len(RECALL_THRESHOLDS), n_cat, n_areas), -1.0)
    recall = np.full((n_t, n_cat, n_areas, len(max_dets)), -1.0)

    n_positive = _positives(arr)

    for k, dets in enumerate(_accumulation_order(arr)):
        for a in range(n_areas):
            if n_positive[k, a] == 0:
                continue
            for m, limit in enumerate(max_dets):
                kept = dets[arr.det_rank[dets] < limit]
                flags = outcome[kept, :, a].T  # (thresholds, dets)
                true_positives = (flags == TP).sum(axis=1)
                recall[:, k, a, m] = true_positives / n_positive[k, a] if len(kept) else 0.0
                if limit == max(max_dets):
                    precision[:, :, k, a] = _precision_curve(flags == TP, flags == FP, int(n_positive[k, a]))
    return precision, recall, tuple(int(c) for c in arr.category_ids)


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
