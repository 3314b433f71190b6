"""kdeval robustness's intervals: P, mPC and rPC on the whole dataset equal the plain metrics, one image
resample applies to every scenario at once, gains are paired, the same seed gives the same intervals,
and --bootstrap 0 leaves the outputs as they were."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from kdeval.analysis.robustness import BENCHMARK_MEAN, resampled_ap, robustness_intervals, summary_intervals
from kdeval.cli import app
from kdeval.metrics.bootstrap import BootstrapSettings, resample_counts
from kdeval.metrics.coco_ap import coco_stats, resampled_coco, resampled_stats
from kdeval.metrics.intervals import interval_table
from kdeval.metrics.robustness import benchmark_severity_means, robustness_summary
from kdeval.report.robustness_tables import write_robustness_tables

from conftest import shapes_args
from reference_analyze import detection_problem
from test_cli import assert_user_error

# two benchmark corruptions (fog at two severities), and an extra that mPC must leave out
SCENARIOS = [("clean", 0), ("snow", 3), ("fog", 1), ("fog", 3), ("saturate", 2)]  # in the benchmark's order
BENCHMARK = [key for key in SCENARIOS if key[1] > 0 and key[0] != "saturate"]


@pytest.fixture(scope="module")
def problem():
    gt, detections = detection_problem(14, 3, 1, 12, seed=3)
    models = {name: {key: _corrupted(detections, key, seed) for key in SCENARIOS}
              for name, seed in (("baseline", 0), ("student", 1))}
    return gt, models


def _corrupted(detections: list[dict], key, seed: int) -> list[dict]:
    """The detections as a corruption of severity s leaves them: more of them lost, scores noisier."""
    corruption, severity = key
    rng = np.random.default_rng([seed, severity, len(corruption)])
    kept = [d for d in detections if rng.random() >= 0.12 * severity]
    return [{**d, "score": float(np.clip(d["score"] + rng.normal(0, 0.05 * (1 + severity)), 0.01, 1))} for d in kept]


def _tidy(gt: dict, models: dict) -> pd.DataFrame:
    rows = [(model, c, s, metric, value) for model, scenarios in models.items() for (c, s), dets in scenarios.items()
            for metric, value in coco_stats(gt, dets).items()]
    return pd.DataFrame(rows, columns=["model", "corruption", "severity", "metric", "value"])


def _rows(table: pd.DataFrame, model: str, column: str) -> pd.DataFrame:
    return table[table["model"] == model].set_index(column)


def test_values_on_the_whole_dataset_are_the_plain_metrics(problem):
    gt, models = problem
    table = _tidy(gt, models)
    plain = robustness_summary(table)
    by_severity = benchmark_severity_means(table)
    intervals = robustness_intervals(gt, models, "baseline", BootstrapSettings(30))
    for model in models:
        summary = _rows(intervals.summary, model, "metric")["value"]
        for metric in ("AP", "mPC", "rPC"):
            assert summary[metric] == pytest.approx(plain.loc[model, metric], abs=1e-12)
        severities = _rows(intervals.severities, model, "severity")["value"]
        assert list(severities.index) == [0, 1, 3]
        assert severities.to_numpy() == pytest.approx(by_severity.loc[model, [0, 1, 3]].to_numpy(), abs=1e-12)
        scenarios = intervals.scenarios[intervals.scenarios["model"] == model]
        assert list(zip(scenarios["corruption"], scenarios["severity"])) == SCENARIOS  # clean, benchmark order, extras
        for (corruption, severity), value in zip(SCENARIOS, scenarios["value"]):
            assert value == pytest.approx(coco_stats(gt, models[model][(corruption, severity)])["AP"], abs=1e-12)
    assert intervals.summary["ci_low"].notna().all() and (intervals.summary["ci_low"] <= intervals.summary["ci_high"]).all()
    off = robustness_intervals(gt, models, "baseline", BootstrapSettings(0))  # the values do not depend on the bootstrap
    pd.testing.assert_series_equal(off.summary["value"], intervals.summary["value"])
    assert off.summary["ci_low"].isna().all()


def test_identity_counts_give_coco_ap_and_cutting_to_what_ap_reads_changes_nothing(problem):
    gt, models = problem
    dets = models["student"][("fog", 3)]
    counts = np.vstack([np.ones((1, 14), np.int32), resample_counts(14, 20, 5)])
    assert resampled_ap(resampled_coco(gt, dets), counts)[0] == pytest.approx(coco_stats(gt, dets)["AP"], abs=1e-12)
    # scores of two decimals: many ties, which the accumulation replays copy by copy
    for seed, integer_boxes in ((1, False), (2, True), (3, True)):
        tied_gt, tied = detection_problem(16, 4, 2, 30, seed=seed, integer_boxes=integer_boxes)
        matched = resampled_coco(tied_gt, tied)
        counts = np.vstack([np.ones((1, 16), np.int32), resample_counts(16, 40, seed)])
        full = resampled_stats(matched, counts)[:, 0]
        assert np.array_equal(resampled_ap(matched, counts), np.where(full > -1, full, np.nan), equal_nan=True)


def test_one_resample_applies_to_every_scenario_and_gains_are_paired(problem):
    """Each scenario's AP on each resample, computed apart with the same counts for every scenario and
    model, and P, mPC, rPC and the severity-3 mean taken from them, give the same table."""
    gt, models = problem
    bootstrap = BootstrapSettings(200, 0.9, seed=11)
    intervals = robustness_intervals(gt, models, "baseline", bootstrap)
    counts = np.vstack([np.ones((1, 14), np.int32), resample_counts(14, 200, 11)])  # images in id order, as the analysis draws them

    def statistics(model):  # (1 + resamples, 1 run, [AP, mPC, rPC, severity 3])
        ap = {key: resampled_stats(resampled_coco(gt, dets), counts)[:, 0] for key, dets in models[model].items()}
        clean, mpc = ap[("clean", 0)], np.mean([ap[key] for key in BENCHMARK], axis=0)
        return np.column_stack([clean, mpc, mpc / clean, np.mean([ap[("fog", 3)], ap[("snow", 3)]], axis=0)])[:, None, :]

    ours = {model: statistics(model) for model in models}
    keys = pd.DataFrame({"metric": ["AP", "mPC", "rPC", "severity 3"]})
    expected = interval_table(keys, {m: s[0] for m, s in ours.items()}, {m: s[1:] for m, s in ours.items()}, "baseline", 0.9,
                              upper=np.array([1.0, 1.0, np.inf, 1.0]))  # rPC, a ratio, may exceed 1
    summary = expected[expected["metric"] != "severity 3"].reset_index(drop=True)
    pd.testing.assert_frame_equal(intervals.summary, summary, check_exact=False, atol=1e-12, rtol=0)
    at_3 = intervals.severities[intervals.severities["severity"] == 3].drop(columns="severity").reset_index(drop=True)
    expected_at_3 = expected[expected["metric"] == "severity 3"].drop(columns="metric").reset_index(drop=True)
    pd.testing.assert_frame_equal(at_3, expected_at_3, check_exact=False, atol=1e-12, rtol=0)
    assert intervals.summary["gain_ci_low"].notna().sum() == 3 and intervals.summary["p_gain_le_0"].between(0, 1).sum() == 3


def test_identical_models_gain_nothing_with_a_zero_width_interval(problem):
    gt, models = problem
    twins = {"baseline": models["student"], "twin": dict(models["student"])}
    intervals = robustness_intervals(gt, twins, "baseline", BootstrapSettings(100, seed=2))
    for table in (intervals.summary, intervals.severities, intervals.scenarios):
        twin = table[table["model"] == "twin"]
        assert (twin["gain"] == 0).all() and (twin["gain_ci_low"] == 0).all() and (twin["gain_ci_high"] == 0).all()
        assert (twin["p_gain_le_0"] == 1).all()
    assert (intervals.summary["ci_high"] > intervals.summary["ci_low"]).all()  # the values themselves do vary


def test_the_same_seed_gives_the_same_intervals_and_runs_average(problem):
    gt, models = problem
    first = robustness_intervals(gt, models, "baseline", BootstrapSettings(50, seed=4))
    again = robustness_intervals(gt, models, "baseline", BootstrapSettings(50, seed=4))
    other = robustness_intervals(gt, models, "baseline", BootstrapSettings(50, seed=5))
    pd.testing.assert_frame_equal(first.summary, again.summary)
    pd.testing.assert_frame_equal(first.scenarios, again.scenarios)
    assert not np.allclose(first.summary["ci_low"], other.summary["ci_low"])

    runs = robustness_intervals(gt, {"baseline": models["baseline"], "student": [models["student"], models["baseline"]]},
                                "baseline", BootstrapSettings(0))
    student = _rows(runs.summary, "student", "metric")
    alone = _rows(first.summary, "student", "metric")["value"]
    base = _rows(first.summary, "baseline", "metric")["value"]
    assert student.loc["mPC", "value"] == pytest.approx((alone["mPC"] + base["mPC"]) / 2)
    assert student.loc["mPC", "std_over_runs"] == pytest.approx(np.std([alone["mPC"], base["mPC"]], ddof=1))
    assert (student["runs"] == 2).all()


def test_models_without_detections_are_shown_without_intervals(problem):
    gt, models = problem
    table = _tidy(gt, models)
    imported = table[table["model"] == "student"].assign(model="imported")
    intervals = robustness_intervals(gt, models, "baseline", BootstrapSettings(40))
    every = summary_intervals(pd.concat([table, imported]), intervals, "baseline")
    assert list(dict.fromkeys(every["model"])) == ["baseline", "student", "imported"]
    rows = _rows(every, "imported", "metric")
    assert rows[["ci_low", "ci_high", "gain_ci_low"]].isna().all().all()
    plain = robustness_summary(table)
    assert rows.loc["mPC", "gain"] == pytest.approx(plain.loc["student", "mPC"] - plain.loc["baseline", "mPC"])
    pd.testing.assert_frame_equal(every[every["model"] != "imported"].reset_index(drop=True), intervals.summary)
    # against an imported baseline, gains are differences of values, unpaired
    unpaired = _rows(summary_intervals(pd.concat([table, imported]), intervals, "imported"), "baseline", "metric")
    assert unpaired["gain_ci_low"].isna().all() and unpaired["ci_low"].notna().all()
    assert unpaired.loc["AP", "gain"] == pytest.approx(plain.loc["baseline", "AP"] - plain.loc["student", "AP"])
    with pytest.raises(ValueError, match="baseline 'imported'"):
        robustness_intervals(gt, models, "imported", BootstrapSettings(10))


def test_tables_show_intervals_and_without_a_bootstrap_stay_as_they_were(problem, tmp_path):
    gt, models = problem
    table = _tidy(gt, models)
    write_robustness_tables(table, tmp_path / "plain", "t", "baseline")
    write_robustness_tables(table, tmp_path / "off", "t", "baseline",
                            intervals=robustness_intervals(gt, models, "baseline", BootstrapSettings(0)))
    for name in ("robustness_summary.md", "robustness_summary.tex", "robustness_summary.csv", "figures/ap_vs_severity.png"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "off" / name).read_bytes(), name
    assert not (tmp_path / "off" / "robustness_summary_intervals.csv").exists()

    out = tmp_path / "plain"  # the same folder: a run with intervals after one without
    write_robustness_tables(table, out, "t", "baseline", intervals=robustness_intervals(gt, models, "baseline", BootstrapSettings(40)))
    markdown = (out / "robustness_summary.md").read_text()
    assert "| student − baseline |" in markdown and "40 paired bootstrap resamples" in markdown
    tidy = pd.read_csv(out / "robustness_summary_intervals.csv")
    assert list(tidy.columns[:3]) == ["model", "metric", "value"] and {"ci_low", "gain_ci_high", "p_gain_le_0"} <= set(tidy.columns)
    curves = pd.read_csv(out / "robustness_curve_intervals.csv")
    assert set(curves["corruption"]) == {BENCHMARK_MEAN, *(c for c, _ in SCENARIOS)}
    write_robustness_tables(table, out, "t", "baseline")  # and without again: the interval files go
    assert not (out / "robustness_summary_intervals.csv").exists() and not (out / "robustness_curve_intervals.csv").exists()


def test_the_command_adds_intervals_without_running_a_scenario_again(tiny_shapes, trained, tmp_path):
    out = tmp_path / "rob"
    args = ["robustness", f"base={trained}", f"same={trained}", *shapes_args(tiny_shapes), "--device", "cpu", "--no-progress",
            "--workers", "0", "--corruptions", "fog", "--severities", "2", "--max-images", "2", "--baseline", "base",
            "--out", str(out)]
    runner = CliRunner()
    plain = runner.invoke(app, [*args, "--bootstrap", "0"])
    assert plain.exit_code == 0, plain.output
    assert "(+0.0)" in plain.stdout and "[" not in plain.stdout.split("note:")[0]
    assert not (out / "robustness_summary_intervals.csv").exists()
    assert json.loads((out / "settings.json").read_text())["bootstrap"] == {"resamples": 0, "confidence": 0.95, "seed": 0}

    bootstrapped = runner.invoke(app, [*args, "--bootstrap", "30", "--bootstrap-seed", "3"])
    assert bootstrapped.exit_code == 0, bootstrapped.output
    assert "0 scenario(s) run, 4 reused" in bootstrapped.stdout  # the bootstrap is not part of a scenario's key
    assert "+0.0 [+0.0, +0.0]" in bootstrapped.stdout  # one checkpoint under two names: a paired gain of exactly 0
    assert (out / "robustness_summary_intervals.csv").is_file()
    assert json.loads((out / "settings.json").read_text())["bootstrap"] == {"resamples": 30, "confidence": 0.95, "seed": 3}
    assert_user_error(runner.invoke(app, [*args, "--bootstrap", "-1"]), "--bootstrap")
    assert_user_error(runner.invoke(app, [*args, "--confidence", "1.5"]), "--confidence")
