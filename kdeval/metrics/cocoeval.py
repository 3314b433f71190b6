"""pycocotools' bbox COCOeval (evaluate + accumulate) over numpy arrays, equal to it bit for bit.

COCO AP (coco_ap) and the COCO-analyze error curves (analyze) both rest on this: per (image,
category) the detections kept by descending score, greedy matching against the ground truth at
each IoU threshold and area range (COCOeval.evaluateImg), and the interpolated precision at the
101 recall thresholds (COCOeval.accumulate). All thresholds and areas are matched in one pass.

IoU is computed with the operations, in the order, of pycocotools' C bbIou, so that thresholds and
ties fall the same way; precision is accumulated as COCOeval.accumulate does it. pycocotools'
quirks come along: a detection matched to an annotation with id 0 counts as a false positive, as
pycocotools reads id 0 as "unmatched".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kdeval.metrics.detection_columns import DetectionColumns, detection_columns, positions
from kdeval.vocab import AREA_RANGES

RECALL_THRESHOLDS = np.linspace(0.0, 1.00, 101, endpoint=True)  # COCOeval Params.recThrs
FP, TP, IGNORED = 0, 1, 2  # a detection's outcome under one threshold and area


def summary_mean(block: np.ndarray) -> float:
    """COCOeval.summarize's mean: over the entries that are not -1, in C order; -1 if none."""
    valid = block[block > -1]
    return float(np.mean(valid)) if valid.size else -1.0


# ---------------------------------------------------------------- boxes


def bb_iou(det_xywh: np.ndarray, gt_xywh: np.ndarray, crowd: np.ndarray) -> np.ndarray:
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


def last_argmax(values: np.ndarray) -> np.ndarray:
    """Index of the maximum along the last axis, the last one on ties (pycocotools keeps a later
    candidate whose IoU equals the best so far)."""
    return values.shape[-1] - 1 - np.argmax(values[..., ::-1], axis=-1)


# ---------------------------------------------------------------- inputs as arrays


@dataclass
class DetectionArrays:
    image_ids: np.ndarray  # sorted
    category_ids: np.ndarray  # sorted
    gt_image: np.ndarray  # position in image_ids; annotations in file order
    gt_category: np.ndarray  # position in category_ids
    gt_box: np.ndarray  # (G, 4) xywh
    gt_area: np.ndarray
    gt_crowd: np.ndarray
    gt_id_zero: np.ndarray  # annotation id 0: pycocotools counts a match to it as no match (see _match_bucket)
    det_image: np.ndarray  # kept detections: by image, category, descending score, at most max_dets each
    det_category: np.ndarray
    det_box: np.ndarray
    det_score: np.ndarray
    det_rank: np.ndarray  # rank within its (image, category)


def detection_arrays(gt: dict, detections: list[dict] | DetectionColumns, max_dets: int) -> DetectionArrays:
    """Ground truth and detections (COCO results, or their columns) as arrays, the detections cut to
    the first `max_dets` of each (image, category) by descending score, as COCOeval.evaluateImg keeps
    them."""
    image_ids = np.array(sorted({image["id"] for image in gt["images"]}), dtype=np.int64)
    category_ids = np.array(sorted({c["id"] for c in gt["categories"]}), dtype=np.int64)
    image_pos = {int(i): p for p, i in enumerate(image_ids)}
    category_pos = {int(c): p for p, c in enumerate(category_ids)}

    anns = [a for a in gt["annotations"] if a["image_id"] in image_pos and a["category_id"] in category_pos]
    gt_box = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
    gt_area = np.array([a["area"] if "area" in a else a["bbox"][2] * a["bbox"][3] for a in anns], dtype=np.float64)
    gt_category = np.array([category_pos[a["category_id"]] for a in anns], dtype=np.int64)

    columns = detection_columns(detections)
    det_image, on_image = positions(columns.image_id, image_ids)
    det_category, on_category = positions(columns.category_id, category_ids)
    known = np.flatnonzero(on_image & on_category)  # the others are not scored, as in COCOeval
    det_image, det_category = det_image[known], det_category[known]
    det_score, det_box = columns.score[known], columns.bbox[known]
    # pycocotools: per (image, category), a stable sort by descending score, then the first max_dets
    order = np.lexsort((np.arange(len(known)), -det_score, det_category, det_image))
    group = det_image[order] * len(category_ids) + det_category[order]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]]) if len(order) else np.zeros(0, np.int64)
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    keep = order[rank < max_dets]
    return DetectionArrays(
        image_ids=image_ids,
        category_ids=category_ids,
        gt_image=np.array([image_pos[a["image_id"]] for a in anns], dtype=np.int64),
        gt_category=gt_category,
        gt_box=gt_box,
        gt_area=gt_area,
        gt_crowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
        gt_id_zero=np.array([a.get("id") == 0 for a in anns], dtype=bool),
        det_image=det_image[keep],
        det_category=det_category[keep],
        det_box=det_box[keep],
        det_score=det_score[keep],
        det_rank=rank[rank < max_dets],
    )


def groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For keys sorted ascending: (unique keys, start of each, count of each)."""
    if not len(keys):
        return keys, np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[starts], starts, np.diff(np.r_[starts, len(keys)])


# ---------------------------------------------------------------- matching


def match(arr: DetectionArrays, iou_thresholds: Sequence[float],
          extra_crowds: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Outcome (FP, TP, IGNORED) of every kept detection at each IoU threshold and area: shape
    (detections, thresholds, areas), following COCOeval.evaluateImg.

    `extra_crowds` = (IoU, file position), each (detections, thresholds), gives every detection one
    more crowd region it may fall on when it matches nothing of its own class (-inf, -1 for none):
    the regions COCO-analyze's Sim and Oth add. Without it, this is plain COCOeval."""
    n_settings, n_areas = len(iou_thresholds), len(AREA_RANGES)
    thresholds = np.array([min(t, 1 - 1e-10) for t in iou_thresholds])
    ranges = np.array(list(AREA_RANGES.values()))
    n = len(arr.det_image)
    outcome = np.full((n, n_settings, n_areas), FP, np.int8)
    if n == 0:
        return outcome
    if extra_crowds is None:
        extra_crowds = np.full((n, n_settings), -np.inf), np.full((n, n_settings), -1, np.int64)
    conv_iou, conv_pos = extra_crowds

    # (image, category) pairs of the detections and their own ground truth
    n_cat = len(arr.category_ids)
    det_key = arr.det_image * n_cat + arr.det_category  # detections are sorted by it, then rank
    pair_keys, pair_start, pair_count = groups(det_key)
    gt_key = arr.gt_image * n_cat + arr.gt_category
    gt_order = np.argsort(gt_key, kind="stable")  # file order within a pair
    gt_keys, gt_start, gt_count = groups(gt_key[gt_order])
    where = np.minimum(np.searchsorted(gt_keys, pair_keys), max(len(gt_keys) - 1, 0))
    has_gt = gt_keys[where] == pair_keys if len(gt_keys) else np.zeros(len(pair_keys), bool)
    own_count = np.where(has_gt, gt_count[where], 0) if len(gt_keys) else np.zeros(len(pair_keys), np.int64)
    own_start = np.where(has_gt, gt_start[where], 0) if len(gt_keys) else np.zeros(len(pair_keys), np.int64)

    det_area = arr.det_box[:, 2] * arr.det_box[:, 3]
    det_outside = (det_area[:, None] < ranges[:, 0]) | (det_area[:, None] > ranges[:, 1])  # (n, areas)

    # pairs without ground truth of their class: only the extra crowd regions can claim a detection
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
        iou = bb_iou(arr.det_box[det][:, None, :], box[active], crowd[active])  # (p, G)
        iou4 = iou[:, None, None, :]
        available = valid[active][:, None, None, :] & (crowd[active][:, None, None, :] | ~taken[active])
        candidate = available & (iou4 >= thr)
        ign = ignored[active]
        to_real = candidate & ~ign
        to_ignored = candidate & ign
        real_pick = last_argmax(np.where(to_real, iou4, -np.inf))
        ign_scores = np.where(to_ignored, iou4, -np.inf)
        ign_pick = last_argmax(ign_scores)
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


def positives(arr: DetectionArrays) -> np.ndarray:
    """COCOeval's npig: ground truth that is neither crowd nor outside the area, per (category, area)."""
    ranges = np.array(list(AREA_RANGES.values()))
    real = ~arr.gt_crowd[:, None] & (arr.gt_area[:, None] >= ranges[:, 0]) & (arr.gt_area[:, None] <= ranges[:, 1])
    n_positive = np.zeros((len(arr.category_ids), len(ranges)), np.int64)
    np.add.at(n_positive, arr.gt_category, real.astype(np.int64))
    return n_positive


def accumulation_order(arr: DetectionArrays) -> list[np.ndarray]:
    """Per category, its kept detections in COCOeval.accumulate's order: images in id order
    concatenated, then a stable (mergesort) sort by descending score."""
    order = np.lexsort((arr.det_rank, arr.det_image, -arr.det_score, arr.det_category))
    categories, starts, counts = groups(arr.det_category[order])
    span = {int(c): order[s : s + k] for c, s, k in zip(categories, starts, counts)}
    empty = np.zeros(0, np.int64)
    return [span.get(k, empty) for k in range(len(arr.category_ids))]


def precision_curve(tp: np.ndarray, fp: np.ndarray, n_positive: int) -> np.ndarray:
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


def matched_arrays(gt: dict, detections: list[dict] | DetectionColumns, iou_thresholds, max_dets: tuple[int, ...]) -> tuple[DetectionArrays, np.ndarray]:
    """The kept detections as arrays and their outcome (detections, thresholds, areas): COCOeval.evaluate."""
    arr = detection_arrays(gt, detections, max(max_dets))
    return arr, match(arr, [float(t) for t in iou_thresholds])


def cocoeval_arrays(gt: dict, detections: list[dict], iou_thresholds: np.ndarray,
                    max_dets: tuple[int, ...] = (1, 10, 100)) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """COCOeval's bbox evaluate + accumulate in one pass over arrays: (precision, recall, category ids).

    precision has dims (IoU threshold, recall threshold, category, area) at max(max_dets), as
    COCOeval's eval['precision'][..., -1]; recall has dims (IoU threshold, category, area, max dets),
    as eval['recall']; -1 where a category has no ground truth in the area. As in COCOeval, matching
    is done once with the top max(max_dets) detections of each (image, category), and a smaller
    maxDets keeps the first ones of each, matched as they were."""
    arr, outcome = matched_arrays(gt, detections, iou_thresholds, max_dets)
    n_t, n_cat, n_areas = len(iou_thresholds), len(arr.category_ids), len(AREA_RANGES)
    precision = np.full((n_t, len(RECALL_THRESHOLDS), n_cat, n_areas), -1.0)
    recall = np.full((n_t, n_cat, n_areas, len(max_dets)), -1.0)

    n_positive = positives(arr)

    for k, dets in enumerate(accumulation_order(arr)):
        for a in range(n_areas):
            if n_positive[k, a] == 0:
                continue
            for m, limit in enumerate(max_dets):
                kept = dets[arr.det_rank[dets] < limit]
                flags = outcome[kept, :, a].T  # (thresholds, dets)
                true_positives = (flags == TP).sum(axis=1)
                recall[:, k, a, m] = true_positives / n_positive[k, a] if len(kept) else 0.0
                if limit == max(max_dets):
                    precision[:, :, k, a] = precision_curve(flags == TP, flags == FP, int(n_positive[k, a]))
    return precision, recall, tuple(int(c) for c in arr.category_ids)
