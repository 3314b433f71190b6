"""RetinaNet with a ResNet-18/34/50/101 + FPN (P3–P7) backbone, built from torchvision's blocks.

The module layout is torchvision's own (backbone.body, backbone.fpn, head.*), so torchvision's
COCO RetinaNet checkpoint loads into `r50` unchanged, and every FPN level has `fpn_channels`
channels (256 as in the paper; narrower for the embedded benchmark, where the head dominates cost).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import resnet
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from kdeval.errors import KdevalError
from kdeval.models.postprocess import BatchedRetinaNet
from kdeval.vocab import ARCHS, HEAD_NORMS, NORMS

RESNETS = dict(zip(ARCHS, (resnet.resnet18, resnet.resnet34, resnet.resnet50, resnet.resnet101)))
FPN_STRIDES = (8, 16, 32, 64, 128)  # P3..P7
# whose arithmetic the network follows (anchors, box decoding, test-time resize): models/mmdet_network.py
STYLES = ("torchvision", "mmdet")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model before its weights are loaded; saved in checkpoints."""

    arch: str
    num_classes: int
    fpn_channels: int = 256
    norm: str = "bn"  # backbone normalisation: trainable BatchNorm, GroupNorm, or frozen BatchNorm
    head_norm: str = "none"  # "gn": GroupNorm after each head conv (torchvision's RetinaNet v2); "none": the original head
    min_size: int = 800  # the transform resizes the short side to min_size, the long side to at most max_size
    max_size: int = 1333
    anchor_size_per_stride: float = 4.0  # COCO RetinaNet: 32-pixel anchors at stride 8
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_img: int = 100
    topk_candidates: int = 1000  # best candidates per level kept for NMS (mmdetection's nms_pre)
    style: str = "torchvision"

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise KdevalError(f"unknown style '{self.style}' (expected one of {', '.join(STYLES)})")
        if self.arch not in RESNETS:
            raise KdevalError(f"unknown arch '{self.arch}' (expected one of {', '.join(RESNETS)})")
        if self.norm not in NORMS:
            raise KdevalError(f"unknown norm '{self.norm}' (expected one of {', '.join(NORMS)})")
        if self.head_norm not in HEAD_NORMS:
            raise KdevalError(f"unknown head_norm '{self.head_norm}' (expected one of {', '.join(HEAD_NORMS)})")
        if self.num_classes < 1 or self.fpn_channels < 1:
            raise KdevalError("num_classes and fpn_channels must be positive")
        if self.detections_per_img < 1 or self.topk_candidates < 1:
            raise KdevalError("detections_per_img and topk_candidates must be positive")
        if not (0.0 <= self.score_thresh <= 1.0 and 0.0 <= self.nms_thresh <= 1.0):  # NaN fails too
            raise KdevalError(f"score_thresh {self.score_thresh} and nms_thresh {self.nms_thresh} must lie in 0..1")


def _norm_layer(norm: str):
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "frozen-bn":
        return FrozenBatchNorm2d
    return lambda channels: nn.GroupNorm(min(32, channels), channels)


class Float32AnchorGenerator(AnchorGenerator):
    """torchvision's anchors, always in float32, and in eval mode computed once per grid.

    torchvision builds them in the feature maps' dtype, which under autocast is bf16 (a 1,500-px
    coordinate off by up to 6 px) or fp16, and converts its cell anchors in place, so one bf16 batch
    would round them for every later batch: the maps are read only for their size and device, and
    shape-only float32 stand-ins are passed on. torchvision also rebuilds them for every batch and
    concatenates them for every image (about 100 operations per batch of 8 on the GPU), although every
    image of a padded batch has the same: in eval mode the last `CACHED_GRIDS` grids' anchors are kept
    and each image gets that one tensor (read-only, as RetinaNet uses it); CACHED_GRIDS = 0 is torchvision's way."""

    CACHED_GRIDS = 8

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._by_grid: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def forward(self, image_list, feature_maps):
        sizes_only = [torch.empty((0, 0, *f.shape[-2:]), dtype=torch.float32, device=f.device) for f in feature_maps]
        if self.training or not self.CACHED_GRIDS:
            return super().forward(image_list, sizes_only)
        key = (tuple(image_list.tensors.shape[-2:]), tuple(tuple(f.shape[-2:]) for f in feature_maps), feature_maps[0].device)
        anchors = self._by_grid.pop(key, None)
        if anchors is None:
            anchors = super().forward(ImageList(image_list.tensors, image_list.image_sizes[:1]), sizes_only)[0]
        self._by_grid[key] = anchors  # the most recently used last
        while len(self._by_grid) > self.CACHED_GRIDS:
            self._by_grid.popitem(last=False)
        return [anchors] * len(image_list.image_sizes)


def anchor_generator(spec: ModelSpec) -> AnchorGenerator:
    # three octave scales per level, as torchvision's RetinaNet (including its rounding down)
    bases = [spec.anchor_size_per_stride * stride for stride in FPN_STRIDES]
    sizes = tuple((int(b), int(b * 2 ** (1 / 3)), int(b * 2 ** (2 / 3))) for b in bases)
    return Float32AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


class Float32LastLevelP6P7(LastLevelP6P7):
    """torchvision's P6 and P7, always computed in fp32. Their maps are a pixel or two wide, and there
    oneDNN's bf16 convolution (CPU autocast) gives non-finite weight gradients, at random, for a
    stride-2 conv of a 1×1 map (P7 on 64-px images, P6 and P7 on 32-px ones; tests/test_models.py);
    at that size fp32 costs nothing. Same parameters and state_dict as torchvision's."""

    def forward(self, p, c, names):
        x = (p[-1] if self.use_P5 else c[-1]).float()
        with torch.autocast(x.device.type, enabled=False):
            p6 = self.p6(x)
            p7 = self.p7(F.relu(p6))
        p.extend([p6, p7])
        names.extend(["p6", "p7"])
        return p, names


def build_backbone(spec: ModelSpec, extra_blocks=None) -> BackboneWithFPN:
    """ResNet + FPN over C3–C5; P6 and P7 by `extra_blocks(C5 channels, FPN channels)`, torchvision's
    LastLevelP6P7 from P5 by default (mmdetection's take C5: kdeval.models.mmdet_network)."""
    body = RESNETS[spec.arch](weights=None, norm_layer=_norm_layer(spec.norm))
    stage2_channels = body.inplanes // 8  # 64 for BasicBlock nets, 256 for Bottleneck nets
    in_channels = [stage2_channels * 2 ** (layer - 1) for layer in (2, 3, 4)]
    extra = extra_blocks(in_channels[-1], spec.fpn_channels) if extra_blocks else Float32LastLevelP6P7(spec.fpn_channels, spec.fpn_channels)
    return BackboneWithFPN(
        body,
        return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
        in_channels_list=in_channels,
        out_channels=spec.fpn_channels,
        extra_blocks=extra,
    )


def build_head(spec: ModelSpec, num_anchors: int) -> RetinaNetHead:
    """RetinaNet's head; with head_norm 'gn' every tower conv is followed by GroupNorm (16 groups at 64
    channels, 32 from 128 up), which lets a from-scratch head learn markedly faster at the same cost
    per step (benchmarks/RESULTS.md)."""
    norm_layer = None
    if spec.head_norm == "gn":
        wanted = max(1, min(32, spec.fpn_channels // 4))
        groups = max(g for g in range(1, wanted + 1) if spec.fpn_channels % g == 0)
        norm_layer = partial(nn.GroupNorm, groups)
    return RetinaNetHead(spec.fpn_channels, num_anchors, spec.num_classes, norm_layer=norm_layer)


def build_retinanet(spec: ModelSpec) -> RetinaNet:
    """torchvision's RetinaNet with kdeval's batch-wide inference postprocessing (same state_dict); with
    style "mmdet", the network mmdetection runs (models/mmdet_network.py)."""
    if spec.style == "mmdet":
        from kdeval.models.mmdet_network import build_mmdet_retinanet  # it builds on this module's parts

        return build_mmdet_retinanet(spec)
    return BatchedRetinaNet(build_backbone(spec), **retinanet_arguments(spec, anchor_generator(spec)))


def retinanet_arguments(spec: ModelSpec, anchors) -> dict:
    """RetinaNet's arguments after the backbone, for the spec and its anchor generator: the same for
    the torchvision-style network and the mmdetection-style one."""
    return {
        "num_classes": spec.num_classes,
        "min_size": spec.min_size,
        "max_size": spec.max_size,
        "anchor_generator": anchors,
        "head": build_head(spec, anchors.num_anchors_per_location()[0]),
        "score_thresh": spec.score_thresh,
        "nms_thresh": spec.nms_thresh,
        "detections_per_img": spec.detections_per_img,
        "topk_candidates": spec.topk_candidates,
    }


def load_backbone_weights(model: RetinaNet, path) -> None:
    """Load an ImageNet ResNet state_dict (torchvision's resnet*-*.pth) into the backbone body."""
    from kdeval.models.checkpoint import torch_load_safely

    state = torch_load_safely(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "conv1.weight" not in state:
        raise KdevalError(f"{path}: not a ResNet state_dict (expected keys such as 'conv1.weight', 'layer1.0.conv1.weight')")
    body = model.backbone.body
    body_keys = set(body.state_dict())
    wanted = {k: v for k, v in state.items() if k in body_keys}
    missing = sorted(k for k in body_keys - set(wanted) if not k.endswith("num_batches_tracked"))
    if missing:
        raise KdevalError(
            f"{path}: does not fit this backbone ({len(missing)} tensors missing, e.g. '{missing[0]}'); "
            "check --arch, and use --norm bn or frozen-bn with ImageNet weights"
        )
    # beyond the body, an ImageNet file holds its classifier (fc.*) alone: any other tensor means the
    # weights of a deeper ResNet (R34's layer1.2 in an R18), whose extra blocks would be silently dropped
    extra = sorted(k for k in state if k not in body_keys and not k.startswith("fc.") and not k.endswith("num_batches_tracked"))
    if extra:
        raise KdevalError(
            f"{path}: holds {len(extra)} tensors this backbone lacks (e.g. '{extra[0]}'): the weights of another "
            "ResNet depth? check --arch"
        )
    try:
        body.load_state_dict(wanted, strict=False)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise KdevalError(f"{path}: does not fit this backbone: {first}") from None


def fpn_features(model: RetinaNet, images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The FPN maps ('0', '1', '2', 'p6', 'p7' = P3..P7) of a batch, after the model's own transform."""
    image_list, _ = model.transform(images)
    return model.backbone(image_list.tensors)


def fold_batch_norms(model: nn.Module) -> int:
    """Fold every inference-mode BatchNorm that follows a convolution in the ResNet body (trainable
    BatchNorm's running statistics, or FrozenBatchNorm2d as torchvision's COCO weights use) into that
    convolution's weight and bias, in place; returns how many. The same function of the input up to
    float rounding (≈ 1e-6 relative), one memory-bound pass over every activation map fewer — five
    for FrozenBatchNorm2d, which runs as separate elementwise operations. For inference only:
    the folded model cannot be trained as before. GroupNorm normalises by statistics of its input and
    cannot be folded."""
    folded = 0
    for module in list(model.modules()):  # the stem (conv1, bn1) and every residual block (conv1..3, bn1..3)
        for index in (1, 2, 3):
            folded += _fold_pair(module, f"conv{index}", f"bn{index}")
        if isinstance(getattr(module, "downsample", None), nn.Sequential) and len(module.downsample) == 2:
            folded += _fold_pair(module.downsample, "0", "1")
    return folded


def _fold_pair(parent: nn.Module, conv_name: str, norm_name: str) -> int:
    conv, norm = getattr(parent, conv_name, None), getattr(parent, norm_name, None)
    if type(conv) is not nn.Conv2d:
        return 0
    if isinstance(norm, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        if norm.training or norm.running_mean is None:
            return 0
        gamma = norm.weight if norm.affine else torch.ones_like(norm.running_var)
        beta = norm.bias if norm.affine else torch.zeros_like(norm.running_mean)
    elif isinstance(norm, FrozenBatchNorm2d):
        gamma, beta = norm.weight, norm.bias
    else:
        return 0
    with torch.no_grad():
        scale = gamma * (norm.running_var + norm.eps).rsqrt()
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                          device=conv.weight.device, dtype=conv.weight.dtype)
        fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
        fused.bias.copy_(beta + (bias - norm.running_mean) * scale)
    setattr(parent, conv_name, fused)
    setattr(parent, norm_name, nn.Identity())
    return 1
