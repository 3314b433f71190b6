"""kdeval predict on CUDA against the CPU: DataLoader workers, pinned non-blocking copies, channels_last,
folded BatchNorms, fp16 autocast and nvJPEG decoding must find what the CPU finds. Skipped without a
GPU; `benchmarks/gpu_check.sh` (step tests) runs them on a lent one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from conftest import CUDA, TINY_SHAPES
from kdeval.data.coco import load_coco_annotations
from kdeval.data.dataset import CocoDetectionDataset
from kdeval.data.source import Split
from kdeval.engine.predict import PredictSettings, run_model
from kdeval.labels import LabelSpace
from kdeval.models.retinanet import ModelSpec, build_retinanet

pytestmark = CUDA


def shapes_val(root: Path) -> Split:
    return Split(root / "annotations" / "instances_val.json", root / "val", "val")


def jpeg_copy(split: Split, folder: Path) -> Split:
    """The split with every image saved as a JPEG (the files nvJPEG decodes)."""
    coco = load_coco_annotations(split.annotations)
    images = folder / "images"
    images.mkdir(parents=True)
    for image in coco["images"]:
        name = Path(image["file_name"]).stem + ".jpg"
        with Image.open(split.images / image["file_name"]) as pil:
            pil.convert("RGB").save(images / name, quality=92)
        image["file_name"] = name
    annotations = folder / "annotations.json"
    annotations.write_text(json.dumps(coco))
    return Split(annotations, images, "val")


def scoring_model(labels: LabelSpace) -> torch.nn.Module:
    """A random R18 RetinaNet (BatchNorms included, so folding is exercised) whose scores spread from the
    0.05 threshold to about 0.5: every image gives its 100 detections, and few are so close in score
    and place that a rounding difference changes what NMS keeps. (With scores bunched at 0.14–0.17
    the CPU's fp16 emulation kept only 85 % of fp32's detections; with these, 95 %, bf16 77 %.)"""
    torch.manual_seed(7)
    spec = ModelSpec("r18", num_classes=labels.num_classes, fpn_channels=16, min_size=TINY_SHAPES.size, max_size=TINY_SHAPES.size)
    model = build_retinanet(spec)
    for name, parameter in model.head.named_parameters():
        if name.endswith("bias"):
            torch.nn.init.constant_(parameter, -4.0 if "cls_logits" in name else 0.05)
    torch.nn.init.normal_(model.head.classification_head.cls_logits.weight, std=3.0)
    return model.eval()


def detections(split: Split, settings: PredictSettings) -> tuple[list[dict], LabelSpace]:
    coco = load_coco_annotations(split.annotations)
    labels = LabelSpace.from_categories(coco["categories"])
    dataset = CocoDetectionDataset(split, coco, labels, pixels=settings.pixels())
    return run_model(scoring_model(labels), dataset, settings, labels, progress=False), labels


def matched_share(found: list[dict], reference: list[dict], min_iou: float, max_score_change: float) -> float:
    """The share of `reference`'s detections that `found` has too: same image and category, IoU at least
    `min_iou`, score within `max_score_change` (each found detection matched at most once)."""
    def by_key(entries):
        grouped: dict = {}
        for entry in entries:
            x, y, w, h = entry["bbox"]
            grouped.setdefault((entry["image_id"], entry["category_id"]), []).append(([x, y, x + w, y + h], entry["score"]))
        return grouped

    found_by_key, matched = by_key(found), 0
    for key, wanted in by_key(reference).items():
        candidates = found_by_key.get(key, [])
        if not candidates:
            continue
        ious = box_iou(torch.tensor([box for box, _ in wanted]), torch.tensor([box for box, _ in candidates]))
        scores = torch.tensor([score for _, score in candidates])
        used = torch.zeros(len(candidates), dtype=torch.bool)
        for row, (_, score) in enumerate(wanted):
            fits = (ious[row] >= min_iou) & ((scores - score).abs() <= max_score_change) & ~used
            if fits.any():
                used[int(fits.nonzero()[0])] = True
                matched += 1
    return matched / max(1, len(reference))


@pytest.fixture
def fp32_without_tf32():
    """cuDNN's and cuBLAS's TF32 off, so CUDA's float32 is comparable with the CPU's."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_cuda_predict_finds_what_the_cpu_finds(tiny_shapes, fp32_without_tf32):
    split = shapes_val(tiny_shapes)
    on_cpu, _ = detections(split, PredictSettings(batch_size=4, device="cpu"))
    on_gpu, _ = detections(split, PredictSettings(batch_size=4, device="cuda", workers=2, amp=False))
    assert len(on_cpu) == 100 * TINY_SHAPES.val
    assert len(on_gpu) == len(on_cpu)
    assert matched_share(on_gpu, on_cpu, min_iou=0.999, max_score_change=1e-4) >= 0.98


def test_cuda_fp16_amp_stays_close_to_fp32(tiny_shapes):
    split = shapes_val(tiny_shapes)
    fp32, _ = detections(split, PredictSettings(batch_size=4, device="cuda", workers=0, amp=False))
    fp16, _ = detections(split, PredictSettings(batch_size=4, device="cuda", workers=0))  # AMP is the default on CUDA
    assert len(fp16) == len(fp32) == 100 * TINY_SHAPES.val
    assert matched_share(fp16, fp32, min_iou=0.95, max_score_change=0.01) >= 0.9


def test_nvjpeg_decoding_finds_what_pil_decoding_finds(tiny_shapes, tmp_path):
    split = jpeg_copy(shapes_val(tiny_shapes), tmp_path)
    settings = PredictSettings(batch_size=4, device="cuda", workers=2)
    assert settings.pixels() == "jpeg-bytes"
    on_gpu, _ = detections(split, settings)
    with_pil, _ = detections(split, PredictSettings(batch_size=4, device="cuda", workers=2, gpu_decode=False))
    assert len(on_gpu) == len(with_pil) == 100 * TINY_SHAPES.val
    # nvJPEG's pixels may differ from libjpeg's by a level here and there
    assert matched_share(on_gpu, with_pil, min_iou=0.95, max_score_change=0.02) >= 0.9
