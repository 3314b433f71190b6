"""Inference throughput: kdeval's predict against a plain loop in the style of torchvision's reference
detection `evaluate` (batch 1, fp32, images decoded on the CPU), same model, same images.

    python benchmarks/predict_throughput.py CKPT [--data shapes | --images DIR --annotations FILE]
        [--max-images N] [--batch-size 8] [--device auto] [--resize-to 640x480]
        [--input-size 800 --max-input-size 1333] [--out reports/bench/predict_throughput.json]

With --resize-to the images are first written as JPEGs of that size (COCO-like 640×480) into a
temporary folder; --input-size/--max-input-size set the model's resize (RetinaNet's 800/1333), so a
model trained at another size sees COCO-sized inputs. On CUDA it times, besides the plain loop:
kdeval fp32, kdeval AMP with PIL decoding in the workers, and kdeval AMP with nvJPEG decoding; and
reports each one's AP and detections per image (fp32 against AMP: the AP difference). kdeval fp32 is
also timed with BatchNorms kept and torchvision's transform, anchors and postprocessing (kdeval's
batching and loading alone), which shows what kdeval's inference model gains, and AMP with nvJPEG
with its postprocessing not overlapping the next batch's network (what the overlap gains), and AMP with
nvJPEG with the backbone, FPN and head replayed as CUDA graphs (`--cuda-graphs`). Each
kdeval variant runs --repeats times and the fastest counts (the plain loop warms up on 8 images
first). --copies N writes every image N times as files of their own, for a run long enough that
start-up weighs as on COCO's 5,000 images.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
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
from kdeval.engine.predict import OverlappedPostprocessing, PredictSettings, detections_from_output, run_model
from kdeval.metrics.coco_ap import coco_stats
from kdeval.models.checkpoint import load_checkpoint
from kdeval.models.postprocess import with_torchvision_inference


NOT_OVERLAPPED = "kdeval predict, AMP, nvJPEG decoding, postprocessing not overlapped"


def plain_loop(model, split: Split, coco: dict, labels, device: torch.device) -> tuple[list[dict], float]:
    """torchvision references/detection style: one image at a time, fp32, decoded on the CPU, the
    model in its own (contiguous) memory format, with torchvision's transform, anchors and
    postprocessing; the first 8 images once untimed, as a warm-up."""
    model = with_torchvision_inference(model).to(device, memory_format=torch.contiguous_format).eval()
    detections = []
    images = sorted(coco["images"], key=lambda im: im["id"])
    for timed in (False, True):
        if timed:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        detections = []
        with torch.inference_mode():
            for image in images if timed else images[:8]:
                with Image.open(image_path(split.images, image["file_name"])) as pil:
                    tensor = pil_to_tensor(pil.convert("RGB")).float().div_(255)
                output = model([tensor.to(device)])[0]
                detections.extend(detections_from_output(output, image["id"], labels))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return detections, time.perf_counter() - start


def subset_split(split: Split, max_images: int | None, resize_to: tuple[int, int] | list[tuple[int, int]] | None, folder: Path,
                 copies: int = 1) -> Split:
    """The first max_images images (by id), written as JPEGs of size resize_to (W, H; or a list, one
    size per image), boxes scaled; copies > 1 repeats them (repeated_split)."""
    coco = copy.deepcopy(load_coco_annotations(split.annotations))
    images = sorted(coco["images"], key=lambda im: im["id"])[: max_images or None]
    keep = {im["id"] for im in images}
    coco["images"] = images
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    if copies > 1:
        return repeated_split(subset_split(split, max_images, resize_to, folder), copies, folder / "copies")
    images_dir = Path(split.images)
    if resize_to is not None:
        images_dir = folder / "images"
        images_dir.mkdir(parents=True, exist_ok=True)
        for position, im in enumerate(images):
            w, h = resize_to[position] if isinstance(resize_to, list) else resize_to
            sx, sy = w / im["width"], h / im["height"]
            with Image.open(image_path(split.images, im["file_name"])) as pil:
                name = Path(im["file_name"]).stem + ".jpg"
                pil.convert("RGB").resize((w, h), Image.BILINEAR).save(images_dir / name, quality=95)
            im.update(file_name=name, width=w, height=h)
            for a in coco["annotations"]:
                if a["image_id"] == im["id"]:
                    x, y, bw, bh = a["bbox"]
                    a["bbox"] = [x * sx, y * sy, bw * sx, bh * sy]
                    a["area"] = a["bbox"][2] * a["bbox"][3]
    annotations = folder / "annotations.json"
    annotations.write_text(json.dumps(coco))
    return Split(annotations, images_dir, split.name)


def repeated_split(split: Split, copies: int, folder: Path) -> Split:
    """Every image `copies` times, as files of their own with ids and annotations of their own: a
    longer run (COCO val2017 has 5,000 images) over which the start-up a run pays (model copy,
    worker processes, cuDNN's first calls) weighs as it does on a real dataset."""
    coco = load_coco_annotations(split.annotations)
    step = max(im["id"] for im in coco["images"]) + 1
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for copy_index in range(copies):
        for im in coco["images"]:
            source = image_path(split.images, im["file_name"])
            name = f"{Path(im['file_name']).stem}_{copy_index}{source.suffix}"
            shutil.copyfile(source, folder / "images" / name)
            images.append({**im, "id": im["id"] + copy_index * step, "file_name": name})
        annotations += [{**a, "id": a["id"] + copy_index * 10**9, "image_id": a["image_id"] + copy_index * step}
                        for a in coco["annotations"]]
    (folder / "annotations.json").write_text(json.dumps({**coco, "images": images, "annotations": annotations}))
    return Split(folder / "annotations.json", folder / "images", split.name)


def timed_predict(model, dataset, settings: PredictSettings, labels) -> tuple[list[dict], float]:
    start = time.perf_counter()
    detections = run_model(model, dataset, settings, labels, progress=False)
    if settings.device.startswith("cuda"):
        torch.cuda.synchronize()
    return detections, time.perf_counter() - start


def profile_predict(model, dataset, settings: PredictSettings, labels, batches: int, folder: Path) -> str:
    """torch.profiler over the first `batches` batches of kdeval's predict: where a batch's time goes
    (kdeval's named ranges, and the operations that cost most host and device time), and a Chrome
    trace (chrome://tracing, ui.perfetto.dev)."""
    from torch.profiler import ProfilerActivity, profile

    subset = torch.utils.data.Subset(dataset, range(min(len(dataset), batches * settings.batch_size)))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if settings.device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        run_model(model, subset, settings, labels, progress=False)
        if settings.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(folder / "predict_trace.json"))
    events = prof.key_averages()
    n_batches = -(-len(subset) // settings.batch_size)
    device_time = "device_time_total" if hasattr(events[0], "device_time_total") else "cuda_time_total"
    lines = [f"{n_batches} batches of {settings.batch_size}, {seconds * 1000 / n_batches:.1f} ms per batch under the profiler",
             "", "| range | calls | host ms per batch | device ms per batch |", "|---|---:|---:|---:|"]
    for event in sorted(events, key=lambda e: -e.cpu_time_total):
        if event.key.startswith(("kdeval.", "enumerate(DataLoader)")):
            lines.append(f"| {event.key} | {event.count} | {event.cpu_time_total / 1000 / n_batches:.2f} | "
                         f"{getattr(event, device_time) / 1000 / n_batches:.2f} |")
    ops = sum(e.count for e in events if e.key.startswith("aten::"))
    lines += ["", f"ATen operations per batch (nested ones included): {ops / n_batches:.0f}", "",
              events.table(sort_by="self_cpu_time_total", row_limit=25)]
    if settings.device.startswith("cuda"):
        lines += ["", events.table(sort_by=f"self_{device_time}", row_limit=25)]
    text = "\n".join(lines)
    (folder / "predict_profile.txt").write_text(text)
    return text


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
    parser.add_argument("--resize-to", default=None, help="WxH, e.g. 640x480")
    parser.add_argument("--input-size", type=int, default=None, help="the model's short-side resize (RetinaNet: 800)")
    parser.add_argument("--max-input-size", type=int, default=None, help="the model's long-side cap (RetinaNet: 1333)")
    parser.add_argument("--copies", type=int, default=1,
                        help="each image this many times, as files of their own: a longer run, as on COCO's 5,000 images")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each kdeval variant; the fastest counts")
    parser.add_argument("--profile", type=int, default=0, metavar="BATCHES",
                        help="also profile this many batches of the fastest kdeval way (beside --out: predict_profile.txt, predict_trace.json)")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/predict_throughput.json"))
    args = parser.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    resize = tuple(int(v) for v in args.resize_to.split("x")) if args.resize_to else None
    with tempfile.TemporaryDirectory() as folder:
        split = subset_split(resolve_split(args.data, args.images, args.annotations), args.max_images, resize, Path(folder), args.copies)
        coco = load_coco_annotations(split.annotations)
        loaded = load_checkpoint(args.checkpoint)
        model, labels = loaded.model, loaded.labels
        if args.input_size:
            model.transform.min_size = (args.input_size,)
        if args.max_input_size:
            model.transform.max_size = args.max_input_size
        n = len(coco["images"])
        machine = (f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}; "
                   f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads")
        print(f"{args.checkpoint} ({loaded.spec.arch}, {loaded.spec.fpn_channels}-channel FPN, input resized to "
              f"{model.transform.min_size[0]}/{model.transform.max_size} px) on {n} images"
              f"{' written as ' + args.resize_to + ' JPEGs' if resize else ''}; {machine}")
        base = PredictSettings(batch_size=args.batch_size, device=str(device), workers=args.workers, amp=False)
        # (way, settings, with torchvision's inference path: kdeval's batches and loading with torchvision's
        # transform, anchors and postprocessing, BatchNorms kept — kdeval before it took these over)
        variants = [("kdeval predict, fp32, BatchNorms kept, torchvision's transform/anchors/postprocessing",
                     replace(base, fold_batch_norms=False), True),
                    ("kdeval predict, fp32", base, False)]
        if device.type == "cuda":
            variants += [("kdeval predict, AMP, PIL decoding in workers", replace(base, amp=True, gpu_decode=False), False),
                         (NOT_OVERLAPPED, replace(base, amp=True, gpu_decode=True), False),
                         ("kdeval predict, AMP, nvJPEG decoding", replace(base, amp=True, gpu_decode=True), False),
                         ("kdeval predict, AMP, nvJPEG decoding, CUDA graphs", replace(base, amp=True, gpu_decode=True, cuda_graphs=True), False)]
        rows = []
        overlapping_devices = OverlappedPostprocessing.DEFER_ON
        plain_dataset = CocoDetectionDataset(split, coco, labels)
        run_model(model, torch.utils.data.Subset(plain_dataset, range(min(16, n))), replace(base, amp=True), labels, progress=False)  # warm-up
        plain, plain_s = plain_loop(model, split, coco, labels, device)
        rows.append(("plain loop (batch 1, fp32, PIL decoding)", 1, plain, plain_s))
        for name, settings, reference_postprocessing in variants:
            dataset = CocoDetectionDataset(split, coco, labels, pixels=settings.pixels())
            # the fastest of --repeats runs: the first also pays for worker start-up and lazy kernel set-up
            way_model = with_torchvision_inference(model) if reference_postprocessing else model
            # kdeval's postprocessing overlaps the next batch's network on CUDA; the not-overlapped way and
            # the way with torchvision's inference steps (kdeval as it was before it took them over) turn that off
            overlap = name != NOT_OVERLAPPED and not reference_postprocessing
            OverlappedPostprocessing.DEFER_ON = overlapping_devices if overlap else ()
            try:  # a way that fails (CUDA graphs, not yet run on a GPU) is reported, and the others still count
                runs = [timed_predict(way_model, dataset, settings, labels) for _ in range(args.repeats)]
            except Exception as error:  # noqa: BLE001
                print(f"{name} failed: {type(error).__name__}: {error}")
                continue
            finally:
                OverlappedPostprocessing.DEFER_ON = overlapping_devices
            detections, seconds = min(runs, key=lambda run: run[1])
            rows.append((name, settings.batch_size, detections, seconds))
        results = []
        print("| way | batch | images/s | × plain | AP | detections/image |\n|---|---:|---:|---:|---:|---:|")
        for name, batch, detections, seconds in rows:
            ap = 100 * coco_stats(coco, detections)["AP"]
            results.append({"way": name, "batch": batch, "images_per_s": n / seconds, "ratio": plain_s / seconds, "AP": ap,
                            "detections_per_image": len(detections) / n})
            print(f"| {name} | {batch} | {n / seconds:.1f} | {plain_s / seconds:.2f} | {ap:.2f} | {len(detections) / n:.1f} |")
        if device.type == "cuda":
            fp32 = next(r for r in results if r["way"] == "kdeval predict, fp32")
            for r in results:
                if "AMP" in r["way"]:
                    print(f"AP {r['way']} − fp32: {r['AP'] - fp32['AP']:+.3f}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "images": n, "machine": machine, "results": results}, indent=2))
        speed = {r["way"]: r["images_per_s"] for r in results}  # the ways that ran
        kdeval_ways = [v for v in variants if not v[2] and v[0] != NOT_OVERLAPPED and v[0] in speed]  # kdeval as it runs
        if args.profile and kdeval_ways:
            name, settings, _ = max(kdeval_ways, key=lambda v: speed[v[0]])
            print(f"\nprofile of {name}:")
            try:  # (CUDA graphs captured under the profiler have not run yet: a failure here keeps the timings above)
                print(profile_predict(model, CocoDetectionDataset(split, coco, labels, pixels=settings.pixels()), settings, labels,
                                      args.profile, args.out.parent))
            except Exception as error:  # noqa: BLE001
                print(f"profiling failed: {type(error).__name__}: {error}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
