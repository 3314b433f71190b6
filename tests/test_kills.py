"""SIGKILL at random moments, several times per command, then a rerun: the run finishes with the
results of an uninterrupted one, and no file it leaves behind is ever half-written.

The moments are drawn from progress markers (log lines, finished scenarios, started stages) plus a
random delay, so every kill lands inside the work rather than in Python's start-up. KDEVAL_KILL_SEED
draws other moments (the default is fixed so that a failure can be replayed); KDEVAL_KILLS sets
how many kills each command survives.
"""

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
from typing import Callable

import pytest
import torch

from conftest import TINY_TRAIN_ARGS, shapes_args
from kdeval.fileio import _TEMPORARY

KILLS = int(os.environ.get("KDEVAL_KILLS", "3"))
SEED = int(os.environ.get("KDEVAL_KILL_SEED", "20261125"))
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def kdeval(*args, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "kdeval", *map(str, args)], env=env, capture_output=True, text=True)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def kill_when(args: list, ready: Callable[[], bool], delay: float) -> bool:
    """Start kdeval, wait until `ready()`, wait `delay` seconds more, SIGKILL it. True when the
    kill landed (False: the run had already finished)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "kdeval", *map(str, args)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while process.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.005)
    end = time.monotonic() + delay
    while process.poll() is None and time.monotonic() < end:
        time.sleep(0.005)
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    return process.wait() == -signal.SIGKILL


def assert_nothing_half_written(folder: Path, finished: bool) -> None:
    """Every file is whole by its own format. Temporaries of atomic writes may be left by a kill
    (they are never read, and the next run removes them); a finished run leaves none."""
    from PIL import Image

    for path in sorted(Path(folder).rglob("*")):
        if path.is_dir() or path.name == ".kdeval.lock":
            continue
        if _TEMPORARY.match(path.name):
            assert not finished, f"{path}: a temporary left behind by a finished run"
            continue
        data = path.read_bytes()
        suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".json.gz") else path.suffix
        where = f"{path} ({len(data)} bytes)"
        if suffix == ".json":
            json.loads(data)
        elif suffix == ".json.gz":
            json.loads(gzip.decompress(data))
        elif suffix == ".jsonl":
            assert data.endswith(b"\n") or not data, f"{where}: a cut line"
            for line in data.decode().splitlines():
                json.loads(line)
        elif suffix == ".pt":
            torch.load(path, weights_only=True)
        elif suffix == ".csv":
            assert data.endswith(b"\n") and data.count(b"\n") >= 2, where
        elif suffix == ".png":
            with Image.open(path) as image:
                image.load()
        elif suffix == ".pdf":
            assert data.startswith(b"%PDF") and data.rstrip().endswith(b"%%EOF"), where
        elif suffix == ".html":
            assert data.rstrip().endswith(b"</html>"), where
        else:
            assert data, f"{where}: empty"


def state_dicts_equal(a: Path, b: Path) -> bool:
    first, second = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    weights, other = first["state_dict"], second["state_dict"]
    assert first["model"] == second["model"]  # the same architecture and settings
    return weights.keys() == other.keys() and all(torch.equal(weights[k], other[k]) for k in weights)


def lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def test_train_survives_kills_at_random_moments(tiny_shapes, tmp_path):
    rng = random.Random(SEED)
    args = ["train", *shapes_args(tiny_shapes, "train"), *TINY_TRAIN_ARGS, "--epochs", "6", "--device", "cpu"]
    total = 6 * 2  # 8 images, batch 4: 2 iterations per epoch, a resumable state after each epoch
    kdeval(*args, "--out", tmp_path / "whole")

    out = tmp_path / "killed"
    marks = sorted(rng.sample(range(1, total - 1), KILLS))  # kill k comes once the log holds marks[k] lines
    landed = 0
    for mark in marks:
        landed += kill_when([*args, "--out", out, "--resume"], lambda: lines(out / "log.jsonl") >= mark, rng.uniform(0, 0.3))
        assert_nothing_half_written(out, finished=False)
        assert not (out / "model.pt").exists() or landed < KILLS
    assert landed == KILLS, f"only {landed} of {KILLS} kills landed before the run ended (marks {marks})"
    kdeval(*args, "--out", out, "--resume")
    assert_nothing_half_written(out, finished=True)
    assert state_dicts_equal(out / "model.pt", tmp_path / "whole" / "model.pt")
    losses = [[json.loads(line)["loss"] for line in (d / "log.jsonl").read_text().splitlines()] for d in (out, tmp_path / "whole")]
    assert len(losses[0]) == total and losses[0] == losses[1]


def test_robustness_survives_kills_at_random_moments(tiny_shapes, trained, tmp_path):
    rng = random.Random(SEED + 1)
    args = ["robustness", f"m={trained}", *shapes_args(tiny_shapes), "--device", "cpu", "--no-progress",
            "--corruptions", "gaussian_noise,fog,contrast", "--severities", "1-5", "--workers", "0"]
    total = 16  # the clean pass and 15 corrupted ones
    kdeval(*args, "--out", tmp_path / "whole")

    out = tmp_path / "killed"
    finished = out / "scenarios" / "m"
    marks = sorted(rng.sample(range(1, total - 1), KILLS))
    landed = 0
    for mark in marks:
        landed += kill_when([*args, "--out", out], lambda: len(list(finished.glob("*.json"))) >= mark, rng.uniform(0, 0.2))
        assert_nothing_half_written(out, finished=False)
    assert landed == KILLS, f"only {landed} of {KILLS} kills landed before the run ended (marks {marks})"
    resumed = kdeval(*args, "--out", out)
    assert "reused" in resumed.stdout
    assert_nothing_half_written(out, finished=True)
    for made in ("robustness.csv", "robustness_summary.csv", "robustness_by_corruption.csv"):
        assert (out / made).read_bytes() == (tmp_path / "whole" / made).read_bytes(), made
    for scenario in (tmp_path / "whole" / "scenarios" / "m").glob("*.json.gz"):
        assert gzip.decompress((finished / scenario.name).read_bytes()) == gzip.decompress(scenario.read_bytes())


STUDY_CONFIG = """\
teacher_arch: r18
teacher_epochs: 2
student_epochs: 2
image_size: 64
batch_size: 4
fpn_channels: 16
corruptions: fog,contrast
severities: [2]
robustness_images: 4
visualize_images: 2
"""


def _stage_started(out: Path, stage: str) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return stage in json.loads((out / "manifest.json").read_text())["stages"]
        except (OSError, ValueError, KeyError):
            return False
    return ready


def test_study_survives_kills_at_random_moments(tiny_shapes, tmp_path):
    rng = random.Random(SEED + 2)
    config = tmp_path / "study.yaml"
    config.write_text(STUDY_CONFIG)
    data = ["--images", tiny_shapes / "train", "--annotations", tiny_shapes / "annotations" / "instances_train.json",
            "--val-images", tiny_shapes / "val", "--val-annotations", tiny_shapes / "annotations" / "instances_val.json"]
    args = ["study", *data, "--config", config, "--device", "cpu", "--no-progress"]
    kdeval(*args, "--out", tmp_path / "whole")

    out = tmp_path / "killed"
    # moments inside the training stages (their logs part-way) and inside the stages after them
    moments = [
        lambda: lines(out / "models" / "teacher" / "log.jsonl") >= 1,
        lambda: lines(out / "models" / "baseline" / "log.jsonl") >= 2,
        lambda: lines(out / "models" / "distilled-ssim" / "log.jsonl") >= 1,
        _stage_started(out, "evaluate"),
        _stage_started(out, "errors"),
        _stage_started(out, "robustness"),
        _stage_started(out, "visualize"),
    ]
    chosen = sorted(rng.sample(range(len(moments)), KILLS))
    landed = 0
    for index in chosen:
        landed += kill_when([*args, "--out", out], moments[index], rng.uniform(0, 0.5))
        assert_nothing_half_written(out, finished=False)
    assert landed == KILLS, f"only {landed} of {KILLS} kills landed before the study ended (moments {chosen})"
    kdeval(*args, "--out", out)
    assert_nothing_half_written(out, finished=True)
    for made in ("evaluate/ap_table.csv", "errors/error_analysis.csv", "robustness/robustness.csv"):
        assert (out / made).read_bytes() == (tmp_path / "whole" / made).read_bytes(), made
    for model in ("teacher", "baseline", "distilled-ssim", "unlabeled-ssim"):
        if (tmp_path / "whole" / "models" / model).exists():
            assert state_dicts_equal(out / "models" / model / "model.pt", tmp_path / "whole" / "models" / model / "model.pt"), model
