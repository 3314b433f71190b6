"""kdeval robustness: mPC/rPC arithmetic, corruptions equal to imagecorruptions' own, fairness
(identical detections run after run), resume after a kill, and the command line."""

from __future__ import annotations

import random
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from kdeval.data.corrupted import (
    CLEAN_SCENARIO, Scenario, corrupt_image, corrupted_rgb, corruption_seed, parse_corruptions, parse_severities,
)
from kdeval.errors import KdevalError
from kdeval.metrics.robustness import corruption_means, robustness_summary, severity_grid
from kdeval.report.robustness_figures import severity_curves, severity_heatmap
from kdeval.vocab import ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS, EXTRA_CORRUPTIONS

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden" / "robustness-benchmark-coco.csv"
# noise-like corruptions whose pixels depend on the random draw (the others are deterministic filters)
RANDOM_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost", "fog",
    "elastic_transform", "speckle_noise", "spatter",
)



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


# ---------------------------------------------------------------- corruptions


@pytest.fixture(scope="module")
def photograph() -> np.ndarray:
    from skimage import data

    return data.chelsea()  # 300×451 RGB photograph: not square, so a transposition would show


@pytest.mark.parametrize("corruption", ALL_CORRUPTIONS)
def test_corruption_equals_a_direct_imagecorruptions_call(photograph, corruption):
    from imagecorruptions import corrupt

    seed = corruption_seed("chelsea.png", corruption, 3, 0)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    ours = corrupt_image(photograph, corruption, 3, seed)
    assert (np.random.get_state()[1] == before).all(), "the caller's global generator must be left as it was"

    # the reference: the library's documented call, its global generators seeded by hand
    np.random.seed(seed)
    random.seed(seed)
    kwargs = {"seed": seed} if corruption in ("impulse_noise", "glass_blur") else {}
    reference = corrupt(photograph.copy(), corruption_name=corruption, severity=3, **kwargs)

    assert ours.dtype == np.uint8 and ours.shape == photograph.shape
    assert np.array_equal(ours, reference)
    assert not np.array_equal(ours, photograph)
    assert np.array_equal(corrupt_image(photograph, corruption, 3, seed), ours)  # same seed, same pixels
    if corruption in RANDOM_CORRUPTIONS:
        assert not np.array_equal(corrupt_image(photograph, corruption, 3, seed + 1), ours)


def test_seeds_depend_on_image_scenario_and_run_seed_only():
    base = corruption_seed("a.png", "fog", 3, 0)
    assert base == corruption_seed("a.png", "fog", 3, 0)
    assert len({base, corruption_seed("b.png", "fog", 3, 0), corruption_seed("a.png", "snow", 3, 0),
                corruption_seed("a.png", "fog", 4, 0), corruption_seed("a.png", "fog", 3, 1)}) == 5
    assert 0 <= base < 2**32


@pytest.mark.parametrize("shape", [(20, 40, 3), (64, 64, 3), (128, 128, 3)])
def test_every_corruption_runs_on_small_images(shape):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    for corruption in ALL_CORRUPTIONS:
        for severity in (1, 5):
            out = corrupt_image(image, corruption, severity, 7)
            assert out.shape == shape and out.dtype == np.uint8, (corruption, severity)


def test_cache_returns_the_same_pixels_without_corrupting_again(tmp_path, monkeypatch, photograph):
    from PIL import Image

    import kdeval.data.corrupted as corrupted

    source = tmp_path / "cat.png"
    Image.fromarray(photograph).save(source)
    scenario = Scenario("snow", 2)
    first = corrupted_rgb(source, "cat.png", scenario, 0, corrupted.CorruptionCache(tmp_path / "cache"))
    assert len(list((tmp_path / "cache").rglob("*.png"))) == 1
    monkeypatch.setattr(corrupted, "corrupt_image", lambda *a, **k: pytest.fail("corrupted again"))
    again = corrupted_rgb(source, "cat.png", scenario, 0, corrupted.CorruptionCache(tmp_path / "cache"))
    assert np.array_equal(first, again)
    assert np.array_equal(corrupted_rgb(source, "cat.png", CLEAN_SCENARIO, 0), photograph)


def test_choices_parse_and_bad_ones_name_the_valid_ones():
    assert parse_corruptions("benchmark") == BENCHMARK_CORRUPTIONS
    assert parse_corruptions("all") == ALL_CORRUPTIONS
    assert parse_corruptions("snow,gaussian_noise,snow") == ("gaussian_noise", "snow")
    assert parse_severities("1-5") == (1, 2, 3, 4, 5)
    assert parse_severities("0,3,5") == (3, 5)
    with pytest.raises(KdevalError, match="unknown corruption 'fogg'.*saturate"):
        parse_corruptions("fog,fogg")
    for bad in ("6", "1-6", "-1", "two", "3-1"):
        with pytest.raises(KdevalError, match="0 \\(clean\\) to 5"):
            parse_severities(bad)


def test_figures_take_a_table_and_touch_no_global_state():
    rows = [(m, "clean", 0, "AP", 0.5) for m in ("a", "b")]
    rows += [(m, c, s, "AP", 0.5 - 0.05 * s) for m in ("a", "b") for c in ("fog", "snow", "saturate") for s in (1, 2, 3)]
    before = dict(matplotlib.rcParams)
    curves = severity_curves(tidy(rows))
    heatmap = severity_heatmap(tidy(rows), "a", vmax=0.5)
    assert dict(matplotlib.rcParams) == before
    panels = [axes for axes in curves.axes if axes.get_visible()]
    assert [p.get_title() for p in panels] == ["snow", "fog", "saturate (extra)"]
    assert all(len(p.get_lines()) == 2 for p in panels)
    assert [t.get_text() for t in heatmap.axes[0].get_xticklabels()] == ["clean", "1", "2", "3", "4", "5"]
