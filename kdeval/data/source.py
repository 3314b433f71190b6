"""Which images and annotations a command works on: the embedded Shapes data or the user's COCO."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdeval.errors import KdevalError


@dataclass(frozen=True)
class Split:
    """One COCO-format split: an annotation file, and the folder of its images (None when only
    detections are read, e.g. to score a results JSON)."""

    annotations: Path
    images: Path | None = None
    name: str = "custom"

    def require_images(self) -> Path:
        if self.images is None:
            raise KdevalError(f"{self.annotations}: this command needs the images too (--images DIR)")
        if not Path(self.images).is_dir():
            raise KdevalError(f"{self.images}: images folder not found")
        return Path(self.images)


# the built-in datasets --data names (ShapesSpec fields): the Shapes benchmark, and the small set that
# `kdeval study --quick` trains and scores on, so that its models can be analysed by name too
BUILT_IN_DATA = {"shapes": {}, "shapes-quick": {"train": 300, "val": 60}}


def shapes_split(split: str, data: str = "shapes") -> Split:
    """A split of a built-in Shapes dataset, generated into the cache on first use."""
    from kdeval.data.shapes import ShapesSpec, cached_shapes

    root = cached_shapes(ShapesSpec(**BUILT_IN_DATA[data]))
    return Split(root / "annotations" / f"instances_{split}.json", root / split, name=f"{data}-{split}")


def resolve_split(data: str, images: Path | None, annotations: Path | None, split: str = "val") -> Split:
    """--data shapes (default) or --images DIR --annotations FILE; the latter wins when given."""
    if annotations is not None:
        if not Path(annotations).is_file():
            raise KdevalError(f"{annotations}: annotation file not found")
        return Split(Path(annotations), Path(images) if images is not None else None, name=Path(annotations).stem)
    if images is not None:
        raise KdevalError("--images needs --annotations FILE as well")
    if data not in BUILT_IN_DATA:
        raise KdevalError(f"unknown --data '{data}': use {' or '.join(repr(name) for name in BUILT_IN_DATA)}, "
                          f"or give --images DIR --annotations FILE")
    return shapes_split(split, data)
