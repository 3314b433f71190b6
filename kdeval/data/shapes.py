"""Shapes: the embedded COCO-format benchmark that kdeval generates itself.

Designed so that a from-scratch RetinaNet learns it on a 2-core CPU in minutes while it still
produces every error type that the later analysis measures:

- two supercategories whose members look alike (circle/ellipse/ring, all curved;
  triangle/square/star, all cornered), with colours drawn independently of the class, so only the
  outline tells classes apart (class confusion, and similar-class confusion inside a
  supercategory) — yet every class stays distinguishable at the smallest size drawn: no two
  near-round polygons (a 12-px pentagon and hexagon look alike) and no two half-round blobs with
  the same 2:1 box (a semicircle beside round ellipses), the pairs detectors confused most;
- textured backgrounds and shape-like distractors that belong to no category (background FPs);
- objects that overlap (localisation errors and duplicates);
- objects in all three COCO size ranges (area < 32², 32²–96², > 96²).

Output is byte-identical for the same spec: one NumPy generator per image, seeded from (seed,
split, index); PNGs carry no metadata; JSON is written with a fixed layout.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from kdeval.fileio import cache_root
from kdeval.vocab import LARGE_MIN_AREA, SMALL_MAX_AREA

# Bump when the generated pixels or annotations change, so cached copies are regenerated.
GENERATOR_VERSION = 3

CATEGORIES = (
    {"id": 1, "name": "circle", "supercategory": "round"},
    {"id": 2, "name": "ellipse", "supercategory": "round"},
    {"id": 3, "name": "ring", "supercategory": "round"},
    {"id": 4, "name": "triangle", "supercategory": "polygon"},
    {"id": 5, "name": "square", "supercategory": "polygon"},
    {"id": 6, "name": "star", "supercategory": "polygon"},
)
STAR_INNER_RADIUS = 0.45  # of the outer one: points that stay visible on a 12-px star
RING_HOLE_RADIUS = 0.55  # of the outer one: a hole 7 px wide in the smallest ring drawn (120 px²)

# How often an object is drawn from each COCO size range (by area, as COCO measures it); at most
# one large object per image, since it fills most of it.
SIZE_PROBABILITIES = {"small": 0.45, "medium": 0.40, "large": 0.15}
SUPERSAMPLE = 2  # draw at 2× and box-filter down: anti-aliased edges without randomness


@dataclass(frozen=True)
class ShapesSpec:
    """Everything that determines a generated Shapes dataset."""

    train: int = 2000
    val: int = 300
    size: int = 128
    seed: int = 0
    max_objects: int = 6
    clutter: float = 0.5  # 0 = plain backgrounds, 1 = strong texture and many distractors

    def cache_key(self) -> str:
        return (
            f"v{GENERATOR_VERSION}-train{self.train}-val{self.val}-size{self.size}"
            f"-seed{self.seed}-obj{self.max_objects}-clutter{self.clutter:g}"
        )


# ---------------------------------------------------------------- geometry


def _regular_polygon(cx: float, cy: float, radius: float, sides: int, angle: float) -> np.ndarray:
    theta = angle + np.arange(sides) * 2 * math.pi / sides
    return np.stack([cx + radius * np.cos(theta), cy + radius * np.sin(theta)], axis=1)


def _ellipse(cx: float, cy: float, rx: float, ry: float, angle: float, points: int = 32) -> np.ndarray:
    t = np.arange(points) * 2 * math.pi / points
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _ring(points: int = 32) -> np.ndarray:
    """An annulus as one keyhole polygon: the outer circle anticlockwise, a cut through the filled
    part to the hole, the hole clockwise, and back. Filling it leaves the hole empty, its shoelace
    area is the annulus's, and COCO polygons (which have no holes) can hold it."""
    t = np.arange(points + 1) * 2 * math.pi / points
    outer = np.stack([np.cos(t), np.sin(t)], axis=1)
    return np.concatenate([outer, RING_HOLE_RADIUS * outer[::-1]])


def _star(angle: float, points: int = 5) -> np.ndarray:
    theta = angle + np.arange(2 * points) * math.pi / points
    radius = np.where(np.arange(2 * points) % 2 == 0, 1.0, STAR_INNER_RADIUS)
    return np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1)


def _unit_outline(name: str, rng: np.random.Generator) -> np.ndarray:
    """Vertices (N, 2) of a shape of circumradius 1 around the origin, randomly turned."""
    if name == "circle":
        return _ellipse(0.0, 0.0, 1.0, 1.0, 0.0)
    if name == "ellipse":  # no rounder than 0.5: a rounder ellipse is a circle at small sizes
        return _ellipse(0.0, 0.0, 1.0, rng.uniform(0.3, 0.5), rng.uniform(0, math.pi))
    if name == "ring":
        return _ring()
    if name == "star":
        return _star(rng.uniform(0, 2 * math.pi))
    if name == "square":
        # limited rotation: a square turned by 45° is a diamond, which we do not want to teach
        return _regular_polygon(0.0, 0.0, 1.0, 4, math.pi / 4 + rng.uniform(-0.3, 0.3))
    if name == "triangle":
        return _regular_polygon(0.0, 0.0, 1.0, 3, rng.uniform(0, 2 * math.pi))
    raise ValueError(f"no outline for category '{name}'")


def _polygon_area(vertices: np.ndarray) -> float:
    x, y = vertices[:, 0], vertices[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _box_iou_xyxy(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _contains(outer: tuple[float, ...], inner: tuple[float, ...]) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and outer[2] >= inner[2] and outer[3] >= inner[3]


# ---------------------------------------------------------------- rendering


def _background(size: int, clutter: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth colour gradient plus, with clutter, stripes and noise texture. float32 (H, W, 3) in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(0.15, 0.85, size=3).astype(np.float32)
    tilt = rng.uniform(-0.25, 0.25, size=(2, 3)).astype(np.float32)
    image = base + xx[..., None] * tilt[0] + yy[..., None] * tilt[1]
    if clutter > 0:
        freq = rng.uniform(3, 12)
        angle = rng.uniform(0, math.pi)
        stripes = np.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)))
        image += (0.12 * clutter * stripes)[..., None] * rng.uniform(0.3, 1.0, size=3).astype(np.float32)
        image += rng.normal(0, 0.05 * clutter, size=image.shape).astype(np.float32)
    return np.clip(image, 0, 1)


def _contrasting_colour(background_mean: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    """A random colour far enough from the local background to be seen; independent of the class."""
    for _ in range(20):
        colour = rng.uniform(0, 1, size=3)
        if np.abs(colour - background_mean).mean() > 0.3:
            break
    return tuple(int(round(c * 255)) for c in colour)


def _draw_distractor(draw: ImageDraw.ImageDraw, size: int, rng: np.random.Generator) -> None:
    """Shape-like clutter that belongs to no category: strokes, crosses, arcs and irregular blobs."""
    s = SUPERSAMPLE
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    cx, cy = rng.uniform(0, size, size=2)
    extent = rng.uniform(8, size * 0.35)
    kind = rng.integers(0, 4)
    width = max(1, int(rng.integers(1, 4) * s))
    if kind == 0:  # a stroke
        angle = rng.uniform(0, math.pi)
        dx, dy = extent / 2 * math.cos(angle), extent / 2 * math.sin(angle)
        draw.line([((cx - dx) * s, (cy - dy) * s), ((cx + dx) * s, (cy + dy) * s)], fill=colour, width=width)
    elif kind == 1:  # a cross
        h = extent / 2
        draw.line([((cx - h) * s, cy * s), ((cx + h) * s, cy * s)], fill=colour, width=width)
        draw.line([(cx * s, (cy - h) * s), (cx * s, (cy + h) * s)], fill=colour, width=width)
    elif kind == 2:  # an open arc: round, but not a filled circle
        h = extent / 2
        start = rng.uniform(0, 360)
        draw.arc([(cx - h) * s, (cy - h) * s, (cx + h) * s, (cy + h) * s], start, start + rng.uniform(90, 270), fill=colour, width=width)
    else:  # an irregular blob: a polygon with random radii, like none of the regular shapes
        points = int(rng.integers(7, 11))
        theta = np.sort(rng.uniform(0, 2 * math.pi, size=points))
        radii = extent / 2 * rng.uniform(0.3, 1.0, size=points)
        vertices = np.stack([cx + radii * np.cos(theta), cy + radii * np.sin(theta)], axis=1) * s
        draw.polygon([tuple(v) for v in vertices], fill=colour)


def _sample_area(size_range: str, image_size: int, rng: np.random.Generator) -> float:
    """A target object area (px²) inside the COCO range, log-uniform so each range is well spread."""
    low, high = {
        "small": (120.0, 0.97 * SMALL_MAX_AREA),
        "medium": (1.05 * SMALL_MAX_AREA, min(0.95 * LARGE_MIN_AREA, 0.45 * image_size**2)),
        "large": (1.03 * LARGE_MIN_AREA, max(1.03 * LARGE_MIN_AREA, 0.62 * image_size**2)),
    }[size_range]
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _sample_object(size_range: str, image_size: int, rng: np.random.Generator) -> tuple[dict, np.ndarray] | None:
    """(category, centred outline) with the sampled area, or None if no category fits in the image."""
    area = _sample_area(size_range, image_size, rng)
    for _ in range(10):
        category = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        outline = _unit_outline(category["name"], rng)
        outline = outline * math.sqrt(area / _polygon_area(outline))
        if (outline.max(axis=0) - outline.min(axis=0)).max() <= image_size - 2:
            return category, outline
    return None


def render_image(spec: ShapesSpec, rng: np.random.Generator) -> tuple[Image.Image, list[dict]]:
    """One image and its objects: [{category_id, vertices (N, 2) in pixels}]."""
    size = spec.size
    background = _background(size, spec.clutter, rng)
    canvas = Image.fromarray((background * 255).round().astype(np.uint8)).resize(
        (size * SUPERSAMPLE, size * SUPERSAMPLE), Image.Resampling.NEAREST
    )
    draw = ImageDraw.Draw(canvas)

    for _ in range(rng.poisson(3 * spec.clutter)):
        _draw_distractor(draw, size, rng)

    count = int(rng.integers(1, spec.max_objects + 1))
    ranges = list(SIZE_PROBABILITIES)
    sampled = rng.choice(ranges, size=count, p=list(SIZE_PROBABILITIES.values()))
    # at most one large object (it fills most of the image), drawn first so nothing hides under it
    large_first = sorted(sampled, key=lambda r: ranges.index(r) != 2)
    if sum(r == "large" for r in large_first) > 1:
        large_first = ["large"] + [r for r in large_first if r != "large"]
    objects: list[dict] = []
    boxes: list[tuple[float, ...]] = []
    for size_range in large_first:
        if size_range == "large" and LARGE_MIN_AREA > 0.62 * size**2:
            size_range = "medium"  # this image is too small to hold a COCO-large object
        sampled_object = _sample_object(size_range, size, rng)
        if sampled_object is None:
            continue
        category, outline = sampled_object
        low, high = -outline.min(axis=0), size - outline.max(axis=0)
        for _attempt in range(25):  # rejection sampling of a free spot
            vertices = outline + rng.uniform(low, high)
            box = (*vertices.min(axis=0), *vertices.max(axis=0))
            # overlap is allowed (localisation errors), but no object may hide most of another
            if all(
                _box_iou_xyxy(box, other) < 0.3 and not _contains(box, other) and not _contains(other, box)
                for other in boxes
            ):
                break
        else:
            continue
        y0, y1 = int(max(0, box[1])), int(min(size, box[3])) + 1
        x0, x1 = int(max(0, box[0])), int(min(size, box[2])) + 1
        local_mean = background[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)
        colour = _contrasting_colour(local_mean, rng)
        draw.polygon([tuple(v * SUPERSAMPLE) for v in vertices], fill=colour)
        boxes.append(box)
        objects.append({"category_id": category["id"], "vertices": vertices})

    image = canvas.resize((size, size), Image.Resampling.BOX)
    return image, objects


# ---------------------------------------------------------------- COCO output


def _round(values: np.ndarray | list[float]) -> list[float]:
    return [round(float(v), 2) for v in values]


def _annotation(ann_id: int, image_id: int, obj: dict) -> dict:
    vertices = obj["vertices"]
    x0, y0 = vertices.min(axis=0)
    x1, y1 = vertices.max(axis=0)
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": obj["category_id"],
        "bbox": _round([x0, y0, x1 - x0, y1 - y0]),
        "area": round(_polygon_area(vertices), 2),
        "segmentation": [_round(vertices.reshape(-1))],
        "iscrowd": 0,
    }


def _split_seed(spec: ShapesSpec, split: str, index: int) -> list[int]:
    return [spec.seed, {"train": 0, "val": 1}[split], index]


def generate_split(spec: ShapesSpec, split: str, out: Path) -> dict:
    """Write `out/<split>/*.png` and return the split's COCO dict."""
    count = spec.train if split == "train" else spec.val
    (out / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    # image ids differ between splits so that results of one split never match the other by accident
    id_offset = 0 if split == "train" else 1_000_000
    for index in range(count):
        rng = np.random.default_rng(_split_seed(spec, split, index))
        image, objects = render_image(spec, rng)
        image_id = id_offset + index + 1
        file_name = f"{index:06d}.png"
        image.save(out / split / file_name, format="PNG", optimize=False, compress_level=6)
        images.append({"id": image_id, "file_name": file_name, "width": spec.size, "height": spec.size})
        for obj in objects:
            annotations.append(_annotation(id_offset + len(annotations) + 1, image_id, obj))
    return {
        "info": {"description": "kdeval Shapes benchmark", "version": str(GENERATOR_VERSION), "spec": asdict(spec)},
        "images": images,
        "annotations": annotations,
        "categories": [dict(c) for c in CATEGORIES],
    }


def generate_shapes(out: Path, spec: ShapesSpec = ShapesSpec()) -> Path:
    """Write the dataset to `out` (train/, val/, annotations/instances_{train,val}.json)."""
    out = Path(out)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        coco = generate_split(spec, split, out)
        text = json.dumps(coco, separators=(",", ":"), sort_keys=True)
        (out / "annotations" / f"instances_{split}.json").write_text(text + "\n", encoding="utf-8")
    return out


def cached_shapes(spec: ShapesSpec = ShapesSpec(), root: Path | None = None) -> Path:
    """The dataset for `spec` in kdeval's cache, generated on first use.

    Generation happens in a temporary folder that is renamed into place, so a kill mid-way never
    leaves a half-written dataset that later runs would trust.
    """
    root = Path(root) if root is not None else cache_root() / "shapes"
    target = root / spec.cache_key()
    if (target / "annotations" / "instances_val.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.cache_key()}.", dir=root))
    try:
        generate_shapes(tmp, spec)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "annotations" / "instances_val.json").is_file():
                raise
            # another process finished first: its copy is byte-identical to ours
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
