"""What one batch of RetinaNet inference costs the host, phase by phase: torchvision's way against
kdeval's (`SyncFreeTransform`, anchors once per grid, `batched_postprocess`).

On a GPU every ATen operation is a kernel launch that the host pays for in Python and the dispatcher
(roughly 5–20 µs each in eager mode), and every host–device synchronisation stalls the host until the
GPU has caught up and leaves the GPU idle until the host has launched more. Once the convolutions
run in fp16 on tensor cores, these host costs, not the GPU's arithmetic, bound R50's throughput. This
counts both for one `model(images)` call (the same detections either way; checked), with an untrained
R50 (256-channel FPN, 80 classes) whose classification bias puts scores around the 0.05 threshold, so
that the postprocessing has a trained COCO model's load (the 1,000-per-level cap reached, 100
detections per image). The outputs reach the host as torchvision's reference evaluation brings them
(three copies per image) or as kdeval's predict does (one packed copy per batch).

    python benchmarks/inference_host_cost.py [--device cpu|cuda] [--batch-size 8] [--image-size 480x640]
        [--input-size 800] [--repeats 3] [--out reports/bench/inference_host_cost.json]

On the CPU, torchvision's `batched_nms` takes its per-class path above 1,000 boxes, which a GPU never
takes at RetinaNet's 5,000 candidates; the counts use the GPU's path (`--cpu-nms-path` keeps the
CPU's). Synchronisations and times are measured on CUDA only (a CPU run's time is the arithmetic's),
and on the CPU a copy to the CPU is no operation (torchvision's way makes 24 per batch on CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import OrderedDict
from pathlib import Path

import torch
from torchvision.ops import boxes as box_ops

from host_costs import OperationCounter, SynchronisationCounter
from kdeval.engine.predict import packed_to_cpu
from kdeval.models.postprocess import with_torchvision_inference
from kdeval.models.retinanet import ModelSpec, build_retinanet, fold_batch_norms


def per_image_to_cpu(outputs: list[dict]) -> list[dict]:
    """How torchvision's reference evaluation brings outputs back: each tensor of each image."""
    return [{key: value.to("cpu") for key, value in output.items()} for output in outputs]


def phases(model, images: list[torch.Tensor], to_cpu) -> "OrderedDict[str, callable]":
    """RetinaNet.forward in eval mode, step by step (torchvision's code path, either model's pieces),
    then the outputs to the host by `to_cpu`; each step reads what the previous ones left in `state`."""
    state: dict = {}

    def transform():
        state["original_sizes"] = [tuple(image.shape[-2:]) for image in images]
        state["image_list"], _ = model.transform(images)

    def backbone():
        state["features"] = list(model.backbone(state["image_list"].tensors).values())

    def head():
        state["head_outputs"] = model.head(state["features"])

    def anchors():
        state["anchors"] = model.anchor_generator(state["image_list"], state["features"])

    def postprocess_detections():
        per_level = [f.shape[2] * f.shape[3] for f in state["features"]]
        per_level = [n * (state["head_outputs"]["cls_logits"].shape[1] // sum(per_level)) for n in per_level]
        split = {key: list(value.split(per_level, dim=1)) for key, value in state["head_outputs"].items()}
        state["detections"] = model.postprocess_detections(split, [list(a.split(per_level)) for a in state["anchors"]],
                                                           state["image_list"].image_sizes)

    def boxes_to_input_size():
        state["detections"] = model.transform.postprocess(state["detections"], state["image_list"].image_sizes,
                                                          state["original_sizes"])

    def outputs_to_host():
        state["on_host"] = to_cpu(state["detections"])

    steps = OrderedDict((f.__name__, f) for f in (transform, backbone, head, anchors, postprocess_detections,
                                                  boxes_to_input_size, outputs_to_host))
    return steps, state


def measure(model, images, to_cpu, device: torch.device, repeats: int) -> tuple[dict, list[dict]]:
    steps, state = phases(model, images, to_cpu)
    for step in steps.values():  # warm-up: cuDNN's choices, the mean/std and anchors reach the device
        step()
    rows = {}
    for name, step in steps.items():
        with OperationCounter() as operations, SynchronisationCounter(device) as syncs:
            step()
        rows[name] = {"aten_ops": operations.count, "synchronisations": syncs.count}
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for step in steps.values():
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    rows["whole batch"] = {"aten_ops": sum(r["aten_ops"] for r in rows.values()),
                           "synchronisations": None if device.type != "cuda" else sum(r["synchronisations"] for r in rows.values()),
                           "ms": 1000 * best}
    return rows, state["on_host"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", default="480x640", help="HxW of the input images (COCO's commonest)")
    parser.add_argument("--input-size", type=int, default=800, help="the model's resize of the short side (max 1333)")
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--amp", action="store_true", help="fp16 autocast (on CUDA)")
    parser.add_argument("--cpu-nms-path", action="store_true", help="on the CPU, keep batched_nms's per-class path")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("reports/bench/inference_host_cost.json"))
    args = parser.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cpu" and not args.cpu_nms_path:
        box_ops._batched_nms_vanilla = box_ops._batched_nms_coordinate_trick  # count the GPU's path
    height, width = (int(v) for v in args.image_size.lower().split("x"))
    torch.manual_seed(0)
    spec = ModelSpec("r50", num_classes=args.classes, fpn_channels=256, min_size=args.input_size, max_size=1333, norm="frozen-bn")
    model = build_retinanet(spec).eval()
    torch.nn.init.constant_(model.head.classification_head.cls_logits.bias, -2.95)  # scores about the 0.05 threshold
    torch.nn.init.normal_(model.head.classification_head.cls_logits.weight, std=0.02)
    fold_batch_norms(model)
    model = model.to(device, memory_format=torch.channels_last)
    images = [torch.rand(3, height, width, device=device) for _ in range(args.batch_size)]
    ways = {"torchvision's inference": (with_torchvision_inference(model), per_image_to_cpu),
            "kdeval's inference": (model, packed_to_cpu)}
    machine = (f"{device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
               f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    print(f"one batch of {args.batch_size} {height}×{width} images, R50 at {args.input_size} px, {args.classes} classes; {machine}")
    results, outputs = {}, []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=args.amp and device.type == "cuda"):
        for name, (way_model, to_cpu) in ways.items():
            results[name], detections = measure(way_model, images, to_cpu, device, args.repeats)
            outputs.append(detections)
    same = all(torch.equal(a[k], b[k]) for a, b in zip(*outputs) for k in a)
    print("| phase | " + " | ".join(f"{w}: ops | syncs" for w in ways) + " |\n|---|" + "---:|---:|" * len(ways))
    for phase in results[next(iter(ways))]:
        cells = []
        for name in ways:
            row = results[name][phase]
            cells += [str(row["aten_ops"]), "–" if row["synchronisations"] is None else str(row["synchronisations"])]
        print(f"| {phase} | " + " | ".join(cells) + " |")
    print("ms per batch (fastest of %d): " % args.repeats + ", ".join(f"{w} {results[w]['whole batch']['ms']:.1f}" for w in ways))
    print(f"detections per image: {sum(len(d['scores']) for d in outputs[1]) / args.batch_size:.0f}; identical: {same}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "batch_size": args.batch_size, "image_size": [height, width],
                                    "input_size": args.input_size, "amp": args.amp, "identical": same, "results": results}, indent=2))


if __name__ == "__main__":
    main()
