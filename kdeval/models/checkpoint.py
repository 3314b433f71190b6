"""kdeval's checkpoint file: one file per model, enough to rebuild and score it anywhere.

A checkpoint is a dict saved with torch.save and read with `weights_only=True`:
    format, format_version, kdeval_version, model (ModelSpec fields), categories (COCO id, name,
    supercategory), label_category_ids (model label -> COCO category id), role, train_settings,
    state_dict.
torchvision's COCO RetinaNet state_dict (retinanet_resnet50_fpn_coco-*.pth) is read too, mapped to
COCO's 91-id category space, and mmdetection's RetinaNet checkpoints (models/mmdet.py).
"""

from __future__ import annotations

import pickle
import pickletools
import re
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torchvision.models.detection import RetinaNet, RetinaNet_ResNet50_FPN_Weights

from kdeval import __version__
from kdeval.errors import KdevalError
from kdeval.fileio import torch_save_atomic
from kdeval.labels import LabelSpace
from kdeval.models.mmdet import META_SAFE_GLOBALS, looks_like_mmdet, mmdet_header
from kdeval.models.retinanet import ModelSpec, build_retinanet
from kdeval.vocab import ROLES

FORMAT = "kdeval-checkpoint"
FORMAT_VERSION = 1


@dataclass
class LoadedModel:
    model: RetinaNet
    spec: ModelSpec
    labels: LabelSpace
    categories: list[dict]
    role: str
    train_settings: dict
    source: str  # "kdeval", "torchvision" or "mmdetection"


def dataset_labels(loaded: LoadedModel, categories: list[dict], where: str, category_map=None) -> LabelSpace:
    """The model's label space in the dataset's category ids, checked against them: --category-map's
    mapping where one is given; a mmdetection model's classes by name, since its checkpoint knows them
    by name alone (meta.CLASSES) and the ids kdeval gave them (COCO's, else 1..N) are its own; else the
    ids it was trained with."""
    labels = loaded.labels
    if category_map is not None:
        labels = category_map.map_labels(labels, categories)
    elif loaded.spec.style == "mmdet":
        from kdeval.data.foreign_results import CategoryMap

        labels = CategoryMap(source="class names").map_labels(labels, categories)
    labels.check_matches(categories, where)
    return labels


# Set only by the command line's --trust-checkpoint, for the command it runs: then files that need
# full unpickling (an old torchvision or mmdetection pickle) are loaded. Never set by a library call.
_PICKLE_OPCODES = {ord(op.code) for op in pickletools.opcodes}
_TRUST_CHECKPOINTS: ContextVar[bool] = ContextVar("trust_checkpoints", default=False)


@contextmanager
def trusting_checkpoints(trust: bool = True):
    token = _TRUST_CHECKPOINTS.set(trust)
    try:
        yield
    finally:
        _TRUST_CHECKPOINTS.reset(token)


def torch_load_safely(path: Path) -> Any:
    """torch.load with weights_only=True: a file that needs arbitrary unpickling is refused unless the
    user passed --trust-checkpoint (then a pickled whole model yields its state_dict)."""
    path = Path(path)
    if not path.is_file():
        raise KdevalError(f"{path}: checkpoint file not found")
    trusted = _TRUST_CHECKPOINTS.get()
    try:
        with warnings.catch_warnings():  # torch's note on pickle protocols: our own message says what matters
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            with torch.serialization.safe_globals(META_SAFE_GLOBALS):  # data-only types of mmdetection's meta
                payload = torch.load(path, map_location="cpu", weights_only=not trusted)
        return payload.state_dict() if trusted and isinstance(payload, torch.nn.Module) else payload
    except pickle.UnpicklingError as exc:
        match = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if match:
            raise KdevalError(
                f"{path}: refused, loading it needs full unpickling of {match.group(1)}, which could run code; "
                f"pass --trust-checkpoint only if you trust whoever made the file"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
        operand = re.search(r"Unsupported operand (\d+)", str(exc))
        if operand and int(operand.group(1)) not in _PICKLE_OPCODES:
            raise KdevalError(f"{path}: not a readable PyTorch file (not a pickle: byte {operand.group(1)})") from None
        raise KdevalError(
            f"{path}: refused, it cannot be read as weights only ({detail.group(1).strip() if detail else 'bad pickle'}); "
            f"if it is a full pickle (an old torchvision or mmdetection file) from a source you trust, pass --trust-checkpoint"
        ) from None
    except Exception as exc:  # torch raises many types for a damaged file (RuntimeError, struct.error, EOFError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if first.isdigit() or len(first) < 8:  # a bare key or offset ('101') says nothing to a reader
            first = f"{type(exc).__name__}: {first}"
        raise KdevalError(f"{path}: not a readable PyTorch file ({first[:160]})") from None


def save_checkpoint(
    path: Path,
    model: RetinaNet,
    spec: ModelSpec,
    categories: list[dict],
    role: str,
    train_settings: dict | None = None,
) -> Path:
    if role not in ROLES:
        raise KdevalError(f"unknown role '{role}' (expected one of {', '.join(ROLES)})")
    labels = LabelSpace.from_categories(categories)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kdeval_version": __version__,
        "model": asdict(spec),
        "categories": [
            {"id": c["id"], "name": str(c["name"]), "supercategory": str(c.get("supercategory", c["name"]))}
            for c in sorted(categories, key=lambda c: c["id"])
        ],
        "label_category_ids": list(labels.category_ids),
        "role": role,
        "train_settings": dict(train_settings or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return torch_save_atomic(path, payload)


def _spec_from_dict(raw: Any, path: Path) -> ModelSpec:
    if not isinstance(raw, dict):
        raise KdevalError(f"{path}: field 'model' must be a dict of model settings")
    known = {f.name for f in fields(ModelSpec)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise KdevalError(f"{path}: field 'model' has unknown settings {unknown}")
    annotations = {f.name: str(f.type) for f in fields(ModelSpec)}  # 'int', 'float', 'str'
    for name, value in raw.items():
        kinds = {"int": (int,), "float": (int, float), "str": (str,)}.get(annotations[name], (int, float, str))
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise KdevalError(f"{path}: field 'model.{name}' has the wrong type ({value!r})")
    try:
        return ModelSpec(**raw)
    except TypeError as exc:
        raise KdevalError(f"{path}: field 'model' is incomplete ({exc})") from None
    except KdevalError as exc:
        raise KdevalError(f"{path}: field 'model': {exc}") from None


def _load_weights(model: RetinaNet, state_dict: Any, spec: ModelSpec, path: Path) -> None:
    if not isinstance(state_dict, dict):
        raise KdevalError(f"{path}: field 'state_dict' must be a dict of tensors")
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:200]
        raise KdevalError(
            f"{path}: weights do not fit RetinaNet {spec.arch} with {spec.fpn_channels}-channel FPN "
            f"and {spec.num_classes} classes ({detail})"
        ) from None


def _kdeval_header(payload: dict, path: Path) -> tuple[ModelSpec, LabelSpace]:
    """A kdeval checkpoint's model settings and label space, checked, without its weights."""
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise KdevalError(f"{path}: kdeval checkpoint format version {version!r}, this kdeval reads version {FORMAT_VERSION}")
    for key in ("model", "categories", "label_category_ids", "role", "state_dict"):
        if key not in payload:
            raise KdevalError(f"{path}: kdeval checkpoint lacks field '{key}'")
    spec = _spec_from_dict(payload["model"], path)
    categories = payload["categories"]
    if not isinstance(categories, list) or not all(isinstance(c, dict) and "id" in c and "name" in c for c in categories):
        raise KdevalError(f"{path}: field 'categories' must be a list of {{id, name}}")
    label_ids = payload["label_category_ids"]
    if not isinstance(label_ids, list) or len(label_ids) != spec.num_classes:
        raise KdevalError(f"{path}: field 'label_category_ids' must list {spec.num_classes} category ids")
    names = {c["id"]: str(c["name"]) for c in categories}
    return spec, LabelSpace(tuple(int(i) for i in label_ids), tuple(names.get(i, "") for i in label_ids))


def _kdeval_checkpoint(payload: dict, path: Path) -> LoadedModel:
    spec, labels = _kdeval_header(payload, path)
    model = build_retinanet(spec)
    _load_weights(model, payload["state_dict"], spec, path)
    return LoadedModel(
        model, spec, labels, list(payload["categories"]), str(payload["role"]), dict(payload.get("train_settings") or {}), "kdeval"
    )


def _looks_like_torchvision_retinanet(payload: dict) -> bool:
    return "backbone.body.conv1.weight" in payload and "head.classification_head.cls_logits.weight" in payload


def _torchvision_header(state_dict: dict, path: Path) -> tuple[ModelSpec, LabelSpace, list[dict]]:
    """torchvision's RetinaNet R50 state_dict; with 91 labels, label i is COCO category id i."""
    if "backbone.body.layer1.0.conv3.weight" not in state_dict or "backbone.body.layer3.5.conv1.weight" not in state_dict:
        raise KdevalError(f"{path}: a torchvision RetinaNet state_dict, but not ResNet-50 (the only arch torchvision ships)")
    arch = "r101" if "backbone.body.layer3.22.conv1.weight" in state_dict else "r50"
    num_anchors = 9
    num_classes = state_dict["head.classification_head.cls_logits.weight"].shape[0] // num_anchors
    spec = ModelSpec(arch=arch, num_classes=num_classes, fpn_channels=256, norm="frozen-bn")
    if num_classes != 91:
        raise KdevalError(
            f"{path}: a torchvision RetinaNet with {num_classes} classes; kdeval can map only the 91-label COCO model"
        )
    names = RetinaNet_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    label_ids = tuple(i if name not in ("__background__", "N/A") else -1 for i, name in enumerate(names))
    categories = [{"id": i, "name": n} for i, n in zip(label_ids, names) if i >= 0]
    return spec, LabelSpace(label_ids, tuple(names)), categories


def _torchvision_retinanet(state_dict: dict, path: Path) -> LoadedModel:
    spec, labels, categories = _torchvision_header(state_dict, path)
    model = build_retinanet(spec)
    _load_weights(model, state_dict, spec, path)
    return LoadedModel(model, spec, labels, categories, "teacher", {}, "torchvision")


def _mmdet_retinanet(payload: dict, path: Path) -> LoadedModel:
    spec, labels, categories, state_dict = mmdet_header(payload, path)
    model = build_retinanet(spec)
    _load_weights(model, state_dict, spec, path)
    return LoadedModel(model, spec, labels, categories, "teacher", {}, "mmdetection")


def _payload(path: Path) -> tuple[Any, str]:
    """The file's contents and their kind, 'kdeval', 'torchvision' or 'mmdetection'; refused when none."""
    payload = torch_load_safely(path)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return payload, "kdeval"
    if isinstance(payload, dict) and _looks_like_torchvision_retinanet(payload):
        return payload, "torchvision"
    if looks_like_mmdet(payload):
        return payload, "mmdetection"
    raise KdevalError(
        f"{path}: not a model kdeval can read (expected a kdeval checkpoint, format '{FORMAT}' "
        f"version {FORMAT_VERSION}, torchvision's RetinaNet COCO state_dict or an mmdetection RetinaNet checkpoint)"
    )


def load_checkpoint(path: Path) -> LoadedModel:
    """Rebuild a model from a kdeval checkpoint, torchvision's COCO RetinaNet weights or an mmdetection
    RetinaNet checkpoint (on the CPU)."""
    path = Path(path)
    payload, kind = _payload(path)
    loader = {"kdeval": _kdeval_checkpoint, "torchvision": _torchvision_retinanet, "mmdetection": _mmdet_retinanet}[kind]
    return loader(payload, path)


def checkpoint_labels(path: Path) -> LabelSpace:
    """The label space load_checkpoint(path).labels would give, without building the model."""
    path = Path(path)
    payload, kind = _payload(path)
    if kind == "kdeval":
        return _kdeval_header(payload, path)[1]
    return _torchvision_header(payload, path)[1] if kind == "torchvision" else mmdet_header(payload, path)[1]


def convert_checkpoint(source: Path, out: Path) -> LoadedModel:
    """Write any model kdeval reads (an mmdetection or torchvision RetinaNet) as a kdeval checkpoint,
    keeping its network settings (ModelSpec style "mmdet" for mmdetection's), so later runs read it
    without mapping names again."""
    loaded = load_checkpoint(source)
    if Path(out).resolve() == Path(source).resolve():
        raise KdevalError(f"{out}: the converted checkpoint would overwrite its source; give another path")
    settings = dict(loaded.train_settings) if loaded.source == "kdeval" else {"converted_from": loaded.source}
    save_checkpoint(Path(out), loaded.model, loaded.spec, loaded.categories, loaded.role, settings)
    return loaded
