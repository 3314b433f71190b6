"""Corrupted views of a dataset: the 19 `imagecorruptions` corruptions, reproducible image by image.

Fairness: the corruption of an image is a function of (file name, pixels, corruption, severity,
seed) alone — not of the model, the batch, the worker process or the order images are visited in.
`imagecorruptions` (the imagecorruptions-imaug 1.1.5 fork) takes a `seed` argument in two
corruptions only: impulse_noise (passed to scikit-image's random_noise as its rng) and glass_blur
(seeds numba's generator inside its compiled pixel shuffle). The other 17 draw from numpy's legacy
global generator (np.random.normal, .poisson, .uniform, .randint); for those the global generator
is seeded right before the call and its state restored right after, so the caller's random
streams are left as they were. Python's `random` is seeded the same way although the library does
not use it, so that a release that does stays reproducible.

Sizes: `imagecorruptions` refuses images under 32 pixels a side. Such an image is mirrored
(np.pad 'symmetric') up to 32 pixels, corrupted, and cropped back. Every corruption runs on any size
from 32 pixels up (checked down to 32×32, 33×700 and 128×128): frost crops its texture at the
texture's own scale when the image is smaller and rescales the texture by 1.1 × when the image
is larger, so on small images such as Shapes' 128 px ones the frost crystals look larger relative
to the image than on COCO-sized photographs. kdeval keeps that: it is what the benchmark defines,
and the pixels equal those of a direct `imagecorruptions.corrupt` call.

Speed: zoom_blur and snow run with the library's scipy zoom, elastic_transform with its scipy
map_coordinates, brightness and saturate with scikit-image's HSV conversions replaced by the
compiled kernels of kdeval.data.corruption_kernels; all return the libraries' values bit for bit,
so the pixels do not change, and each kernel is checked against the installed library before use.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from kdeval.data.coco import image_path
from kdeval.data.corruption_kernels import COMPILED_PART, compiled_library_parts
from kdeval.data.dataset import read_rgb
from kdeval.errors import KdevalError
from kdeval.fileio import write_bytes_atomic
from kdeval.vocab import ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS, CLEAN, EXTRA_CORRUPTIONS, SEVERITIES

SEEDED_BY_ARGUMENT = ("impulse_noise", "glass_blur")  # the fork's corruptions that take seed=
MIN_SIDE = 32  # imagecorruptions' own lower limit
CACHE_VERSION = 1  # bump when the corrupted pixels of a (file, corruption, severity, seed) change
# Corruptions whose output pixel depends on its input pixel alone, with no random numbers: on a large
# image they run in bands of rows, which gives the same pixels with a fraction of the memory (the
# float64 HSV copies of a 48-megapixel photo in one piece take about 20 GB).
PIXELWISE = ("brightness", "saturate")
BAND_PIXELS = 4_000_000
COMPILED_ON_FIRST_USE = ("glass_blur", *COMPILED_PART)  # numba compiles these in each process


@dataclass(frozen=True, order=True)
class Scenario:
    """One (corruption, severity); severity 0 is the clean image, filed under vocab.CLEAN."""

    corruption: str
    severity: int

    @property
    def is_clean(self) -> bool:
        return self.severity == 0

    @property
    def slug(self) -> str:
        return f"{self.corruption}-{self.severity}"


CLEAN_SCENARIO = Scenario(CLEAN, 0)


# ---------------------------------------------------------------- parsing the user's choices


def parse_corruptions(text: str) -> tuple[str, ...]:
    """'benchmark' (the 15), 'all' (the 15 and the 4 extras), 'extra', or comma-separated names,
    returned in the benchmark's order without repeats."""
    wanted: set[str] = set()
    for part in (p.strip() for p in text.split(",")):
        if part == "benchmark":
            wanted.update(BENCHMARK_CORRUPTIONS)
        elif part == "all":
            wanted.update(ALL_CORRUPTIONS)
        elif part == "extra":
            wanted.update(EXTRA_CORRUPTIONS)
        elif part in ALL_CORRUPTIONS:
            wanted.add(part)
        else:
            raise KdevalError(
                f"unknown corruption {part!r}: use benchmark, all, extra or names from {', '.join(ALL_CORRUPTIONS)}"
            )
    return tuple(c for c in ALL_CORRUPTIONS if c in wanted)


def parse_severities(text: str) -> tuple[int, ...]:
    """'1-5', '3', '1,3,5' or '0-2' → the corrupted severities, sorted. Severity 0 (clean) is
    accepted and dropped: clean images are always scored."""
    valid = f"severities are 0 (clean) to {SEVERITIES[-1]}, e.g. 1-5, 3 or 1,3,5"
    chosen: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        low, dash, high = part.partition("-")
        try:
            bounds = (int(low), int(high)) if dash else (int(part), int(part))
        except ValueError:
            raise KdevalError(f"--severities '{text}': '{part}' is not a severity or range; {valid}") from None
        if not (0 <= bounds[0] <= bounds[1] <= SEVERITIES[-1]):
            raise KdevalError(f"--severities '{text}': '{part}' is outside 0–{SEVERITIES[-1]}; {valid}")
        chosen.update(range(bounds[0], bounds[1] + 1))
    return tuple(sorted(chosen - {0}))


def scenarios_of(corruptions: tuple[str, ...], severities: tuple[int, ...]) -> list[Scenario]:
    """Clean first, then every corruption at every severity, in the benchmark's order."""
    return [CLEAN_SCENARIO, *(Scenario(c, s) for c in corruptions for s in severities)]


# ---------------------------------------------------------------- one image


def corruption_seed(file_name: str, corruption: str, severity: int, seed: int) -> int:
    """A 32-bit seed from (image file name, corruption, severity, run seed): the same for every
    model, process and run, different for every image and scenario."""
    key = json.dumps([str(file_name), corruption, int(severity), int(seed)]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")


@contextlib.contextmanager
def seeded_global_generators(seed: int):
    """numpy's legacy global generator and Python's `random`, seeded for the block and restored after."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def corrupt_image(rgb: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """`rgb` (H×W×3 uint8) corrupted by `corruption` at `severity` (0: an unchanged copy), drawing
    every random number from `seed` (a 32-bit int, see corruption_seed). Returns H×W×3 uint8."""
    from imagecorruptions import corrupt

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an H×W×3 uint8 image, got {rgb.shape} {rgb.dtype}")
    if severity == 0:
        return rgb.copy()
    if corruption not in ALL_CORRUPTIONS or severity not in SEVERITIES:
        raise ValueError(f"no corruption {corruption!r} at severity {severity!r}")
    height, width = rgb.shape[:2]
    padded = np.pad(rgb, ((0, max(0, MIN_SIDE - height)), (0, max(0, MIN_SIDE - width)), (0, 0)), mode="symmetric")
    kwargs = {"seed": seed} if corruption in SEEDED_BY_ARGUMENT else {}
    # zoom_blur and snow print a line on one of their fallbacks; keep worker output clean
    with seeded_global_generators(seed), contextlib.redirect_stdout(io.StringIO()), compiled_library_parts(corruption):
        if corruption in PIXELWISE and padded.shape[0] * padded.shape[1] > BAND_PIXELS:
            rows = max(MIN_SIDE, BAND_PIXELS // padded.shape[1])
            edges = list(range(0, padded.shape[0], rows)) + [padded.shape[0]]
            if len(edges) > 2 and edges[-1] - edges[-2] < MIN_SIDE:  # no band thinner than the library takes
                del edges[-2]
            out = np.concatenate([np.asarray(corrupt(padded[top:bottom], corruption_name=corruption, severity=severity))
                                  for top, bottom in zip(edges, edges[1:])])
        else:
            out = corrupt(padded, corruption_name=corruption, severity=severity, **kwargs)
    return np.array(out[:height, :width], copy=True)  # writable and contiguous, whatever the library returned


# ---------------------------------------------------------------- the on-disk cache


def library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imagecorruptions-imaug")
    except PackageNotFoundError:  # pragma: no cover - installed some other way
        return "unknown"


class CorruptionCache:
    """Corrupted images as lossless PNG files under `root`, keyed by (source file's bytes, file
    name, corruption, severity, seed, library version), written atomically: worker processes and
    concurrent runs may share one folder."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.library = library_version()

    def path(self, source: Path, file_name: str, scenario: Scenario, seed: int) -> Path:
        digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
        key = json.dumps([CACHE_VERSION, self.library, digest, str(file_name), scenario.corruption, scenario.severity, seed])
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
        return self.root / scenario.corruption / str(scenario.severity) / name[:2] / f"{name}.png"

    def load(self, path: Path) -> np.ndarray | None:
        if not path.is_file():
            return None
        try:
            with Image.open(path) as image:
                return np.array(image.convert("RGB"))
        except (OSError, ValueError):  # a damaged entry is recomputed, never trusted
            return None

    def store(self, path: Path, rgb: np.ndarray) -> None:
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="PNG", compress_level=1)  # fast; PNG is lossless at any level
        write_bytes_atomic(path, buffer.getvalue())


def corrupted_rgb(source: Path, file_name: str, scenario: Scenario, seed: int, cache: CorruptionCache | None = None) -> np.ndarray:
    """An image file read as RGB and corrupted; from the cache when it holds it."""
    if scenario.is_clean:
        return np.array(read_rgb(source))
    cached_path = cache.path(source, file_name, scenario, seed) if cache is not None else None
    if cached_path is not None:
        cached = cache.load(cached_path)
        if cached is not None:
            return cached
    rgb = corrupt_image(
        np.array(read_rgb(source)), scenario.corruption, scenario.severity,
        corruption_seed(file_name, scenario.corruption, scenario.severity, seed),
    )
    if cached_path is not None:
        cache.store(cached_path, rgb)
    return rgb


# ---------------------------------------------------------------- the dataset workers read


class ScenarioImages(Dataset):
    """(scenario index, image position) → (uint8 image CHW, {image_id, scenario}); `images_to_device`
    makes it float on the model's device.

    The corruption runs in __getitem__, so in DataLoader worker processes, overlapping with the
    model's forward passes in the main process. `images` are COCO image records.
    """

    def __init__(self, images_dir: Path, images: list[dict], scenarios: list[Scenario], seed: int = 0, cache_dir: Path | None = None):
        self.images_dir = Path(images_dir)
        self.images = list(images)
        self.scenarios = list(scenarios)
        self.seed = seed
        self.cache = CorruptionCache(cache_dir) if cache_dir is not None else None

    def __len__(self) -> int:
        return len(self.scenarios) * len(self.images)

    def __getitem__(self, index: tuple[int, int]):
        scenario_index, position = index
        info = self.images[position]
        source = image_path(self.images_dir, info["file_name"])
        rgb = corrupted_rgb(source, info["file_name"], self.scenarios[scenario_index], self.seed, self.cache)
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).contiguous()
        return image, {"image_id": info["id"], "scenario": scenario_index}
