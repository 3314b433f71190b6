"""RetinaNet's inference postprocessing for a whole batch at once.

torchvision's `RetinaNet.postprocess_detections` walks image by image and level by level: for each of
the batch's images × 5 levels it thresholds, compacts (a host–device synchronisation on CUDA), takes
the top 1,000, decodes and clips — about 15 small operations each, 600 for a batch of 8, which on a
GPU leave it idle while Python launches them. Here each level is done for the whole batch in one
go (one synchronisation per level, to size its compaction), the batch reads its per-image counts
once, and only the class-wise NMS (one synchronisation each, inside torchvision's nms) and the final
selection still run image by image.

Semantics are torchvision's, step for step: sigmoid scores; per level the (at most) 1,000 best scores
above `score_thresh`, ordered by score; boxes decoded by the model's BoxCoder and clipped to the
image; per image class-wise NMS (`batched_nms`) and the `detections_per_img` best. The candidates
reach NMS in torchvision's order (level by level, best first), so detections are the same (tested
bit for bit); only exactly equal scores may be ordered differently — rare in float32, common in
bf16, where torchvision's own order of ties is arbitrary too. One deliberate difference:
scores and boxes are computed in float32 even when the head ran in bf16/fp16 under autocast, from
float32 anchors (retinanet.Float32AnchorGenerator) — torchvision builds anchors and decodes in the
head's dtype, where bf16 rounds a 1,000-px coordinate to 4 px.
"""

from __future__ import annotations

import copy
import itertools
import types

import torch
from torch import Tensor
from torch.profiler import record_function
from torchvision.models.detection import RetinaNet
from torchvision.models.detection._utils import BoxCoder
from torchvision.ops import boxes as box_ops

from kdeval.errors import KdevalError


# above this many candidates per image and per level (an undertrained model), a level is first cut to
# each image's top-k by a row-wise topk instead of sorting every candidate
DENSE_CANDIDATES_PER_TOPK = 8


def best_per_image(scores: Tensor, score_thresh: float, topk_candidates: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Scores [B, M] → (image, index, score) of every score above the threshold (NaN never is, as in
    torchvision), grouped by image and best first within an image (equal scores: lower index first),
    and the images' counts [B]; each image's first topk_candidates are torchvision's top-k. One
    host-device synchronisation (the compaction), two for an undertrained model."""
    batch = scores.shape[0]
    above = scores > score_thresh
    image_idxs, flat_idxs = above.nonzero(as_tuple=True)  # by image, then by index
    if image_idxs.numel() > DENSE_CANDIDATES_PER_TOPK * topk_candidates * batch:  # cut each row to its top-k
        top_scores, top_idxs = scores.masked_fill(~above, -1.0).topk(min(topk_candidates, scores.shape[1]), dim=1)
        image_idxs, ranks = (top_scores > score_thresh).nonzero(as_tuple=True)  # a prefix of each row
        return image_idxs, top_idxs[image_idxs, ranks], top_scores[image_idxs, ranks], counts_per_image(image_idxs, batch)
    candidate_scores = scores[image_idxs, flat_idxs]
    order = candidate_scores.argsort(descending=True, stable=True)
    order = order[image_idxs[order].argsort(stable=True)]
    image_idxs = image_idxs[order]
    return image_idxs, flat_idxs[order], candidate_scores[order], counts_per_image(image_idxs, batch)


def counts_per_image(image_idxs: Tensor, batch: int) -> Tensor:
    """How many of the sorted image indices are 0, 1, …, batch − 1, on the device (torch.bincount
    would read its range back to the host on CUDA)."""
    bounds = torch.arange(batch + 1, device=image_idxs.device, dtype=image_idxs.dtype)
    return torch.searchsorted(image_idxs, bounds).diff()


def level_candidates(
    logits: Tensor, regression: Tensor, anchors: Tensor, image_sizes: Tensor, box_coder: BoxCoder,
    score_thresh: float, topk_candidates: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One FPN level of a batch: logits [B, N, C], regression [B, N, 4], anchors [N, 4] (every image of
    a padded batch has the same), image_sizes [B, 2] (height, width) → its candidates above the
    threshold, grouped by image and best first: scores [K], boxes [K, 4] decoded and clipped to their
    image, labels [K], and each image's count [B]; float32."""
    num_classes = logits.shape[-1]
    flat = logits.flatten(1)  # often a view of the head's output: never sigmoid it in place
    scores = flat.sigmoid() if flat.dtype == torch.float32 else flat.float().sigmoid_()
    image_idxs, flat_idxs, scores, counts = best_per_image(scores, score_thresh, topk_candidates)
    anchor_idxs = torch.div(flat_idxs, num_classes, rounding_mode="floor")
    labels = flat_idxs % num_classes
    boxes = box_coder.decode_single(regression[image_idxs, anchor_idxs].float(), anchors.float()[anchor_idxs])
    sizes = image_sizes[image_idxs]
    # torchvision's clip_boxes_to_image (clamp to [0, width] and [0, height]), with each box's image's size
    xs = torch.minimum(boxes[:, 0::2].clamp(min=0), sizes[:, 1:2])
    ys = torch.minimum(boxes[:, 1::2].clamp(min=0), sizes[:, 0:1])
    return scores, torch.stack((xs, ys), dim=-1).reshape(-1, 4), labels, counts


def batched_postprocess(
    class_logits: list[Tensor],
    box_regression: list[Tensor],
    anchors: list[Tensor],
    image_shapes: list[tuple[int, int]],
    box_coder: BoxCoder,
    score_thresh: float,
    topk_candidates: int,
    nms_thresh: float,
    detections_per_img: int,
) -> list[dict[str, Tensor]]:
    """Detections (boxes xyxy in the resized image, scores, labels) of every image of a batch, from the
    head's outputs split by level (lists over levels of [B, N_l, C] and [B, N_l, 4]) and one image's
    anchors per level."""
    device, batch = class_logits[0].device, len(image_shapes)
    image_sizes = torch.tensor(image_shapes, dtype=torch.float32).reshape(batch, 2).to(device, non_blocking=True)
    levels = [level_candidates(logits, regression, level_anchors, image_sizes, box_coder, score_thresh, topk_candidates)
              for logits, regression, level_anchors in zip(class_logits, box_regression, anchors)]
    finite = torch.ones((), dtype=torch.bool, device=device)
    if class_logits[0].dtype == torch.float16:  # an overflow would otherwise silently cost boxes
        finite = torch.stack([t.isfinite().all() for t in class_logits + box_regression]).all()
    read = torch.cat([torch.stack([level_counts for *_, level_counts in levels]).flatten(), finite.long().view(1)]).tolist()
    if not read[-1]:
        raise KdevalError("the model's outputs overflowed float16 under --amp (inf or NaN in the head's outputs): run it with --fp32")
    counts = [read[level * batch:(level + 1) * batch] for level in range(len(levels))]  # [level][image]
    starts = [[0] + list(itertools.accumulate(level_counts))[:-1] for level_counts in counts]
    detections = []
    for image in range(len(image_shapes)):
        # the image's first topk_candidates of each level, level by level: torchvision's order
        parts = [(start[image], min(count[image], topk_candidates)) for start, count in zip(starts, counts)]
        boxes, scores, labels = (torch.cat([level[field].narrow(0, first, n) for level, (first, n) in zip(levels, parts)])
                                 for field in (1, 0, 2))
        keep = box_ops.batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_img]
        detections.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return detections


class BatchedRetinaNet(RetinaNet):
    """torchvision's RetinaNet (same modules, same state_dict) whose inference postprocessing runs
    batch-wide (`batched_postprocess`); training is untouched."""

    @record_function("kdeval.postprocess")
    def postprocess_detections(self, head_outputs, anchors, image_shapes):
        first_image_anchors = anchors[0]
        return batched_postprocess(
            head_outputs["cls_logits"],
            head_outputs["bbox_regression"],
            first_image_anchors,
            image_shapes,
            self.box_coder,
            self.score_thresh,
            self.topk_candidates,
            self.nms_thresh,
            self.detections_per_img,
        )


def with_torchvision_postprocessing(model: RetinaNet) -> RetinaNet:
    """A copy of the model that postprocesses as torchvision's RetinaNet does, image by image and level
    by level (the reference the benchmarks compare against)."""
    model = copy.deepcopy(model)
    model.postprocess_detections = types.MethodType(RetinaNet.postprocess_detections, model)
    return model
