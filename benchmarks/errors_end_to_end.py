"""`kdeval errors` end to end on a COCO-sized generated set: three models' results files, timed as a
user runs them (a subprocess, process start to last file), with and without the bootstrap, and where
the seconds go.

Writes (once; reused while the settings match) under --data: gt.json, detection_problem(--images,
--categories, --supercategories, --dets)'s ground truth (tests/reference_analyze.py), and m0.json ...
m{--models - 1}.json, detections_on(gt, --dets, seed) for seeds 0, 1, ... (tests/test_bootstrap.py):
several detectors on one ground truth, with every kind of error. Then, for `--bootstrap 0` and for the
default bootstrap (--resamples), each --repeats times:

  end to end   `kdeval errors m0=... m1=... m2=... --annotations gt.json --bootstrap N --out DIR
               --no-progress` as a subprocess: seconds from starting it to its exit, and to the newest
               file under DIR
  breakdown    the same command in a child process that runs kdeval's CLI in itself with
               time.perf_counter around the steps (imports, loading, the detections as columns,
               COCO-analyze curves, TIDE, interval tables, tables, each figure's drawing and each of
               its PNG and PDF), so the printed table says where the seconds go; "interpreter start"
               and "exit" are the seconds before the child's first line and after kdeval returns; and
               whether torch was imported (results files need no model)

The targets: at most 15 s end to end with --bootstrap 0 (issue 29, three models, 5,000 × 100 × 80);
with the bootstrap, its analysis (curves, TIDE and their resamples) at most 10× the analysis it
resamples, the same step of the --bootstrap 0 run (issue 27's budget). The 1-minute load average is
printed beside every timing: on a shared machine timings move with it.

    python benchmarks/errors_end_to_end.py [--images 5000] [--categories 80] [--supercategories 12] [--dets 100]
        [--models 3] [--resamples 1000] [--repeats 1] [--data reports/bench/errors_data] [--keep-outputs]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_PLAIN_S = 15.0
TARGET_BOOTSTRAP_RATIO = 10.0

# ---------------------------------------------------------------- the child that times kdeval's steps


def _profile_child(timings_path: str, cli_args: list[str]) -> None:
    """Run `kdeval errors` in this process with every step timed; write the steps to timings_path."""
    started = time.time()
    steps: list[tuple[str, float]] = []  # (step, seconds), in the order they ran

    def clock(name, function):
        def timed(*args, **kwargs):
            begin = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                steps.append((name if isinstance(name, str) else name(*args, **kwargs), time.perf_counter() - begin))
        return timed

    begin = time.perf_counter()
    import matplotlib.figure

    import kdeval.analysis.error_analysis as analysis
    import kdeval.cli
    import kdeval.engine.errors as engine
    import kdeval.report.error_analysis as report
    from kdeval.engine import detections
    from kdeval.metrics import tide_errors
    steps.append(("imports (kdeval's CLI, the errors command's modules, matplotlib)", time.perf_counter() - begin))

    engine.load_coco_annotations = clock("loading: ground truth", engine.load_coco_annotations)
    detections.load_results = clock(lambda path, *a, **k: f"loading: results {Path(path).name}", detections.load_results)
    engine.analyze_detections = clock("analysis (subtotal of the rows above it, from the curves)", engine.analyze_detections)
    if hasattr(analysis, "runs_as_columns"):  # each run made arrays once, for the curves and TIDE, before the analysis
        engine.runs_as_columns = clock("columns: each run's detections as arrays, once", engine.runs_as_columns)
    analysis.error_curves = clock("curves: COCO-analyze, one pass", analysis.error_curves)
    if hasattr(analysis, "error_curves_and_resampled"):  # one matching for the curves and their resamples
        analysis.error_curves_and_resampled = clock("curves: COCO-analyze, one pass, matched for the resamples too",
                                                    analysis.error_curves_and_resampled)
    else:  # before it: a second matching for the resamples
        analysis.resampled_error_curves = clock("curves: matching for the resamples", analysis.resampled_error_curves)
    analysis.resampled_error_aps = clock("curves: accumulating the resamples", analysis.resampled_error_aps)
    analysis.resampled_tide = clock("TIDE: matching", analysis.resampled_tide)
    breakdown = tide_errors.ResampledTide.breakdown
    tide_errors.ResampledTide.breakdown = clock("TIDE: breakdown on the data", breakdown)
    analysis.resampled_tide_breakdown = clock("TIDE: accumulating the resamples", analysis.resampled_tide_breakdown)
    analysis.interval_table = clock("interval tables (curves and TIDE)", analysis.interval_table)

    # figures: building each, then each format's savefig, named by the stem save_figure is given
    current = {"stem": "?"}
    for builder in ("error_curves_figure", "size_gain_figure", "tide_figure"):
        setattr(report, builder, clock(f"figure: {builder} (building)", getattr(report, builder)))
    save_figure = report.save_figure

    def save_named(figure, out_dir, stem, *args, **kwargs):
        current["stem"] = stem
        return save_figure(figure, out_dir, stem, *args, **kwargs)

    report.save_figure = save_named
    savefig = matplotlib.figure.Figure.savefig
    matplotlib.figure.Figure.savefig = clock(lambda self, fname, *a, format=None, **k: f"figure: {current['stem']}.{format}", savefig)
    report.write_error_analysis = clock("writing (subtotal: tables, CSVs and figures)", report.write_error_analysis)
    report.error_analysis_text = clock("terminal tables", report.error_analysis_text)
    report.tide_text = clock("terminal tables", report.tide_text)

    sys.argv = ["kdeval", "errors", *cli_args]
    try:
        kdeval.cli.main()
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise
    finally:
        Path(timings_path).write_text(json.dumps({"started": started, "returned": time.time(), "steps": steps,
                                                  "torch_imported": "torch" in sys.modules}))


# ---------------------------------------------------------------- the parent


def _load() -> float:
    return os.getloadavg()[0]


def generate(data: Path, args) -> tuple[Path, list[Path]]:
    settings = {k: getattr(args, k) for k in ("images", "categories", "supercategories", "dets", "models")}
    gt_path, result_paths = data / "gt.json", [data / f"m{i}.json" for i in range(args.models)]
    stamp = data / "settings.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == settings and all(p.is_file() for p in [gt_path, *result_paths]):
        print(f"reusing the generated set in {data}")
        return gt_path, result_paths
    sys.path.insert(0, str(ROOT / "tests"))
    from reference_analyze import detection_problem
    from test_bootstrap import detections_on

    begin = time.perf_counter()
    data.mkdir(parents=True, exist_ok=True)
    gt, _ = detection_problem(args.images, args.categories, args.supercategories, args.dets, seed=0)
    gt_path.write_text(json.dumps(gt))
    for seed, path in enumerate(result_paths):
        path.write_text(json.dumps(detections_on(gt, args.dets, seed)))
    stamp.write_text(json.dumps(settings))
    print(f"generated {data} in {time.perf_counter() - begin:.1f} s")
    return gt_path, result_paths


def _kdeval_command() -> list[str]:
    script = Path(sys.executable).with_name("kdeval")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "kdeval"]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def end_to_end(cli_args: list[str], out: Path) -> tuple[float, float, float, float, float]:
    """(seconds to exit, seconds to the newest file, CPU seconds, load before, load after) of one
    `kdeval errors`. CPU seconds (user and system, every thread) are what a single-threaded run
    would take on an idle core; wall time also holds the waits for a CPU another job holds."""
    shutil.rmtree(out, ignore_errors=True)
    load_before = _load()
    cpu = _children_cpu()
    started = time.time()
    subprocess.run([*_kdeval_command(), "errors", *cli_args, "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    ended = time.time()
    cpu = _children_cpu() - cpu
    newest = max(p.stat().st_mtime for p in out.rglob("*") if p.is_file())
    return ended - started, newest - started, cpu, load_before, _load()


def breakdown(cli_args: list[str], out: Path) -> tuple[list[tuple[str, float]], float, float, bool]:
    """The child's steps with 'interpreter start' and 'exit' added; (steps, total, load, whether the
    child imported torch)."""
    shutil.rmtree(out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as scratch:
        timings = Path(scratch) / "timings.json"
        load = _load()
        started = time.time()
        subprocess.run([sys.executable, __file__, "--profile-child", str(timings), "--", *cli_args, "--out", str(out)],
                       check=True, stdout=subprocess.DEVNULL)
        ended = time.time()
        record = json.loads(timings.read_text())
    merged: dict[str, float] = {}
    for name, seconds in record["steps"]:
        merged[name] = merged.get(name, 0.0) + seconds
    steps = [("interpreter start", record["started"] - started), *merged.items(), ("exit (after kdeval returned)", ended - record["returned"])]
    return steps, ended - started, load, record.get("torch_imported", True)


def _print_breakdown(steps: list[tuple[str, float]], total: float) -> list[str]:
    subtotal = [s for s, _ in steps if "subtotal" in s]
    counted = sum(seconds for name, seconds in steps if name not in subtotal)
    analysis = dict(steps).get(subtotal[0], 0.0) if subtotal else 0.0
    figures = sum(seconds for name, seconds in steps if name.startswith("figure:"))
    written = dict(steps).get("writing (subtotal: tables, CSVs and figures)", 0.0)
    analysis_parts = sum(s for n, s in steps if n.startswith(("curves:", "TIDE:", "interval tables")))
    rows = [*steps,
            ("  analysis: other (supercategory note, resample counts, averaging runs)", analysis - analysis_parts),
            ("  writing: tables and CSVs (writing minus figures)", written - figures),
            ("  not in any row above", total - counted)]
    lines = [f"  {name:<72s} {seconds:7.2f} s" for name, seconds in rows]
    lines.append(f"  {'total (process start to exit)':<72s} {total:7.2f} s")
    return lines


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--profile-child":
        return _profile_child(sys.argv[2], sys.argv[4:] if sys.argv[3] == "--" else sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--categories", type=int, default=80)
    parser.add_argument("--supercategories", type=int, default=12)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--resamples", type=int, default=1000, help="the bootstrap run's resamples (kdeval's default: 1000)")
    parser.add_argument("--repeats", type=int, default=1, help="end-to-end runs of each kind (the breakdown runs once)")
    parser.add_argument("--data", type=Path, default=ROOT / "reports" / "bench" / "errors_data")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench" / "errors_end_to_end")
    parser.add_argument("--skip-bootstrap", action="store_true", help="time --bootstrap 0 only")
    args = parser.parse_args()

    gt_path, result_paths = generate(args.data, args)
    models = [f"m{i}={path}" for i, path in enumerate(result_paths)]
    lines = [(f"`kdeval errors`, {args.models} models, {args.images} images × {args.dets} detections × {args.categories} "
              f"categories ({args.supercategories} supercategories); {platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} CPUs, Python {platform.python_version()}")]
    print(lines[0])
    runs = [("--bootstrap 0", ["--bootstrap", "0"])]
    if not args.skip_bootstrap:
        runs.append((f"--bootstrap {args.resamples}", ["--bootstrap", str(args.resamples)]))
    analysis_s = {}
    for label, extra in runs:
        cli_args = [*models, "--annotations", str(gt_path), *extra, "--no-progress"]
        out = args.out / label.replace("--", "").replace(" ", "_")
        for repeat in range(args.repeats):
            to_exit, to_last_file, cpu, load_before, load_after = end_to_end(cli_args, out)
            line = (f"{label}: end to end {to_exit:.2f} s to exit, {to_last_file:.2f} s to the last file, "
                    f"{cpu:.2f} CPU s (1-min load {load_before:.2f} before, {load_after:.2f} after)")
            if label == "--bootstrap 0":
                line += f"; target ≤ {TARGET_PLAIN_S:g} s: {'met' if to_exit <= TARGET_PLAIN_S else 'NOT met'}"
            lines.append(line)
            print(line, flush=True)
        steps, total, load, torch_imported = breakdown(cli_args, out)
        analysis_s[label] = dict(steps).get("analysis (subtotal of the rows above it, from the curves)", float("nan"))
        lines.append(f"{label}: where the seconds go (one in-process run, 1-min load {load:.2f}; "
                     f"torch {'imported' if torch_imported else 'not imported'})")
        lines += _print_breakdown(steps, total)
        print("\n".join(lines[-len(steps) - 5:]), flush=True)
    if len(analysis_s) == 2:
        plain, resampled = analysis_s.values()
        ratio = resampled / plain
        line = (f"the bootstrap's analysis (curves, TIDE and {args.resamples} resamples of both) {resampled:.2f} s against "
                f"the analysis it resamples {plain:.2f} s: {ratio:.1f}× (target ≤ {TARGET_BOOTSTRAP_RATIO:g}×: "
                f"{'met' if ratio <= TARGET_BOOTSTRAP_RATIO else 'NOT met'})")
        lines.append(line)
        print(line)
    report = ROOT / "reports" / "bench" / "errors_end_to_end.txt"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines) + "\n")
    print(f"written to {report}")


if __name__ == "__main__":
    main()
