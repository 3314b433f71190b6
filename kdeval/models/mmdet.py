"""mmdetection RetinaNet checkpoints (2.x and 3.x, and a mmrazor distillation's student), read as weights.

Such a file is a dict with `state_dict` (mmdetection's module names) and `meta`: class names in
`meta.CLASSES` (2.x) or `meta.dataset_meta.classes` (3.x). It is read with weights_only=True and nothing
of mmcv, mmengine or mmdetection is imported. What it can hold: a ResNet-18/34/50/101 (style 'pytorch'),
FPN with P6 from C5 (add_extra_convs='on_input') and P7 from P6, RetinaHead with conv towers and no norm.
Anything else (another head, DCN, norms in the head or FPN) is refused naming the first key kdeval
cannot place. The network is rebuilt as ModelSpec style "mmdet" (models/mmdet_network.py).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.models.detection import RetinaNet_ResNet50_FPN_Weights

from kdeval.errors import KdevalError
from kdeval.labels import LabelSpace
from kdeval.models.retinanet import ModelSpec

# mmrazor keeps the student under 'architecture.' (1.x; 0.x adds 'model.'), its teacher and connectors beside
STUDENT_PREFIXES = ("architecture.model.", "architecture.")
NUM_ANCHORS = 9
# the blocks per stage that tell the depth apart: layer3 has 2, 6, 6, 23 blocks in R18, R34, R50, R101
DEPTH_BY_STAGES = {(2, 2, 2, 2, "basic"): "r18", (3, 4, 6, 3, "basic"): "r34",
                   (3, 4, 6, 3, "bottleneck"): "r50", (3, 4, 23, 3, "bottleneck"): "r101"}


class SkippedTrainingState:
    """Stands in for an object of mmengine's training state kept beside the weights (a HistoryBuffer of
    logged losses in `message_hub`): unpickled as an empty object, its state dropped, nothing run."""

    def __setstate__(self, state) -> None:
        pass


# What a training checkpoint of mmdetection 3.x (mmengine) holds beside tensors and plain containers:
# numpy arrays and scalars (data only, built by numpy's own reconstructors) in `meta` and `message_hub`,
# and mmengine's HistoryBuffer, replaced by SkippedTrainingState. Both numpy module spellings are listed
# because a file names the one of the numpy that wrote it.
_MULTIARRAY = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray")
META_SAFE_GLOBALS = [
    np.ndarray, np.dtype, *{type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"},
    *[(getattr(_MULTIARRAY, name), f"{module}.multiarray.{name}")
      for name in ("_reconstruct", "scalar") for module in ("numpy.core", "numpy._core")],
    (SkippedTrainingState, "mmengine.logging.history_buffer.HistoryBuffer"),
]

# One table for both directions: (mmdetection name, kdeval (torchvision) name), each {field} matching
# the same text on both sides as _KEY_FIELDS allows
_KEY_FIELDS = {
    "resnet": r"(?:conv1|bn1|layer[1-4]\.\d+\.(?:conv[1-3]|bn[1-3]|downsample\.[01]))\.(?:weight|bias|running_mean|running_var)",
    "level": r"[0-2]",  # FPN's lateral and output convs of C3–C5
    "conv": r"[0-3]",  # the head's four stacked convs
    "param": r"weight|bias",
}
_KEY_PAIRS = (
    ("backbone.{resnet}", "backbone.body.{resnet}"),
    ("neck.lateral_convs.{level}.conv.{param}", "backbone.fpn.inner_blocks.{level}.0.{param}"),
    ("neck.fpn_convs.{level}.conv.{param}", "backbone.fpn.layer_blocks.{level}.0.{param}"),
    ("neck.fpn_convs.3.conv.{param}", "backbone.fpn.extra_blocks.p6.{param}"),
    ("neck.fpn_convs.4.conv.{param}", "backbone.fpn.extra_blocks.p7.{param}"),
    ("bbox_head.cls_convs.{conv}.conv.{param}", "head.classification_head.conv.{conv}.0.{param}"),
    ("bbox_head.reg_convs.{conv}.conv.{param}", "head.regression_head.conv.{conv}.0.{param}"),
    ("bbox_head.retina_cls.{param}", "head.classification_head.cls_logits.{param}"),
    ("bbox_head.retina_reg.{param}", "head.regression_head.bbox_reg.{param}"),
)
# mmdetection tensors kdeval's frozen BatchNorm does not keep
_DROPPED = re.compile(r"backbone\..+\.num_batches_tracked")


def _key_rule(source: str, target: str) -> tuple[re.Pattern, str]:
    """A name template's regex (each {field} a named group) and the other template's replacement."""
    parts = re.split(r"\{(\w+)\}", source)
    pattern = "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>{_KEY_FIELDS[part]})" for i, part in enumerate(parts))
    return re.compile(pattern), re.sub(r"\{(\w+)\}", r"\\g<\1>", target)


_TO_KDEVAL = tuple(_key_rule(mmdet, kdeval) for mmdet, kdeval in _KEY_PAIRS)
_TO_MMDET = tuple(_key_rule(kdeval, mmdet) for mmdet, kdeval in _KEY_PAIRS)

_UNSUPPORTED_HINTS = (
    ("conv_offset", "a DCN backbone"), ("dcn", "a DCN backbone"), (".gn.", "GroupNorm"), (".bn.", "BatchNorm"),
    ("bbox_head.", "a head other than RetinaHead with 4 stacked convs and no norm"),
    ("neck.", "an FPN other than mmdetection RetinaNet's (5 levels from C3, P6 on C5)"),
    ("backbone.", "a backbone other than ResNet-18/34/50/101"),
)


def looks_like_mmdet(payload: Any) -> bool:
    """A dict with a state_dict in mmdetection's names (possibly a mmrazor wrapper's)."""
    state_dict = payload.get("state_dict") if isinstance(payload, dict) else None
    return isinstance(state_dict, dict) and any(
        key.startswith(("bbox_head.", "neck.", "architecture.bbox_head.", "architecture.model.bbox_head.",
                        "architecture.neck.", "architecture.model.neck."))
        for key in state_dict if isinstance(key, str))


def _renamed(key: str, rules: tuple[tuple[re.Pattern, str], ...]) -> str:
    for pattern, target in rules:
        match = pattern.fullmatch(key)
        if match:
            return match.expand(target)
    raise KeyError(key)


def kdeval_key(mmdet_key: str) -> str | None:
    """The kdeval state_dict key of one mmdetection key; None for a tensor kdeval drops on purpose
    (BatchNorm's num_batches_tracked); KeyError for a key kdeval cannot place."""
    return None if _DROPPED.fullmatch(mmdet_key) else _renamed(mmdet_key, _TO_KDEVAL)


def mmdet_key(kdeval_state_key: str) -> str:
    """The inverse of kdeval_key: the mmdetection name of a kdeval state_dict key."""
    return _renamed(kdeval_state_key, _TO_MMDET)


def student_state_dict(state_dict: dict) -> dict:
    """The detector's own tensors: a mmrazor checkpoint's student (its teacher and connectors left out)."""
    for prefix in STUDENT_PREFIXES:
        student = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if any(k.startswith("bbox_head.") for k in student):
            return student
    return dict(state_dict)


def _unsupported(key: str) -> str:
    return next((what for marker, what in _UNSUPPORTED_HINTS if marker in key), "a module kdeval's RetinaNet lacks")


def map_state_dict(state_dict: dict, path: Path) -> dict:
    """mmdetection's RetinaNet state_dict in kdeval's names; every key placed or deliberately dropped."""
    mapped = {}
    for key, value in state_dict.items():
        try:
            target = kdeval_key(key)
        except KeyError:
            raise KdevalError(f"{path}: unsupported mmdetection model: '{key}' belongs to {_unsupported(key)}") from None
        if target is not None:
            mapped[target] = value
    return mapped


def _arch(state_dict: dict, path: Path) -> str:
    blocks = []
    for stage in range(1, 5):
        indices = {int(m.group(1)) for k in state_dict if (m := re.match(rf"backbone\.layer{stage}\.(\d+)\.", k))}
        blocks.append(max(indices) + 1 if indices else 0)
    kind = "bottleneck" if "backbone.layer1.0.conv3.weight" in state_dict else "basic"
    arch = DEPTH_BY_STAGES.get((*blocks, kind))
    if arch is None:
        raise KdevalError(f"{path}: unsupported mmdetection backbone ({kind} ResNet with {blocks} blocks per stage; "
                          f"kdeval runs ResNet-18/34/50/101)")
    return arch


def _class_names(meta: Any, num_classes: int, path: Path) -> tuple[str, ...]:
    meta = meta if isinstance(meta, dict) else {}
    dataset_meta = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), dict) else {}
    names = meta.get("CLASSES") or dataset_meta.get("classes")
    if isinstance(names, str):
        names = (names,)
    if not isinstance(names, (list, tuple)) or not names:
        raise KdevalError(f"{path}: mmdetection checkpoint without class names (meta.CLASSES or meta.dataset_meta.classes)")
    if len(names) != num_classes:
        raise KdevalError(f"{path}: meta names {len(names)} classes but the head predicts {num_classes}")
    return tuple(str(n) for n in names)


# settings that leave the tensors' names and shapes alone but change what the network computes: found in
# the config text mmdetection keeps in meta (2.x meta.config, 3.x meta.cfg) when it is there
_CONFIG_REFUSALS = (
    (re.compile(r"style\s*=\s*['\"]caffe['\"]"), "a caffe-style ResNet (stride in the 1×1 conv, BGR input)"),
    (re.compile(r"relu_before_extra_convs\s*=\s*True"), "an FPN with ReLU before its extra convs"),
    (re.compile(r"add_extra_convs\s*=\s*['\"]on_(?:output|lateral)['\"]"), "an FPN whose P6 is not made from C5"),
    (re.compile(r"type\s*=\s*['\"](?:ResNeXt|ResNeSt|Res2Net|RegNet)['\"]"), "a backbone other than ResNet"),
)


def _config_text(meta: Any) -> str | None:
    """The config text mmdetection keeps in meta (2.x meta.config, 3.x meta.cfg), if any."""
    text = (meta.get("config") or meta.get("cfg")) if isinstance(meta, dict) else None
    return text if isinstance(text, str) else None


def _check_config_text(meta: Any, path: Path) -> None:
    text = _config_text(meta)
    if text is None:
        return
    for pattern, what in _CONFIG_REFUSALS:
        if pattern.search(text):
            raise KdevalError(f"{path}: unsupported mmdetection model: its config builds {what}")


_NUMBER = r"([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)"


def _config_value(block: str, name: str) -> str | None:
    """The literal after `name=` (dict(...) text) or `'name':` (a dict literal) in a config block."""
    match = re.search(rf"(?<![\w.]){name}['\"]?\s*[=:]\s*(?:{_NUMBER}|['\"]([^'\"]*)['\"])", block)
    return None if match is None else (match.group(1) if match.group(1) is not None else match.group(2))


def _balanced_blocks(text: str, opening: re.Pattern) -> list[str]:
    """The text inside the parentheses that follow each match of `opening` (which ends at its '(')."""
    blocks = []
    for match in opening.finditer(text):
        depth, start = 1, match.end()
        for end in range(start, len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                blocks.append(text[start:end])
                break
    return blocks


_TEST_CFG = re.compile(r"['\"]?test_cfg['\"]?\s*[=:]\s*dict\(")
_NMS = re.compile(r"['\"]?nms['\"]?\s*[=:]\s*dict\(")


def postprocessing_settings(meta: Any, path: Path) -> dict:
    """ModelSpec's test-time settings from the model's test_cfg, read from the config text mmdetection
    keeps in meta (2.x meta.config, 3.x meta.cfg); RetinaNet's defaults (ModelSpec's) where there is
    none: nms_pre → topk_candidates, score_thr → score_thresh, nms.iou_threshold → nms_thresh,
    max_per_img → detections_per_img. A test_cfg kdeval cannot run (another NMS than plain NMS, a
    min_bbox_size above 0) is refused."""
    text = _config_text(meta)
    if text is None:
        return {}
    blocks = set(_balanced_blocks(text, _TEST_CFG))
    if len(blocks) > 1:
        raise KdevalError(f"{path}: unsupported mmdetection config: it holds {len(blocks)} different test_cfg blocks")
    if not blocks:
        return {}
    block = blocks.pop()
    settings = {}
    for name, field, kind in (("nms_pre", "topk_candidates", int), ("score_thr", "score_thresh", float),
                              ("max_per_img", "detections_per_img", int)):
        value = _config_value(block, name)
        if value is not None:
            settings[field] = kind(float(value))
    min_size = _config_value(block, "min_bbox_size")
    if min_size is not None and float(min_size) > 0:
        raise KdevalError(f"{path}: unsupported mmdetection test_cfg: min_bbox_size={min_size} (kdeval drops only boxes of no width or height)")
    for nms in _balanced_blocks(block, _NMS)[:1]:
        kind = _config_value(nms, "type")
        if kind not in (None, "nms"):
            raise KdevalError(f"{path}: unsupported mmdetection test_cfg: nms type '{kind}' (kdeval runs plain NMS)")
        iou = _config_value(nms, "iou_threshold") or _config_value(nms, "iou_thr")
        if iou is not None:
            settings["nms_thresh"] = float(iou)
    return settings


def label_space(names: tuple[str, ...]) -> tuple[LabelSpace, list[dict]]:
    """Class index → category: COCO's own ids where every name is a COCO category (mmdetection's COCO
    models), else 1..N in mmdetection's class order (its CocoDataset's order for a custom dataset)."""
    coco = {name: i for i, name in enumerate(RetinaNet_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
            if name not in ("__background__", "N/A")}
    ids = tuple(coco[n] for n in names) if all(n in coco for n in names) else tuple(range(1, len(names) + 1))
    return LabelSpace(ids, names), [{"id": i, "name": n, "supercategory": n} for i, n in zip(ids, names)]


def mmdet_header(payload: dict, path: Path) -> tuple[ModelSpec, LabelSpace, list[dict], dict]:
    """A mmdetection checkpoint's model settings, label space, categories and kdeval-named weights."""
    _check_config_text(payload.get("meta"), path)
    state_dict = map_state_dict(student_state_dict(payload["state_dict"]), path)
    cls_logits = state_dict.get("head.classification_head.cls_logits.weight")
    if cls_logits is None or "head.regression_head.bbox_reg.weight" not in state_dict:
        raise KdevalError(f"{path}: mmdetection checkpoint without RetinaHead's retina_cls and retina_reg")
    if cls_logits.shape[0] % NUM_ANCHORS:
        raise KdevalError(f"{path}: unsupported mmdetection model: retina_cls has {cls_logits.shape[0]} outputs, "
                          f"not {NUM_ANCHORS} anchors × classes")
    arch = _arch({k.replace("backbone.body.", "backbone."): v for k, v in state_dict.items()}, path)
    p6 = state_dict.get("backbone.fpn.extra_blocks.p6.weight")
    c5_channels = {"r18": 512, "r34": 512, "r50": 2048, "r101": 2048}[arch]
    if p6 is None or state_dict.get("backbone.fpn.extra_blocks.p7.weight") is None or p6.shape[1] != c5_channels:
        raise KdevalError(f"{path}: unsupported mmdetection FPN: kdeval runs RetinaNet's P6 from C5 "
                          f"(add_extra_convs='on_input') and P7 from P6")
    num_classes = cls_logits.shape[0] // NUM_ANCHORS
    spec = ModelSpec(arch=arch, num_classes=num_classes, fpn_channels=int(cls_logits.shape[1]), norm="frozen-bn", style="mmdet",
                     **postprocessing_settings(payload.get("meta"), path))
    labels, categories = label_space(_class_names(payload.get("meta"), num_classes, path))
    return spec, labels, categories, state_dict


def mmdet_checkpoint_payload(model: torch.nn.Module, class_names: list[str], meta_layout: str = "3.x") -> dict:
    """A kdeval RetinaNet's weights in mmdetection's checkpoint layout, as mmdetection's
    save_checkpoint writes it (2.x: meta.CLASSES; 3.x: meta.dataset_meta.classes); BatchNorms gain
    num_batches_tracked as nn.BatchNorm2d has it."""
    state = {}
    for key, value in model.state_dict().items():
        state[mmdet_key(key)] = value.detach().cpu().clone()
        if key.startswith("backbone.body.") and key.endswith(".running_var"):
            state[mmdet_key(key).replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    if meta_layout == "2.x":
        meta = {"mmdet_version": "2.28.2", "CLASSES": tuple(class_names), "epoch": 12, "iter": 87960}
    else:
        meta = {"dataset_meta": {"classes": tuple(class_names)}, "mmengine_version": "0.10.4", "epoch": 12, "iter": 87960}
    return {"meta": meta, "state_dict": state}
