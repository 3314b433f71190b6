"""`kdeval visualize`'s sequence: the settings checked, the models' detections, then the gallery's rows."""

from __future__ import annotations

from kdeval.analysis.gallery import VisualizeSettings, Visualization, build_visualization, check_visualize_settings
from kdeval.data.coco import load_coco_annotations
from kdeval.data.source import Split
from kdeval.engine.detections import ModelInput, detections_by_model
from kdeval.engine.predict import PredictSettings


def visualize_models(models: list[ModelInput], split: Split, settings: VisualizeSettings,
                     predict_settings: PredictSettings = PredictSettings(), progress: bool = True) -> Visualization:
    """The gallery of every model on `split` (see detections_by_model for what happens under torchrun)."""
    settings.check_scores()
    images_dir = split.require_images()
    gt = load_coco_annotations(split.annotations)
    check_visualize_settings(settings, gt, len(models))  # before any model runs
    detections = detections_by_model(models, split, gt, predict_settings, progress, command="visualize")
    return build_visualization(gt, detections, images_dir, settings, split.name)
