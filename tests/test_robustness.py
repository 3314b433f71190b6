"""kdeval robustness: mPC/rPC arithmetic, corruptions equal to imagecorruptions' own, fairness
(identical detections run after run), resume after a kill, and the command line."""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from kdeval.cli import app
from kdeval.data.corrupted import (
    CLEAN_SCENARIO, Scenario, corrupt_image, corrupted_rgb, corruption_seed, parse_corruptions, parse_severities,
)
from kdeval.errors import KdevalError
from kdeval.metrics.robustness import corruption_means, robustness_summary, severity_grid
from kdeval.report.robustness_figures import severity_curves, severity_heatmap
from kdeval.vocab import ALL_CORRUPTIONS, BENCHMARK_CORRUPTIONS, COCO_STAT_NAMES, EXTRA_CORRUPTIONS

from conftest import noisy_detections, shapes_args
from test_cli import assert_user_error

runner = CliRunner()
GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden" / "robustness-benchmark-coco.csv"
# noise-like corruptions whose pixels depend on the random draw (the others are deterministic filters)
RANDOM_CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost", "fog",
    "elastic_transform", "speckle_noise", "spatter",
)


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


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
    assert [t.get_text() for t in heatmap.axes[0].get_xticklabels()] == ["clean", "1", "2", "3"]  # only severities run


def test_tables_written_again_drop_the_figures_of_models_no_longer_shown(tmp_path):
    """A rerun of a folder with fewer models, or the clean images alone, leaves no figure or table of
    the earlier run beside its own (the report page would show them as this run's)."""
    from kdeval.report.robustness_tables import write_robustness_tables

    rows = [(m, "clean", 0, "AP", 0.5) for m in ("a", "b")]
    rows += [(m, c, s, "AP", 0.5 - 0.05 * s) for m in ("a", "b") for c in ("fog", "snow") for s in (1, 2)]
    write_robustness_tables(tidy(rows), tmp_path, "two models")
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "ap_vs_severity.pdf", "ap_vs_severity.png", "heatmap-a.pdf", "heatmap-a.png", "heatmap-b.pdf", "heatmap-b.png"]
    write_robustness_tables(tidy([r for r in rows if r[0] == "a"]), tmp_path, "one model")
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "ap_vs_severity.pdf", "ap_vs_severity.png", "heatmap-a.pdf", "heatmap-a.png"]
    write_robustness_tables(tidy([r for r in rows if r[1] == "clean"]), tmp_path, "clean only")
    assert not list((tmp_path / "figures").iterdir()) and not (tmp_path / "robustness_by_corruption.csv").exists()


# ---------------------------------------------------------------- the command


ROBUST_ARGS = ["--device", "cpu", "--no-progress", "--batch-size", "4"]
SMALL_RUN = ["--corruptions", "gaussian_noise,fog,saturate", "--severities", "1,4"]


def detections_of(out: Path, model: str) -> dict[str, list]:
    folder = out / "detections" / model
    return {path.name: json.loads(gzip.decompress(path.read_bytes())) for path in sorted(folder.glob("*.json.gz"))}


def test_robustness_command_end_to_end(tiny_shapes, trained, tmp_path):
    out = tmp_path / "rob"
    result = run("robustness", f"base={trained}", f"same={trained}", *shapes_args(tiny_shapes), *ROBUST_ARGS,
                 *SMALL_RUN, "--workers", 0, "--baseline", "base", "--out", out)
    assert result.exit_code == 0, result.output
    assert "AP" in result.stdout and "mPC" in result.stdout and "rPC" in result.stdout
    assert "PARTIAL mPC" in result.stdout and "4 of the 75" in result.stdout  # 2 benchmark corruptions × 2 severities
    assert "+0.0 [+0.0, +0.0]" in result.stdout  # the same checkpoint under two names gains nothing, in every resample
    assert "14 scenario(s) run, 0 reused" in result.stdout  # 2 models × (clean + 3 corruptions × 2 severities)

    table = pd.read_csv(out / "robustness.csv")
    assert list(table.columns) == ["model", "corruption", "severity", "metric", "value"]
    assert len(table) == 2 * 7 * 12 and set(table["metric"]) == set(COCO_STAT_NAMES)
    assert set(table["corruption"]) == {"clean", "gaussian_noise", "fog", "saturate"}

    # clean images give exactly the detections `kdeval predict` gives
    assert run("predict", trained, *shapes_args(tiny_shapes), "-o", tmp_path / "p.json", "--device", "cpu", "--no-progress").exit_code == 0
    assert detections_of(out, "base")["clean-0.json.gz"] == json.loads((tmp_path / "p.json").read_text())
    assert detections_of(out, "base") == detections_of(out, "same")

    summary = (out / "robustness_summary.md").read_text()
    assert "| model | AP | mPC | rPC |" in summary and "PARTIAL" in summary and "saturate" in summary
    assert r"\begin{tabular}" in (out / "robustness_summary.tex").read_text()
    assert pd.read_csv(out / "robustness_summary.csv").columns[-1] == "scenarios"
    assert set(pd.read_csv(out / "robustness_summary_intervals.csv")["metric"]) == {"AP", "mPC", "rPC"}
    for name in ("ap_vs_severity", "heatmap-base", "heatmap-same"):
        for suffix in ("png", "pdf"):
            assert (out / "figures" / f"{name}.{suffix}").stat().st_size > 1000

    # a rerun runs nothing; different settings are refused, not mixed in
    again = run("robustness", f"base={trained}", f"same={trained}", *shapes_args(tiny_shapes), *ROBUST_ARGS, *SMALL_RUN, "--workers", 0, "--out", out)
    assert "0 scenario(s) run, 14 reused" in again.stdout
    assert_user_error(run("robustness", f"base={trained}", *shapes_args(tiny_shapes), *ROBUST_ARGS, *SMALL_RUN, "--seed", 1, "--out", out), "seed 0 there, 1 now", "--overwrite")
    assert_user_error(run("robustness", f"base={trained}", *shapes_args(tiny_shapes), *ROBUST_ARGS, *SMALL_RUN, "--max-images", 2, "--out", out), "max_images", "--overwrite")
    fresh = run("robustness", f"base={trained}", *shapes_args(tiny_shapes), *ROBUST_ARGS, *SMALL_RUN, "--seed", 1, "--out", out, "--overwrite")
    assert fresh.exit_code == 0 and "7 scenario(s) run, 0 reused" in fresh.stdout


@pytest.mark.slow
def test_two_runs_and_any_worker_count_give_identical_detections(tiny_shapes, trained, tmp_path, monkeypatch):
    """Fairness: the corrupted pixels depend on neither the process nor the run, nor the cache."""
    common = [f"m={trained}", *shapes_args(tiny_shapes), *ROBUST_ARGS, "--corruptions", "all", "--severities", "3"]
    assert run("robustness", *common, "--workers", 0, "--out", tmp_path / "a").exit_code == 0
    # scenarios scored in two spawned processes while the model runs on: the same files
    from kdeval.engine.robustness import scoring

    handed_over = []
    monkeypatch.setattr(scoring.ScenarioScorers, "submit",
                        lambda self, *args, _submit=scoring.ScenarioScorers.submit: handed_over.append(args[2]) or _submit(self, *args))
    result = run("robustness", *common, "--workers", 2, "--scoring-processes", 2, "--cache", tmp_path / "cache", "--out", tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert len(handed_over) == 20  # every scenario went to the scoring processes
    assert len(list((tmp_path / "cache").rglob("*.png"))) == 19 * 6  # 19 corruptions × 6 images
    cached = run("robustness", *common, "--workers", 0, "--cache", tmp_path / "cache", "--out", tmp_path / "c")
    assert cached.exit_code == 0, cached.output
    first = detections_of(tmp_path / "a", "m")
    assert len(first) == 20 and first == detections_of(tmp_path / "b", "m") == detections_of(tmp_path / "c", "m")
    assert (tmp_path / "a" / "robustness.csv").read_bytes() == (tmp_path / "c" / "robustness.csv").read_bytes()
    assert (tmp_path / "a" / "robustness.csv").read_bytes() == (tmp_path / "b" / "robustness.csv").read_bytes()
    scored_apart = sorted((tmp_path / "b" / "scenarios" / "m").glob("*.json"))
    assert [p.name for p in scored_apart] == sorted(p.name for p in (tmp_path / "a" / "scenarios" / "m").glob("*.json"))
    assert all(p.read_bytes() == (tmp_path / "a" / "scenarios" / "m" / p.name).read_bytes() for p in scored_apart)


@pytest.mark.slow
def test_postprocessing_one_push_later_changes_no_file(tiny_shapes, trained, tmp_path, monkeypatch, cpu_captures):
    """Two models per batch, each postprocessed after the next one's network was launched (as on CUDA,
    here forced on the CPU): the same detections, stats and image counts, every scenario finished;
    and so again with each model's network replayed from its graphs (`--cuda-graphs`, the CPU's
    stand-in capture), while the other model's outputs wait."""
    from kdeval.engine.predict import OverlappedPostprocessing

    common = [f"m={trained}", f"n={trained}", *shapes_args(tiny_shapes), *ROBUST_ARGS, *SMALL_RUN, "--max-images", 6, "--workers", 0]
    at_once = run("robustness", *common, "--out", tmp_path / "a")
    assert at_once.exit_code == 0, at_once.output
    pushed = []
    monkeypatch.setattr(OverlappedPostprocessing, "DEFER_ON", ("cpu", "cuda"))
    monkeypatch.setattr(OverlappedPostprocessing, "push", lambda self, *a, _push=OverlappedPostprocessing.push: pushed.append(
        len(got := _push(self, *a))) or got)
    deferred = run("robustness", *common, "--out", tmp_path / "b")
    assert deferred.exit_code == 0, deferred.output
    assert pushed[0] == 0 and set(pushed[1:]) == {1} and len(pushed) == 7 * 2 * 2  # 7 scenarios × 2 batches × 2 models
    assert "14 scenario(s) run, 0 reused" in deferred.stdout and at_once.stdout.replace(str(tmp_path / "a"), str(tmp_path / "b")) == deferred.stdout
    graphed = run("robustness", *common, "--cuda-graphs", "--out", tmp_path / "c")
    assert graphed.exit_code == 0, graphed.output
    assert sorted(cpu_captures) == [(2, 3, 64, 64)] * 2 + [(4, 3, 64, 64)] * 2  # each model's two batch shapes
    for model in ("m", "n"):
        assert len(detections_of(tmp_path / "a", model)) == 7
        assert detections_of(tmp_path / "a", model) == detections_of(tmp_path / "b", model) == detections_of(tmp_path / "c", model)
    assert (tmp_path / "a" / "robustness.csv").read_bytes() == (tmp_path / "b" / "robustness.csv").read_bytes()
    assert (tmp_path / "a" / "robustness.csv").read_bytes() == (tmp_path / "c" / "robustness.csv").read_bytes()


@pytest.mark.slow
def test_a_kill_loses_at_most_the_scenario_in_flight(tiny_shapes, trained, tmp_path):
    args = [f"m={trained}", *shapes_args(tiny_shapes), *ROBUST_ARGS, "--corruptions", "gaussian_noise,fog,contrast", "--severities", "1-5", "--workers", "0"]
    reference = run("robustness", *args, "--out", tmp_path / "whole")
    assert reference.exit_code == 0, reference.output

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen([sys.executable, "-m", "kdeval", "robustness", *args, "--out", str(out)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finished = out / "scenarios" / "m"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline and len(list(finished.glob("*.json"))) < 2:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    done = len(list(finished.glob("*.json")))
    assert 2 <= done < 16

    resumed = run("robustness", *args, "--out", out)
    assert resumed.exit_code == 0, resumed.output
    assert f"{16 - done} scenario(s) run, {done} reused" in resumed.stdout
    assert (out / "robustness.csv").read_bytes() == (tmp_path / "whole" / "robustness.csv").read_bytes()
    assert detections_of(out, "m") == detections_of(tmp_path / "whole", "m")

    # a damaged result file is run again, never trusted
    (finished / "fog-2.json").write_text("{ half a fi")
    again = run("robustness", *args, "--out", out)
    assert "1 scenario(s) run, 15 reused" in again.stdout
    assert (out / "robustness.csv").read_bytes() == (tmp_path / "whole" / "robustness.csv").read_bytes()


def test_bad_robustness_input_gets_one_line_and_exit_2(tiny_shapes, trained, tmp_path):
    base = [f"m={trained}", *shapes_args(tiny_shapes), "--device", "cpu", "--no-progress", "--out", tmp_path / "o"]
    assert_user_error(run("robustness", *base, "--corruptions", "fog,haze"), "unknown corruption 'haze'", "jpeg_compression", "saturate")
    assert_user_error(run("robustness", *base, "--severities", "0-7"), "outside 0–5")
    assert_user_error(run("robustness", *base, "--severities", "6"), "outside 0–5")
    dets = tmp_path / "d.json"
    dets.write_text("[]")
    assert_user_error(run("robustness", dets, *shapes_args(tiny_shapes)), "give a checkpoint")
    assert_user_error(run("robustness", f"m={trained}", *shapes_args(tiny_shapes), "--baseline", "x"), "--baseline 'x'")
    # a run that failed before finishing any scenario does not block the next one
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert_user_error(run("robustness", f"m={junk}", *shapes_args(tiny_shapes), "--out", tmp_path / "o2"), "junk.pt")
    quick = ["--corruptions", "fog", "--severities", "1", "--max-images", 2, "--device", "cpu", "--no-progress"]
    result = run("robustness", f"m={trained}", *shapes_args(tiny_shapes), *quick, "--out", tmp_path / "o2")
    assert result.exit_code == 0, result.output


def test_help_shows_an_example():
    result = run("robustness", "--help")
    assert result.exit_code == 0 and "Example" in result.output and "--corruptions" in result.output


@pytest.mark.parametrize("corruptions,severities,way,limit,scorers,resumed,data", [
    # images of three shapes (mixed_shapes): each rank runs its share of the batching order
    ("fog", "1", "images", [], [], False, "mixed_shapes"),
    # 2 images, one batch of 2: rank 1 has none, yet gathers and scores every other scenario
    ("fog,snow", "1", "images", ["--max-images", "2"], ["--scoring-processes", "1"], False, "tiny_shapes"),
    # 9 scenarios: 4 whole ones per rank, and the ninth split by images; one scoring process per rank
    # scores both kinds, and the whole ones' loader worker is forked while it is alive (as beside a GPU);
    # two models, extending a run that has 3 scenarios of one model: scenarios need 1 or 2 models
    ("fog,snow,contrast,pixelate", "1,2", "scenarios", [], ["--scoring-processes", "1", "--workers", "1"], True, "tiny_shapes"),
])
@pytest.mark.slow
def test_torchrun_shards_robustness_and_matches_one_process(request, trained, tmp_path, corruptions, severities, way, limit,
                                                            scorers, resumed, data):
    """Two gloo ranks give the same files as one process, whether they split images (few scenarios:
    each finished one gathered and scored on the ranks in turn) or run whole scenarios (many; the
    odd one out split by images), with or without a scoring process beside each rank, when a rank
    gets no images at all, and when they extend an earlier run whose scenarios need different models."""
    import os
    import sys

    from conftest import confident_checkpoint, run_whole_group, shapes_args
    from kdeval.engine.robustness.scheduling import SCENARIOS_PER_RANK

    n_scenarios = 1 + len(corruptions.split(",")) * len(severities.split(","))
    assert (n_scenarios >= SCENARIOS_PER_RANK * 2) == (way == "scenarios")
    model = confident_checkpoint(trained, tmp_path / "confident.pt")  # many boxes to compare
    models = [f"m={model}", f"m2={trained}"] if resumed else [f"m={model}"]
    common = [*shapes_args(request.getfixturevalue(data)), "--device", "cpu", "--no-progress", "--batch-size", "2", *limit]
    args = ["robustness", *models, "--corruptions", corruptions, "--severities", severities, *common]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one_process = [sys.executable, "-m", "kdeval"]
    two_ranks = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "kdeval"]
    runs = [(one_process, args, "one")]
    if resumed:  # the earlier run: clean, fog-1 and snow-1 of m alone, in one process
        runs.append((one_process, ["robustness", f"m={model}", "--corruptions", "fog,snow", "--severities", "1", *common], "two"))
    runs.append((two_ranks, [*args, *scorers], "two"))  # the single process scores in itself
    for launcher, run_args, out in runs:
        done = run_whole_group([*launcher, *run_args, "--out", str(tmp_path / out)], env, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = tmp_path / "one", tmp_path / "two"
    assert (one / "robustness.csv").read_bytes() == (two / "robustness.csv").read_bytes()
    files = sorted(p.relative_to(one) for p in (one / "detections").rglob("*.json.gz"))
    assert len(files) == n_scenarios * len(models)
    assert all((one / f).read_bytes() == (two / f).read_bytes() for f in files)


# ---------------------------------------------------------------- importing mmdetection's results


MMDET_FLAT = {"AP": "mAP", "AP50": "mAP_50", "AP75": "mAP_75", "APs": "mAP_s", "APm": "mAP_m", "APl": "mAP_l"}


def mmdet_results(table: pd.DataFrame, spelling: str = "bbox") -> dict:
    """A tidy table as mmdetection's test_robustness.py pickles it: {corruption: {severity: metrics}},
    clean results repeated under every corruption. 'bbox': {'bbox': {'AP': np.float64}} as its
    coco_eval_with_return wrote it; 'bbox_mAP' / 'coco/bbox_mAP': the flat keys of dataset.evaluate()
    (an OrderedDict with a copypaste string) and of mmdetection 3 (plain floats)."""
    from collections import OrderedDict

    results: dict = {}
    for row in table.itertuples():
        scenario = results.setdefault(row.corruption, {}).setdefault(int(row.severity), OrderedDict() if spelling == "bbox_mAP" else {})
        if spelling == "bbox":
            scenario.setdefault("bbox", {})[row.metric] = np.float64(row.value)
        elif row.metric in MMDET_FLAT:
            prefix = "coco/bbox_" if spelling == "coco/bbox_mAP" else "bbox_"
            scenario[prefix + MMDET_FLAT[row.metric]] = round(float(row.value), 6) if spelling == "bbox_mAP" else float(row.value)
            scenario[prefix + "mAP_copypaste"] = "0.356 0.555 0.383 0.200 0.396 0.468"
    return results


def write_pickle(path: Path, obj, protocol: int = 2) -> Path:
    import pickle

    path.write_bytes(pickle.dumps(obj, protocol=protocol))  # mmcv's dump writes protocol 2
    return path


def summary_row(stdout: str, model: str) -> list[str]:
    return next(line.split() for line in stdout.splitlines() if line.split()[:1] == [model])


@pytest.mark.slow
@pytest.mark.skipif(not GOLDEN.is_file(), reason="the shared golden data is not next to this checkout")
def test_imported_mmdet_results_give_the_published_numbers(tmp_path):
    golden = pd.read_csv(GOLDEN)
    retinanet = write_pickle(tmp_path / "retinanet_results.pkl", mmdet_results(golden[golden["model"] == "retinanet_r50_fpn_1x"]))
    cascade = write_pickle(tmp_path / "cascade_results.pkl", mmdet_results(golden[golden["model"] == "cascade_rcnn_r50_fpn_1x"], "bbox_mAP"))
    out = tmp_path / "rob"

    result = run("robustness", "--import", retinanet, "--name", "retinanet", "--out", out)
    assert result.exit_code == 0, result.output
    assert summary_row(result.stdout, "retinanet") == ["retinanet", "35.6", "17.8", "50.1"]
    assert "PARTIAL" not in result.stdout and "imported from mmdetection" in result.stdout
    summary = pd.read_csv(out / "robustness_summary.csv", index_col="model")
    assert (round(100 * summary.loc["retinanet", "AP"], 1), round(100 * summary.loc["retinanet", "mPC"], 1),
            round(100 * summary.loc["retinanet", "rPC"], 1)) == (35.6, 17.8, 50.1)
    assert summary.loc["retinanet", "scenarios"] == 75

    # the tidy table is kdeval's own: clean once under 'clean', every metric, all 19 corruptions
    table = pd.read_csv(out / "robustness.csv")
    assert list(table.columns) == ["model", "corruption", "severity", "metric", "value"]
    assert len(table) == (1 + 19 * 5) * 12 and set(table["metric"]) == set(COCO_STAT_NAMES)
    assert set(table.loc[table["severity"] == 0, "corruption"]) == {"clean"}
    assert (out / "imported" / "retinanet.csv").is_file()
    assert "| retinanet | 35.6 | 17.8 | 50.1 |" in (out / "robustness_summary.md").read_text()

    # a second import, in the later flat spelling, joins the first; gains against a baseline
    result = run("robustness", "--import", cascade, "--name", "cascade", "--baseline", "retinanet", "--out", out)
    assert result.exit_code == 0, result.output
    # gains are the differences of the shown values: 20.1 − 17.8 = +2.3 (the unrounded difference rounds to +2.2)
    assert summary_row(result.stdout, "cascade") == ["cascade", "40.4", "(+4.8)", "20.1", "(+2.3)", "49.7", "(-0.4)"]
    assert summary_row(result.stdout, "retinanet") == ["retinanet", "35.6", "17.8", "50.1"]
    summary = pd.read_csv(out / "robustness_summary.csv", index_col="model")
    assert round(100 * summary.loc["cascade", "rPC"], 1) == 49.7 and summary.loc["cascade", "scenarios"] == 75
    for name in ("ap_vs_severity", "heatmap-retinanet", "heatmap-cascade"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    by_corruption = pd.read_csv(out / "robustness_by_corruption.csv", index_col=0)
    assert list(by_corruption.index) == ["cascade", "retinanet"] and by_corruption.shape[1] == 19

    # importing a name again replaces it
    halved = golden[golden["model"] == "retinanet_r50_fpn_1x"].assign(value=lambda t: t["value"] / 2)
    again = run("robustness", "--import", write_pickle(tmp_path / "half.pkl", mmdet_results(halved, "coco/bbox_mAP")),
                "--name", "retinanet", "--out", out)
    assert again.exit_code == 0, again.output
    assert summary_row(again.stdout, "retinanet")[1:3] == ["17.8", "8.9"]
    table = pd.read_csv(out / "robustness.csv")
    assert len(table[table["model"] == "retinanet"]) == (1 + 19 * 5) * 6  # the flat spelling has the six AP metrics


def hand_results(clean=0.4, **overrides) -> dict:
    """A tiny mmdetection result: clean AP `clean` (copied under both corruptions, as mmdetection
    does), fog at severity 2 and snow at severity 5."""
    clean_metrics = {"bbox": {"AP": clean, "AP50": 0.6, "ARl": -1.0}}
    results = {"fog": {0: clean_metrics, 2: {"bbox": {"AP": 0.3, "AP50": 0.5}}},
               "snow": {0: clean_metrics, 5: {"bbox": {"AP": 0.1}}}}
    results.update(overrides)
    return results


def test_the_reader_accepts_mmdetections_spellings_and_numpy_scalars(tmp_path):
    import collections

    from kdeval.data.mmdet_robustness import read_mmdet_robustness

    # clean first, then corruptions in the benchmark's order (snow before fog), metrics in COCOeval's
    expected = [("clean", 0, "AP", 0.4), ("clean", 0, "AP50", 0.6), ("clean", 0, "ARl", -1.0),
                ("snow", 5, "AP", 0.1), ("fog", 2, "AP", 0.3), ("fog", 2, "AP50", 0.5)]
    as_numpy = {c: {s: {"bbox": {k: np.float32(v) if k == "AP50" else np.float64(v) for k, v in m["bbox"].items()}}
                    for s, m in by.items()} for c, by in hand_results().items()}
    for protocol in (0, 2, 4, 5):
        imported = read_mmdet_robustness(write_pickle(tmp_path / f"p{protocol}.pkl", as_numpy, protocol), "m")
        rows = list(imported.table.drop(columns="model").itertuples(index=False, name=None))
        assert [r[:3] for r in rows] == [e[:3] for e in expected] and np.allclose([r[3] for r in rows], [e[3] for e in expected])
        assert all(type(value) is float for value in imported.table["value"].tolist())
        assert imported.scenarios == 3 and imported.notes == ()

    flat = {"fog": {0: collections.OrderedDict(bbox_mAP=0.4, bbox_mAP_50=0.6, bbox_mAP_copypaste="0.4 0.6", segm_mAP=0.3),
                    3: collections.OrderedDict(bbox_mAP=0.2)}}
    imported = read_mmdet_robustness(write_pickle(tmp_path / "flat.pkl", flat), "m")
    assert imported.table[["corruption", "severity", "metric", "value"]].values.tolist() == [
        ["clean", 0, "AP", 0.4], ["clean", 0, "AP50", 0.6], ["fog", 3, "AP", 0.2]]
    assert imported.notes == ("left out keys kdeval does not tabulate: segm_mAP",)  # said, never silently dropped
    assert imported.layout == "{'bbox_mAP': ..}"
    v3 = {"None": {0: {"coco/bbox_mAP": 0.41, "coco/bbox_mAP_l": -1.0}}}  # mmdetection's --corruptions None
    assert read_mmdet_robustness(write_pickle(tmp_path / "v3.pkl", v3), "m").table["corruption"].tolist() == ["clean", "clean"]

    # clean copies that differ (results merged from separate runs): P is their mean, and a note says so
    differing = hand_results(snow={0: {"bbox": {"AP": 0.5}}, 5: {"bbox": {"AP": 0.1}}})
    imported = read_mmdet_robustness(write_pickle(tmp_path / "d.pkl", differing), "m")
    clean = imported.table[(imported.table["severity"] == 0) & (imported.table["metric"] == "AP")]
    assert clean["value"].tolist() == [pytest.approx(0.45)] and "differs between corruptions" in imported.notes[0]
    no_clean = read_mmdet_robustness(write_pickle(tmp_path / "nc.pkl", {"fog": {1: {"bbox": {"AP": 0.2}}}}), "m")
    assert "no severity 0" in no_clean.notes[0]


@pytest.mark.parametrize("results, fragments", [
    ([1, 2], ["expected mmdetection's robustness results", "got list"]),
    ({}, ["got an empty dict"]),
    ({"haze": {1: {"bbox": {"AP": 0.2}}}}, ["['haze']", "unknown corruption", "jpeg_compression"]),
    ({"fog": [0.2]}, ["['fog']", "severity → metrics"]),
    ({"fog": {6: {"bbox": {"AP": 0.2}}}}, ["['fog'][6]", "0 (clean) to 5"]),
    ({"fog": {"2": {"bbox": {"AP": 0.2}}}}, ["['fog']['2']", "integers"]),
    ({"fog": {True: {"bbox": {"AP": 0.2}}}}, ["['fog'][True]", "integers"]),
    ({"None": {2: {"bbox": {"AP": 0.2}}}}, ["['None'][2]", "clean-only"]),
    ({"fog": {2: {"bbox": {"AP": float("nan")}}}}, ["['fog'][2]['bbox']['AP']", "finite number"]),
    ({"fog": {2: {"bbox": {"AP": "0.3"}}}}, ["['fog'][2]['bbox']['AP']", "finite number"]),
    ({"fog": {2: {"bbox": {"AP": True}}}}, ["['fog'][2]['bbox']['AP']", "finite number"]),
    ({"fog": {2: {"bbox": {"AP": 35.6}}}}, ["['fog'][2]['bbox']['AP']", "outside 0–1", "percentage"]),
    ({"fog": {2: {"bbox": {"AP": 0.3, "bbox_mAP": 0.3}}}}, ["['fog'][2]['bbox']['bbox_mAP']", "also given as 'AP'"]),
    ({"fog": {2: {"bbox": {"AP50": 0.3}}}}, ["['fog'][2]['bbox']", "no bbox AP"]),
    ({"fog": {2: {"segm": {"AP": 0.3}}}}, ["['fog'][2]", "only segm"]),
    ({"fog": {2: [{"ap": [0.5]}]}}, ["['fog'][2]", "Pascal VOC"]),
    ({"fog": {2: {"bbox": [0.3]}}}, ["['fog'][2]['bbox']", "dict of metrics"]),
])
def test_malformed_results_get_one_line_naming_the_file_and_key(tmp_path, results, fragments):
    path = write_pickle(tmp_path / "bad_results.pkl", results)
    assert_user_error(run("robustness", "--import", path, "--name", "m", "--out", tmp_path / "rob"), "bad_results.pkl", *fragments)
    assert not (tmp_path / "rob" / "imported").exists()


def test_import_flags_are_checked(tmp_path):
    path = write_pickle(tmp_path / "r.pkl", hand_results())
    out = ["--out", tmp_path / "rob"]
    assert_user_error(run("robustness", "--import", path, *out), "--import FILE and --name NAME go together")
    assert_user_error(run("robustness", "--name", "m", *out), "--import FILE and --name NAME go together")
    assert_user_error(run("robustness", *out), "give MODEL checkpoints to run, or --import")
    assert_user_error(run("robustness", "--import", tmp_path / "none.pkl", "--name", "m", *out), "none.pkl", "not found")
    assert_user_error(run("robustness", "--import", path, "--name", " ", *out), "--name")
    assert_user_error(run("robustness", "--import", path, "--name", "m", "--severities", "3", *out), "--severities", "MODEL")
    assert_user_error(run("robustness", "--import", path, "--name", "m", "--overwrite", *out), "--overwrite")
    assert_user_error(run("robustness", "--import", path, "--name", "m", "--baseline", "x", *out), "--baseline 'x'", "(m)")
    assert not (tmp_path / "rob" / "imported").exists()  # nothing is stored by a refused command
    (tmp_path / "garbage.pkl").write_bytes(b"\x80\x04not a pickle")
    assert_user_error(run("robustness", "--import", tmp_path / "garbage.pkl", "--name", "m", *out), "garbage.pkl", "not a readable pickle")
    result = run("robustness", "--import", path, "--name", "m", *out)
    assert result.exit_code == 0, result.output
    # two names that share a file name are refused rather than overwriting each other
    assert run("robustness", "--import", path, "--name", "a b", *out).exit_code == 0
    assert_user_error(run("robustness", "--import", path, "--name", "a_b", *out), "'a b' in", "shares the file name a_b.csv")
    # partial imports are labelled as partial, like partial runs
    assert "PARTIAL mPC" in result.stdout and "2 of the 75" in result.stdout


def test_imports_sit_beside_kdevals_own_models(tiny_shapes, trained, tmp_path):
    out = tmp_path / "rob"
    quick = [*shapes_args(tiny_shapes), *ROBUST_ARGS, "--corruptions", "fog", "--severities", "2", "--max-images", 2, "--out", out]
    mmdet = write_pickle(tmp_path / "mm_results.pkl", hand_results())

    # with MODEL arguments: the import is stored first, then the run's report shows both
    result = run("robustness", f"own={trained}", *quick, "--import", mmdet, "--name", "mm", "--baseline", "own")
    assert result.exit_code == 0, result.output
    assert summary_row(result.stdout, "mm")[1] == "40.0" and "imported from mmdetection" in result.stdout
    table = pd.read_csv(out / "robustness.csv")
    assert list(dict.fromkeys(table["model"])) == ["own", "mm"]
    assert set(pd.read_csv(out / "robustness_summary.csv")["model"]) == {"own", "mm"}
    assert (out / "figures" / "heatmap-mm.png").is_file() and (out / "figures" / "heatmap-own.png").is_file()
    assert json.loads((out / "run.json").read_text())["models"].keys() == {"own"}  # an import is not a run
    source = json.loads((out / "imported" / "mm.source.json").read_text())
    assert source["source"] == str(mmdet) and len(source["sha256"]) == 64

    # a name is kdeval's or imported, never both
    assert_user_error(run("robustness", f"mm={trained}", *quick), "'mm' is an imported model")
    assert_user_error(run("robustness", "--import", mmdet, "--name", "own", "--out", out), "kdeval's own robustness results under the name 'own'")
    assert_user_error(run("robustness", f"x={trained}", *quick, "--import", mmdet, "--name", "x"), "--name 'x' is also the name of a MODEL")

    # --import alone runs nothing and rewrites the report from all the folder holds
    again = run("robustness", "--import", mmdet, "--name", "mm2", "--out", out, "--baseline", "own")
    assert again.exit_code == 0, again.output
    assert [summary_row(again.stdout, m)[0] for m in ("own", "mm", "mm2")] == ["own", "mm", "mm2"]
    assert "run by kdeval on 2 images" in again.stdout
    before = pd.read_csv(out / "robustness.csv")
    assert before[before["model"] == "own"].reset_index(drop=True).equals(table[table["model"] == "own"].reset_index(drop=True))

    # a rerun reuses kdeval's scenarios and keeps the imports; so does --overwrite, which discards kdeval's only
    rerun = run("robustness", f"own={trained}", *quick)
    assert "0 scenario(s) run, 2 reused" in rerun.stdout and summary_row(rerun.stdout, "mm2")
    fresh = run("robustness", f"own={trained}", *quick, "--overwrite")
    assert "2 scenario(s) run, 0 reused" in fresh.stdout
    assert set(pd.read_csv(out / "robustness.csv")["model"]) == {"own", "mm", "mm2"}


@pytest.mark.parametrize("corruption", ["brightness", "saturate"])
def test_pixelwise_corruptions_in_bands_give_the_same_pixels(monkeypatch, corruption):
    """Large images run brightness and saturate in bands of rows (memory); the pixels must be those of
    one piece, including a last band that would be thinner than 32 rows."""
    import numpy as np

    from kdeval.data import corrupted

    rgb = np.random.default_rng(5).integers(0, 256, (150, 90, 3), dtype=np.uint8)
    whole = corrupted.corrupt_image(rgb, corruption, 5, seed=1)
    monkeypatch.setattr(corrupted, "BAND_PIXELS", 40 * 90)  # 40-row bands: 40, 40, 40 and a 30-row rest
    assert np.array_equal(corrupted.corrupt_image(rgb, corruption, 5, seed=1), whole)
    monkeypatch.setattr(corrupted, "BAND_PIXELS", 33 * 90)  # 33-row bands, rest 18 rows: merged into the last
    assert np.array_equal(corrupted.corrupt_image(rgb, corruption, 5, seed=1), whole)


def test_scorer_processes_score_and_write_scenarios_as_the_main_process_would(tiny_shapes, tmp_path):
    """ScenarioScorers: COCOeval and the scenario files in spawned processes, at most two waiting per
    process; the stats and files equal those of the main process's own scoring."""
    from kdeval.data.corrupted import Scenario
    from kdeval.engine.robustness.scoring import ScenarioScorers, score_and_save

    gt = json.loads((tiny_shapes / "annotations" / "instances_val.json").read_text())
    scenarios = [Scenario("fog", s) for s in (1, 2, 3)] + [Scenario("clean", 0)]
    found = {scenario: noisy_detections(gt, seed) for seed, scenario in enumerate(scenarios)}
    scorers = ScenarioScorers(gt, 1)
    try:
        for submitted, scenario in enumerate(scenarios, start=1):
            scorers.submit(tmp_path / "scorers", "m", scenario, {"k": scenario.slug}, found[scenario])
            # two may wait: a third submission first collects the oldest
            assert len(scorers.waiting) == min(submitted, 2) and len(scorers.stats) == max(0, submitted - 2)
        assert scorers.pool._processes and all(pid != os.getpid() for pid in scorers.pool._processes)
        processes = list(scorers.pool._processes.values())
        stats = scorers.finish()
        assert all(process.is_alive() for process in processes)  # kept for the run's next scenarios
    finally:
        scorers.stop()
    assert not any(process.is_alive() for process in processes)  # finished: stop ends them
    for scenario in scenarios:
        expected = score_and_save(gt, tmp_path / "main", "m", scenario, {"k": scenario.slug}, found[scenario])
        assert stats[("m", scenario)] == expected
    for folder in ("scenarios", "detections"):
        ours = sorted((tmp_path / "scorers" / folder / "m").iterdir())
        assert [p.name for p in ours] == sorted(p.name for p in (tmp_path / "main" / folder / "m").iterdir())
        assert all(p.read_bytes() == (tmp_path / "main" / folder / "m" / p.name).read_bytes() for p in ours)


def test_a_scenario_that_fails_to_score_fails_the_run_and_stop_does_not_wait(tiny_shapes, tmp_path):
    from kdeval.data.corrupted import Scenario
    from kdeval.engine.robustness.scoring import ScenarioScorers

    gt = json.loads((tiny_shapes / "annotations" / "instances_val.json").read_text())
    blocked = tmp_path / "a file"  # the scenario files cannot be written under it
    blocked.write_text("")
    scorers = ScenarioScorers(gt, 1)
    try:
        scorers.submit(blocked, "m", Scenario("fog", 1), {}, noisy_detections(gt, 0))
        with pytest.raises(OSError):
            scorers.finish()
        assert len(scorers.waiting) == 1  # the failed one stays: stop must not wait for scenarios
    finally:
        scorers.stop()


def test_ranks_get_equal_work_and_split_the_remainder_by_images():
    from kdeval.engine.robustness.scheduling import SCENARIOS_PER_RANK, split_scenarios

    three_models = {index: ["a", "b", "c"] for index in range(76)}
    whole, by_images = split_scenarios(three_models, 8)  # the benchmark on 8 GPUs: 9 each, 4 left over
    assert [len(indices) for indices in whole] == [9] * 8 and by_images == [72, 73, 74, 75]
    assert sorted(i for indices in whole for i in indices) + by_images == list(range(76))
    assert split_scenarios(three_models, 2) == ([list(range(0, 76, 2)), list(range(1, 76, 2))], [])
    few = {index: ["a"] for index in range(SCENARIOS_PER_RANK * 3 - 1)}
    assert split_scenarios(few, 3) == ([[], [], []], sorted(few))
    # a resumed run: the first 10 scenarios still need 3 models, the other 20 one
    resumed = {index: ["a", "b", "c"] if index < 10 else ["a"] for index in range(30)}
    whole, by_images = split_scenarios(resumed, 4)
    assert [sum(len(resumed[i]) for i in indices) for indices in whole] == [12] * 4
    assert len(by_images) == 2 and all(len(resumed[i]) == 1 for i in by_images)


def test_ranks_take_turns_at_gathering_and_scoring_image_sharded_scenarios(monkeypatch):
    """ScenarioOwners on rank 1 of 2: every other (model, scenario) is gathered here, merged into
    single-process order; the rest go to rank 0 and give None."""
    from kdeval.engine import distributed
    from kdeval.engine.robustness.scheduling import ScenarioOwners

    calls = []

    def gather_lists(items, dst=0):
        calls.append(dst)
        # rank 0 had image 10, rank 1 (this one) image 20
        return [[{"image_id": 10, "n": len(calls)}], items] if dst == 1 else None

    monkeypatch.setattr(distributed, "current", lambda: distributed.Distributed(rank=1, world=2))
    monkeypatch.setattr(distributed, "gather_lists", gather_lists)
    owners = ScenarioOwners([10, 20])
    got = [owners.gather([{"image_id": 20, "n": turn}]) for turn in range(1, 5)]
    assert calls == [0, 1, 0, 1]
    assert got[0] is None and got[2] is None
    assert got[1] == [{"image_id": 10, "n": 2}, {"image_id": 20, "n": 2}]
    assert got[3] == [{"image_id": 10, "n": 4}, {"image_id": 20, "n": 4}]


def test_scoring_processes_default_by_device():
    from kdeval.engine.predict import PredictSettings
    from kdeval.engine.robustness import RobustnessSettings

    assert RobustnessSettings().scorers() == 0
    assert RobustnessSettings(predict=PredictSettings(device="cuda")).scorers() == 1
    assert RobustnessSettings(scoring_processes=3).scorers() == 3


def test_a_run_made_in_another_precision_names_the_flag_that_continues_it(tmp_path):
    """A CUDA run made in fp32 and resumed under fp16 is refused, as any run made otherwise, and the
    message names --fp32 / --amp."""
    from kdeval.engine.robustness.store import open_run

    made = {"device_type": "cuda", "amp": False, "seed": 0}
    open_run(tmp_path, made, {"m": "abc"})
    (tmp_path / "scenarios" / "m").mkdir(parents=True)
    (tmp_path / "scenarios" / "m" / "clean.json").write_text("{}")
    with pytest.raises(KdevalError, match=r"amp False there, True now.*--fp32 / --amp, to continue"):
        open_run(tmp_path, {**made, "amp": True, "amp_dtype": "float16"}, {"m": "abc"})
    with pytest.raises(KdevalError) as other:
        open_run(tmp_path, {**made, "seed": 1}, {"m": "abc"})
    assert "--fp32" not in str(other.value)
    open_run(tmp_path, made, {"m": "abc"})  # the same settings go on
