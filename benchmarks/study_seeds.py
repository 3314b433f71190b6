"""The default study over several seeds: AP of teacher, baseline and distilled student, mean ± std.

    python benchmarks/study_seeds.py --seeds 0,1,2 --out reports/seeds
    python benchmarks/study_seeds.py --include reports/study --seeds 1,2 --out reports/seeds

Each seed runs `kdeval study --seed S --out OUT/seed-S` with every other setting at its default
(a finished seed is not run again: the study resumes). `--include DIR` adds a study run elsewhere
(e.g. the README's main job, seed 0). The seed changes the weights' initialisation, the batch order
and the augmentation; the Shapes images are the same. Writes OUT/seeds.{md,csv} and prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def run_seed(seed: int, out: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kdeval", "study", "--seed", str(seed), "--out", str(out)], check=True)
    return time.perf_counter() - started


def study_row(folder: Path) -> list[dict]:
    settings = json.loads((folder / "study_settings.json").read_text())
    settings = settings.get("settings", settings)
    stats = json.loads((folder / "evaluate" / "coco_stats.json").read_text())["stats"]
    manifest = json.loads((folder / "manifest.json").read_text())["stages"]
    stage_seconds = sum(record.get("seconds", 0.0) for record in manifest.values())
    return [{"seed": settings["seed"], "folder": str(folder), "model": model, "stage_seconds": stage_seconds,
             **{metric: 100 * values[metric] for metric in METRICS}} for model, values in stats.items()]


def seed_table(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    order = [m for m in ("baseline",) if m in set(frame.model)] + sorted(set(frame.model) - {"baseline", "teacher"}) + ["teacher"]
    grouped = frame.groupby("model")
    table = pd.DataFrame({
        "seeds": grouped.seed.nunique(),
        **{f"{metric} mean": grouped[metric].mean() for metric in METRICS},
        **{f"{metric} std": grouped[metric].std(ddof=1) for metric in METRICS},
    }).loc[[m for m in order if m in set(frame.model)]]
    baseline = table.loc["baseline"] if "baseline" in table.index else None
    if baseline is not None:
        table["AP gain"] = table["AP mean"] - baseline["AP mean"]
    return table


def markdown(table: pd.DataFrame, rows: list[dict]) -> str:
    lines = ["| model | seeds | " + " | ".join(METRICS) + " | AP gain |", "|---|---:|" + "---:|" * (len(METRICS) + 1)]
    for model, row in table.iterrows():
        cells = [f"{row[f'{m} mean']:.1f} ± {row[f'{m} std']:.1f}" for m in METRICS]
        gain = "" if model == "baseline" else f"{row['AP gain']:+.1f}"
        lines.append(f"| {model} | {int(row['seeds'])} | " + " | ".join(cells) + f" | {gain} |")
    per_seed = pd.DataFrame(rows).pivot_table(index="seed", columns="model", values="AP")[list(table.index)]
    students = [m for m in per_seed.columns if m not in ("baseline", "teacher")]
    closed = pd.DataFrame({m: 100 * (per_seed[m] - per_seed["baseline"]) / (per_seed["teacher"] - per_seed["baseline"])
                           for m in students}) if {"baseline", "teacher"} <= set(per_seed.columns) else pd.DataFrame(index=per_seed.index)
    header = list(per_seed.columns) + [f"{m}: gap closed" for m in closed.columns]
    lines += ["", "AP per seed, and the share of the teacher's lead over the baseline that each student closes:", "",
              "| seed | " + " | ".join(header) + " |", "|---:|" + "---:|" * len(header)]
    lines += [f"| {seed} | " + " | ".join([f"{v:.1f}" for v in values] + [f"{v:.1f} %" for v in closed.loc[seed]]) + " |"
              for seed, values in per_seed.iterrows()]
    if len(closed) > 1:
        lines += ["", "Gap closed over the seeds: " + ", ".join(
            f"{m} {closed[m].mean():.1f} ± {closed[m].std(ddof=1):.1f} %" for m in closed.columns)]
    lines += ["", f"Machine: {platform.processor() or platform.machine()}, {platform.system()}; mean ± sample std (ddof 1)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=Path("reports/seeds"))
    parser.add_argument("--include", type=Path, action="append", default=[], help="a finished study folder to count as well")
    args = parser.parse_args()
    rows, walls = [], {}
    for folder in args.include:
        rows += study_row(folder)
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        folder = args.out / f"seed-{seed}"
        walls[seed] = run_seed(seed, folder)
        rows += study_row(folder)
    table = seed_table(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out / "seeds.csv", index=False, float_format="%.3f")
    text = markdown(table, rows)
    if walls:
        text += "\nWall time of this script's `kdeval study` calls (a resumed seed counts only what it ran): " + ", ".join(
            f"seed {s}: {w / 60:.1f} min" for s, w in walls.items()) + "\n"
    (args.out / "seeds.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
