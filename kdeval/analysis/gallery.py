"""`kdeval visualize`'s result (appendix C, Figures 3–6): which images to show, and each model's
detections on them with their verdicts, ready for the gallery page."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kdeval.data.coco import image_path
from kdeval.errors import KdevalError
from kdeval.metrics.matching import match_detections
from kdeval.metrics.selection import ImageCounts, check_selection, count_images, select_images
from kdeval.vocab import GALLERY_SCORE_THRESHOLD, GALLERY_SELECTIONS


@dataclass(frozen=True)
class GalleryRow:
    image: dict  # the dataset's image record: id, file_name, width, height
    source: Path  # the image file
    reason: str  # why the selection chose it
    annotations: list[dict]  # its ground truth
    detections: list[list[tuple[dict, str]]]  # per model: (COCO result, verdict), by decreasing score


@dataclass(frozen=True)
class Gallery:
    models: list[str]
    categories: dict[int, str]
    rows: list[GalleryRow]
    dataset: str  # a name for the page's heading
    selection: str  # how the images were chosen, in words
    score_threshold: float  # where the slider starts
    min_score: float  # the slider's lower end: detections below it are not in the page


MAX_DETECTIONS_PER_IMAGE = 100  # the cap detectors report for COCO (COCOeval's maxDets)


@dataclass(frozen=True)
class VisualizeSettings:
    select: str = "improved"  # one of GALLERY_SELECTIONS, or "ids"
    image_ids: tuple[int, ...] = ()  # with select="ids", in the order to show
    num: int = 20
    score_threshold: float = GALLERY_SCORE_THRESHOLD  # counted by the selection; where the page's slider starts
    min_score: float = 0.05  # detections below are left out of the page (the slider's lower end)
    seed: int = 0  # of select="random"

    def check_scores(self) -> None:
        if not 0 <= self.min_score <= self.score_threshold <= 1:
            raise KdevalError(f"--min-score {self.min_score} must lie in 0..--score-threshold ({self.score_threshold})")


@dataclass
class Visualization:
    gallery: Gallery
    counts: ImageCounts  # per-image counts over the whole dataset, that the selection ranked
    settings: VisualizeSettings
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


def check_visualize_settings(settings: VisualizeSettings, gt: dict, num_models: int) -> None:
    """The selection checked against the dataset; engine/visualize.py calls it before any model runs
    (under torchrun every rank then fails alike, not rank 0 alone after inference)."""
    check_selection(settings.select, settings.image_ids, [image["id"] for image in gt["images"]], num_models)


def build_visualization(gt: dict, detections: dict[str, list[dict]], images_dir: Path, settings: VisualizeSettings,
                        dataset: str) -> Visualization:
    """The gallery's rows: the images chosen by `settings`, each with its ground truth and every model's
    detections (in the order of `detections`) with their verdicts; `dataset` names the data on the page."""
    settings.check_scores()
    check_visualize_settings(settings, gt, len(detections))
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
                               [shown[name].get(image_id, []) for name in detections]))
    names = list(detections)
    gallery = Gallery(
        models=names,
        categories={c["id"]: str(c["name"]) for c in sorted(gt["categories"], key=lambda c: c["id"])},
        rows=rows,
        dataset=dataset,
        selection=_describe(settings, names),
        score_threshold=settings.score_threshold,
        min_score=settings.min_score,
    )
    return Visualization(gallery, counts, settings, notes)


