"""Every model argument becomes COCO detections here, and nowhere else.

A model on the command line is a kdeval checkpoint, torchvision's COCO RetinaNet weights, or a COCO
results JSON from any detector; one name may stand for several runs of one recipe (training seeds),
NAME=PATH,PATH,..., each scored on its own. A checkpoint is run once per (checkpoint bytes,
annotation bytes, images folder, inference settings) and its detections are cached on disk. Under
torchrun every rank runs its share of the images and rank 0 alone receives them: this module is
where evaluate, errors, visualize and predict meet the ranks, so everything above it is a plain
function of the ground truth and the detections by model.

torch, torchvision and the model code are imported where a checkpoint is opened or run: when every
model is a results file, a command never loads them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kdeval.data.coco import load_coco_annotations, load_results, read_json
from kdeval.data.source import Split
from kdeval.engine import distributed
from kdeval.engine.predict import PredictSettings
from kdeval.errors import KdevalError
from kdeval.fileio import cache_root, file_sha256, write_json_atomic
from kdeval.labels import LabelSpace

if TYPE_CHECKING:
    from kdeval.models.checkpoint import LoadedModel

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
TRAINED_MODEL_STEM = "model"  # kdeval train writes OUT/model.pt

# the cache key's version: raised whenever the same checkpoint, data and settings would give other
# detections, so that cached ones of the earlier kind are never read
CACHE_VERSION = 3


# ---------------------------------------------------------------- model arguments


@dataclass(frozen=True)
class ModelInput:
    """A model on the command line: `path` or `name=path`, a checkpoint or a COCO results JSON; or
    several runs of one recipe (training seeds) under one name: `name=path,path,...`.

    `paths` also takes one path, so ModelInput(name, path) stands for a single run."""

    name: str
    paths: tuple[Path, ...]

    def __post_init__(self) -> None:
        paths = (self.paths,) if isinstance(self.paths, (str, os.PathLike)) else self.paths
        object.__setattr__(self, "paths", tuple(Path(p) for p in paths))
        if not self.paths:
            raise KdevalError(f"model '{self.name}': no checkpoint or results file given")

    @classmethod
    def parse(cls, text: str) -> "ModelInput":
        """`name=path[,path...]`, or `path` named by its file (`r50.bbox.json` → 'r50.bbox'); a file
        kdeval's training wrote, `model.pt`, is named by its folder (`reports/baseline-r18/model.pt` →
        'baseline-r18'), so that several need no names. Several runs need a name."""
        name, paths = _name_and_paths(text)
        if name is None:
            if len(paths) > 1:
                raise KdevalError(f"'{text}': several runs of one model need a name: NAME={text}")
            name = paths[0].stem
            folder = Path(os.path.abspath(paths[0])).parent.name  # as spelt: a link's own name, not its target's
            if name == TRAINED_MODEL_STEM and folder:
                name = folder
        return cls(name, paths)

    @property
    def runs(self) -> int:
        return len(self.paths)

    @property
    def path(self) -> Path:
        """The model's one file, for the commands that take a single run per model."""
        if self.runs > 1:
            raise KdevalError(f"model '{self.name}' has {self.runs} runs ({_shown_paths(self.paths)}); "
                              f"this command takes one checkpoint or results file per model")
        return self.paths[0]

    @property
    def is_results_json(self) -> bool:
        return _is_results_json(self.path)

    @property
    def runs_a_checkpoint(self) -> bool:
        """Whether one of its runs is a checkpoint (to be run), not a results file (to be read)."""
        return not all(_is_results_json(path) for path in self.paths)


def _name_and_paths(text: str) -> tuple[str | None, tuple[Path, ...]]:
    """`NAME=PATH[,PATH...]` or `PATH[,PATH...]` → (NAME or None, the paths): a comma separates runs."""
    name, sep, paths_text = text.partition("=")
    if not sep:
        name, paths_text = None, text
    pieces = paths_text.split(",")
    if name == "" or not all(pieces):
        raise KdevalError(f"'{text}': expected PATH, NAME=PATH, or NAME=PATH,PATH,... (one path per run)")
    return name, tuple(Path(piece) for piece in pieces)


def _shown_paths(paths: tuple[Path, ...]) -> str:
    return ", ".join(map(str, paths[:3])) + (f", … ({len(paths)} in all)" if len(paths) > 3 else "")


def _is_results_json(path: Path) -> bool:
    return Path(path).suffix.lower() == ".json"


def _check_models(models: list[ModelInput]) -> list[ModelInput]:
    """Names that differ, and every run's file there and of a kind kdeval reads, each once per model."""
    names = [m.name for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise KdevalError(f"model names must differ, '{duplicates[0]}' appears twice (use NAME=PATH)")
    for model in models:
        seen = {}
        for path in model.paths:
            if not path.is_file():
                raise KdevalError(f"{path}: model file not found")
            if not _is_results_json(path) and path.suffix.lower() not in CHECKPOINT_SUFFIXES:
                raise KdevalError(f"{path}: expected a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}) or a COCO results .json")
            same = seen.setdefault(path.resolve(), path)
            if same is not path:  # one run counted twice would shrink the spread over runs
                raise KdevalError(f"model '{model.name}': {same} and {path} are the same file; give each run once")
    return models


def parse_models(texts: list[str]) -> list[ModelInput]:
    return _check_models([ModelInput.parse(text) for text in texts])


def parse_named_models(texts: list[str], names: str | None) -> list[ModelInput]:
    """MODEL arguments, with --names a,b,c replacing NAME= and the file stems one by one (so three
    files all called model.pt need no NAME=, and a name may hold any character but a comma); a
    MODEL may list several runs, PATH,PATH,..."""
    if names is None:
        return parse_models(texts)
    given = [n.strip() for n in names.split(",")]
    if len(given) != len(texts) or not all(given):
        raise KdevalError(f"--names {names}: expected {len(texts)} non-empty names, one per model, separated by commas")
    if len(set(given)) != len(given):
        raise KdevalError(f"--names {names}: the names must differ")
    return _check_models([ModelInput(name, _name_and_paths(text)[1]) for name, text in zip(given, texts)])


def model_paths(models: list[ModelInput]) -> dict[str, str | list[str]]:
    """Each model's file by name, as given (a list of them for a model of several runs): what a run
    records of its inputs."""
    return {model.name: str(model.paths[0]) if model.runs == 1 else [str(p) for p in model.paths] for model in models}


def resolve_baseline(models: list[ModelInput], baseline: str | None) -> str | None:
    names = [m.name for m in models]
    if baseline is not None and baseline not in names:
        raise KdevalError(f"--baseline '{baseline}' is not one of the models ({', '.join(names)})")
    return baseline


# ---------------------------------------------------------------- running a checkpoint


def merge_shards(shards: list[list[dict]], image_ids: list[int]) -> list[dict]:
    """Detections found in another order (ranks that took every world-th batch, images batched in
    `batching_order`) → in the order of `image_ids`, each image's own in the order found."""
    by_image: dict[int, list[dict]] = {}
    for shard in shards:
        for det in shard:
            by_image.setdefault(det["image_id"], []).append(det)
    return [det for image_id in image_ids for det in by_image.get(image_id, [])]


def predict(loaded: LoadedModel, split: Split, settings: PredictSettings = PredictSettings(), progress: bool = True) -> list[dict] | None:
    """Detections of `loaded` on every image of `split` (at most detections_per_img per image), in the
    dataset's order; the images are batched in `batching_order`.

    Under torchrun each rank runs every world-th batch and rank 0 gets the gathered detections, in
    the order one process would have produced them; the other ranks get None (a COCO-sized set is
    some 200 MB as Python objects, which they have no use for)."""
    from torch.utils.data import Subset

    from kdeval.data.dataset import CocoDetectionDataset
    from kdeval.engine.predict import batching_order, run_model
    from kdeval.models.checkpoint import dataset_labels

    coco = load_coco_annotations(split.annotations)
    labels = dataset_labels(loaded, coco["categories"], str(split.annotations), settings.category_map)
    dataset = CocoDetectionDataset(split, coco, labels, pixels=settings.pixels())
    dataset.check_images_exist()
    order = batching_order(loaded.model, dataset.images)
    image_ids = [image["id"] for image in dataset.images]
    dist_env = distributed.current()  # alone: every position, and gather_lists gives [mine]
    mine = [order[p] for p in dist_env.shard(len(order), settings.batch_size)]
    shards = distributed.gather_lists(run_model(loaded.model, Subset(dataset, mine), settings, labels, progress and dist_env.is_main), dst=0)
    return None if shards is None else merge_shards(shards, image_ids)


def _cache_path(checkpoint: Path, split: Split, settings: PredictSettings) -> Path:
    key = {
        "version": CACHE_VERSION,
        "checkpoint": file_sha256(checkpoint),
        "annotations": file_sha256(split.annotations),
        "images": str(Path(split.images).resolve()) if split.images else None,
        **settings.cache_fields(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_root() / "detections" / f"{digest}.json"


def cached_predict(
    checkpoint: Path, split: Split, settings: PredictSettings = PredictSettings(), use_cache: bool = True, progress: bool = True
) -> list[dict] | None:
    """Detections of a checkpoint on a split, from the cache when the same run was done before.
    Under torchrun: on rank 0, None on the others (`predict`)."""
    path = _cache_path(Path(checkpoint), split, settings)
    # under torchrun the ranks must agree, or one would wait for the others' detections forever
    hit = all(flags[0] for flags in distributed.all_gather_lists([use_cache and path.is_file()]))
    if hit:
        return read_json(path, "cached detections") if distributed.current().is_main else None
    from kdeval.models.checkpoint import load_checkpoint

    detections = predict(load_checkpoint(checkpoint), split, settings, progress=progress)
    if distributed.current().is_main:
        write_json_atomic(path, detections, indent=None)
    distributed.barrier()
    return detections


# ---------------------------------------------------------------- every model of a command


def _detections_of(path: Path, split: Split, gt: dict, settings: PredictSettings, progress: bool,
                   box_format: str) -> list[dict] | None:
    """A results file read and checked against the dataset, or a checkpoint run (from the cache when
    it ran before). settings.category_map applies to both. None on the ranks other than 0."""
    if _is_results_json(path):
        return load_results(path, gt, settings.category_map, box_format) if distributed.current().is_main else None
    split.require_images()
    return cached_predict(path, split, settings, progress=progress)


def _known_categories(labels: LabelSpace) -> frozenset[tuple[int, str]]:
    return frozenset((cid, name) for cid, name in zip(labels.category_ids, labels.names) if cid >= 0)


def check_runs_share_categories(model: ModelInput) -> None:
    """The checkpoints among a model's runs must know the same categories (id and name): runs of one
    recipe. Results files are not compared: the categories a run happens to detect may differ, and
    each is checked against the dataset when read."""
    checkpoints = [path for path in model.paths if not _is_results_json(path)]
    if len(checkpoints) < 2:
        return
    from kdeval.models.checkpoint import checkpoint_labels

    first = _known_categories(checkpoint_labels(checkpoints[0]))
    for path in checkpoints[1:]:
        other = _known_categories(checkpoint_labels(path))
        if other != first:
            differing = sorted(first ^ other)
            shown = ", ".join(f"{cid} '{name}'" for cid, name in differing[:4]) + (", …" if len(differing) > 4 else "")
            raise KdevalError(f"model '{model.name}': {path} and {checkpoints[0]} know different categories ({shown} in only "
                              f"one); the runs of one model must share one label space")


def detection_runs_by_model(models: list[ModelInput], split: Split, gt: dict, settings: PredictSettings = PredictSettings(),
                            progress: bool = True, box_format: str = "xywh") -> dict[str, list[list[dict]]]:
    """Every model's COCO detections by name, in the order given: one list per run, in the order of
    its paths (a model of one file has one run).

    This is a command's last collective: under torchrun the ranks leave the job here, rank 0 goes on
    to score and write alone, however long that takes, and the other ranks, their share done, end
    (distributed.RankDone) instead of waiting for it under the collective timeout."""
    for model in models:  # before any model runs
        check_runs_share_categories(model)
    found = {model.name: [_detections_of(path, split, gt, settings, progress, box_format) for path in model.paths]
             for model in models}
    distributed.continue_on_main_rank()
    return found


def detections_by_model(models: list[ModelInput], split: Split, gt: dict, settings: PredictSettings = PredictSettings(),
                        progress: bool = True, box_format: str = "xywh", command: str = "this command") -> dict[str, list[dict]]:
    """Every model's COCO detections by name, for a command that takes one run per model (`command`
    names it in the refusal of a model of several runs); else as detection_runs_by_model."""
    for model in models:
        if model.runs > 1:
            raise KdevalError(f"model '{model.name}' has {model.runs} runs; {command} takes one checkpoint or results file per model")
    return {name: runs[0] for name, runs in detection_runs_by_model(models, split, gt, settings, progress, box_format).items()}


def detections_of_checkpoint(checkpoint: Path, split: Split, settings: PredictSettings = PredictSettings(),
                             use_cache: bool = True, progress: bool = True) -> list[dict]:
    """One checkpoint's detections (`kdeval predict`), on rank 0; the other ranks end here, as in
    detections_by_model."""
    detections = cached_predict(checkpoint, split, settings, use_cache=use_cache, progress=progress)
    distributed.continue_on_main_rank()
    return detections
