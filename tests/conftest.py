"""Shared fixtures: tiny in-memory COCO data with hand-checkable answers, and a tiny Shapes set."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from kdeval.data.shapes import ShapesSpec, generate_shapes


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the test, so a fixture's teardown can tell whether it passed."""
    report = yield
    item.stash.setdefault(_PHASE_REPORTS, {})[report.when] = report
    return report


_PHASE_REPORTS = pytest.StashKey[dict]()


@pytest.fixture(autouse=True)
def _private_cache_and_folder(request, tmp_path_factory, monkeypatch):
    """Every test gets its own kdeval cache, so no test reads another's cached detections, and runs
    in its own empty folder, so a command left at its default --out (reports/...) writes nothing
    into the checkout.

    Both are removed once the test passes, as pytest removes a passing test's tmp_path (the
    "failed" retention policy in pyproject.toml): the suite writes many checkpoints and datasets,
    and keeping every test's folders until the session ends fills gigabytes of disk."""
    cache, folder = tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("cwd")
    monkeypatch.setenv("KDEVAL_CACHE", str(cache))
    monkeypatch.chdir(folder)
    yield
    monkeypatch.undo()
    reports = request.node.stash.get(_PHASE_REPORTS, {})
    if all(report.passed for report in reports.values()):
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)


def run_whole_group(command: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """subprocess.run in a session of its own: on a timeout (torchrun ranks stuck in a collective,
    say) every process it started is killed, not only the launcher, and the test fails."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{' '.join(command[:6])} ... ran past {timeout} s; its processes were killed\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (benchmarks/gpu_check.sh, step tests, runs these)")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=CUDA)])
def device(request) -> torch.device:
    """A test taking `device` runs on the CPU, and on CUDA where there is a GPU: the code paths that
    differ there (kernels, autocast's casts, nvJPEG, pinned copies) get the same checks."""
    return torch.device(request.param)


@pytest.fixture
def tiny_coco() -> dict:
    """Three 32×32 images, two categories in one supercategory, one crowd region, one empty image."""
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 32, "height": 32},
            {"id": 2, "file_name": "b.png", "width": 32, "height": 32},
            {"id": 3, "file_name": "c.png", "width": 32, "height": 32},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [16, 16, 12, 8], "area": 96, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 2, "bbox": [0, 0, 32, 32], "area": 1024, "iscrowd": 1},
        ],
        "categories": [
            {"id": 1, "name": "cat", "supercategory": "animal"},
            {"id": 2, "name": "dog", "supercategory": "animal"},
        ],
    }


def perfect_detections(coco: dict) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 0.9}
        for a in coco["annotations"]
        if not a.get("iscrowd", 0)
    ]


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


TINY_SHAPES = ShapesSpec(train=8, val=6, size=64, seed=3)


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> Path:
    """A Shapes dataset small enough to train on in a second: 8 train, 6 val images of 64 px."""
    return generate_shapes(tmp_path_factory.mktemp("shapes"), TINY_SHAPES)


# Model options that make a RetinaNet train in about a second per iteration on a 2-core CPU.
TINY_TRAIN_ARGS = ["--arch", "r18", "--fpn-channels", "16", "--image-size", "64", "--batch-size", "4", "--epochs", "1", "--no-progress"]


@pytest.fixture(scope="session")
def mixed_shapes(tiny_shapes, tmp_path_factory) -> Path:
    """tiny_shapes' val images in three shapes, as COCO mixes landscape and portrait photographs: every
    third one squeezed to 64×32 (landscape), every third to 32×64 (portrait), the rest 64×64; boxes and
    sizes follow. At the tiny models' 64-px input they pad to three different batch shapes."""
    from PIL import Image

    root = tmp_path_factory.mktemp("mixed")
    (root / "val").mkdir()
    (root / "annotations").mkdir()
    coco = json.loads((tiny_shapes / "annotations" / "instances_val.json").read_text())
    sizes = {}
    for position, image in enumerate(sorted(coco["images"], key=lambda image: image["id"])):
        width, height = [(64, 32), (32, 64), (image["width"], image["height"])][position % 3]
        with Image.open(tiny_shapes / "val" / image["file_name"]) as original:
            original.convert("RGB").resize((width, height), Image.BILINEAR).save(root / "val" / image["file_name"])
        sizes[image["id"]] = (width / image["width"], height / image["height"])
        image["width"], image["height"] = width, height
    for ann in coco["annotations"]:
        sx, sy = sizes[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        ann["bbox"] = [x * sx, y * sy, w * sx, h * sy]
        ann["area"] = w * sx * h * sy
        ann.pop("segmentation", None)  # not scaled; bounding boxes are what is evaluated
    write_json(root / "annotations" / "instances_val.json", coco)
    return root


def confident_checkpoint(checkpoint: Path, out: Path) -> Path:
    """A copy of a trained checkpoint with its class prior lifted, so that it reports many (meaningless)
    boxes: detections to compare, from a model trained for seconds."""
    payload = torch.load(checkpoint, weights_only=True)
    bias = next(k for k in payload["state_dict"] if k.endswith("classification_head.cls_logits.bias"))
    payload["state_dict"][bias] = torch.zeros_like(payload["state_dict"][bias])
    torch.save(payload, out)
    return out


def scoring_run(root: Path, batch_size: int = 2, **settings):
    """An untrained R18 RetinaNet at 64 px whose class prior is lifted (so it keeps many boxes), and
    root's val split ready for run_model: (model, dataset, PredictSettings on the CPU, labels, coco)."""
    from kdeval.data.coco import load_coco_annotations
    from kdeval.data.dataset import CocoDetectionDataset
    from kdeval.data.source import Split
    from kdeval.engine.predict import PredictSettings
    from kdeval.labels import LabelSpace
    from kdeval.models.retinanet import ModelSpec, build_retinanet

    split = Split(root / "annotations" / "instances_val.json", root / "val", "val")
    coco = load_coco_annotations(split.annotations)
    labels = LabelSpace.from_categories(coco["categories"])
    torch.manual_seed(0)
    model = build_retinanet(ModelSpec("r18", num_classes=labels.num_classes, fpn_channels=8, min_size=64, max_size=64)).eval()
    torch.nn.init.constant_(model.head.classification_head.cls_logits.bias, -1.0)
    return model, CocoDetectionDataset(split, coco, labels), PredictSettings(batch_size=batch_size, workers=0, **settings), labels, coco


def copy_into(static, fresh) -> None:
    if isinstance(static, torch.Tensor):
        static.copy_(fresh)
    elif isinstance(static, dict):
        for key in static:
            copy_into(static[key], fresh[key])
    else:
        for s, f in zip(static, fresh):
            copy_into(s, f)


def static_memory_capture(function, example, shared):
    """What a CUDA graph does to a replay's memory, without one: the replay reads a static input and
    writes static outputs, the same tensors at every replay. (Real graphs of one network share a pool
    and may also overwrite each other's static outputs; kdeval clones them at once either way.)"""
    static_input = torch.empty_strided(example.shape, example.stride(), dtype=example.dtype)
    static_input.copy_(example)
    static_outputs = function(static_input)

    def replay(batch):
        static_input.copy_(batch)
        copy_into(static_outputs, function(static_input))
        return static_outputs

    return replay


@pytest.fixture
def cpu_captures(monkeypatch):
    """`--cuda-graphs` on the CPU through the stand-in capture; the shapes captured, in order."""
    from kdeval.models import cuda_graphs

    captured = []

    def counting(function, example, shared):
        captured.append(tuple(example.shape))
        return static_memory_capture(function, example, shared)

    monkeypatch.setitem(cuda_graphs.CAPTURES, "cpu", counting)
    return captured


def shapes_args(root: Path, split: str = "val") -> list[str]:
    return ["--images", str(root / split), "--annotations", str(root / "annotations" / f"instances_{split}.json")]


@pytest.fixture(scope="session")
def trained(tiny_shapes, tmp_path_factory) -> Path:
    """A 2-iteration R18 trained through the CLI on tiny Shapes (also the tests' teacher)."""
    from typer.testing import CliRunner

    from kdeval.cli import app

    out = tmp_path_factory.mktemp("run")
    args = ["train", *shapes_args(tiny_shapes, "train"), *TINY_TRAIN_ARGS, "--out", str(out), "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out / "model.pt"


def noisy_detections(gt: dict, seed: int) -> list[dict]:
    """Per object a shifted box of the right class (score by object), plus a background box and a
    duplicate on every other image: every colour and a spread of scores."""
    detections = []
    for k, ann in enumerate(a for a in gt["annotations"] if not a.get("iscrowd")):
        x, y, w, h = ann["bbox"]
        shift = 0.05 if (k + seed) % 3 else 0.6  # every third box misses (IoU < 0.5)
        detections.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                           "bbox": [x + shift * w, y, w, h], "score": round(0.15 + 0.8 * ((k * 7 + seed) % 10) / 10, 3)})
    for n, image in enumerate(gt["images"]):
        detections.append({"image_id": image["id"], "category_id": gt["categories"][0]["id"],
                           "bbox": [1.0, 1.0, 6.0, 6.0], "score": 0.45})
        first = next((a for a in gt["annotations"] if a["image_id"] == image["id"]), None)
        if first is not None and n % 2 == 0:
            detections.append({"image_id": image["id"], "category_id": first["category_id"],
                               "bbox": list(first["bbox"]), "score": 0.35})
    return detections


@pytest.fixture
def shapes_models(tiny_shapes, tmp_path):
    """Three results files on tiny Shapes: perfect detections and two noisy models."""
    gt = json.loads((tiny_shapes / "annotations" / "instances_val.json").read_text())
    return gt, [
        f"first={write_json(tmp_path / 'first.json', noisy_detections(gt, 0))}",
        f"second={write_json(tmp_path / 'second.json', perfect_detections(gt))}",
        f"third={write_json(tmp_path / 'third.json', noisy_detections(gt, 1))}",
    ]


# ---------------------------------------------------------------- a real browser for the HTML pages

CHROMIUM = Path(os.environ.get("KDEVAL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the whole session (Debian's package, driven by playwright: nothing
    is downloaded). Skipped, saying why, only where no chromium binary is installed."""
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` to run the browser tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
