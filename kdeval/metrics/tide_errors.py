"""TIDE's error breakdown (tidecv 1.0.1, box mode) computed by kdeval over arrays, and on image resamples.

What: for one model's COCO detections against a COCO ground truth, tidecv's AP at IoU .5 and the AP
that each error type costs: the six main errors (Cls, Loc, Both, Dupe, Bkg, Miss; the AP gained by
fixing every error of that type, as `TIDERun.fix_main_errors` gives it) and the two special ones
(FalsePos, FalseNeg; `TIDERun.fix_special_errors`), as fractions (tidecv reports AP points).

Why: tidecv evaluates image by image and detection by detection in Python (about 20 s for 5,000
images × 100 detections); kdeval's report needs the same numbers in well under a second, and their
bootstrap intervals over image resamples.

How it follows tidecv (IoU .5 for a positive, .1 for background, 100 detections per image):
- Per image, the detections of every class sorted together by descending score (stable), the first
  100 kept. Greedy matching in that order: a detection takes the unused ground truth of its class
  with the highest IoU ≥ .5, the first in file order on ties. An unmatched detection whose box lies
  more than half (strictly) inside a crowd region of its class is ignored (no AP data point).
- Every detection that is not a true positive (ignored ones included) gets one error, tested in
  tidecv's order: the image has no (non-crowd) ground truth → Bkg; best same-class IoU in [.1, .5] → Loc;
  best other-class IoU ≥ .5 → Cls; best IoU with a used same-class box ≥ .5 → Dupe; best IoU with
  any box ≤ .1 → Bkg; else Both. Loc and Cls name their target box (the first maximum). A ground
  truth that was not matched and that no Loc/Cls error targets is a Miss.
- Fixing: the Loc/Cls error of highest score (the first in the image's order) on a target box that
  no detection matched becomes a true positive (of the box's class), the others on that box, and on
  boxes already matched, are dropped; fixed Dupe, Bkg and Both errors are dropped; fixed misses leave
  the class's positives. FalsePos scores every true positive 1 and every false positive 0; FalseNeg
  sets a class's positives to its true positives. Main dAPs are clamped at 0, special ones are not.
- AP per class: precision at tidecv's 101 recall bars (x / 100, which differ from np.linspace's in ten
  places), interpolated as COCOeval does it, without COCOeval's eps; 0 for a class without positives.
- Order of equal scores. The base AP sorts a class's data points by descending score, stably, in the
  order they were pushed: images in the ground truth's file order, each image's detections in its
  sorted order. A fixed evaluation pushes every error's data point first, then the true positives,
  so among equal scores the false positives (and fixed errors) come before the true positives. Both
  orders are followed here, so scores tied across detections give tidecv's numbers.

Where it departs from tidecv:
- Averaging (dbolya/tide issue #28). tidecv averages AP over every class with ground truth or with
  data points, a class with data points and no ground truth counting as AP 0; pycocotools averages
  over the classes with ground truth only. `averaging="coco"` (the default) applies pycocotools'
  rule to every evaluation, as pycocotools would on the fixed data: a class whose last boxes the Miss
  or FalseNeg fix takes away leaves that evaluation's mean, where tidecv keeps it at 0 if it has
  predictions (and drops it if it has none). `averaging="tidecv"` gives tidecv's numbers; one
  matching gives both (`ResampledTide.breakdown`).
- Where tidecv divides by zero (no class left to average, e.g. a model without true positives under
  FalseNeg) that number is NaN here, the others stay; tidecv's wrapper (kdeval.metrics.tide) gives
  NaN for all eight errors.
- Ground truth of images missing from gt["images"] or of categories missing from gt["categories"] is
  left out (pycocotools leaves it out; tidecv would evaluate it); detections on images missing from
  gt["images"] are left out (as tidecv does), detections of unlisted categories are kept (as tidecv
  does: they take part in matching, truncation and Cls fixes, and count in tidecv's averaging).
As in tidecv, and unlike pycocotools: the 100 detections are per image, not per (image, class); a
crowd region never consumes a detection that matches a real box and needs IoU > .5, not ≥ .5; ties
in IoU go to the first box, not the last.

Resampling: an image drawn twice counts as two copies of it (ground truth and detections). TIDE's
matching, errors and fixes are per image, so a copy behaves as the original: everything is decided
once, each evaluation (base, the six fixes, FalseNeg) is written as per-detection outcomes (a bit
each) in the fixed evaluations' order, the base taking its tie groups that mix true and false
positives in its own order, with per-image positives per class; a compiled kernel re-accumulates AP
per resample with every entry weighted by its image's count (the FalsePos AP has a closed form).
As in kdeval.metrics.bootstrap, a detection's copies sit next to each other (d1 d1 d2 d2), where a
dataset holding the copies as images would interleave two detections of one image and class that
have the same score (d1 d2 d1 d2); counts of 1 give exactly `tide_breakdown`'s numbers.
"""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass

import numpy as np

from kdeval.metrics.detection_columns import DetectionColumns, detection_columns, positions

POS_THRESHOLD = 0.5
BG_THRESHOLD = 0.1
MAX_DETS = 100  # per image, all classes together
TIDE_RECALL_BARS = np.array([x / 100 for x in range(101)])  # tidecv's x_range

MAIN_ERRORS = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
BREAKDOWN_KEYS = ("AP50", *MAIN_ERRORS, "FP", "FN")
AVERAGINGS = ("coco", "tidecv")

# evaluations accumulated per detection: the base, one per main-error fix, FalseNeg's (FalsePos's
# AP has a closed form). A detection's error code is the index of the evaluation that fixes it.
EVALUATIONS = ("base", *MAIN_ERRORS, "FalseNeg")
BASE, CLS, LOC, BOTH, DUPE, BKG, MISS, FALSE_NEG = range(len(EVALUATIONS))

# a kept detection's status
TRUE_POSITIVE, FALSE_POSITIVE, IGNORED = 0, 1, 2


# ---------------------------------------------------------------- inputs as arrays


def _column(records: list[dict], key: str, dtype) -> np.ndarray:
    try:
        return np.fromiter(map(operator.itemgetter(key), records), dtype, len(records))
    except (TypeError, ValueError):  # ids that are not integers
        return np.array([record[key] for record in records])


def _boxes(records: list[dict]) -> np.ndarray:
    flat = itertools.chain.from_iterable(map(operator.itemgetter("bbox"), records))
    return np.fromiter(flat, np.float64, 4 * len(records)).reshape(-1, 4)


def _positions(values: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each value in the sorted `table`, and whether it is there at all."""
    if not len(table):
        return np.zeros(len(values), np.int64), np.zeros(len(values), bool)
    where = np.minimum(np.searchsorted(table, values), len(table) - 1)
    return where, table[where] == values


def _run_starts(keys: np.ndarray) -> np.ndarray:
    """For keys sorted so that equal ones are adjacent: where each run starts."""
    if not len(keys):
        return np.zeros(0, np.int64)
    return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])


def _sorted_by(keys: list[np.ndarray], sizes: list[int]) -> np.ndarray:
    """argsort by several non-negative integer keys, the first most significant, which together are
    unique: one sort of the keys packed into an int64 where they fit, else a lexsort."""
    if np.prod([float(max(size, 1)) for size in sizes]) < 2.0**62:
        packed = np.zeros(len(keys[0]), np.int64)
        for key, size in zip(keys, sizes):
            packed = packed * max(size, 1) + key
        return np.argsort(packed)
    return np.lexsort(keys[::-1])


def _dense_rank(values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Rank of each value among the distinct values, `order` sorting them."""
    ranked = values[order]
    rank = np.empty(len(values), np.int64)
    rank[order] = np.cumsum(np.r_[True, ranked[1:] != ranked[:-1]]) - 1 if len(values) else 0
    return rank


def _rank_in_runs(keys: np.ndarray) -> np.ndarray:
    starts = _run_starts(keys)
    return np.arange(len(keys)) - np.repeat(starts, np.diff(np.r_[starts, len(keys)]))


class _Boxes:
    """xywh boxes as the terms of pycocotools' bbIou: x, y, x + w, y + h (summed as it sums them), area."""

    def __init__(self, xywh: np.ndarray):
        x, y, w, h = (np.ascontiguousarray(c) for c in xywh.T)
        self.x, self.y, self.x_end, self.y_end, self.area = x, y, w + x, h + y, w * h


PAIRS_PER_CHUNK = 1 << 18  # temporaries of a few MB: reused, not freshly mapped for every step


def _overlaps(det: _Boxes, truth: _Boxes, det_image: np.ndarray, start: np.ndarray, count: np.ndarray, crowd: bool):
    """Of every (detection, box of its image), by detection then box, those whose boxes overlap:
    (detection index, box index, IoU), the IoU computed with pycocotools' bbIou operations in its
    order (so that .5 and .1 fall as in tidecv); a crowd region's 'IoU' is over the detection's area.
    Pairs that do not overlap have IoU 0, which no TIDE test tells from absent."""
    per_det = count[det_image]
    ends = np.cumsum(per_det)
    cuts = np.unique(np.r_[0, np.searchsorted(ends, np.arange(PAIRS_PER_CHUNK, ends[-1] if len(ends) else 0,
                                                                PAIRS_PER_CHUNK)), len(per_det)])
    found = [_overlaps_of(det, truth, np.arange(a, b), start[det_image[a:b]], per_det[a:b], crowd)
             for a, b in itertools.pairwise(cuts)]
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    return tuple(np.concatenate(parts) for parts in zip(*found))


def _overlaps_of(det: _Boxes, truth: _Boxes, dets: np.ndarray, start: np.ndarray, per_det: np.ndarray, crowd: bool):
    first = np.cumsum(per_det) - per_det
    pair_box = np.repeat(start - first, per_det) + np.arange(first[-1] + per_det[-1])
    w = np.minimum(np.repeat(det.x_end[dets], per_det), truth.x_end[pair_box])
    w -= np.maximum(np.repeat(det.x[dets], per_det), truth.x[pair_box])
    keep = np.flatnonzero(w > 0)
    pair_det = dets[np.searchsorted(first, keep, side="right") - 1]
    pair_box, w = pair_box[keep], w[keep]
    h = np.minimum(det.y_end[pair_det], truth.y_end[pair_box]) - np.maximum(det.y[pair_det], truth.y[pair_box])
    keep = h > 0
    pair_det, pair_box = pair_det[keep], pair_box[keep]
    inter = w[keep] * h[keep]
    union = det.area[pair_det] if crowd else det.area[pair_det] + truth.area[pair_box] - inter
    return pair_det, pair_box, inter / union


def _first_max(values: np.ndarray, run_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per run of `values` (runs start at run_starts, none empty): the maximum and the position of
    its first occurrence (numpy's argmax, which tidecv uses)."""
    best = np.maximum.reduceat(values, run_starts)
    run_of = np.repeat(np.arange(len(run_starts)), np.diff(np.r_[run_starts, len(values)]))
    at = np.where(values == best[run_of], np.arange(len(values)), len(values))
    return best, np.minimum.reduceat(at, run_starts)


# ---------------------------------------------------------------- matching and errors, once


@dataclass(frozen=True)
class _Outcome:
    """Per kept detection (in tidecv's processing order: images in file order, each by descending
    score) and per ground-truth box, what TIDE decides."""

    n_images: int
    n_classes: int
    det_image: np.ndarray  # position in sorted image ids
    det_class: np.ndarray
    det_score_rank: np.ndarray  # among distinct scores, 0 the highest
    det_status: np.ndarray  # TRUE_POSITIVE, FALSE_POSITIVE, IGNORED
    det_error: np.ndarray  # CLS … BKG for a detection that is not a true positive, else BASE
    det_fixed: np.ndarray  # a Loc/Cls error that its fix turns into a true positive
    det_fixed_class: np.ndarray  # the class it becomes a true positive of
    gt_image: np.ndarray  # non-crowd boxes
    gt_class: np.ndarray
    gt_matched: np.ndarray
    gt_missed: np.ndarray


def _outcome(gt: dict, detections: list[dict] | DetectionColumns) -> _Outcome:
    image_list = list(dict.fromkeys(image["id"] for image in gt["images"]))  # file order
    image_ids = np.sort(np.array(image_list))
    file_rank = np.empty(len(image_ids), np.int64)  # by sorted position
    file_rank[np.searchsorted(image_ids, np.array(image_list))] = np.arange(len(image_list))
    listed_classes = np.array(sorted({c["id"] for c in gt["categories"]}))

    anns = gt["annotations"]
    ann_image, ann_known_image = _positions(_column(anns, "image_id", np.int64), image_ids)
    ann_class, ann_known_class = _positions(_column(anns, "category_id", np.int64), listed_classes)
    ann_box = _boxes(anns)
    ann_crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
    ann_kept = ann_known_image & ann_known_class

    columns = detection_columns(detections)
    det_class_id, score, box = columns.category_id, columns.score, columns.bbox
    det_image, on_known_image = positions(columns.image_id, image_ids)
    _, listed = positions(det_class_id, listed_classes)
    extra_classes = np.unique(det_class_id[~listed])  # kept, as tidecv keeps them
    class_ids = np.concatenate([listed_classes, extra_classes])
    class_order = np.argsort(class_ids, kind="stable")
    det_class = class_order[np.searchsorted(class_ids[class_order], det_class_id)]

    # tidecv's processing order: images in file order, each image's detections by descending score
    # (a stable sort of the order they were given in); the first MAX_DETS of each image kept
    known = np.flatnonzero(on_known_image)
    by_score = np.argsort(-score[known], kind="stable")
    score_rank = np.zeros(len(score), np.int64)  # among distinct scores, 0 the highest: an integer sort key
    score_rank[known] = _dense_rank(-score[known], by_score)
    by_score = known[by_score]
    order = by_score[np.argsort(file_rank[det_image[by_score]].astype(np.min_scalar_type(len(image_ids))), kind="stable")]
    order = order[_rank_in_runs(det_image[order]) < MAX_DETS]
    det_image, det_class, box, score_rank = (a[order] for a in (det_image, det_class, box, score_rank))
    n_det, n_images, n_classes = len(order), len(image_ids), len(class_ids)

    # non-crowd ground truth and crowd regions, each by image, in file order within an image
    def by_image(mask):
        index = np.flatnonzero(mask)
        index = index[np.argsort(ann_image[index], kind="stable")]
        count = np.bincount(ann_image[index], minlength=n_images)
        return index, np.cumsum(count) - count, count

    gt_index, gt_start, gt_count = by_image(ann_kept & ~ann_crowd)
    crowd_index, crowd_start, crowd_count = by_image(ann_kept & ann_crowd)
    gt_image, gt_class = ann_image[gt_index], ann_class[gt_index]
    det_boxes = _Boxes(box)

    pair_det, pair_gt, iou = _overlaps(det_boxes, _Boxes(ann_box[gt_index]), det_image, gt_start, gt_count, crowd=False)
    same_class = det_class[pair_det] == gt_class[pair_gt]

    det_match = _greedy_match(pair_det, pair_gt, iou, same_class, det_image, det_class, n_classes)
    gt_matched = np.zeros(len(gt_index), bool)
    gt_matched[det_match[det_match >= 0]] = True
    unmatched = det_match < 0

    status = np.where(unmatched, FALSE_POSITIVE, TRUE_POSITIVE).astype(np.int8)
    crowd_det, crowd_pos, crowd_iou = _overlaps(det_boxes, _Boxes(ann_box[crowd_index]), det_image, crowd_start,
                                                crowd_count, crowd=True)
    inside = (crowd_iou > POS_THRESHOLD) & (det_class[crowd_det] == ann_class[crowd_index][crowd_pos])
    status[crowd_det[inside & unmatched[crowd_det]]] = IGNORED

    # the errors, tested in tidecv's order on the maxima of each detection's IoU row (0 where no box
    # overlaps); Loc and Cls target the first box of the maximum, as numpy's argmax in tidecv
    best_same, best_other, best_used, best_any = np.zeros((4, n_det))
    same_target, other_target = np.full((2, n_det), -1, np.int64)
    if len(pair_det):
        starts = _run_starts(pair_det)
        rows = pair_det[starts]
        best_same[rows], at = _first_max(np.where(same_class, iou, 0.0), starts)
        same_target[rows] = pair_gt[at]
        best_other[rows], at = _first_max(np.where(same_class, 0.0, iou), starts)
        other_target[rows] = pair_gt[at]
        best_used[rows] = np.maximum.reduceat(np.where(same_class & gt_matched[pair_gt], iou, 0.0), starts)
        best_any[rows] = np.maximum.reduceat(iou, starts)
    error = np.select(
        [~unmatched, gt_count[det_image] == 0, (BG_THRESHOLD <= best_same) & (best_same <= POS_THRESHOLD),
         best_other >= POS_THRESHOLD, best_used >= POS_THRESHOLD, best_any <= BG_THRESHOLD],
        [BASE, BKG, LOC, CLS, DUPE, BKG], BOTH).astype(np.int8)
    target = np.where(error == LOC, same_target, np.where(error == CLS, other_target, -1))

    # BestGTMatch: of the Loc/Cls errors on a box nobody matched, the first in processing order
    # (the highest score) becomes the true positive; the box is then not a miss
    claims = np.flatnonzero(target >= 0)
    claims = claims[~gt_matched[target[claims]]]  # in processing order
    first_claims = claims[np.unique(target[claims], return_index=True)[1]]
    det_fixed = np.zeros(n_det, bool)
    det_fixed[first_claims] = True
    usable = np.zeros(len(gt_index), bool)
    usable[target[claims]] = True
    det_fixed_class = det_class.copy()
    det_fixed_class[first_claims] = gt_class[target[first_claims]]

    return _Outcome(
        n_images=n_images, n_classes=n_classes, det_image=det_image, det_class=det_class,
        det_score_rank=score_rank, det_status=status, det_error=error,
        det_fixed=det_fixed, det_fixed_class=det_fixed_class,
        gt_image=gt_image, gt_class=gt_class, gt_matched=gt_matched, gt_missed=~gt_matched & ~usable,
    )


def _greedy_match(pair_det, pair_gt, iou, same_class, det_image, det_class, n_classes) -> np.ndarray:
    """tidecv's matching: each detection in processing order takes the unused same-class box of
    highest IoU ≥ .5 (the first on ties). Only detections of one (image, class) compete, so the k-th
    candidate detection of every (image, class) is matched in one vectorised step. → matched box or -1."""
    matched = np.full(len(det_image), -1, np.int64)
    candidate = np.flatnonzero(same_class & (iou >= POS_THRESHOLD))  # by detection, then box
    if not len(candidate):
        return matched
    c_det, c_gt, c_iou = pair_det[candidate], pair_gt[candidate], iou[candidate]
    dets = np.unique(c_det)
    group = det_image[dets] * n_classes + det_class[dets]
    by_group = np.lexsort((dets, group))
    turn = np.empty(len(dets), np.int64)
    turn[by_group] = _rank_in_runs(group[by_group])
    c_turn = turn[np.searchsorted(dets, c_det)]
    order = np.argsort(c_turn, kind="stable")
    c_det, c_gt, c_iou, c_turn = c_det[order], c_gt[order], c_iou[order], c_turn[order]
    bounds = np.searchsorted(c_turn, np.arange(c_turn[-1] + 2))
    used = np.zeros(int(pair_gt.max()) + 1, bool)
    for k in range(len(bounds) - 1):
        d, g, v = (a[bounds[k]:bounds[k + 1]] for a in (c_det, c_gt, c_iou))
        free = ~used[g]
        d, g, v = d[free], g[free], v[free]
        if not len(d):
            continue
        _, at = _first_max(v, _run_starts(d))
        matched[d[at]] = g[at]
        used[g[at]] = True
    return matched


# ---------------------------------------------------------------- evaluations as per-detection entries


@dataclass(frozen=True)
class _Entries:
    """Every evaluation's data points, one segment per class, in the order of the fixed evaluations:
    (score descending, errors before true positives, processing order). An entry is a detection's
    data point in a class with a bit per evaluation for 'a data point there' (present) and one for 'a
    true positive there'.

    The base evaluation orders a class's points by (score descending, processing order) instead.
    The two orders differ only inside a tie group (one class, one score) holding base true positives
    and false positives; there the base evaluation takes the group in its own order (base_order),
    at the group's first entry, and the group's true positives carry no base bits."""

    seg_start: np.ndarray
    seg_end: np.ndarray
    seg_class: np.ndarray
    detection: np.ndarray  # per entry: kept detection
    present: np.ndarray  # uint8, bit e: evaluation e
    tp: np.ndarray
    missing: np.ndarray  # of an entry without true-positive bits: the one evaluation it is absent from, else SPARE
    base_order: np.ndarray  # the base data points (entries) by (class, score descending, processing order)
    base_tp: np.ndarray  # per base_order position
    base_seg_start: np.ndarray  # per segment, into base_order
    base_seg_end: np.ndarray
    mixed_first: np.ndarray  # per mixed tie group: its first entry
    mixed_start: np.ndarray  # its base data points, into base_order
    mixed_end: np.ndarray
    seg_mixed_start: np.ndarray  # per segment: its mixed tie groups
    seg_mixed_end: np.ndarray


ALL_BITS = (1 << len(EVALUATIONS)) - 1
SPARE = len(EVALUATIONS)  # the `missing` of an entry absent from no evaluation


def _bounds(keys: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For keys sorted ascending: where each wanted key's run starts and ends."""
    return np.searchsorted(keys, wanted, side="left"), np.searchsorted(keys, wanted, side="right")


def _entries(o: _Outcome) -> _Entries:
    n_det = len(o.det_image)
    index = np.arange(n_det)
    true_positive = o.det_status == TRUE_POSITIVE
    pushed = o.det_status != IGNORED  # an ignored detection is no data point unless a fix makes it one
    error_bit = np.where(o.det_error > BASE, 1 << o.det_error.astype(np.int64), 0)
    loc_fixed = o.det_fixed & (o.det_error == LOC)  # stays in its class, a true positive under Loc
    cls_fixed = o.det_fixed & (o.det_error == CLS)  # moves to the box's class, a true positive under Cls
    # a fixed error leaves its evaluation: dropped, or a true positive (Loc in its class, Cls as a moved entry)
    present = np.where(pushed, ALL_BITS & ~error_bit, 0) | np.where(loc_fixed, 1 << LOC, 0)
    tp = np.where(true_positive, ALL_BITS, np.where(loc_fixed, 1 << LOC, 0))
    own = index[present != 0]
    moved = index[cls_fixed]
    detection = np.concatenate([own, moved])
    entry_class = np.concatenate([o.det_class[own], o.det_fixed_class[moved]])
    present = np.concatenate([present[own], np.full(len(moved), 1 << CLS)])
    tp = np.concatenate([tp[own], np.full(len(moved), 1 << CLS)])
    # tidecv pushes the errors' data points (fixed or not) first, then the true positives, and sorts
    # stably by descending score
    n_ranks = int(o.det_score_rank.max()) + 1 if n_det else 1
    rank = o.det_score_rank[detection]
    order = _sorted_by([entry_class, rank, true_positive[detection].astype(np.int64), detection],
                       [o.n_classes, n_ranks, 2, n_det])
    detection, entry_class, present, tp, rank = (a[order] for a in (detection, entry_class, present, tp, rank))

    seg_start = _run_starts(entry_class)
    seg_class = entry_class[seg_start]
    seg_end = np.r_[seg_start[1:], len(entry_class)]

    # the base evaluation's own order: the fixed order but for its tie groups that mix true and
    # false positives, which it takes in processing order
    base_order = np.flatnonzero(present & 1)
    base_tp = (tp[base_order] & 1).astype(np.uint8)
    tie_key = entry_class * n_ranks + rank  # ascending along the entries and along base_order
    base_key = tie_key[base_order]
    group_start = _run_starts(base_key)
    group_tp = np.add.reduceat(base_tp.astype(np.int64), group_start) if len(group_start) else np.zeros(0, np.int64)
    group_size = np.diff(np.r_[group_start, len(base_order)])
    mixed_key = base_key[group_start[(group_tp > 0) & (group_tp < group_size)]]
    mixed_start, mixed_end = _bounds(base_key, mixed_key)
    in_mixed = np.zeros(len(base_order) + 1, np.int64)
    np.add.at(in_mixed, mixed_start, 1)
    np.add.at(in_mixed, mixed_end, -1)
    in_mixed = np.flatnonzero(np.cumsum(in_mixed)[:-1] > 0)  # positions in base_order
    if len(in_mixed):
        reordered = in_mixed[np.lexsort((detection[base_order[in_mixed]], base_key[in_mixed]))]
        base_order[in_mixed], base_tp[in_mixed] = base_order[reordered], base_tp[reordered]
    base_seg_start, base_seg_end = _bounds(entry_class[base_order], seg_class)
    mixed_first = np.searchsorted(tie_key, mixed_key, side="left")
    seg_mixed_start, seg_mixed_end = _bounds(entry_class[mixed_first], seg_class)
    true_in_mixed = base_order[in_mixed[base_tp[in_mixed] == 1]]
    present[true_in_mixed] &= ~1
    tp[true_in_mixed] &= ~1

    absent = ALL_BITS & ~present
    if np.any((tp == 0) & (absent & (absent - 1) != 0)):
        raise AssertionError("a false positive absent from more than one evaluation")  # by construction: its fix's only
    missing = np.where(absent == 0, SPARE, np.log2(np.maximum(absent, 1)).astype(np.int64))
    return _Entries(
        seg_start=seg_start, seg_end=seg_end, seg_class=seg_class, detection=detection,
        present=present.astype(np.uint8), tp=tp.astype(np.uint8), missing=missing.astype(np.int8),
        base_order=base_order, base_tp=base_tp, base_seg_start=base_seg_start, base_seg_end=base_seg_end,
        mixed_first=mixed_first, mixed_start=mixed_start, mixed_end=mixed_end,
        seg_mixed_start=seg_mixed_start, seg_mixed_end=seg_mixed_end,
    )


def _segment_ap(present_bits: np.ndarray, tp_bits: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """tidecv's APDataObject.get_ap for one class in one order, several evaluations at once
    (columns): entries (n,) of bits, positives (width,) → AP as a fraction and data points, each
    (width,). The same operations in the same order as _accumulate with every weight 1."""
    width = len(positives)
    bits = 1 << np.arange(width)
    present = (present_bits[:, None] & bits) != 0
    tp = present & ((tp_bits[:, None] & bits) != 0)
    tp_sum = np.cumsum(tp, axis=0)
    fp_sum = np.cumsum(present & ~tp, axis=0)
    points = (tp_sum[-1] + fp_sum[-1]).astype(np.float64)
    precision = np.zeros(tp.shape)
    np.divide(tp_sum, tp_sum + fp_sum, out=precision, where=tp)
    # the interpolated envelope; precision only counts at true positives, where recall rises
    envelope = np.maximum.accumulate(precision[::-1], axis=0)[::-1]
    ap = np.zeros(width)
    n = len(present_bits)
    for s in np.flatnonzero(positives > 0):
        recall = tp_sum[:, s] / positives[s]
        at = np.searchsorted(recall, TIDE_RECALL_BARS, side="left")
        bars = np.where(at < n, envelope[np.minimum(at, n - 1), s], 0.0)
        ap[s] = np.cumsum(bars)[-1] / len(TIDE_RECALL_BARS)  # summed in order, as tidecv's sum()
    return ap, points


_COMPILED = {}


def _accumulate_kernel():
    """The accumulation, compiled and parallel over resamples. numba is imported and the kernel
    compiled on first use, so that importing this module (the CLI does) costs nothing."""
    if "accumulate" in _COMPILED:
        return _COMPILED["accumulate"]
    import numba

    @numba.njit(cache=False, nogil=True, parallel=True)
    def _accumulate(counts, seg_start, seg_end, seg_class, entry_image, entry_present, entry_tp, entry_missing,
                    base_order, base_tp, mixed_first, mixed_start, mixed_end, seg_mixed_start, seg_mixed_end,
                    positives, recall_bars, out_ap, out_points):  # pragma: no cover - compiled; tested through ResampledTide
        n_resamples = counts.shape[0]
        n_segments = seg_start.shape[0]
        n_evaluations = positives.shape[1]
        n_bars = recall_bars.shape[0]
        longest = 1
        for g in range(n_segments):
            longest = max(longest, seg_end[g] - seg_start[g])
        for r in numba.prange(n_resamples):
            weight = counts[r]
            event_tp = np.empty((n_evaluations, longest), np.float64)
            event_precision = np.empty((n_evaluations, longest), np.float64)
            events = np.zeros(n_evaluations, np.int64)
            tp = np.zeros(n_evaluations, np.float64)
            fp_own = np.zeros(n_evaluations + 1, np.float64)  # per evaluation, with a spare slot
            for g in range(n_segments):
                k = seg_class[g]
                fp_shared = 0.0  # entries that are false positives wherever present: most of them
                for s in range(n_evaluations + 1):
                    fp_own[s] = 0.0  # one evaluation's false positives less the shared ones absent from it
                for s in range(n_evaluations):
                    tp[s] = 0.0
                    events[s] = 0
                m = seg_mixed_start[g]
                next_mixed = mixed_first[m] if m < seg_mixed_end[g] else -1
                for j in range(seg_start[g], seg_end[g]):
                    if j == next_mixed:  # the base evaluation over this tie group, in its own order
                        fp_before = fp_shared + fp_own[0]
                        fp_in_group = 0.0
                        for a in range(mixed_start[m], mixed_end[m]):
                            w = weight[entry_image[base_order[a]]]
                            if w == 0:
                                continue
                            if base_tp[a]:
                                tp[0] += w
                                e = events[0]
                                event_tp[0, e] = tp[0]
                                event_precision[0, e] = tp[0] / (tp[0] + (fp_before + fp_in_group))
                                events[0] = e + 1
                            else:
                                fp_in_group += w
                        m += 1
                        next_mixed = mixed_first[m] if m < seg_mixed_end[g] else -1
                    w = weight[entry_image[j]]
                    tp_bits = np.int64(entry_tp[j])
                    if tp_bits == 0:  # most entries: no branch on the weight, one evaluation at most left out
                        fp_shared += w
                        fp_own[entry_missing[j]] -= w
                        continue
                    if w == 0:
                        continue
                    present = np.int64(entry_present[j])
                    for s in range(n_evaluations):
                        if (present >> s) & 1:
                            if (tp_bits >> s) & 1:
                                tp[s] += w
                                e = events[s]
                                event_tp[s, e] = tp[s]
                                event_precision[s, e] = tp[s] / (tp[s] + (fp_shared + fp_own[s]))
                                events[s] = e + 1
                            else:
                                fp_own[s] += w
                for s in range(n_evaluations):
                    out_points[r, s, k] = tp[s] + (fp_shared + fp_own[s])
                    n_positive = positives[r, s, k]
                    if n_positive <= 0:
                        out_ap[r, s, k] = 0.0
                        continue
                    n_events = events[s]
                    for i in range(n_events - 1, 0, -1):  # the interpolated envelope
                        event_precision[s, i - 1] = max(event_precision[s, i - 1], event_precision[s, i])
                    total = 0.0
                    i = 0
                    for t in range(n_bars):
                        while i < n_events and event_tp[s, i] / n_positive < recall_bars[t]:
                            i += 1
                        if i >= n_events:
                            break
                        total += event_precision[s, i]
                    out_ap[r, s, k] = total / n_bars

    _COMPILED["accumulate"] = _accumulate
    return _accumulate


# ---------------------------------------------------------------- matched once, accumulated per resample

# which per-image positives each evaluation counts: every box, the boxes left after the Miss fix,
# the matched boxes (FalseNeg's positives, FalsePos's true positives)
ALL_BOXES, NOT_MISSED, MATCHED = range(3)
EVALUATION_POSITIVES = np.array([NOT_MISSED if e == MISS else MATCHED if e == FALSE_NEG else ALL_BOXES
                                 for e in range(len(EVALUATIONS))])


@dataclass(frozen=True)
class ResampledTide:
    """One model's TIDE decisions, made once; `breakdown` gives tidecv's numbers on the data,
    `accumulate` on image resamples (counts per image in sorted image-id order)."""

    n_images: int
    n_classes: int
    entries: _Entries
    entry_image: np.ndarray  # int32, per entry
    positives_by_image: np.ndarray  # (3, images, classes): ALL_BOXES, NOT_MISSED, MATCHED
    points_by_image: np.ndarray  # (images, classes): detections that are data points (not ignored)

    @classmethod
    def from_coco(cls, gt: dict, detections: list[dict] | DetectionColumns) -> ResampledTide:
        o = _outcome(gt, detections)
        entries = _entries(o)
        shape = (o.n_images, o.n_classes)
        positives = np.zeros((3, *shape))
        for which, mask in ((ALL_BOXES, slice(None)), (NOT_MISSED, ~o.gt_missed), (MATCHED, o.gt_matched)):
            np.add.at(positives[which], (o.gt_image[mask], o.gt_class[mask]), 1.0)
        points = np.zeros(shape)
        pushed = o.det_status != IGNORED
        np.add.at(points, (o.det_image[pushed], o.det_class[pushed]), 1.0)
        return cls(n_images=o.n_images, n_classes=o.n_classes, entries=entries,
                   entry_image=o.det_image[entries.detection].astype(np.int32),
                   positives_by_image=positives, points_by_image=points)

    def breakdown(self, averaging: str = "coco") -> dict[str, float]:
        """tidecv's numbers on the data itself (no compiled code), as fractions."""
        e = self.entries
        positives = self.positives_by_image.sum(axis=1)[None]  # (1, 3, classes)
        evaluation_positives = positives[:, EVALUATION_POSITIVES]
        ap = np.zeros((1, len(EVALUATIONS), self.n_classes))
        points = np.zeros_like(ap)
        for g, k in enumerate(e.seg_class):
            span = slice(e.seg_start[g], e.seg_end[g])
            ap[0, 1:, k], points[0, 1:, k] = _segment_ap(e.present[span] >> 1, e.tp[span] >> 1,
                                                         evaluation_positives[0, 1:, k])
            base_span = slice(e.base_seg_start[g], e.base_seg_end[g])
            if base_span.start < base_span.stop:
                ap[0, :1, k], points[0, :1, k] = _segment_ap(np.ones_like(e.base_tp[base_span]), e.base_tp[base_span],
                                                             evaluation_positives[0, :1, k])
        row = _summary(ap, points, evaluation_positives, positives, self.points_by_image.sum(axis=0)[None], averaging)
        return dict(zip(BREAKDOWN_KEYS, map(float, row[0])))

    def accumulate(self, counts: np.ndarray, averaging: str = "coco") -> np.ndarray:
        """counts (resamples, images) → (resamples, 9) in BREAKDOWN_KEYS order."""
        counts = np.ascontiguousarray(counts, dtype=np.int32)
        if counts.ndim != 2 or counts.shape[1] != self.n_images:
            raise ValueError(f"counts of shape {counts.shape}; the ground truth has {self.n_images} images")
        weights = counts.astype(np.float64)
        positives = np.stack([weights @ p for p in self.positives_by_image], axis=1)  # exact integers
        evaluation_positives = np.ascontiguousarray(positives[:, EVALUATION_POSITIVES])
        ap = np.zeros((len(counts), len(EVALUATIONS), self.n_classes))
        points = np.zeros_like(ap)
        e = self.entries
        if len(e.seg_start):
            _accumulate_kernel()(weights, e.seg_start, e.seg_end, e.seg_class, self.entry_image, e.present, e.tp, e.missing,
                        e.base_order, e.base_tp, e.mixed_first, e.mixed_start, e.mixed_end, e.seg_mixed_start,
                        e.seg_mixed_end, evaluation_positives, TIDE_RECALL_BARS, ap, points)
        return _summary(ap, points, evaluation_positives, positives, weights @ self.points_by_image, averaging)


def _mean_ap(ap: np.ndarray, positives: np.ndarray, points: np.ndarray, averaging: str) -> np.ndarray:
    """Mean over the last axis (classes): pycocotools' (classes with positives) or tidecv's (classes
    with positives or data points, the latter at AP 0); NaN where no class counts."""
    if averaging not in AVERAGINGS:
        raise ValueError(f"averaging must be one of {AVERAGINGS}, not {averaging!r}")
    counted = positives > 0 if averaging == "coco" else (positives > 0) | (points > 0)
    n = counted.sum(axis=-1)
    total = np.where(counted, ap, 0.0).sum(axis=-1)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def _summary(ap, points, evaluation_positives, positives, fp_points, averaging) -> np.ndarray:
    """Per-class APs of the accumulated evaluations (resamples, evaluations, classes) → (resamples, 9)."""
    mean = _mean_ap(ap, evaluation_positives, points, averaging)
    # FalsePos: true positives scored 1 and false positives 0, so precision is 1 up to the class's
    # final recall: AP is the share of recall bars at or below it
    n_true, n_positive = positives[:, MATCHED], positives[:, ALL_BOXES]
    recall = np.divide(n_true, n_positive, out=np.zeros_like(n_true), where=n_positive > 0)
    bars_reached = np.searchsorted(TIDE_RECALL_BARS, recall, side="right").astype(np.float64)
    fp_ap = np.where((n_true > 0) & (n_positive > 0), bars_reached / len(TIDE_RECALL_BARS), 0.0)
    false_pos = _mean_ap(fp_ap, n_positive, fp_points, averaging)
    base = mean[:, BASE]
    out = np.empty((len(ap), len(BREAKDOWN_KEYS)))
    out[:, 0] = base
    # tidecv clamps a main error's dAP at 0 (its "binning differences"), not the special ones
    out[:, 1:7] = np.maximum(mean[:, CLS:MISS + 1] - base[:, None], 0.0)
    out[:, 7] = false_pos - base
    out[:, 8] = mean[:, FALSE_NEG] - base
    return out


# ---------------------------------------------------------------- the API


def tide_breakdown(gt: dict, detections: list[dict] | DetectionColumns, averaging: str = "coco") -> dict[str, float]:
    """tidecv's box-mode AP50 and dAPs (keys BREAKDOWN_KEYS: AP50, the six main errors, FP, FN) as
    fractions; `averaging` "coco" (pycocotools' classes, the default) or "tidecv" (issue #28's way)."""
    return ResampledTide.from_coco(gt, detections).breakdown(averaging)


def resampled_tide(gt: dict, detections: list[dict] | DetectionColumns) -> ResampledTide:
    """Match once, for `resampled_tide_breakdown` (and `.breakdown(averaging)` on the data);
    `detections` are COCO results or their columns."""
    return ResampledTide.from_coco(gt, detections)


def resampled_tide_breakdown(tide: ResampledTide, counts: np.ndarray, averaging: str = "coco") -> np.ndarray:
    """counts (resamples, images in sorted image-id order) int32 → (resamples, 9), columns in
    BREAKDOWN_KEYS order; counts of 1 give tide_breakdown's numbers exactly."""
    return tide.accumulate(counts, averaging)
