"""The qualitative gallery at scale: 500 Shapes images × 3 models, its size on disk and its load
time in headless Chromium.

Generates a Shapes validation split of --images images (cached under reports/bench/), writes three
synthetic COCO results files shaped like a trained Shapes RetinaNet's (about 75 detections per
image above score 0.05: every object found with some jitter, the rest low-scored clutter), runs
`kdeval visualize` on all images, then opens the page from the file system --repeats times and
reports, as medians: DOMContentLoaded (the data parsed and every row built), the moment the boxes
of the panels in view are drawn, the load event, and the time one slider move takes to redraw at the opening threshold and
at the slider's lower end (every detection in the page drawn).

    python benchmarks/gallery_scale.py [--images 500] [--models 3] [--repeats 3] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdeval.data.shapes import ShapesSpec, generate_shapes  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
REDRAW_MS = """async (value) => {
  const slider = document.getElementById('threshold');
  const start = performance.now();
  slider.value = value;
  slider.dispatchEvent(new Event('input'));
  await new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)));
  return [performance.now() - start, Number(document.body.dataset.drawn)];
}"""


def synthetic_results(gt: dict, quality: float, per_image: int, seed: int) -> list[dict]:
    """Detections like a trained model's: each object found (score rising with `quality`, boxes
    jittered), then low-scored boxes of random classes up to `per_image`, as RetinaNet's 0.05 floor
    and 100-per-image cap leave them."""
    rng = np.random.default_rng(seed)
    categories = [c["id"] for c in gt["categories"]]
    by_image: dict[int, list[dict]] = {image["id"]: [] for image in gt["images"]}
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
        by_image[ann["image_id"]].append({
            "image_id": ann["image_id"], "category_id": ann["category_id"],
            "bbox": [round(float(v), 2) for v in (x + jitter[0], y + jitter[1], max(1.0, w + jitter[2]), max(1.0, h + jitter[3]))],
            "score": round(float(np.clip(rng.normal(quality, 0.15), 0.05, 0.99)), 4),
        })
    detections = []
    for image in gt["images"]:
        dets = by_image[image["id"]]
        size = image["width"]
        while len(dets) < per_image:
            w, h = rng.uniform(6, size / 2, 2)
            dets.append({"image_id": image["id"], "category_id": int(rng.choice(categories)),
                         "bbox": [round(float(v), 2) for v in (rng.uniform(0, size - w), rng.uniform(0, size - h), w, h)],
                         "score": round(float(0.05 + rng.exponential(0.06)), 4)})
        detections.extend(dets[:100])
    return detections


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure(page_file: Path, chromium: str, repeats: int, threshold: float, min_score: float) -> dict:
    from playwright.sync_api import sync_playwright

    runs = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        for _ in range(repeats):
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(page_file.resolve().as_uri(), wait_until="load")
            page.wait_for_selector("body[data-ready=true]", state="attached")
            navigation = json.loads(page.evaluate("JSON.stringify(performance.getEntriesByType('navigation')[0])"))
            ready_ms = page.evaluate("performance.getEntriesByName('kdeval-gallery-ready')[0].startTime")
            redraw_low, drawn_low = page.evaluate(REDRAW_MS, str(min_score))
            redraw_back, drawn_back = page.evaluate(REDRAW_MS, str(threshold))
            runs.append({
                "dom_content_loaded_ms": navigation["domContentLoadedEventEnd"],
                "ready_ms": ready_ms,
                "load_ms": navigation["loadEventEnd"],
                "redraw_at_min_score_ms": redraw_low, "drawn_at_min_score": drawn_low,
                "redraw_at_threshold_ms": redraw_back, "drawn_at_threshold": drawn_back,
                "dom_elements": page.evaluate("document.getElementsByTagName('*').length"),
                "images_loaded_at_load": page.evaluate("[...document.images].filter(i => i.complete && i.naturalWidth > 0).length"),
            })
            page.close()
        version = browser.version
        browser.close()
    summary = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    summary["chromium"] = version
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--per-image", type=int, default=75, help="detections per image and model above score 0.05")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "gallery_scale")
    args = parser.parse_args()

    spec = ShapesSpec(train=1, val=args.images, seed=11)
    data = args.out / f"shapes-val{args.images}"
    if not (data / "annotations" / "instances_val.json").is_file():
        generate_shapes(data, spec)
    annotations = data / "annotations" / "instances_val.json"
    gt = json.loads(annotations.read_text())
    names = ["baseline", "distilled", "teacher", "extra1", "extra2"][: args.models]
    models = []
    for k, name in enumerate(names):
        path = args.out / f"{name}.json"
        path.write_text(json.dumps(synthetic_results(gt, 0.35 + 0.15 * k, args.per_image, seed=k)))
        models.append(f"{name}={path}")
    gallery = args.out / "visualize"
    command = [sys.executable, "-m", "kdeval", "visualize", *models, "--images", str(data / "val"),
               "--annotations", str(annotations), "--select", "random", "--num", str(args.images), "--out", str(gallery)]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    command_s = time.perf_counter() - start

    payload_text = (gallery / "detections.js").read_text()
    payload = json.loads(payload_text[payload_text.index("=") + 1:].strip().rstrip(";"))
    sizes = {
        "index.html": (gallery / "index.html").stat().st_size,
        "detections.js": (gallery / "detections.js").stat().st_size,
        "images/": folder_bytes(gallery / "images"),
        "total": folder_bytes(gallery),
    }
    detections = sum(len(d) for image in payload["images"] for d in image["detections"])
    timing = measure(gallery / "index.html", args.chromium, args.repeats, payload["score_threshold"], payload["min_score"])
    result = {"images": len(payload["images"]), "models": args.models, "detections": detections,
              "command_s": round(command_s, 2), "bytes": sizes, **timing,
              "machine": f"{platform.machine()}, {platform.python_version()}"}
    (args.out / "gallery_scale.json").write_text(json.dumps(result, indent=2))
    print(f"{result['images']} images × {args.models} models, {detections} detections (score ≥ {payload['min_score']}); "
          f"kdeval visualize took {command_s:.1f} s")
    for name, size in sizes.items():
        print(f"  {name:14s} {size / 1e6:7.2f} MB")
    print(f"Chromium {timing['chromium']}, median of {args.repeats} loads from file://:")
    print(f"  DOMContentLoaded (data parsed, rows built) {timing['dom_content_loaded_ms']:7.0f} ms")
    print(f"  boxes drawn on the panels in view          {timing['ready_ms']:7.0f} ms")
    print(f"  load event                                 {timing['load_ms']:7.0f} ms "
          f"({timing['images_loaded_at_load']:.0f} images loaded: the others load lazily on scroll)")
    print(f"  slider to {payload['min_score']} ({timing['drawn_at_min_score']:.0f} boxes)          {timing['redraw_at_min_score_ms']:7.0f} ms")
    print(f"  slider back to {payload['score_threshold']} ({timing['drawn_at_threshold']:.0f} boxes)      {timing['redraw_at_threshold_ms']:7.0f} ms")
    print(f"  DOM elements at the opening threshold      {timing['dom_elements']:7.0f}")


if __name__ == "__main__":
    main()
