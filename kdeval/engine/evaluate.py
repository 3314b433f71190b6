"""Score models side by side: checkpoints or COCO results JSON files → a table of COCO stats."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kdeval.data.coco import load_coco_annotations, load_results
from kdeval.data.source import Split
from kdeval.engine import distributed
from kdeval.engine.predict import PredictSettings, cached_predict
from kdeval.errors import KdevalError
from kdeval.fileio import remove_earlier_outputs, write_json_atomic, write_text_atomic
from kdeval.metrics.coco_ap import coco_stats, per_category_stats
from kdeval.report.tables import to_latex, to_markdown, write_tables
from kdeval.vocab import TABLE_METRICS

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
TRAINED_MODEL_STEM = "model"  # kdeval train writes OUT/model.pt


@dataclass(frozen=True)
class ModelInput:
    """A model on the command line: `path` or `name=path`; a checkpoint or a COCO results JSON."""

    name: str
    path: Path

    @classmethod
    def parse(cls, text: str) -> "ModelInput":
        """`name=path`, or `path` named by its file (`r50.bbox.json` → 'r50.bbox'); a file kdeval's
        training wrote, `model.pt`, is named by its folder (`reports/baseline-r18/model.pt` →
        'baseline-r18'), so that several need no names."""
        name, sep, path = text.partition("=")
        if not sep:
            path, name = text, Path(text).stem
            folder = Path(os.path.abspath(text)).parent.name  # as spelt: a link's own name, not its target's
            if name == TRAINED_MODEL_STEM and folder:
                name = folder
        if not name or not path:
            raise KdevalError(f"'{text}': expected PATH or NAME=PATH")
        return cls(name, Path(path))

    @property
    def is_results_json(self) -> bool:
        return self.path.suffix.lower() == ".json"


def parse_models(texts: list[str]) -> list[ModelInput]:
    models = [ModelInput.parse(text) for text in texts]
    names = [m.name for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise KdevalError(f"model names must differ, '{duplicates[0]}' appears twice (use NAME=PATH)")
    for model in models:
        if not model.path.is_file():
            raise KdevalError(f"{model.path}: model file not found")
        if not model.is_results_json and model.path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise KdevalError(f"{model.path}: expected a checkpoint ({', '.join(CHECKPOINT_SUFFIXES)}) or a COCO results .json")
    return models


def detections_of(model: ModelInput, split: Split, gt: dict, settings: PredictSettings, progress: bool = True,
                  box_format: str = "xywh") -> list[dict] | None:
    """A model's detections: a results file read and checked against the dataset, or a checkpoint run
    (from the cache when it ran before). settings.category_map applies to both. Under torchrun every
    rank runs its share of a checkpoint's images and rank 0 alone gets the detections (None elsewhere)."""
    if model.is_results_json:
        return load_results(model.path, gt, settings.category_map, box_format) if distributed.current().is_main else None
    split.require_images()
    return cached_predict(model.path, split, settings, progress=progress)


def detections_of_models(models: list[ModelInput], split: Split, gt: dict, settings: PredictSettings, progress: bool = True,
                         box_format: str = "xywh") -> dict[str, list[dict]] | None:
    """Every model's detections by name (detections_of); None on the ranks other than 0 under torchrun,
    which have taken their part and have nothing left to do. This is an evaluate, errors or visualize
    run's last collective: under torchrun the ranks leave the job here (distributed.leave), so that
    rank 0 scores and writes alone, however long that takes, and the others exit instead of waiting
    for it under the collective timeout."""
    found = {model.name: detections_of(model, split, gt, settings, progress, box_format) for model in models}
    is_main = distributed.current().is_main
    distributed.leave()
    return found if is_main else None


def resolve_baseline(models: list[ModelInput], baseline: str | None) -> str | None:
    names = [m.name for m in models]
    if baseline is not None and baseline not in names:
        raise KdevalError(f"--baseline '{baseline}' is not one of the models ({', '.join(names)})")
    return baseline


def evaluate_models(
    models: list[ModelInput], split: Split, settings: PredictSettings = PredictSettings(), progress: bool = True,
    box_format: str = "xywh", per_class: dict | None = None,
) -> tuple[pd.DataFrame, dict[str, dict[str, float]]] | None:
    """(table of the paper's six metrics, all 12 COCO stats per model); values 0–1. Pass a dict as
    `per_class` to have it filled with each model's per-category table (per_category_stats).
    None on the ranks other than 0 under torchrun (detections_of_models)."""
    gt = load_coco_annotations(split.annotations)
    detections = detections_of_models(models, split, gt, settings, progress, box_format)
    if detections is None:
        return None
    stats = {}
    for name, found in detections.items():
        stats[name] = coco_stats(gt, found)
        if per_class is not None:
            per_class[name] = per_category_stats(gt, found)
    table = pd.DataFrame.from_dict(stats, orient="index")[list(TABLE_METRICS)]
    return table, stats


def per_class_long(per_class: dict[str, pd.DataFrame], baseline: str | None) -> pd.DataFrame:
    """Tidy: category_id, category, model, metric, value (0–1; empty where COCOeval gives -1, no ground
    truth of the category in that size range), gain over the baseline."""
    rows = []
    for model, table in per_class.items():
        for category_id, row in table.iterrows():
            for metric in TABLE_METRICS:
                value = float(row[metric])
                gain = float("nan")
                if baseline is not None and model != baseline:
                    base = float(per_class[baseline].loc[category_id, metric])
                    gain = value - base if value >= 0 and base >= 0 else float("nan")
                rows.append({"category_id": category_id, "category": row["category"], "model": model,
                             "metric": metric, "value": value if value >= 0 else float("nan"), "gain": gain})
    return pd.DataFrame(rows)


def write_evaluation(table: pd.DataFrame, stats: dict, out_dir: Path, baseline: str | None, split: Split,
                     per_class: dict[str, pd.DataFrame] | None = None) -> list[Path]:
    paths = write_tables(table, out_dir, "ap_table", baseline, caption=f"COCO bbox AP on {split.name}")
    paths.append(write_json_atomic(Path(out_dir) / "coco_stats.json", {"annotations": str(split.annotations), "stats": stats}))
    if per_class:
        paths += write_per_class(per_class, Path(out_dir), baseline, split)
    else:  # an earlier run's per-class tables are of other models or data
        remove_earlier_outputs(Path(out_dir), ("per_class.csv", "per_class.md", "per_class.tex"))
    return paths


def write_per_class(per_class: dict[str, pd.DataFrame], out_dir: Path, baseline: str | None, split: Split) -> list[Path]:
    """per_class.csv (tidy, with gains) and, per metric, categories × models in Markdown and LaTeX."""
    paths = [write_text_atomic(out_dir / "per_class.csv", per_class_long(per_class, baseline).to_csv(index=False, float_format="%.6f"))]
    markdown, latex = [], []
    labels = next(iter(per_class.values()))["category"]
    for metric in TABLE_METRICS:
        wide = pd.DataFrame({model: t[metric] for model, t in per_class.items()})
        wide.index = [f"{labels[i]} ({i})" for i in wide.index]
        by_model = wide.T  # gains are taken between rows, so models are rows until shown
        markdown += [f"### {metric} per category\n", to_markdown(by_model, baseline, transpose=True, row_label="category")]
        latex.append(to_latex(by_model, baseline, caption=f"{metric} per category on {split.name}", transpose=True, row_label="Category"))
    paths.append(write_text_atomic(out_dir / "per_class.md", "\n".join(markdown)))
    paths.append(write_text_atomic(out_dir / "per_class.tex", "\n".join(latex)))
    return paths
