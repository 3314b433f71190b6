"""The qualitative gallery page: one row per image, one panel per model, boxes drawn as SVG over
the image by the page's script, with a score slider and toggles for the ground truth and each model.

What `write_gallery_page` writes under its folder, all relative so the folder can be moved:
  index.html      the page (its script and style inlined; no network, no CDN)
  detections.js   every box of every panel as one JSON document, assigned to window.KDEVAL_GALLERY
  images/         a copy of each shown image, named <image id><suffix>, referenced, never inlined
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

from kdeval.analysis.gallery import Gallery, GalleryRow, Visualization
from kdeval.data.source import Split
from kdeval.fileio import write_bytes_atomic, write_json_atomic, write_text_atomic
from kdeval.report.html import content_security_policy, new_nonce, render, script_assignment
from kdeval.versions import package_versions
from kdeval.vocab import DETECTION_VERDICTS

PAGE_FILE = "index.html"
DATA_FILE = "detections.js"
IMAGE_DIR = "images"
DATA_GLOBAL = "KDEVAL_GALLERY"
DATA_FORMAT = "kdeval-gallery/1"
# the page's arrays, field by field (documented in the data so a reader of detections.js needs no code)
GT_FIELDS = ("x", "y", "width", "height", "category_id", "iscrowd")
DETECTION_FIELDS = ("x", "y", "width", "height", "score", "category_id", "verdict")
_SUFFIX = re.compile(r"\.[a-z0-9]{1,5}")
_COPIED_NAME = re.compile(r"^-?\d+(\.[a-z0-9]{1,5})?$")


def copied_image_name(image_id: int, source: Path) -> str:
    """<image id><suffix>: unique, and free of whatever characters the dataset's file name holds."""
    suffix = source.suffix.lower()
    return f"{int(image_id)}{suffix}" if _SUFFIX.fullmatch(suffix) else str(int(image_id))


def _image_size(row: GalleryRow) -> tuple[int, int]:
    width, height = row.image.get("width"), row.image.get("height")
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        return width, height
    from PIL import Image

    with Image.open(row.source) as image:  # reads the header only
        return image.size


def _rounded(values, digits: int = 1) -> list[float]:
    return [round(float(v), digits) for v in values]


def gallery_payload(gallery: Gallery) -> dict:
    """The JSON document the page draws from: compact arrays, one entry per shown image."""
    verdict_code = {name: code for code, name in enumerate(DETECTION_VERDICTS)}
    images = []
    for row in gallery.rows:
        width, height = _image_size(row)
        images.append({
            "id": row.image["id"],
            "src": f"{IMAGE_DIR}/{copied_image_name(row.image['id'], row.source)}",
            "file_name": str(row.image.get("file_name", "")),
            "width": width,
            "height": height,
            "reason": row.reason,
            "gt": [[*_rounded(a["bbox"]), a["category_id"], int(bool(a.get("iscrowd", 0)))] for a in row.annotations],
            "detections": [
                [[*_rounded(det["bbox"]), round(float(det["score"]), 3), det["category_id"], verdict_code[verdict]]
                 for det, verdict in model_detections]
                for model_detections in row.detections
            ],
        })
    return {
        "format": DATA_FORMAT,
        "dataset": gallery.dataset,
        "selection": gallery.selection,
        "models": list(gallery.models),
        "categories": {str(cid): name for cid, name in gallery.categories.items()},
        "verdicts": list(DETECTION_VERDICTS),
        "fields": {"gt": list(GT_FIELDS), "detections": list(DETECTION_FIELDS)},
        "score_threshold": gallery.score_threshold,
        "min_score": gallery.min_score,
        "images": images,
    }


def _previous_image_files(out_dir: Path) -> set[str]:
    """The images an earlier gallery in this folder copied, read from its detections.js; only names
    of the form this module writes, so a stray or edited file can never make it delete others."""
    data_file = out_dir / DATA_FILE
    try:
        text = data_file.read_text(encoding="utf-8")
        payload = json.loads(text[text.index("=") + 1:].strip().rstrip(";"))
        sources = [image["src"] for image in payload["images"]]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    names = set()
    for src in sources:
        folder, _, name = str(src).partition("/")
        if folder == IMAGE_DIR and _COPIED_NAME.match(name):
            names.add(name)
    return names


def write_gallery_page(gallery: Gallery, out_dir: Path) -> list[Path]:
    """Copy the shown images, write detections.js and index.html; each file atomically. Images an
    earlier gallery here copied and this one does not show are removed."""
    out_dir = Path(out_dir)
    previous = _previous_image_files(out_dir)
    paths, shown = [], set()
    for row in gallery.rows:
        name = copied_image_name(row.image["id"], row.source)
        shown.add(name)
        paths.append(write_bytes_atomic(out_dir / IMAGE_DIR / name, row.source.read_bytes()))
    for stale in sorted(previous - shown):
        (out_dir / IMAGE_DIR / stale).unlink(missing_ok=True)
    payload = gallery_payload(gallery)
    paths.append(write_text_atomic(out_dir / DATA_FILE, script_assignment(DATA_GLOBAL, payload)))
    nonce = new_nonce()
    page = render(
        "gallery.html.j2",
        gallery=gallery,
        data_file=DATA_FILE,
        detections_total=sum(len(d) for row in gallery.rows for d in row.detections),
        nonce=nonce,
        csp=content_security_policy(nonce),
    )
    paths.append(write_text_atomic(out_dir / PAGE_FILE, page))
    return paths


def write_visualization(result: Visualization, out_dir: Path, split: Split, model_paths: dict[str, str]) -> list[Path]:
    """The gallery page (index.html, detections.js, images/), selection.csv (the per-image counts
    of every image, and which were shown) and visualize_settings.json (with `model_paths`, each
    model's file by name), each written atomically."""
    out_dir = Path(out_dir)
    paths = write_gallery_page(result.gallery, out_dir)
    table = result.counts.table()
    shown = {row.image["id"]: (rank, row.reason) for rank, row in enumerate(result.gallery.rows, start=1)}
    table.insert(0, "shown_rank", [shown.get(i, (None, ""))[0] for i in table.index])
    table["reason"] = [shown.get(i, (None, ""))[1] for i in table.index]
    table = table.astype({"shown_rank": "Int64"}).sort_values(["shown_rank", "image_id"], na_position="last", kind="mergesort")
    paths.append(write_text_atomic(out_dir / "selection.csv", table.to_csv()))
    paths.append(write_json_atomic(out_dir / "visualize_settings.json", {
        "annotations": str(split.annotations),
        "images": str(split.images),
        "models": dict(model_paths),
        **asdict(result.settings),
        "shown_image_ids": [row.image["id"] for row in result.gallery.rows],
        "notes": result.notes,
        "versions": package_versions(),
    }))
    return paths
