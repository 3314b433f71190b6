"""Inference throughput: kdeval's predict against a plain loop in the style of torchvision's reference
detection `evaluate` (batch 1, fp32, images decoded on the CPU), same model, same images.

    python benchmarks/predict_throughput.py CKPT [--data shapes | --images DIR --annotations FILE]
        [--max-images N] [--batch-size 8] [--device auto] [--amp] [--resize-to 640x480]

With --resize-to the images are first written at that size (COCO-like 640×480) into a temporary
folder, so a model trained at another size sees COCO-sized inputs (it resizes them as RetinaNet does).
On CUDA, --amp also reports the AP of fp32 and AMP detections on the same images.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from kdeval.data.coco import image_path, load_coco_annotations
from kdeval.data.dataset import CocoDetectionDataset
from kdeval.data.source import Split, resolve_split
from kdeval.engine.predict import PredictSettings, detections_from_output, run_model
from kdeval.metrics.coco_ap import coco_stats
from kdeval.models.checkpoint import load_checkpoint


def plain_loop(model, split: Split, coco: dict, labels, device: torch.device) -> tuple[list[dict], float]:
    """torchvision references/detection style: one image at a time, fp32, decoded on the CPU."""
    model = model.to(device).eval()
    detections = []
    start = time.perf_counter()
    with torch.inference_mode():
        for image in sorted(coco["images"], key=lambda im: im["id"]):
            with Image.open(image_path(split.images, image["file_name"])) as pil:
                tensor = pil_to_tensor(pil.convert("RGB")).float().div_(255)
            output = model([tensor.to(device)])[0]
            detections.extend(detections_from_output(output, image["id"], labels))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return detections, time.perf_counter() - start


def subset_split(split: Split, max_images: int | None, resize_to: tuple[int, int] | None, folder: Path) -> Split:
    coco = copy.deepcopy(load_coco_annotations(split.annotations))
    images = sorted(coco["images"], key=lambda im: im["id"])[: max_images or None]
    keep = {im["id"] for im in images}
    coco["images"] = images
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    images_dir = Path(split.images)
    if resize_to is not None:
        images_dir = folder / "images"
        images_dir.mkdir(parents=True, exist_ok=True)
        w, h = resize_to
        for im in images:
            sx, sy = w / im["width"], h / im["height"]
            with Image.open(image_path(split.images, im["file_name"])) as pil:
                pil.convert("RGB").resize((w, h), Image.BILINEAR).save(images_dir / Path(im["file_name"]).name, quality=95)
            im.update(file_name=Path(im["file_name"]).name, width=w, height=h)
            for a in coco["annotations"]:
                if a["image_id"] == im["id"]:
                    x, y, bw, bh = a["bbox"]
                    a["bbox"] = [x * sx, y * sy, bw * sx, bh * sy]
                    a["area"] = a["bbox"][2] * a["bbox"][3]
    annotations = folder / "annotations.json"
    annotations.write_text(json.dumps(coco))
    return Split(annotations, images_dir, split.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", default="shapes")
    parser.add_argument("--images", type=Path)
    parser.add_argument("--annotations", type=Path)
    parser.add_argument("--max-images", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--resize-to", default=None, help="WxH, e.g. 640x480")
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    resize = tuple(int(v) for v in args.resize_to.split("x")) if args.resize_to else None
    with tempfile.TemporaryDirectory() as folder:
        split = subset_split(resolve_split(args.data, args.images, args.annotations), args.max_images, resize, Path(folder))
        coco = load_coco_annotations(split.annotations)
        loaded = load_checkpoint(args.checkpoint)
        n = len(coco["images"])
        print(f"{args.checkpoint} ({loaded.spec.arch}, input {loaded.spec.min_size}–{loaded.spec.max_size} px) on {n} images"
              f"{' resized to ' + args.resize_to if resize else ''}; device {device}"
              f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}; torch {torch.__version__}, "
              f"{torch.get_num_threads()} CPU threads")
        dataset = CocoDetectionDataset(split, coco, loaded.labels)
        settings = PredictSettings(batch_size=args.batch_size, device=str(device), workers=args.workers, amp=args.amp)
        run_model(loaded.model, torch.utils.data.Subset(dataset, range(min(8, n))), settings, loaded.labels, progress=False)  # warm-up
        plain, plain_s = plain_loop(loaded.model, split, coco, loaded.labels, device)
        start = time.perf_counter()
        fast = run_model(loaded.model, dataset, settings, loaded.labels, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        fast_s = time.perf_counter() - start
        print(f"plain loop (batch 1, fp32, CPU decode): {n / plain_s:8.1f} images/s")
        print(f"kdeval predict (batch {args.batch_size}, {'AMP' if args.amp and device.type == 'cuda' else 'fp32'}, "
              f"workers {settings.workers if settings.workers is not None else 'auto'}): {n / fast_s:8.1f} images/s")
        print(f"ratio: {plain_s / fast_s:.2f}x")
        ap_plain, ap_fast = coco_stats(coco, plain)["AP"], coco_stats(coco, fast)["AP"]
        print(f"AP plain {100 * ap_plain:.2f}, kdeval {100 * ap_fast:.2f} (difference {100 * (ap_fast - ap_plain):+.2f})")
        if args.amp and device.type == "cuda":
            fp32 = run_model(loaded.model, dataset, replace(settings, amp=False), loaded.labels, progress=False)
            print(f"AP fp32 {100 * coco_stats(coco, fp32)['AP']:.2f} vs AMP {100 * ap_fast:.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
