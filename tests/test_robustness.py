"""kdeval robustness: mPC/rPC arithmetic, corruptions equal to imagecorruptions' own, fairness
(identical detections run after run), resume after a kill, and the command line."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from kdeval.metrics.robustness import corruption_means, robustness_summary, severity_grid
from kdeval.vocab import BENCHMARK_CORRUPTIONS, EXTRA_CORRUPTIONS

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden" / "robustness-benchmark-coco.csv"


# ---------------------------------------------------------------- mPC and rPC


def tidy(rows):
    return pd.DataFrame(rows, columns=["model", "corruption", "severity", "metric", "value"])


def test_mpc_and_rpc_against_a_hand_computed_example():
    # AP = 0.01·severity + 0.001·(corruption's index in the benchmark) on every benchmark scenario:
    # mPC = 0.01·mean(1..5) + 0.001·mean(0..14) = 0.03 + 0.007 = 0.037; clean 0.4 → rPC 0.0925.
    # Extras score 0.9 and a -1 (no ground truth) AR row sits beside them: neither may move mPC.
    rows = [("a", "clean", 0, "AP", 0.4), ("b", "clean", 0, "AP", 0.5)]
    for i, corruption in enumerate(BENCHMARK_CORRUPTIONS):
        for severity in range(1, 6):
            rows.append(("a", corruption, severity, "AP", 0.01 * severity + 0.001 * i))
            rows.append(("a", corruption, severity, "ARl", -1.0))
    rows += [("a", extra, s, "AP", 0.9) for extra in EXTRA_CORRUPTIONS for s in range(1, 6)]
    # model b ran two scenarios only: a partial mPC over exactly those two
    rows += [("b", "fog", 1, "AP", 0.3), ("b", "snow", 5, "AP", 0.1)]
    summary = robustness_summary(tidy(rows))
    assert summary.loc["a", "AP"] == pytest.approx(0.4)
    assert summary.loc["a", "mPC"] == pytest.approx(0.037)
    assert summary.loc["a", "rPC"] == pytest.approx(0.0925)
    assert summary.loc["a", "scenarios"] == 75
    assert summary.loc["b", "mPC"] == pytest.approx(0.2) and summary.loc["b", "rPC"] == pytest.approx(0.4)
    assert summary.loc["b", "scenarios"] == 2
    assert list(summary.index) == ["a", "b"]  # the order the models came in
    means = corruption_means(tidy(rows))
    assert means.loc["a", "gaussian_noise"] == pytest.approx(0.03) and means.loc["a", "saturate"] == pytest.approx(0.9)
    grid = severity_grid(tidy(rows), "a")
    assert list(grid.columns) == [0, 1, 2, 3, 4, 5] and (grid[0] == 0.4).all()
    assert grid.loc["shot_noise", 2] == pytest.approx(0.021)


def test_clean_rows_repeated_per_corruption_read_the_same_and_bad_tables_are_refused():
    rows = [("m", c, 0, "AP", 0.5) for c in BENCHMARK_CORRUPTIONS] + [("m", "fog", 1, "AP", 0.25)]
    summary = robustness_summary(tidy(rows))
    assert summary.loc["m", "AP"] == 0.5 and summary.loc["m", "rPC"] == 0.5
    with pytest.raises(ValueError, match="0–5"):
        robustness_summary(tidy([("m", "fog", 6, "AP", 0.1)]))
    with pytest.raises(ValueError, match="two values"):
        robustness_summary(tidy([("m", "fog", 1, "AP", 0.1), ("m", "fog", 1, "AP", 0.2)]))


@pytest.mark.skipif(not GOLDEN.is_file(), reason="the shared golden data is not next to this checkout")
def test_published_benchmark_numbers():
    summary = robustness_summary(pd.read_csv(GOLDEN))
    retinanet = summary.loc["retinanet_r50_fpn_1x"]
    assert (round(100 * retinanet["AP"], 1), round(100 * retinanet["mPC"], 1), round(100 * retinanet["rPC"], 1)) == (35.6, 17.8, 50.1)
    cascade = summary.loc["cascade_rcnn_r50_fpn_1x"]
    assert (round(100 * cascade["AP"], 1), round(100 * cascade["mPC"], 1), round(100 * cascade["rPC"], 1)) == (40.4, 20.1, 49.7)
    assert summary.loc["faster_rcnn_r50_fpn_1x", "rPC"] == pytest.approx(0.4947, abs=5e-5)
    assert (summary["scenarios"] == 75).all()
