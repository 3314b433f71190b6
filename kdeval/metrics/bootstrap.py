"""COCO AP on image resamples: match once, re-accumulate per resample.

A resample draws the evaluation images with replacement; an image drawn twice counts as if the
dataset held two copies of it (its ground truth and its detections both twice). Matching is per
image, so a copy matches exactly as the original did: the outcome of every detection (true
positive, false positive, ignored) under every IoU threshold and area is computed once
(kdeval.metrics.cocoeval.match) and a resample only changes how many times each image counts.

Accumulation with counts. COCOeval sorts the detections of a category by descending score; the
copies of one detection have the same score and sit next to each other, so a detection of weight
w is a run of w equal outcomes. Precision rises along a run of true positives and falls along a
run of false positives, so the interpolated envelope (precision at recall ≥ r) is decided at the
end of each true-positive run, and the first position whose recall reaches r lies in the first
true-positive run whose final recall does. Per (resample, IoU threshold or setting, category,
area) one pass over the detections gives pycocotools' 101 precision values.

Ties. Detections of one image and category with the same score are, in COCOeval's order, taken
copy by copy (d1 d2 d1 d2): such a block is replayed once per copy, each detection a run of one.
So the numbers equal pycocotools' on a dataset built from the duplicated images (new ids in the
resample's sorted order) to 1e-12, ties included (tested with scores rounded to one decimal);
with weight 1 everywhere, each (setting, category, area)'s AP equals COCOeval's bit for bit, and
the summary means differ from its by summation order only (≤ 1e-15).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdeval.metrics.cocoeval import (
    IGNORED,
    RECALL_THRESHOLDS,
    TP,
    DetectionArrays,
    accumulation_order,
)
from kdeval.vocab import AREA_RANGES


@dataclass(frozen=True)
class BootstrapSettings:
    """`resamples` 0 turns the bootstrap off."""

    resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self):
        from kdeval.errors import KdevalError

        if self.resamples < 0:
            raise KdevalError(f"--bootstrap must be 0 (off) or a number of resamples, not {self.resamples}")
        if not 0 < self.confidence < 1:
            raise KdevalError(f"--confidence must lie strictly between 0 and 1, not {self.confidence}")

    @property
    def enabled(self) -> bool:
        return self.resamples > 0

    def as_dict(self) -> dict:
        return {"resamples": self.resamples, "confidence": self.confidence, "seed": self.seed}


def resample_counts(n_images: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_images) int32: how many times each image (in sorted id order) is drawn; each
    row draws n_images images with replacement. The same seed gives the same rows."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((resamples, n_images), np.int32)
    for r in range(resamples):
        counts[r] = np.bincount(rng.integers(0, n_images, n_images), minlength=n_images)
    return counts


def counts_of_indices(indices, n_images: int) -> np.ndarray:
    """One resample given as image positions with repeats → its (1, n_images) counts."""
    return np.bincount(np.asarray(indices, dtype=np.int64), minlength=n_images).astype(np.int32)[None, :]


# ---------------------------------------------------------------- the compiled accumulation


_COMPILED = {}


def _kernel():
    """The accumulation, compiled and parallel over resamples. numba is imported and the kernel
    compiled on first use, so that importing this module (the CLI does) costs nothing."""
    if "accumulate" in _COMPILED:
        return _COMPILED["accumulate"]
    import numba

    @numba.njit(cache=False, nogil=True, inline="always")
    def mixed(j, w, fp_everywhere, entry_tp, entry_ignored, entry_rank, n_settings, limits, eps, tp, fp_own,
              tp_by_limit, events, event_tp, event_precision):  # pragma: no cover - compiled
        """Entry j, counted w times in a row, when it is a true positive or ignored under some setting."""
        tp_bits = entry_tp[j]
        ignored_bits = entry_ignored[j]
        for s in range(n_settings):
            bit = 1 << s
            if ignored_bits & bit:
                continue
            if tp_bits & bit:
                tp[s] += w
                e = events[s]
                event_tp[s, e] = tp[s]
                event_precision[s, e] = tp[s] / ((fp_everywhere + fp_own[s]) + tp[s] + eps)
                events[s] = e + 1
                for m in range(limits.shape[0]):
                    if entry_rank[j] < limits[m]:
                        tp_by_limit[s, m] += w
            else:
                fp_own[s] += w

    @numba.njit(cache=False, nogil=True, parallel=True)
    def accumulate(counts, seg_start, seg_end, seg_positive, entry_image, entry_tp, entry_ignored, entry_rank, entry_tied,
                   n_settings, limits, recall_thresholds, out_ap, out_positive_share, out_recall):  # pragma: no cover - compiled; tested through ResampledAP
        n_resamples = counts.shape[0]
        n_segments = seg_start.shape[0]
        n_limits = limits.shape[0]
        n_thresholds = recall_thresholds.shape[0]
        eps = np.spacing(1.0)
        longest = 1
        for g in range(n_segments):
            longest = max(longest, seg_end[g] - seg_start[g])
        for r in numba.prange(n_resamples):
            weight = counts[r]
            capacity = longest
            event_tp = np.empty((n_settings, capacity), np.float64)
            event_precision = np.empty((n_settings, capacity), np.float64)
            events = np.zeros(n_settings, np.int64)
            tp = np.zeros(n_settings, np.float64)
            fp_own = np.zeros(n_settings, np.float64)  # false positives under some settings only
            tp_by_limit = np.zeros((n_settings, n_limits), np.float64)
            for g in range(n_segments):
                n_positive = seg_positive[r, g]
                if n_positive <= 0:
                    for s in range(n_settings):
                        out_ap[r, s, g] = -1.0
                        out_positive_share[r, s, g] = -1.0
                        for m in range(n_limits):
                            out_recall[r, s, g, m] = -1.0
                    continue
                fp_everywhere = 0.0  # false positives under every setting: most detections, one addition each
                for s in range(n_settings):
                    tp[s] = 0.0
                    fp_own[s] = 0.0
                    events[s] = 0
                    for m in range(n_limits):
                        tp_by_limit[s, m] = 0.0
                j = seg_start[g]
                end = seg_end[g]
                while j < end:
                    if j + 1 < end and entry_tied[j + 1]:
                        # detections of one image with one score: COCOeval takes each copy's together,
                        # so the block is replayed once per copy, each detection a run of one
                        block_end = j + 2
                        while block_end < end and entry_tied[block_end]:
                            block_end += 1
                        w = weight[entry_image[j]]
                        if w > 0 and events.max() + w * (block_end - j) > capacity:
                            capacity = 2 * (capacity + w * (block_end - j))
                            grown_tp = np.empty((n_settings, capacity), np.float64)
                            grown_precision = np.empty((n_settings, capacity), np.float64)
                            grown_tp[:, :event_tp.shape[1]] = event_tp
                            grown_precision[:, :event_precision.shape[1]] = event_precision
                            event_tp, event_precision = grown_tp, grown_precision
                        for _ in range(w):
                            for k in range(j, block_end):
                                if entry_tp[k] == 0 and entry_ignored[k] == 0:
                                    fp_everywhere += 1
                                else:
                                    mixed(k, 1, fp_everywhere, entry_tp, entry_ignored, entry_rank, n_settings, limits, eps,
                                          tp, fp_own, tp_by_limit, events, event_tp, event_precision)
                        j = block_end
                        continue
                    w = weight[entry_image[j]]
                    if w > 0:
                        if entry_tp[j] == 0 and entry_ignored[j] == 0:
                            fp_everywhere += w
                        else:
                            mixed(j, w, fp_everywhere, entry_tp, entry_ignored, entry_rank, n_settings, limits, eps,
                                  tp, fp_own, tp_by_limit, events, event_tp, event_precision)
                    j += 1
                for s in range(n_settings):
                    for m in range(n_limits):
                        out_recall[r, s, g, m] = tp_by_limit[s, m] / n_positive
                    n_events = events[s]
                    for i in range(n_events - 1, 0, -1):  # the interpolated envelope
                        if event_precision[s, i] > event_precision[s, i - 1]:
                            event_precision[s, i - 1] = event_precision[s, i]
                    total = 0.0
                    above_zero = 0
                    i = 0
                    for t in range(n_thresholds):
                        while i < n_events and event_tp[s, i] / n_positive < recall_thresholds[t]:
                            i += 1
                        if i < n_events:
                            total += event_precision[s, i]
                            if event_precision[s, i] > 0:
                                above_zero += 1
                    out_ap[r, s, g] = total / n_thresholds
                    out_positive_share[r, s, g] = above_zero / n_thresholds

    _COMPILED["accumulate"] = accumulate
    return accumulate


# ---------------------------------------------------------------- matched once, accumulated per resample


@dataclass(frozen=True)
class ResampledAP:
    """One model's detections, matched once; `accumulate` gives, per resample and per (setting,
    category, area), pycocotools' mean precision over the 101 recall thresholds (AP), the share of
    those thresholds with precision above 0 (COCO-analyze's BG) and the recall at each max-dets
    limit; -1 where the resample holds no ground truth of the category in that area.

    A setting is an IoU threshold for COCO AP, or one of COCO-analyze's matched settings. Each
    (category, area) is one pass over its detections in COCOeval's order, all settings at once: a
    detection holds a bit per setting for 'true positive' and one for 'ignored'."""

    n_settings: int
    n_categories: int
    n_images: int
    limits: np.ndarray  # max dets per (image, category), ascending; precision uses the last
    positives_by_image: np.ndarray  # (images, categories × areas) non-ignored ground truth
    seg_start: np.ndarray  # (categories × areas,) into the entries
    seg_end: np.ndarray
    entry_image: np.ndarray  # per entry: image position
    entry_tp: np.ndarray  # bit s: a true positive under setting s
    entry_ignored: np.ndarray  # bit s: ignored under setting s
    entry_rank: np.ndarray  # rank within its (image, category)
    entry_tied: np.ndarray  # same image and score as the entry before: copies of the image repeat them together

    @classmethod
    def from_outcome(cls, arr: DetectionArrays, outcome: np.ndarray, limits=(100,)) -> "ResampledAP":
        """`outcome` (detections, settings, areas) as kdeval.metrics.cocoeval.match gives it."""
        n_settings, n_areas, n_cat = outcome.shape[1], outcome.shape[2], len(arr.category_ids)
        if n_settings > 16:
            raise ValueError("at most 16 settings")
        ordered = accumulation_order(arr)
        bit = (1 << np.arange(n_settings)).astype(np.int64)
        images, tps, ignoreds, ranks, tied = [], [], [], [], []
        starts = np.zeros((n_cat, n_areas), np.int64)
        ends = np.zeros((n_cat, n_areas), np.int64)
        offset = 0
        for k, dets in enumerate(ordered):
            for a in range(n_areas):
                flags = outcome[dets, :, a]  # (detections, settings)
                tp_bits = ((flags == TP) * bit).sum(axis=1)
                ignored_bits = ((flags == IGNORED) * bit).sum(axis=1)
                kept = np.flatnonzero(ignored_bits != bit.sum())  # ignored under every setting: never counts
                chosen = dets[kept]
                same = np.zeros(len(chosen), bool)  # same image and score as the entry before
                same[1:] = (arr.det_image[chosen][1:] == arr.det_image[chosen][:-1]) & (arr.det_score[chosen][1:] == arr.det_score[chosen][:-1])
                # a false positive ranked below every true positive precedes no point of the curves and
                # adds to no recall: cut after the last true positive and the copies tied with it
                true_positives = np.flatnonzero(tp_bits[kept])
                cut = true_positives[-1] + 1 if len(true_positives) else 0
                while 0 < cut < len(chosen) and same[cut]:
                    cut += 1
                kept, chosen = kept[:cut], chosen[:cut]
                starts[k, a], ends[k, a] = offset, offset + len(chosen)
                offset += len(chosen)
                images.append(arr.det_image[chosen].astype(np.int32))
                tps.append(tp_bits[kept].astype(np.uint16))
                ignoreds.append(ignored_bits[kept].astype(np.uint16))
                ranks.append(arr.det_rank[chosen].astype(np.int32))
                tied.append(same[:cut])
        ranges = np.array(list(AREA_RANGES.values()))
        real = ~arr.gt_crowd[:, None] & (arr.gt_area[:, None] >= ranges[:, 0]) & (arr.gt_area[:, None] <= ranges[:, 1])
        positives_by_image = np.zeros((len(arr.image_ids), n_cat * n_areas), np.float64)
        for a in range(n_areas):
            np.add.at(positives_by_image, (arr.gt_image, arr.gt_category * n_areas + a), real[:, a].astype(np.float64))

        def joined(parts, dtype):
            return np.concatenate(parts) if parts else np.zeros(0, dtype)

        return cls(
            n_settings=n_settings, n_categories=n_cat, n_images=len(arr.image_ids),
            limits=np.asarray(sorted(limits), dtype=np.int64), positives_by_image=positives_by_image,
            seg_start=starts.ravel(), seg_end=ends.ravel(),
            entry_image=joined(images, np.int32), entry_tp=joined(tps, np.uint16),
            entry_ignored=joined(ignoreds, np.uint16), entry_rank=joined(ranks, np.int32), entry_tied=joined(tied, bool),
        )

    @property
    def n_areas(self) -> int:
        return len(AREA_RANGES)

    def accumulate(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """counts (resamples, images) → ap and positive share (resamples, settings, categories,
        areas) and recall (…, limits)."""
        counts = np.ascontiguousarray(counts, dtype=np.int32)
        if counts.ndim != 2 or counts.shape[1] != self.n_images:
            raise ValueError(f"counts of shape {counts.shape}; the ground truth has {self.n_images} images")
        n_res = counts.shape[0]
        shape = (self.n_settings, self.n_categories, self.n_areas)
        seg_positive = counts.astype(np.float64) @ self.positives_by_image  # (R, categories × areas): exact integers
        ap = np.empty((n_res, self.n_settings, len(self.seg_start)))
        share = np.empty_like(ap)
        recall = np.empty((n_res, self.n_settings, len(self.seg_start), len(self.limits)))
        _kernel()(counts, self.seg_start, self.seg_end, np.ascontiguousarray(seg_positive), self.entry_image,
                    self.entry_tp, self.entry_ignored, self.entry_rank, self.entry_tied, self.n_settings, self.limits,
                    RECALL_THRESHOLDS, ap, share, recall)
        return ap.reshape(n_res, *shape), share.reshape(n_res, *shape), recall.reshape(n_res, *shape, len(self.limits))


def masked_mean(values: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """COCOeval.summarize's mean over `axes`, skipping -1; -1 where every entry is -1."""
    valid = values > -1
    total = np.where(valid, values, 0.0).sum(axis=axes)
    count = valid.sum(axis=axes)
    return np.where(count > 0, total / np.maximum(count, 1), -1.0)

