"""The qualitative comparison (appendix C, Figures 3–6): choose images, colour each model's detections
by their verdict, and write the offline gallery page with its selection table and settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from kdeval.data.coco import image_path, load_coco_annotations
from kdeval.data.source import Split
from kdeval.engine.evaluate import ModelInput, detections_of_models, parse_models
from kdeval.engine.predict import PredictSettings
from kdeval.errors import KdevalError
from kdeval.fileio import write_json_atomic, write_text_atomic
from kdeval.metrics.matching import match_detections
from kdeval.metrics.selection import ImageCounts, check_selection, count_images, select_images
from kdeval.report.gallery import Gallery, GalleryRow, write_gallery_page
from kdeval.versions import package_versions
from kdeval.vocab import GALLERY_SELECTIONS

MAX_DETECTIONS_PER_IMAGE = 100  # the cap detectors report for COCO (COCOeval's maxDets)


@dataclass(frozen=True)
class VisualizeSettings:
    select: str = "improved"  # one of GALLERY_SELECTIONS, or "ids"
    image_ids: tuple[int, ...] = ()  # with select="ids", in the order to show
    num: int = 20
    score_threshold: float = 0.3  # counted by the selection; where the page's slider starts
    min_score: float = 0.05  # detections below are left out of the page (the slider's lower end)
    seed: int = 0  # of select="random"


@dataclass
class Visualization:
    gallery: Gallery
    counts: ImageCounts  # per-image counts over the whole dataset, that the selection ranked
    settings: VisualizeSettings
    models: list[ModelInput]
    notes: list[str] = field(default_factory=list)


def parse_selection(text: str | None, num_models: int) -> tuple[str, tuple[int, ...]]:
    """--select: a strategy name, or image ids '12,57'. Default: improved with two models or more."""
    if text is None:
        return ("improved" if num_models >= 2 else "random"), ()
    text = text.strip()
    if text in GALLERY_SELECTIONS:
        return text, ()
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if parts and all(p.lstrip("-").isdigit() for p in parts):
        return "ids", tuple(int(p) for p in parts)
    raise KdevalError(f"--select {text}: expected one of {', '.join(GALLERY_SELECTIONS)} or image ids such as 12,57")


def parse_named_models(texts: list[str], names: str | None) -> list[ModelInput]:
    """MODEL arguments, with --names a,b,c replacing NAME= and the file stems one by one (so three
    files all called model.pt need no NAME=, and a name may hold any character but a comma)."""
    if names is None:
        return parse_models(texts)
    given = [n.strip() for n in names.split(",")]
    if len(given) != len(texts) or not all(given):
        raise KdevalError(f"--names {names}: expected {len(texts)} non-empty names, one per model, separated by commas")
    if len(set(given)) != len(given):
        raise KdevalError(f"--names {names}: the names must differ")
    # the files checked under neutral names, then named as asked
    checked = parse_models([f"{i}={ModelInput.parse(text).path}" for i, text in enumerate(texts)])
    return [ModelInput(name, model.path) for name, model in zip(given, checked)]


def _describe(settings: VisualizeSettings, models: list[str]) -> str:
    """How the images were chosen, in words, for the page's heading."""
    threshold = f"score ≥ {settings.score_threshold:.2f}"
    if settings.select == "improved":
        return f"where {models[1]} finds the most objects that {models[0]} misses ({threshold})"
    if settings.select == "degraded":
        return f"where {models[1]} misses the most objects that {models[0]} finds ({threshold})"
    if settings.select in ("large", "small"):
        return f"richest in {settings.select} objects (area {'> 96²' if settings.select == 'large' else '< 32²'} px)"
    if settings.select == "disagreement":
        return f"where the models disagree most ({threshold})"
    if settings.select == "random":
        return f"at random (seed {settings.seed})"
    return "chosen by image id"


def _top_detections(detections: list[dict], verdicts: list[str], min_score: float) -> dict[int, list[tuple[dict, str]]]:
    """Per image: (detection, verdict) with score >= min_score, the best MAX_DETECTIONS_PER_IMAGE, by score."""
    by_image: dict[int, list[tuple[dict, str]]] = {}
    for det, verdict in zip(detections, verdicts, strict=True):
        if det["score"] >= min_score:
            by_image.setdefault(det["image_id"], []).append((det, verdict))
    for image_id, pairs in by_image.items():
        pairs.sort(key=lambda pair: -pair[0]["score"])
        del pairs[MAX_DETECTIONS_PER_IMAGE:]
    return by_image


def build_visualization(models: list[ModelInput], split: Split, settings: VisualizeSettings,
                        predict_settings: PredictSettings = PredictSettings(), progress: bool = True) -> Visualization | None:
    """The gallery's rows; None on the ranks other than 0 under torchrun."""
    if not 0 <= settings.min_score <= settings.score_threshold <= 1:
        raise KdevalError(f"--min-score {settings.min_score} must lie in 0..--score-threshold ({settings.score_threshold})")
    images_dir = split.require_images()
    gt = load_coco_annotations(split.annotations)
    # before any model runs: under torchrun every rank fails here alike, not rank 0 alone after inference
    check_selection(settings.select, settings.image_ids, [image["id"] for image in gt["images"]], len(models))
    detections = detections_of_models(models, split, gt, predict_settings, progress)
    if detections is None:
        return None
    matches = {name: match_detections(gt, dets) for name, dets in detections.items()}
    counts = count_images(gt, detections, matches, settings.score_threshold)
    chosen = select_images(counts, settings.select, settings.num, settings.seed, settings.image_ids)
    notes = []
    if len(chosen) < settings.num and settings.select != "ids":
        note = f"only {len(chosen)} image{'' if len(chosen) == 1 else 's'} qualify for --select {settings.select}"
        best = {name: max((d["score"] for d in dets), default=0.0) for name, dets in detections.items()}
        below = [name for name, score in best.items() if score < settings.score_threshold]
        if below:  # the counts see no detection of these models at all
            note += (f"; no detection of {', '.join(below)} reaches --score-threshold {settings.score_threshold:g} "
                     f"(best {', '.join(f'{best[name]:.3f}' for name in below)}): a lower one counts them")
        notes.append(note)

    images = {image["id"]: image for image in gt["images"]}
    annotations_of: dict[int, list[dict]] = {}
    for ann in gt["annotations"]:
        annotations_of.setdefault(ann["image_id"], []).append(ann)
    shown = {name: _top_detections(dets, [m.verdict for m in matches[name]], settings.min_score)
             for name, dets in detections.items()}
    rows = []
    for image_id, reason in chosen:
        image = images[image_id]
        source = image_path(images_dir, image["file_name"])
        if not source.is_file():
            raise KdevalError(f"{source}: image file not found (image id {image_id})")
        rows.append(GalleryRow(image, source, reason, annotations_of.get(image_id, []),
                               [shown[m.name].get(image_id, []) for m in models]))
    names = [m.name for m in models]
    gallery = Gallery(
        models=names,
        categories={c["id"]: str(c["name"]) for c in sorted(gt["categories"], key=lambda c: c["id"])},
        rows=rows,
        dataset=split.name,
        selection=_describe(settings, names),
        score_threshold=settings.score_threshold,
        min_score=settings.min_score,
    )
    return Visualization(gallery, counts, settings, models, notes)


def write_visualization(result: Visualization, out_dir: Path, split: Split) -> list[Path]:
    """The gallery page (index.html, detections.js, images/), selection.csv (the per-image counts
    of every image, and which were shown) and visualize_settings.json, each written atomically."""
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
        "models": {m.name: str(m.path) for m in result.models},
        **asdict(result.settings),
        "shown_image_ids": [row.image["id"] for row in result.gallery.rows],
        "notes": result.notes,
        "versions": package_versions(),
    }))
    return paths
