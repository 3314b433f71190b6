"""RetinaNet's inference postprocessing for a whole batch at once.

torchvision's `RetinaNet.postprocess_detections` walks image by image and level by level: for each of
the batch's images × 5 levels it thresholds, compacts (a host–device synchronisation on CUDA), takes
the top 1,000, decodes and clips, then concatenates each image's levels and runs NMS — 2,856
operations for a batch of 8 at R50's size (each a kernel launch on a GPU, which idles while Python
launches them; benchmarks/inference_host_cost.py). Here each level's scores are thresholded and
ordered for the whole batch in one go (one synchronisation per level, to size its compaction), the
batch reads its per-image counts once, every image's top-1,000-per-level candidates are gathered and
decoded and clipped together, and only the class-wise NMS (one synchronisation each, inside
torchvision's nms) runs image by image: 307 operations.

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
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.profiler import record_function
from torchvision.models.detection import RetinaNet
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import boxes as box_ops

from kdeval.errors import KdevalError
from kdeval.models.cuda_graphs import GraphedNetwork
from kdeval.models.transform import SyncFreeTransform, with_settings_of


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


def level_candidates(logits: Tensor, score_thresh: float, topk_candidates: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One FPN level of a batch: logits [B, N, C] → its candidates above the threshold, grouped by image
    and best first: image indices [K], anchor indices within the level [K], labels [K], scores [K]
    (float32), and each image's count [B]."""
    num_classes = logits.shape[-1]
    flat = logits.flatten(1)  # often a view of the head's output: never sigmoid it in place
    scores = flat.sigmoid() if flat.dtype == torch.float32 else flat.float().sigmoid_()
    image_idxs, flat_idxs, scores, counts = best_per_image(scores, score_thresh, topk_candidates)
    anchor_idxs = torch.div(flat_idxs, num_classes, rounding_mode="floor")
    return image_idxs, anchor_idxs, flat_idxs % num_classes, scores, counts


def to_device(values: Tensor, device: torch.device) -> Tensor:
    """A small host tensor on the device; on CUDA from pinned memory, so the copy does not wait for the
    stream (a copy from pageable memory would)."""
    if device.type == "cuda":
        values = values.pin_memory()
    return values.to(device, non_blocking=True)


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
    box_scales: list[tuple[float, float]] | None = None,
) -> list[dict[str, Tensor]]:
    """Detections (boxes xyxy in the resized image, scores, labels) of every image of a batch, from the
    head's outputs split by level (lists over levels of [B, N_l, C] and [B, N_l, 4]) and one image's
    anchors per level. With `box_scales` (each image's x and y factors from the resized image's pixels
    to the input's), the clipped boxes are multiplied by them before NMS, as mmdetection does."""
    device, batch = class_logits[0].device, len(image_shapes)
    levels = [level_candidates(logits, score_thresh, topk_candidates) for logits in class_logits]
    finite = torch.ones((), dtype=torch.bool, device=device)
    if class_logits[0].dtype == torch.float16:  # an overflow would otherwise silently cost boxes
        finite = torch.stack([t.isfinite().all() for t in class_logits + box_regression]).all()
    read = torch.cat([torch.stack([level[-1] for level in levels]).flatten(), finite.long().view(1)]).tolist()
    if not read[-1]:
        raise KdevalError("the model's outputs overflowed float16 under AMP (inf or NaN in the head's outputs): run it with --fp32")
    counts = [read[level * batch:(level + 1) * batch] for level in range(len(levels))]  # [level][image]
    # every image's candidates in torchvision's order (level by level, each level's first topk_candidates,
    # best first), the images one after the other, gathered for the batch at once, then decoded at once
    index, per_image = candidate_order(counts, topk_candidates)
    index = to_device(torch.from_numpy(index), device)
    level_starts = itertools.accumulate([len(level_anchors) for level_anchors in anchors[:-1]], initial=0)
    image_idxs, anchor_idxs, labels, scores = (
        torch.cat(parts)[index] for parts in zip(*[(image_idxs, anchor_idxs + start, labels, scores)
                                                   for (image_idxs, anchor_idxs, labels, scores, _), start in zip(levels, level_starts)]))
    regression = torch.cat(box_regression, dim=1)[image_idxs, anchor_idxs].float()
    boxes = box_coder.decode_single(regression, torch.cat(anchors).float()[anchor_idxs])
    # torchvision's clip_boxes_to_image (clamp to [0, width] and [0, height]), with each box's image's size
    image_sizes = to_device(torch.tensor(image_shapes, dtype=torch.float32).reshape(batch, 2), device)[image_idxs]
    xs = torch.minimum(boxes[:, 0::2].clamp(min=0), image_sizes[:, 1:2])
    ys = torch.minimum(boxes[:, 1::2].clamp(min=0), image_sizes[:, 0:1])
    boxes = torch.stack((xs, ys), dim=-1).reshape(-1, 4)
    if box_scales is not None:
        factors = torch.tensor(box_scales, dtype=torch.float32).reshape(batch, 2).repeat(1, 2)
        boxes = boxes * to_device(factors, device)[image_idxs]
    keeps, first = [], 0
    for count in per_image:
        image = slice(first, first + count)
        keeps.append(box_ops.batched_nms(boxes[image], scores[image], labels[image], nms_thresh)[:detections_per_img] + first)
        first += count
    keep, kept_per_image = torch.cat(keeps), [len(k) for k in keeps]
    return [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in
            zip(boxes[keep].split(kept_per_image), scores[keep].split(kept_per_image), labels[keep].split(kept_per_image))]


def candidate_order(counts: list[list[int]], topk_candidates: int) -> tuple[np.ndarray, list[int]]:
    """counts[level][image] of candidates, each level's grouped by image → the positions, in the
    levels' concatenation, of each image's first topk_candidates per level, image by image and level by
    level, and how many each image has."""
    level_sizes = [sum(level) for level in counts]
    level_offsets = np.cumsum([0] + level_sizes[:-1])
    image_starts = [np.cumsum([0] + level[:-1]) for level in counts]  # [level][image]
    ranges, per_image = [], []
    for image in range(len(counts[0]) if counts else 0):
        taken = 0
        for level, level_counts in enumerate(counts):
            n = min(level_counts[image], topk_candidates)
            first = level_offsets[level] + image_starts[level][image]
            ranges.append(np.arange(first, first + n, dtype=np.int64))
            taken += n
        per_image.append(taken)
    return (np.concatenate(ranges) if ranges else np.zeros(0, dtype=np.int64)), per_image


@dataclass
class NetworkOutputs:
    """A batch through RetinaNet's network, before its postprocessing: the head's outputs and the
    anchors split by level, the resized images' sizes and the inputs' sizes."""

    head_outputs: dict[str, list[Tensor]]
    anchors: list[list[Tensor]]
    image_sizes: list[tuple[int, int]]
    original_image_sizes: list[tuple[int, int]]


class BatchedRetinaNet(RetinaNet):
    """torchvision's RetinaNet (same modules, same state_dict) whose inference postprocessing runs
    batch-wide (`batched_postprocess`) and whose transform does not synchronise with the GPU
    (`SyncFreeTransform`); training is untouched. Inference is torchvision's eval forward in two
    steps, `network_outputs` then `postprocess_batch`, so that a caller can launch the next batch's
    network before postprocessing this one (engine/predict.OverlappedPostprocessing)."""

    # set on an inference copy to run backbone_and_head through CUDA graphs (engine/predict.inference_model)
    graphed_network: GraphedNetwork | None = None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.transform = with_settings_of(self.transform, SyncFreeTransform)

    def forward(self, images, targets=None):
        if self.training or targets is not None or torch.jit.is_scripting():
            return super().forward(images, targets)
        return self.postprocess_batch(self.network_outputs(images))

    def network_outputs(self, images: list[Tensor]) -> NetworkOutputs:
        """torchvision's eval forward up to its postprocessing: transform, backbone, head, anchors, and
        the outputs and anchors split by level. On a GPU it only launches work: nothing here waits."""
        original_image_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        image_list, _ = self.transform(images)
        network = self.backbone_and_head if self.graphed_network is None else self.graphed_network
        grids, head_outputs = network(image_list.tensors)
        anchors = self.anchor_generator(image_list, grids)
        cells_per_level = [grid.size(2) * grid.size(3) for grid in grids]
        anchors_per_cell = head_outputs["cls_logits"].size(1) // sum(cells_per_level)
        per_level = [cells * anchors_per_cell for cells in cells_per_level]
        return NetworkOutputs(
            head_outputs={key: list(value.split(per_level, dim=1)) for key, value in head_outputs.items()},
            anchors=[list(image_anchors.split(per_level)) for image_anchors in anchors],
            image_sizes=image_list.image_sizes,
            original_image_sizes=original_image_sizes,
        )

    def backbone_and_head(self, tensors: Tensor) -> tuple[list[Tensor], dict[str, Tensor]]:
        """The padded batch through backbone, FPN and head (a pure function of the batch with no host
        synchronisation, so it can be a CUDA graph): each FPN level's grid as an empty tensor of shape
        (0, 0, height, width) on the maps' device, which is all the anchors read, and the head's
        outputs. The maps themselves are not returned, so a graph neither keeps them as outputs nor
        copies them after each replay (some 75 MB for an R50 batch of 8 at 800 px)."""
        features = self.backbone(tensors)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        features = list(features.values())
        return [feature.new_empty((0, 0, *feature.shape[-2:])) for feature in features], self.head(features)

    def postprocess_batch(self, outputs: NetworkOutputs) -> list[dict[str, Tensor]]:
        """The rest of torchvision's eval forward: detections (boxes in the input images' pixels)."""
        detections = self.postprocess_detections(outputs.head_outputs, outputs.anchors, outputs.image_sizes)
        return self.transform.postprocess(detections, outputs.image_sizes, outputs.original_image_sizes)

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


def with_torchvision_inference(model: RetinaNet) -> RetinaNet:
    """A copy of the model that runs inference as torchvision's RetinaNet does: its transform, anchors
    rebuilt for every image of every batch, and postprocessing image by image and level by level (the
    reference the tests and benchmarks compare against; anchors stay float32)."""
    model = copy.deepcopy(model)
    model.postprocess_detections = types.MethodType(RetinaNet.postprocess_detections, model)
    if isinstance(model.transform, SyncFreeTransform):
        model.transform = with_settings_of(model.transform, GeneralizedRCNNTransform)
    if hasattr(model.anchor_generator, "CACHED_GRIDS"):
        model.anchor_generator.CACHED_GRIDS = 0
    return model
