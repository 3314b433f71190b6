"""`kdeval evaluate`'s sequence: the models' detections, then their COCO stats."""

from __future__ import annotations

from kdeval.analysis.evaluation import Evaluation, evaluate_detections
from kdeval.data.coco import load_coco_annotations
from kdeval.data.source import Split
from kdeval.engine.detections import ModelInput, detections_by_model
from kdeval.engine.predict import PredictSettings


def evaluate_models(models: list[ModelInput], split: Split, settings: PredictSettings = PredictSettings(),
                    progress: bool = True, box_format: str = "xywh", per_class: bool = False) -> Evaluation:
    """Every model scored on `split` (see detections_by_model for what happens under torchrun)."""
    gt = load_coco_annotations(split.annotations)
    return evaluate_detections(gt, detections_by_model(models, split, gt, settings, progress, box_format), per_class)
