"""RetinaNet's inference postprocessing alone: torchvision's per-image, per-level loop against kdeval's
batch-wide `batched_postprocess`, on head outputs the size of R50 at 800 px (COCO's 640×480 resized
to 800×1067, padded to 800×1088), with a score distribution like a trained COCO model's (a few
thousand candidates above 0.05 per image before NMS).

    python benchmarks/postprocess_cost.py [--device cpu|cuda] [--batch-size 8] [--classes 80]
        [--height 800 --width 1088] [--repeats 5] [--out reports/bench/postprocess_cost.json]

Reports per batch: wall time (fastest of --repeats), the number of ATen operations dispatched (each a
kernel launch on a GPU), on CUDA the number of host–device synchronisations, and whether both give
the same detections.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from host_costs import OperationCounter, SynchronisationCounter
from kdeval.models.postprocess import with_torchvision_inference
from kdeval.models.retinanet import FPN_STRIDES, ModelSpec, build_retinanet


def head_outputs(batch: int, classes: int, height: int, width: int, device: torch.device, seed: int = 0):
    """Split head outputs and anchors as RetinaNet.forward hands them to postprocess_detections."""
    generator = torch.Generator().manual_seed(seed)
    spec = ModelSpec(arch="r18", num_classes=classes, fpn_channels=8, min_size=height, max_size=width)
    model = build_retinanet(spec).eval().to(device)
    sizes = [((height + s - 1) // s, (width + s - 1) // s) for s in FPN_STRIDES]
    num_anchors = model.anchor_generator.num_anchors_per_location()[0]
    features = [torch.zeros(batch, 8, h, w, device=device) for h, w in sizes]

    class Images:  # the ImageList fields the anchor generator reads
        tensors = torch.zeros(batch, 3, height, width, device=device)
        image_sizes = [(height, width - 21 * (i % 2)) for i in range(batch)]  # 1067 and 1088 wide

    anchors = model.anchor_generator(Images, features)
    per_level = [h * w * num_anchors for h, w in sizes]
    total = sum(per_level)
    logits = (torch.randn(batch, total, classes, generator=generator) * 1.2 - 7.0).to(device)
    regression = (torch.randn(batch, total, 4, generator=generator) * 0.2).to(device)
    split = {"cls_logits": list(logits.split(per_level, dim=1)), "bbox_regression": list(regression.split(per_level, dim=1))}
    return model, split, [list(a.split(per_level)) for a in anchors], Images.image_sizes


def timed(fn, device: torch.device, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return result, best


def synchronisations(fn, device: torch.device) -> int | None:
    with SynchronisationCounter(device) as counter:
        fn()
    return counter.count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1088)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("reports/bench/postprocess_cost.json"))
    args = parser.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    model, split, anchors, image_sizes = head_outputs(args.batch_size, args.classes, args.height, args.width, device)
    torchvision_way = with_torchvision_inference(model).postprocess_detections
    ways = {"torchvision (per image, per level)": lambda: torchvision_way(split, anchors, image_sizes),
            "kdeval batched_postprocess": lambda: model.postprocess_detections(split, anchors, image_sizes)}
    machine = (f"{device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
               f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    print(f"postprocessing a batch of {args.batch_size} images, {args.height}×{args.width} padded, {args.classes} classes; {machine}")
    rows, outputs = [], []
    with torch.inference_mode():
        for name, fn in ways.items():
            fn()  # warm-up
            with OperationCounter() as counter:
                fn()
            detections, seconds = timed(fn, device, args.repeats)
            outputs.append(detections)
            rows.append({"way": name, "ms_per_batch": 1000 * seconds, "ms_per_image": 1000 * seconds / args.batch_size,
                         "aten_ops": counter.count, "synchronisations": synchronisations(fn, device),
                         "detections_per_image": sum(len(d["scores"]) for d in detections) / args.batch_size})
    same = all(torch.equal(a[k], b[k]) for a, b in zip(*outputs) for k in a)
    print("| way | ms/batch | ms/image | ATen ops | syncs | detections/image |\n|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['way']} | {r['ms_per_batch']:.1f} | {r['ms_per_image']:.2f} | {r['aten_ops']} | "
              f"{r['synchronisations'] if r['synchronisations'] is not None else '–'} | {r['detections_per_image']:.0f} |")
    print(f"identical detections: {same}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "batch_size": args.batch_size, "classes": args.classes,
                                    "padded_size": [args.height, args.width], "identical": same, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
