"""AP under mixed precision against float32, with torchvision's postprocessing (scores and boxes in
the head's bf16) and with kdeval's (float32): how much of AMP's AP change the postprocessing causes.

    python benchmarks/amp_ap.py CKPT [CKPT ...] [--data shapes | --images DIR --annotations FILE]
        [--max-images N] [--device cpu|cuda] [--dtype bfloat16|float16] [--out reports/bench/amp_ap.json]

On the CPU, autocast runs convolutions in bf16 as CUDA's does, so the comparison needs no GPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from kdeval.data.coco import load_coco_annotations
from kdeval.data.dataset import CocoDetectionDataset, collate
from kdeval.data.source import resolve_split
from kdeval.engine.predict import PredictSettings, detections_from_output, images_to_device, inference_model, outputs_to_cpu
from kdeval.metrics.coco_ap import coco_stats
from kdeval.models.checkpoint import load_checkpoint
from kdeval.models.postprocess import with_torchvision_inference


def detections(model, dataset, labels, device: torch.device, dtype: torch.dtype | None, batch_size: int) -> list[dict]:
    model = inference_model(model, PredictSettings(device=str(device)))  # folded, as kdeval runs it
    found = []
    autocast = torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)
    with torch.inference_mode(), autocast:
        for images, targets in DataLoader(dataset, batch_size=batch_size, collate_fn=collate):
            outputs = outputs_to_cpu(model(images_to_device(images, device)))
            for output, target in zip(outputs, targets):
                found.extend(detections_from_output(output, target["image_id"], labels))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--data", default="shapes")
    parser.add_argument("--images", type=Path)
    parser.add_argument("--annotations", type=Path)
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument("--out", type=Path, default=Path("reports/bench/amp_ap.json"))
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    split = resolve_split(args.data, args.images, args.annotations)
    coco = load_coco_annotations(split.annotations)
    rows = []
    print(f"| model | AP fp32 | AP {args.dtype}, torchvision's postprocessing | AP {args.dtype}, kdeval's | seconds |")
    print("|---|---:|---:|---:|---:|")
    for checkpoint in args.checkpoints:
        loaded = load_checkpoint(checkpoint)
        dataset = CocoDetectionDataset(split, coco, loaded.labels, pixels="uint8")
        if args.max_images:
            dataset = Subset(dataset, range(min(args.max_images, len(dataset))))
        image_ids = {im["id"] for im in sorted(coco["images"], key=lambda im: im["id"])[: args.max_images or None]}  # the dataset's order
        scored = {**coco, "images": [im for im in coco["images"] if im["id"] in image_ids],
                  "annotations": [a for a in coco["annotations"] if a["image_id"] in image_ids]}
        start = time.perf_counter()
        ways = {"fp32": (loaded.model, None), "amp_torchvision": (with_torchvision_inference(loaded.model), dtype),
                "amp_kdeval": (loaded.model, dtype)}
        ap = {name: 100 * coco_stats(scored, detections(model, dataset, loaded.labels, device, way_dtype, args.batch_size))["AP"]
              for name, (model, way_dtype) in ways.items()}
        seconds = time.perf_counter() - start
        rows.append({"checkpoint": str(checkpoint), "arch": loaded.spec.arch, **ap, "seconds": seconds})
        print(f"| {checkpoint} ({loaded.spec.arch}) | {ap['fp32']:.3f} | {ap['amp_torchvision']:.3f} ({ap['amp_torchvision'] - ap['fp32']:+.3f}) | "
              f"{ap['amp_kdeval']:.3f} ({ap['amp_kdeval'] - ap['fp32']:+.3f}) | {seconds:.0f} |", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": str(device), "dtype": args.dtype, "torch": torch.__version__,
                                    "images": len(scored["images"]), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
