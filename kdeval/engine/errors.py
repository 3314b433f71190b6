"""`kdeval errors`' sequence: the models' detections, then where each loses AP."""

from __future__ import annotations

from kdeval.analysis.error_analysis import ErrorAnalysis, analyze_detections, runs_as_columns
from kdeval.data.coco import load_coco_annotations
from kdeval.data.source import Split
from kdeval.engine.detections import ModelInput, detection_runs_by_model
from kdeval.engine.predict import PredictSettings
from kdeval.metrics.bootstrap import BootstrapSettings


def analyze_models(models: list[ModelInput], split: Split, settings: PredictSettings = PredictSettings(),
                   progress: bool = True, box_format: str = "xywh", baseline: str | None = None,
                   bootstrap: BootstrapSettings | None = None) -> ErrorAnalysis:
    """The error curves and TIDE of every model (see detection_runs_by_model for what happens under torchrun)."""
    gt = load_coco_annotations(split.annotations)
    detections = detection_runs_by_model(models, split, gt, settings, progress, box_format)
    # the analysis reads arrays: the detections' millions of dicts and lists are let go before it,
    # or the cyclic collector would walk them all whenever it makes a full pass
    runs = runs_as_columns(detections)
    del detections
    return analyze_detections(gt, runs, baseline, bootstrap)
