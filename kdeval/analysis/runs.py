"""Detections of a model as runs: one list of COCO results per training run (seed) of its recipe."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from kdeval.metrics.bootstrap import BootstrapSettings, resample_counts

Runs = list[list[dict]]


def as_runs(detections: Mapping[str, list]) -> dict[str, Runs]:
    """{model: detections} or {model: [detections of each run]} → {model: runs}. A model's value
    is one run when it is empty or its first item is a detection (a dict)."""
    runs = {}
    for model, value in detections.items():
        single = not value or isinstance(value[0], dict)
        runs[model] = [list(value)] if single else [list(run) for run in value]
    return runs


def resamples_of(gt: dict, bootstrap: BootstrapSettings | None) -> np.ndarray | None:
    """The image resamples every model of one analysis shares (images in id order), or None."""
    if bootstrap is None or not bootstrap.enabled:
        return None
    return resample_counts(len({image["id"] for image in gt["images"]}), bootstrap.resamples, bootstrap.seed)
