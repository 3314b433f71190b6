"""Batching by padded input shape (engine/predict.batching_order) against batching in the dataset's
order, on images of mixed sizes and orientations as in COCO: images/s, padded pixels per image and AP.

    python benchmarks/batching_order.py CKPT [--max-images 96] [--batch-size 8] [--input-size 512]
        [--max-input-size 853] [--image-scale 1] [--device auto] [--repeats 2] [--out reports/bench/batching_order.json]

A batch is padded to its largest image. In the dataset's order a batch of 8 photographs of mixed
orientation is padded to about a square; grouped by shape it is padded only where two shapes meet.
The Shapes val images are written as JPEGs of sizes drawn (seeded) from MIX below: COCO's common
sizes (640×480, 640×427, their portrait turns, 640×360, 640×640), in shares assumed for the
benchmark, not measured on COCO. Both ways run kdeval's `predict` (same model, same settings); the
dataset's order is had by replacing batching_order with the identity. A third row runs every image
alone (batch 1), the reference a batch's padding can only move away from.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from kdeval.data.coco import load_coco_annotations
from kdeval.data.source import resolve_split
from kdeval.engine import detections as detections_module
from kdeval.engine.detections import predict
from kdeval.engine.predict import PredictSettings, padded_input_shape
from kdeval.metrics.coco_ap import coco_stats
from kdeval.models.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from predict_throughput import subset_split  # noqa: E402

# (width, height): share of the images
MIX = {(640, 480): 0.35, (640, 427): 0.25, (480, 640): 0.15, (427, 640): 0.10, (640, 360): 0.10, (640, 640): 0.05}


def padded_pixels_per_image(images: list[dict], order: list[int], batch_size: int, transform) -> float:
    shapes = [padded_input_shape(image["height"], image["width"], transform) for image in images]
    total = 0
    for start in range(0, len(order), batch_size):
        batch = [shapes[p] for p in order[start:start + batch_size]]
        total += len(batch) * max(h for h, _ in batch) * max(w for _, w in batch)
    return total / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", default="shapes")
    parser.add_argument("--max-images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=512, help="the model's short-side resize (RetinaNet: 800)")
    parser.add_argument("--max-input-size", type=int, default=853, help="the model's long-side cap (RetinaNet: 1333)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each way, alternating; the fastest counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-scale", type=float, default=1.0,
                        help="the MIX sizes times this (0.2: 128×96 and so on, the Shapes models' own scale with --input-size 128)")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/batching_order.json"))
    args = parser.parse_args()

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    generator = torch.Generator().manual_seed(args.seed)
    choices = list(MIX)
    drawn = torch.multinomial(torch.tensor(list(MIX.values())), args.max_images, replacement=True, generator=generator)
    sizes = [(round(w * args.image_scale), round(h * args.image_scale)) for w, h in (choices[int(i)] for i in drawn)]
    loaded = load_checkpoint(args.checkpoint)
    loaded.model.transform.min_size = (args.input_size,)
    loaded.model.transform.max_size = args.max_input_size
    settings = PredictSettings(batch_size=args.batch_size, device=device, workers=args.workers)
    identity = lambda model, images: list(range(len(images)))  # noqa: E731
    grouped_order = detections_module.batching_order
    with tempfile.TemporaryDirectory() as folder:
        split = subset_split(resolve_split(args.data, None, None), args.max_images, sizes, Path(folder))
        coco = load_coco_annotations(split.annotations)
        images = sorted(coco["images"], key=lambda image: image["id"])
        ways = {"dataset order": identity, "batched by shape": grouped_order}
        seconds = {name: [] for name in ways}
        found = {}
        predict(loaded, split, settings, progress=False)  # warm-up
        for _ in range(args.repeats):
            for name, order in ways.items():
                detections_module.batching_order = order
                start = time.perf_counter()
                found[name] = predict(loaded, split, settings, progress=False)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                seconds[name].append(time.perf_counter() - start)
        detections_module.batching_order = grouped_order
        # the reference: every image alone (batch 1, padded only to the size divisor), as torchvision's
        # reference evaluation runs a detector
        start = time.perf_counter()
        found["each image alone (batch 1)"] = predict(loaded, split, replace(settings, batch_size=1), progress=False)
        seconds["each image alone (batch 1)"] = [time.perf_counter() - start]
        ways["each image alone (batch 1)"] = identity
    machine = f"{device}; torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads"
    print(f"{args.checkpoint} ({loaded.spec.arch}) at {args.input_size}/{args.max_input_size} px, batch {args.batch_size}, "
          f"{len(images)} images of mixed sizes (COCO's × {args.image_scale:g}); {machine}")
    print("| way | images/s (runs) | padded pixels per image | AP | detections |\n|---|---:|---:|---:|---:|")
    results = []
    for name, order in ways.items():
        batch = 1 if "batch 1" in name else args.batch_size
        pixels = padded_pixels_per_image(images, order(loaded.model, images), batch, loaded.model.transform)
        ap = 100 * coco_stats(coco, found[name])["AP"]
        rates = [len(images) / s for s in seconds[name]]
        results.append({"way": name, "images_per_s": max(rates), "runs": rates, "padded_pixels_per_image": pixels, "AP": ap,
                        "detections": len(found[name])})
        print(f"| {name} | {max(rates):.2f} ({', '.join(f'{r:.2f}' for r in rates)}) | {pixels / 1e6:.3f} M | {ap:.2f} | {len(found[name])} |")
    print(f"batched by shape: {results[1]['images_per_s'] / results[0]['images_per_s']:.2f}× the images/s, "
          f"{results[1]['padded_pixels_per_image'] / results[0]['padded_pixels_per_image']:.2f}× the padded pixels")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "machine": machine, "sizes": {f"{w}x{h}": share for (w, h), share in MIX.items()},
                                    "image_scale": args.image_scale,
                                    "input_size": [args.input_size, args.max_input_size], "results": results}, indent=2))


if __name__ == "__main__":
    main()
