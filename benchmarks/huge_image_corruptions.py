"""All 19 corruptions at severity 5 on one 8000×6000 JPEG, read as `kdeval robustness` reads files
(`corrupted_rgb`): seconds and the process's peak memory after each.

    python benchmarks/huge_image_corruptions.py [--corruptions all|NAME,...] [--folder DIR]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from kdeval.data.corrupted import Scenario, corrupted_rgb, parse_corruptions


def photo_like(path: Path, width: int = 8000, height: int = 6000) -> None:
    """Smooth gradients plus texture, so the JPEG is neither trivial nor pure noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width * 255, y / height * 255, (x + y) % 256], axis=-1)
    rgb += np.random.default_rng(0).normal(0, 12, rgb.shape).astype(np.float32)
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path, quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corruptions", default="all")
    parser.add_argument("--folder", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.folder or Path(scratch)
        path = folder / "huge.jpg"
        if not path.is_file():
            photo_like(path)
        print(f"{path}: {path.stat().st_size / 1e6:.1f} MB\n| corruption | s | peak RSS GB |\n|---|---:|---:|", flush=True)
        total = 0.0
        for corruption in parse_corruptions(args.corruptions):
            start = time.perf_counter()
            out = corrupted_rgb(path, path.name, Scenario(corruption, 5), seed=0)
            seconds = time.perf_counter() - start
            total += seconds
            assert out.shape == (6000, 8000, 3) and out.dtype == np.uint8, (corruption, out.shape, out.dtype)
            print(f"| {corruption} | {seconds:.1f} | {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} |", flush=True)
        print(f"total {total:.0f} s")


if __name__ == "__main__":
    main()
