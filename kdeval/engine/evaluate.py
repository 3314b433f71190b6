"""`kdeval evaluate`'s sequence: the models' detections, then their COCO stats."""

from __future__ import annotations

from kdeval.analysis.evaluation import Evaluation, evaluate_detections
from kdeval.data.coco import load_coco_annotations
from kdeval.data.source import Split
from kdeval.engine.detections import ModelInput, detection_runs_by_model
from kdeval.engine.predict import PredictSettings
from kdeval.metrics.bootstrap import BootstrapSettings


def evaluate_models(models: list[ModelInput], split: Split, settings: PredictSettings = PredictSettings(),
                    progress: bool = True, box_format: str = "xywh", per_class: bool = False, baseline: str | None = None,
                    bootstrap: BootstrapSettings | None = None) -> Evaluation:
    """Every model (each of its runs) scored on `split` (see detection_runs_by_model for what happens
    under torchrun)."""
    gt = load_coco_annotations(split.annotations)
    detections = detection_runs_by_model(models, split, gt, settings, progress, box_format)
    return evaluate_detections(gt, detections, per_class, baseline, bootstrap)
