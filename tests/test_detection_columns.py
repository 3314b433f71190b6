"""COCO results as columns (kdeval.metrics.detection_columns): the COCO-analyze curves and TIDE read
a run converted once exactly as they read its list, and ids are matched as Python compares them."""

from __future__ import annotations

import numpy as np
import pytest

from reference_analyze import detection_problem
from kdeval.metrics.analyze import error_curves
from kdeval.metrics.cocoeval import detection_arrays
from kdeval.metrics.detection_columns import detection_columns, positions
from kdeval.metrics.tide_errors import resampled_tide, tide_breakdown


def assert_same_arrays(a, b) -> None:
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name


@pytest.mark.parametrize("seed", [0, 1])
def test_curves_and_tide_read_columns_as_they_read_the_list(seed):
    gt, detections = detection_problem(20, 5, 2, 30, seed=seed, integer_boxes=bool(seed))
    columns = detection_columns(detections)
    assert len(columns) == len(detections) and detection_columns(columns) is columns
    assert_same_arrays(detection_arrays(gt, detections, 100), detection_arrays(gt, columns, 100))
    assert np.array_equal(error_curves(gt, detections).precision, error_curves(gt, columns).precision)
    assert tide_breakdown(gt, detections) == tide_breakdown(gt, columns)
    listed, converted = resampled_tide(gt, detections), resampled_tide(gt, columns)
    assert_same_arrays(listed.entries, converted.entries)
    assert np.array_equal(listed.positives_by_image, converted.positives_by_image)


def test_columns_of_no_detections():
    columns = detection_columns([])
    assert columns.image_id.dtype == np.int64 and columns.bbox.shape == (0, 4) and len(columns) == 0


def test_ids_are_matched_as_python_compares_them():
    table = np.array([1, 3, 90], dtype=np.int64)
    # plain ints: one int64 column, looked up by searching the table
    where, found = positions(detection_columns([{"image_id": i, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}
                                                for i in (3, 2, 90)]).image_id, table)
    assert found.tolist() == [True, False, True] and where[found].tolist() == [1, 2]
    # anything else is kept as given: 3.0 is id 3 (as a dict of ids finds it), 1.5 and "3" are no id,
    # nor is an id beyond int64; numpy would have truncated 1.5 to 1 and parsed "3"
    odd = [3.0, 1.5, "3", 2**70, True]
    column = detection_columns([{"image_id": i, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1} for i in odd]).image_id
    assert column.dtype == object and column.tolist() == odd
    where, found = positions(column, table)
    assert found.tolist() == [True, False, False, False, True] and where[found].tolist() == [1, 0]


def test_curves_drop_detections_whose_ids_are_not_the_datasets_as_before():
    gt, detections = detection_problem(10, 3, 1, 10, seed=3)
    strays = [dict(detections[0], image_id=2**70), dict(detections[1], category_id="1"), dict(detections[2], image_id=0.5)]
    assert_same_arrays(detection_arrays(gt, detections, 100), detection_arrays(gt, [*strays, *detections], 100))


def test_ragged_boxes_are_refused():
    with pytest.raises(ValueError):
        detection_columns([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 1},
                           {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1, 1], "score": 1}])



def test_an_analysis_of_columns_equals_the_analysis_of_the_lists():
    from kdeval.analysis.error_analysis import analyze_detections, runs_as_columns

    gt, first = detection_problem(15, 4, 2, 20, seed=4)
    _, second = detection_problem(15, 4, 2, 20, seed=5)
    listed = {"a": first, "b": [first, second], "c": []}
    converted = runs_as_columns(listed)
    assert [len(runs) for runs in converted.values()] == [1, 2, 1]
    assert runs_as_columns({"a": converted["a"][0], "b": converted["b"]})["b"] == converted["b"]
    by_lists, by_columns = analyze_detections(gt, listed, "a"), analyze_detections(gt, converted, "a")
    for name in listed:
        assert np.array_equal(by_lists.curves[name].precision, by_columns.curves[name].precision)
    assert by_lists.tide_intervals.equals(by_columns.tide_intervals) and by_lists.ap_intervals.equals(by_columns.ap_intervals)
