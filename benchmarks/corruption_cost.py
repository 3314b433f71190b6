"""What the robustness benchmark costs: each corruption per image, and a whole run against inference.

    python benchmarks/corruption_cost.py cost [--repeats 3]
    python benchmarks/corruption_cost.py run --checkpoint reports/bench/shapes/R18_ssim_w3/model.pt \\
        [--images 40] [--workers 0,2] [--trials 1] [--corruptions benchmark] [--severities 1-5]

`cost`: milliseconds per 640×480 image for each of the 19 corruptions at each severity, on
scikit-image's astronaut photograph resized to 640×480 (the median of --repeats calls after one
untimed call, so glass_blur's numba compilation is left out and reported apart). One process,
OpenCV's and numpy's default threads. With --library-code, zoom_blur, snow, elastic_transform,
brightness and saturate run on the libraries' own scipy and scikit-image code instead of kdeval's
compiled equivalents (KDEVAL_LIBRARY_CORRUPTIONS=1; the same pixels), to time what those save.

`run`: images per second of a whole robustness run (clean + corruptions × severities, one model,
COCOeval and the atomic writes of every scenario included) against inference alone on the same
clean images (kdeval's predict, the same batch size and workers), on the first --images images of
Shapes val (128 px). Both write their tables under reports/bench/robustness/.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kdeval.data.corrupted import corrupt_image, parse_corruptions, parse_severities
from kdeval.vocab import ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS, SEVERITIES

OUT = Path("reports/bench/robustness")


def machine() -> str:
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        model = names[0] if names else model
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


# ---------------------------------------------------------------- cost of each corruption


def photograph_640x480() -> np.ndarray:
    from PIL import Image
    from skimage import data

    return np.asarray(Image.fromarray(data.astronaut()).resize((640, 480), Image.BICUBIC))


def corruption_costs(repeats: int) -> tuple[pd.DataFrame, float]:
    """(ms per image, corruption × severity; seconds of glass_blur's first call)."""
    image = photograph_640x480()
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    corrupt_image(image, "glass_blur", 1, 0)
    compile_seconds = time.perf_counter() - start
    costs = {}
    for corruption in ALL_CORRUPTIONS:
        for severity in SEVERITIES:
            corrupt_image(image, corruption, severity, 0)  # untimed: caches, first-call imports
            times = []
            for repeat in range(repeats):
                start = time.perf_counter()
                corrupt_image(image, corruption, severity, repeat + 1)
                times.append(time.perf_counter() - start)
            costs[(corruption, severity)] = 1000 * statistics.median(times)
        print(f"{corruption:18s} " + " ".join(f"{costs[(corruption, s)]:7.1f}" for s in SEVERITIES), flush=True)
    table = pd.Series(costs).unstack()
    table.index.name, table.columns.name = "corruption", "severity"
    print(f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    return table.loc[list(ALL_CORRUPTIONS)], compile_seconds


def cost_markdown(table: pd.DataFrame, compile_seconds: float, repeats: int) -> str:
    table = table.copy()
    table["mean"] = table.mean(axis=1)
    lines = [
        f"ms per 640×480 image (astronaut, resized), median of {repeats} calls, on the CPU; {machine()}",
        "",
        "| corruption | " + " | ".join(f"s{s}" for s in SEVERITIES) + " | mean |",
        "|---|" + "---:|" * (len(SEVERITIES) + 1),
    ]
    for corruption, row in table.iterrows():
        extra = "" if corruption in BENCHMARK_CORRUPTIONS else " (extra)"
        lines.append(f"| {corruption}{extra} | " + " | ".join(f"{v:.1f}" for v in row) + " |")
    benchmark = table.loc[list(BENCHMARK_CORRUPTIONS), list(SEVERITIES)]
    lines += [
        "",
        f"Mean over the 75 benchmark scenarios: {benchmark.to_numpy().mean():.1f} ms per image; "
        f"one benchmark pass of 75 scenarios costs {benchmark.to_numpy().sum() / 1000:.2f} s of corruption per image. "
        f"glass_blur's first call (numba compilation): {compile_seconds:.1f} s.",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- a whole run


def first_images_split(images: int, folder: Path):
    """Shapes val restricted to its first `images` images, as a split of its own."""
    import json

    from kdeval.data.source import Split, shapes_split

    val = shapes_split("val")
    coco = json.loads(Path(val.annotations).read_text())
    keep = sorted(coco["images"], key=lambda i: i["id"])[:images]
    ids = {i["id"] for i in keep}
    subset = {"images": keep, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids], "categories": coco["categories"]}
    path = folder / f"val_first{images}.json"
    path.write_text(json.dumps(subset))
    return Split(path, val.images, name=f"shapes-val-first{images}")


def run_speed(
    checkpoint: Path, images: int, workers: list[int], corruptions: tuple, severities: tuple, batch_size: int, device: str, trials: int
) -> list[dict]:
    from kdeval.engine.detections import ModelInput, predict
    from kdeval.engine.predict import PredictSettings
    from kdeval.engine.robustness import RobustnessSettings, run_robustness
    from kdeval.models.checkpoint import load_checkpoint

    rows = []
    passes = 1 + len(corruptions) * len(severities)
    with tempfile.TemporaryDirectory() as tmp:
        split = first_images_split(images, Path(tmp))
        loaded = load_checkpoint(checkpoint)
        clean_settings = PredictSettings(batch_size=batch_size, device=device, workers=0)
        predict(loaded, split, clean_settings, progress=False)  # warm-up
        for trial, count in ((t, c) for t in range(trials) for c in workers):
            # inference alone, measured right before each run so both see the same machine load:
            # kdeval's predict on the clean images, loaded in-process (a 128 px PNG decodes in well
            # under a millisecond)
            load_before = os.getloadavg()[0]
            repeats = 5
            start = time.perf_counter()
            for _ in range(repeats):
                predict(loaded, split, clean_settings, progress=False)
            clean = repeats * images / (time.perf_counter() - start)
            settings = RobustnessSettings(
                corruptions=corruptions, severities=severities,
                predict=PredictSettings(batch_size=batch_size, device=device, workers=count),
            )
            run = run_robustness([ModelInput("m", Path(checkpoint))], split, settings, Path(tmp) / f"run-{trial}-w{count}", progress=False)
            whole = run.images_processed / run.seconds
            rows.append({"trial": trial, "workers": count, "images": images, "passes": passes, "inference_only_img_s": clean,
                         "robustness_img_s": whole, "robustness_s": run.seconds, "scoring_s": run.scoring_seconds,
                         "slowdown": clean / whole, "load_before": load_before, "load_after": os.getloadavg()[0]})
            print(rows[-1], flush=True)
    return rows


def run_markdown(rows: list[dict], checkpoint: Path, batch_size: int, device: str) -> str:
    lines = [
        f"{checkpoint}, batch {batch_size}, {device}; {machine()}",
        "",
        "| trial | workers | images × passes | inference alone, img/s | whole robustness run, img/s | run wall s | of which COCOeval + writes, s | inference / run | 1-min load before → after |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['trial']} | {r['workers']} | {r['images']} × {r['passes']} | {r['inference_only_img_s']:.1f} | "
            f"{r['robustness_img_s']:.1f} | {r['robustness_s']:.0f} | {r['scoring_s']:.1f} | {r['slowdown']:.2f} | "
            f"{r['load_before']:.1f} → {r['load_after']:.1f} |"
        )
    frame = pd.DataFrame(rows)
    medians = frame.groupby("workers")[["inference_only_img_s", "robustness_img_s", "slowdown"]].median()
    lines += ["", "Medians over the trials:", ""]
    for count, row in medians.iterrows():
        lines.append(
            f"- {count} workers: inference alone {row['inference_only_img_s']:.1f} img/s, whole run "
            f"{row['robustness_img_s']:.1f} img/s (inference / run {row['slowdown']:.2f})"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("cost", "run"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--library-code", action="store_true", help="cost: the libraries' own zoom, warp and HSV code")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--workers", default="0,2")
    parser.add_argument("--corruptions", default="benchmark")
    parser.add_argument("--severities", default="1-5")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--trials", type=int, default=1, help="repeat every measurement, interleaved, to see the load's effect")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.part == "cost":
        if args.library_code:
            os.environ["KDEVAL_LIBRARY_CORRUPTIONS"] = "1"
        table, compile_seconds = corruption_costs(args.repeats)
        stem = "corruption_cost_ms" + ("_library_code" if args.library_code else "")
        table.to_csv(OUT / f"{stem}.csv", float_format="%.2f")
        text = cost_markdown(table, compile_seconds, args.repeats)
        if args.library_code:
            text = text.replace("ms per 640×480 image", "The libraries' own code (--library-code): ms per 640×480 image", 1)
        (OUT / f"{stem}.md").write_text(text)
    else:
        if args.checkpoint is None:
            parser.error("run needs --checkpoint")
        rows = run_speed(
            args.checkpoint, args.images, [int(w) for w in args.workers.split(",")],
            parse_corruptions(args.corruptions), parse_severities(args.severities), args.batch_size, args.device, args.trials,
        )
        pd.DataFrame(rows).to_csv(OUT / "run_speed.csv", index=False, float_format="%.3f")
        text = run_markdown(rows, args.checkpoint, args.batch_size, args.device)
        (OUT / "run_speed.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
