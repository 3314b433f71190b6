"""The RetinaNet mmdetection runs at test time, built from torchvision's modules (ModelSpec style "mmdet").

mmdetection's RetinaNet (configs/retinanet/retinanet_r50_fpn_1x_coco.py) differs from torchvision's in
arithmetic, not in its layers, so the state_dict layout stays torchvision's and every kdeval command
runs it as it runs any RetinaNet:
- anchors: octave_base_scale 4 × 2^(i/3) × stride, ratios 0.5/1/2, centred on (x·stride, y·stride) with
  center offset 0, never rounded; torchvision truncates the sizes to integers, rounds the corners, and
  derives each level's stride from the padded image (61 instead of 64 on a 13-row P6 of an 800-px input);
- P7 from P6 with no ReLU between (FPN's relu_before_extra_convs=False), P6 from C5 ('on_input');
- DeltaXYWHBBoxCoder: log-size deltas clamped to ±log(1000/16), where torchvision clamps from above only;
- test-time resize: keep-ratio to 1333×800 with mmcv's rounding (int(side·scale + 0.5)) where torchvision
  floors; a uint8 image resized (cv2 returns uint8) then normalised with mean/std in 0–255 RGB.
- postprocessing: boxes clipped to the resized image, rescaled to the input image by 1 / the per-axis
  scale factors, then class-wise NMS there (torchvision runs NMS first and rescales after).
test_cfg (nms_pre 1000, score_thr 0.05, NMS IoU 0.5, max_per_img 100) is ModelSpec's defaults, or
what the checkpoint's config text sets (models/mmdet.postprocessing_settings); its min_bbox_size=0
(boxes clipped to no width or height dropped) is MMDetRetinaNet's postprocessing.
"""

from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from kdeval.models.postprocess import BatchedRetinaNet, batched_postprocess
from kdeval.models.retinanet import FPN_STRIDES, Float32AnchorGenerator, ModelSpec, build_backbone, retinanet_arguments
from kdeval.models.transform import SyncFreeTransform

# mmdetection's ImageNet statistics in 0–255 RGB (img_norm_cfg / DetDataPreprocessor of its RetinaNet configs)
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
RATIOS = (0.5, 1.0, 2.0)
SCALES_PER_OCTAVE = 3
# DeltaXYWHBBoxCoder's wh_ratio_clip = 16/1000: |log-size delta| ≤ log(1000/16)
MAX_LOG_SIZE_RATIO = abs(math.log(16 / 1000))


def base_anchors(stride: int, octave_base_scale: float, ratios=RATIOS, scales_per_octave: int = SCALES_PER_OCTAVE) -> Tensor:
    """mmdetection's AnchorGenerator.gen_single_level_base_anchors with base_size = stride and center
    offset 0, in float32 as it computes them: [ratios × scales, 4] xyxy around (0, 0), ratio-major."""
    scales = torch.tensor([octave_base_scale * 2 ** (i / scales_per_octave) for i in range(scales_per_octave)], dtype=torch.float32)
    h_ratios = torch.sqrt(torch.tensor(ratios, dtype=torch.float32))
    w_ratios = 1 / h_ratios
    ws = (stride * w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (stride * h_ratios[:, None] * scales[None, :]).view(-1)
    return torch.stack([0 - 0.5 * ws, 0 - 0.5 * hs, 0 + 0.5 * ws, 0 + 0.5 * hs], dim=-1)


class MMDetAnchorGenerator(Float32AnchorGenerator):
    """mmdetection's anchors in torchvision's layout (per level: rows, columns, then anchors), with the
    levels' fixed strides; kdeval's float32 handling and per-grid cache are inherited."""

    def __init__(self, octave_base_scale: float = 4.0, strides=FPN_STRIDES, ratios=RATIOS,
                 scales_per_octave: int = SCALES_PER_OCTAVE) -> None:
        super().__init__(tuple((s,) * scales_per_octave for s in strides), (tuple(ratios),) * len(strides))
        self.strides = tuple(strides)
        self.cell_anchors = [base_anchors(stride, octave_base_scale, ratios, scales_per_octave) for stride in strides]

    def grid_anchors(self, grid_sizes, strides):
        # torchvision passes padded size // grid size, which is not the network's stride on P6 and P7
        anchors = []
        for (grid_h, grid_w), stride, base in zip(grid_sizes, self.strides, self.cell_anchors):
            device = base.device
            shift_x = torch.arange(0, grid_w, device=device).to(base.dtype) * stride
            shift_y = torch.arange(0, grid_h, device=device).to(base.dtype) * stride
            shift_yy, shift_xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
            shift_xx, shift_yy = shift_xx.reshape(-1), shift_yy.reshape(-1)
            shifts = torch.stack((shift_xx, shift_yy, shift_xx, shift_yy), dim=1)
            anchors.append((base[None, :, :] + shifts[:, None, :]).reshape(-1, 4))
        return anchors


class MMDetBoxCoder(BoxCoder):
    """DeltaXYWHBBoxCoder with means 0 and stds 1 (mmdetection's delta2bbox without clipping, which
    batched_postprocess does to the resized image as mmdetection does); encoding is torchvision's."""

    def __init__(self) -> None:
        super().__init__(weights=(1.0, 1.0, 1.0, 1.0), bbox_xform_clip=MAX_LOG_SIZE_RATIO)

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        boxes = boxes.to(rel_codes.dtype)
        pxy = (boxes[:, :2] + boxes[:, 2:]) * 0.5
        pwh = boxes[:, 2:] - boxes[:, :2]
        dxy, dwh = rel_codes[:, :2], rel_codes[:, 2:].clamp(min=-MAX_LOG_SIZE_RATIO, max=MAX_LOG_SIZE_RATIO)
        gxy = pxy + pwh * dxy
        gwh = pwh * dwh.exp()
        return torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)


def rescaled_size(height: int, width: int, scale: tuple[int, int] = (1333, 800)) -> tuple[int, int]:
    """mmcv.rescale_size for a keep-ratio resize to `scale` (long edge, short edge): the (height, width)
    mmdetection's Resize gives an image."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * float(factor) + 0.5), int(width * float(factor) + 0.5)


class MMDetTransform(SyncFreeTransform):
    """mmdetection's test pipeline on kdeval's [0, 1] float images (made from uint8): keep-ratio resize
    to max_size × min_size by mmcv's rounding, bilinear with half-pixel centres as cv2's INTER_LINEAR,
    rounded to 0–255 integers as cv2 returns uint8, then (x − mean) / std in 0–255 RGB; padding to 32
    is torchvision's (boxes go back to the input image in MMDetRetinaNet.postprocess_batch)."""

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__(min_size, max_size, [m / 255 for m in PIXEL_MEAN], [s / 255 for s in PIXEL_STD], size_divisible=32)

    def normalize(self, image: Tensor) -> Tensor:
        if not image.is_floating_point():
            raise TypeError(f"expected a floating-point image (values in [0, 1]), got {image.dtype}")
        return image * 255  # normalised after the resize, as mmdetection does

    def resize(self, image: Tensor, target=None):
        height, width = image.shape[-2:]
        size = rescaled_size(height, width, (self.max_size, self.min_size[-1]))
        if size != (height, width):
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0].round_().clamp_(0, 255)
        key = (image.dtype, image.device)
        if key not in self._mean_std:
            self._mean_std[key] = tuple(torch.tensor(v, dtype=image.dtype, device=image.device)[:, None, None]
                                        for v in (PIXEL_MEAN, PIXEL_STD))
        mean, std = self._mean_std[key]
        image = (image - mean) / std
        if target is not None and "boxes" in target:
            target = dict(target)
            scale = torch.tensor([size[1] / width, size[0] / height] * 2, dtype=target["boxes"].dtype, device=target["boxes"].device)
            target["boxes"] = target["boxes"] * scale
        return image, target


class MMDetP6P7(ExtraFPNBlock):
    """FPN's extra levels as mmdetection's RetinaNet builds them: P6 by a stride-2 conv of C5
    (add_extra_convs='on_input'), P7 by a stride-2 conv of P6, no ReLU between."""

    def __init__(self, c5_channels: int, out_channels: int) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(c5_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for module in (self.p6, self.p7):
            nn.init.xavier_uniform_(module.weight)
            nn.init.constant_(module.bias, 0)

    def forward(self, p, c, names):
        x = c[-1].float()
        with torch.autocast(x.device.type, enabled=False):  # in fp32, as Float32LastLevelP6P7 says why
            p6 = self.p6(x)
            p7 = self.p7(p6)
        p.extend([p6, p7])
        names.extend(["p6", "p7"])
        return p, names


def build_mmdet_backbone(spec: ModelSpec) -> BackboneWithFPN:
    return build_backbone(spec, extra_blocks=MMDetP6P7)


class MMDetRetinaNet(BatchedRetinaNet):
    """BatchedRetinaNet with mmdetection's anchors, box decoding and test-time resize; the same module
    tree and state_dict keys as a torchvision-style kdeval RetinaNet."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(build_mmdet_backbone(spec), **retinanet_arguments(spec, MMDetAnchorGenerator(spec.anchor_size_per_stride)))
        self.box_coder = MMDetBoxCoder()
        self.transform = MMDetTransform(spec.min_size, spec.max_size)

    def postprocess_batch(self, outputs):
        """Detections in the input images' pixels in mmdetection's order: boxes clipped to the resized
        image, rescaled (by 1 / its scale factor, float32, as mmdetection 3.x's scale_boxes), then NMS
        there. IoU does not change under a per-axis scaling, but its float32 value may: torchvision's
        order (NMS in the resized image, rescaled after) keeps a box whose IoU is exactly the threshold
        there and just above it in the input image, where mmdetection suppresses it."""
        box_scales = [(1 / (resized_w / input_w), 1 / (resized_h / input_h)) for (resized_h, resized_w), (input_h, input_w)
                      in zip(outputs.image_sizes, outputs.original_image_sizes)]
        return self.postprocess_detections(outputs.head_outputs, outputs.anchors, outputs.image_sizes, box_scales)

    @record_function("kdeval.postprocess")
    def postprocess_detections(self, head_outputs, anchors, image_shapes, box_scales=None):
        """batched_postprocess, then mmdetection's min_bbox_size=0 filter: boxes clipped to no width or
        height are dropped before max_per_img is taken. A box of no area overlaps nothing, so dropping
        it after NMS instead of before leaves the same detections."""
        detections = batched_postprocess(
            head_outputs["cls_logits"], head_outputs["bbox_regression"], anchors[0], image_shapes, self.box_coder,
            self.score_thresh, self.topk_candidates, self.nms_thresh, sys.maxsize, box_scales,
        )
        kept = []
        for image in detections:
            boxes = image["boxes"]
            keep = ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).nonzero().squeeze(1)[:self.detections_per_img]
            kept.append({key: value[keep] for key, value in image.items()})
        return kept


def build_mmdet_retinanet(spec: ModelSpec) -> MMDetRetinaNet:
    return MMDetRetinaNet(spec)
