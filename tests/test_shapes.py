import hashlib
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdeval.data.coco import check_coco_annotations
from kdeval.data.shapes import RING_HOLE_RADIUS, ShapesSpec, cached_shapes, generate_shapes
from kdeval.vocab import LARGE_MIN_AREA, SMALL_MAX_AREA


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_arguments_give_byte_identical_files(tmp_path):
    spec = ShapesSpec(train=5, val=3, size=96, seed=7)
    a = _digest(generate_shapes(tmp_path / "a", spec))
    b = _digest(generate_shapes(tmp_path / "b", spec))
    assert a == b
    assert len(a) == 5 + 3 + 2
    c = _digest(generate_shapes(tmp_path / "c", ShapesSpec(train=5, val=3, size=96, seed=8)))
    assert c != a


def test_layout_and_coco_validity(tiny_shapes):
    for split, count in (("train", 8), ("val", 6)):
        coco = json.loads((tiny_shapes / "annotations" / f"instances_{split}.json").read_text())
        check_coco_annotations(coco, split)
        assert len(coco["images"]) == count
        for image in coco["images"]:
            with Image.open(tiny_shapes / split / image["file_name"]) as im:
                assert im.size == (image["width"], image["height"]) == (64, 64)
                assert im.mode == "RGB"


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory) -> Path:
    """200 default-sized images, shared by the statistics tests of this module."""
    return generate_shapes(tmp_path_factory.mktemp("small"), ShapesSpec(train=1, val=200))


def test_categories_have_lookalike_supercategories(small_shapes):
    coco = json.loads((small_shapes / "annotations" / "instances_val.json").read_text())
    categories = coco["categories"]
    supers = Counter(c["supercategory"] for c in categories)
    assert len(categories) >= 6
    assert len(supers) >= 2 and all(n >= 2 for n in supers.values())


def test_all_coco_size_ranges_and_every_class_occur(small_shapes):
    coco = json.loads((small_shapes / "annotations" / "instances_val.json").read_text())
    areas = np.array([a["area"] for a in coco["annotations"]])
    small = np.mean(areas < SMALL_MAX_AREA)
    large = np.mean(areas >= LARGE_MIN_AREA)
    medium = 1 - small - large
    assert 0.25 < small < 0.7 and 0.2 < medium < 0.6 and 0.05 < large < 0.3, (small, medium, large)
    assert set(Counter(a["category_id"] for a in coco["annotations"])) == {c["id"] for c in coco["categories"]}
    # overlapping objects exist (localisation errors need them)
    by_image = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["bbox"])
    overlaps = 0
    for boxes in by_image.values():
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                (x0, y0, w0, h0), (x1, y1, w1, h1) = boxes[i], boxes[j]
                overlaps += min(x0 + w0, x1 + w1) > max(x0, x1) and min(y0 + h0, y1 + h1) > max(y0, y1)
    assert overlaps >= 20


def test_annotations_match_their_polygons(small_shapes):
    coco = json.loads((small_shapes / "annotations" / "instances_val.json").read_text())
    for ann in coco["annotations"][:300]:
        xy = np.array(ann["segmentation"][0]).reshape(-1, 2)
        x, y, w, h = ann["bbox"]
        assert np.allclose([x, y, x + w, y + h], [*xy.min(0), *xy.max(0)], atol=0.02)
        assert 0 <= x and 0 <= y and x + w <= 128.01 and y + h <= 128.01
        shoelace = 0.5 * abs(np.dot(xy[:, 0], np.roll(xy[:, 1], -1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], -1)))
        assert abs(shoelace - ann["area"]) < 0.02 * ann["area"] + 1
        assert ann["iscrowd"] == 0


def test_objects_are_drawn_in_a_colour_that_stands_out(tmp_path):
    """One object per image on a plain background: its polygon holds one flat colour, distinct
    from the background around it — the annotation describes what the pixels show."""
    from PIL import ImageDraw

    root = generate_shapes(tmp_path, ShapesSpec(train=1, val=30, max_objects=1, clutter=0.0))
    coco = json.loads((root / "annotations" / "instances_val.json").read_text())
    for ann in coco["annotations"]:
        image = next(i for i in coco["images"] if i["id"] == ann["image_id"])
        pixels = np.asarray(Image.open(root / "val" / image["file_name"]), dtype=float)
        polygon = [tuple(p) for p in np.array(ann["segmentation"][0]).reshape(-1, 2)]
        inside, grown = Image.new("L", (128, 128)), Image.new("L", (128, 128))
        ImageDraw.Draw(inside).polygon(polygon, fill=1)
        ImageDraw.Draw(grown).polygon(polygon, fill=1, outline=1, width=9)
        inside_mask = np.asarray(inside, dtype=bool)
        core = inside_mask
        ring = np.asarray(grown, dtype=bool) & ~inside_mask
        assert core.sum() > 20
        if ring.sum() < 20:
            continue  # a large object that fills the image has no surroundings to compare with
        fill = np.median(pixels[core], axis=0)
        assert np.mean(np.abs(pixels[core] - fill) < 3) > 0.8  # flat fill, edge pixels aside
        assert np.abs(fill - pixels[ring].mean(axis=0)).mean() > 40  # stands out from its surroundings


def test_a_ring_has_a_hole_that_shows_the_background(tmp_path):
    """The ring is drawn and annotated as an annulus: its centre shows the background, not its fill,
    and its area is the outer disc's less the hole's."""
    root = generate_shapes(tmp_path, ShapesSpec(train=1, val=40, max_objects=1, clutter=0.0))
    coco = json.loads((root / "annotations" / "instances_val.json").read_text())
    ring_id = next(c["id"] for c in coco["categories"] if c["name"] == "ring")
    rings = [ann for ann in coco["annotations"] if ann["category_id"] == ring_id]
    assert len(rings) >= 3
    for ann in rings:
        image = next(i for i in coco["images"] if i["id"] == ann["image_id"])
        pixels = np.asarray(Image.open(root / "val" / image["file_name"]), dtype=float)
        x, y, w, h = ann["bbox"]
        radius = (w + h) / 4
        assert ann["area"] == pytest.approx(math.pi * radius**2 * (1 - RING_HOLE_RADIUS**2), rel=0.03)
        cx, cy = x + w / 2, y + h / 2
        centre = pixels[int(cy), int(cx)]
        band = pixels[int(cy), int(cx + radius * (1 + RING_HOLE_RADIUS) / 2)]  # halfway through the band
        outside = pixels[int(cy), min(127, int(x + w + 2))] if x + w + 2 < 128 else pixels[int(cy), max(0, int(x - 3))]
        assert np.abs(centre - band).mean() > 40
        assert np.abs(centre - outside).mean() < np.abs(centre - band).mean() / 2


def test_cached_shapes_generates_once(tmp_path):
    spec = ShapesSpec(train=2, val=2, size=64)
    first = cached_shapes(spec, root=tmp_path)
    stamp = (first / "annotations" / "instances_val.json").stat().st_mtime_ns
    assert cached_shapes(spec, root=tmp_path) == first
    assert (first / "annotations" / "instances_val.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary folders left behind
