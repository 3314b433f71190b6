"""Model → COCO results JSON: batched inference under torch.inference_mode, cached on disk.

The cache key is (checkpoint bytes, annotation bytes, images folder, inference settings), so every
command that needs the same detections reads them instead of running the model again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from kdeval.data.coco import LabelSpace, load_coco_annotations, read_json
from kdeval.data.dataset import CocoDetectionDataset, collate
from kdeval.data.source import Split
from kdeval.fileio import cache_root, file_sha256, write_json_atomic
from kdeval.models.checkpoint import LoadedModel, load_checkpoint

if TYPE_CHECKING:
    from kdeval.data.foreign_results import CategoryMap

CACHE_VERSION = 1


@dataclass(frozen=True)
class PredictSettings:
    batch_size: int = 8
    device: str = "cpu"
    workers: int = 0
    amp: bool = False  # only on CUDA
    category_map: Optional["CategoryMap"] = None  # the model's categories → the dataset's (--category-map)

    def cache_fields(self) -> dict:
        # batch size and workers do not change detections; device, precision and the category map may
        fields = {"device_type": torch.device(self.device).type, "amp": self.amp and self.device.startswith("cuda")}
        if self.category_map is not None:
            fields["category_map"] = self.category_map.digest()
        return fields


def detections_from_output(output: dict, image_id: int, labels: LabelSpace) -> list[dict]:
    """One image's model output (boxes xyxy, scores, labels) → COCO results entries (bbox xywh)."""
    boxes_xyxy = output["boxes"].float().cpu().tolist()
    scores = output["scores"].float().cpu().tolist()
    label_ids = output["labels"].cpu().tolist()
    detections = []
    for (x0, y0, x1, y1), score, label in zip(boxes_xyxy, scores, label_ids):
        category_id = labels.category_ids[label]
        if category_id < 0:
            continue
        detections.append(
            {
                "image_id": image_id,
                "category_id": category_id,
                "bbox": [round(x0, 3), round(y0, 3), round(x1 - x0, 3), round(y1 - y0, 3)],
                "score": round(score, 5),
            }
        )
    return detections


def predict(loaded: LoadedModel, split: Split, settings: PredictSettings = PredictSettings(), progress: bool = True) -> list[dict]:
    """Detections of `loaded` on every image of `split` (at most detections_per_img per image)."""
    coco = load_coco_annotations(split.annotations)
    labels = loaded.labels
    if settings.category_map is not None:
        labels = settings.category_map.map_labels(labels, coco["categories"])
    labels.check_matches(coco["categories"], str(split.annotations))
    dataset = CocoDetectionDataset(split, coco, labels)
    dataset.check_images_exist()
    device = torch.device(settings.device)
    model = loaded.model.to(device).eval()
    loader = DataLoader(
        dataset,
        batch_size=settings.batch_size,
        shuffle=False,
        num_workers=settings.workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
    )
    autocast = torch.autocast(device.type, enabled=settings.amp and device.type == "cuda", dtype=torch.bfloat16)
    detections: list[dict] = []
    with torch.inference_mode(), autocast:
        for images, targets in tqdm(loader, desc="predict", unit="batch", disable=not progress):
            outputs = model([image.to(device, non_blocking=True) for image in images])
            for output, target in zip(outputs, targets):
                detections.extend(detections_from_output(output, target["image_id"], labels))
    return detections


def _cache_path(checkpoint: Path, split: Split, settings: PredictSettings) -> Path:
    key = {
        "version": CACHE_VERSION,
        "checkpoint": file_sha256(checkpoint),
        "annotations": file_sha256(split.annotations),
        "images": str(Path(split.images).resolve()) if split.images else None,
        **settings.cache_fields(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_root() / "detections" / f"{digest}.json"


def cached_predict(
    checkpoint: Path, split: Split, settings: PredictSettings = PredictSettings(), use_cache: bool = True, progress: bool = True
) -> list[dict]:
    """Detections of a checkpoint on a split, from the cache when the same run was done before."""
    path = _cache_path(Path(checkpoint), split, settings)
    if use_cache and path.is_file():
        return read_json(path, "cached detections")
    detections = predict(load_checkpoint(checkpoint), split, settings, progress=progress)
    write_json_atomic(path, detections, indent=None)
    return detections

