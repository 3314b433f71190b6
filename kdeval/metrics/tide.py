"""The TIDE breakdown (tidecv, box mode): the AP each error type costs, one row per model.

tidecv's own COCO loader reads `segmentation` (missing from box-only ground truth) and, without a
path, downloads annotations; so its Data objects are filled here from the loaded COCO dicts.
Creating a TIDE object changes matplotlib's and seaborn's global style (its Plotter); that is
confined to a matplotlib.rc_context, and its scratch folder (TIDE_PATH) to a folder the caller owns.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pandas as pd

# tidecv's short names, in its order; dAP values it reports in AP points (0–100)
TIDE_MAIN_ERRORS = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
TIDE_SPECIAL_ERRORS = ("FalsePos", "FalseNeg")
TIDE_COLUMNS = ("AP50", *TIDE_MAIN_ERRORS, "FP", "FN")


@contextlib.contextmanager
def tide_context(scratch_dir: Path | str | None = None):
    """matplotlib's global style restored on exit; tidecv's scratch files kept under scratch_dir."""
    import matplotlib

    previous = os.environ.get("TIDE_PATH")
    if scratch_dir is not None:
        os.environ["TIDE_PATH"] = str(scratch_dir)
    try:
        with matplotlib.rc_context():
            yield
    finally:
        if scratch_dir is not None:
            if previous is None:
                os.environ.pop("TIDE_PATH", None)
            else:
                os.environ["TIDE_PATH"] = previous


def _ground_truth(gt: dict):
    from tidecv import Data

    data = Data("ground truth", max_dets=100)
    for image in gt["images"]:
        data.add_image(image["id"], str(image.get("file_name", image["id"])))
    for category in gt["categories"]:
        data.add_class(category["id"], str(category["name"]))
    for ann in gt["annotations"]:
        box = [float(v) for v in ann["bbox"]]
        if ann.get("iscrowd", 0):
            data.add_ignore_region(ann["image_id"], ann["category_id"], box)
        else:
            data.add_ground_truth(ann["image_id"], ann["category_id"], box)
    return data


def _predictions(name: str, detections: list[dict]):
    from tidecv import Data

    data = Data(name, max_dets=100)
    for det in detections:
        data.add_detection(det["image_id"], det["category_id"], float(det["score"]), [float(v) for v in det["bbox"]])
    return data


def run_tide(gt: dict, detections_by_model: dict[str, list[dict]]):
    """A tidecv TIDE holding one box-mode run per model (IoU .5 for positives, .1 for background).
    Call inside tide_context()."""
    from tidecv import TIDE

    tide = TIDE(mode=TIDE.BOX)
    ground_truth = _ground_truth(gt)
    for name, detections in detections_by_model.items():
        run = tide.evaluate(ground_truth, _predictions(name, detections), mode=TIDE.BOX, name=name)
        # computed once here and cached where TIDE looks first, so that one model tidecv cannot
        # score (it divides by zero when no detection is left, e.g. a model that detects nothing)
        # gives a row of NaN instead of taking every other model down with it
        try:
            main = {error.short_name: value for error, value in run.fix_main_errors().items()}
            special = {error.short_name: value for error, value in run.fix_special_errors().items()}
        except ZeroDivisionError:
            main = dict.fromkeys(TIDE_MAIN_ERRORS, float("nan"))
            special = dict.fromkeys(TIDE_SPECIAL_ERRORS, float("nan"))
        tide.run_main_errors[name], tide.run_special_errors[name] = main, special
    return tide


def tide_table(tide) -> pd.DataFrame:
    """Per model: tidecv's AP at IoU .5 and the dAP of each error type, as fractions (0–1)."""
    errors = tide.get_all_errors()
    rows = {}
    for name, run in tide.runs.items():
        main, special = errors["main"][name], errors["special"][name]
        rows[name] = {
            "AP50": run.ap / 100,
            **{e: main[e] / 100 for e in TIDE_MAIN_ERRORS},
            "FP": special["FalsePos"] / 100,
            "FN": special["FalseNeg"] / 100,
        }
    return pd.DataFrame.from_dict(rows, orient="index")[list(TIDE_COLUMNS)]


def tide_errors(gt: dict, detections_by_model: dict[str, list[dict]]) -> pd.DataFrame:
    with tide_context():
        return tide_table(run_tide(gt, detections_by_model))
