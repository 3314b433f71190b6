"""Property-based tests of every loader: whatever a file holds, the result is a value or a KdevalError
whose lines name the file (exit status 2 at the command line), never another exception.

Run with `--hypothesis-show-statistics` to see how many cases each loader tried.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import perfect_detections
from kdeval.data.coco import check_coco_annotations, check_results, load_results
from kdeval.data.foreign_results import CategoryMap
from kdeval.errors import KdevalError
from kdeval.metrics.analyze import error_curves
from kdeval.metrics.coco_ap import coco_stats
from kdeval.models.checkpoint import load_checkpoint

# KDEVAL_HYPOTHESIS_EXAMPLES raises the number of cases for a long run; checkpoints build a model per
# case, so they get a third of it in the timed suite
EXAMPLES = int(os.environ.get("KDEVAL_HYPOTHESIS_EXAMPLES", "150"))
_HEALTH = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
CASES = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=_HEALTH)
CHECKPOINT_CASES = settings(max_examples=max(1, EXAMPLES // 3), deadline=None, suppress_health_check=_HEALTH)

# JSON values a careless or foreign tool might write where a field is expected
odd_values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.lists(st.integers(-5, 5), max_size=5), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _assert_named_error(exc: KdevalError, name: str) -> None:
    lines = str(exc).splitlines()
    assert lines and all(name in line for line in lines), str(exc)


def _tiny() -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}, {"id": 2, "file_name": "b.png", "width": 32, "height": 32}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "cat", "supercategory": "animal"}, {"id": 2, "name": "dog", "supercategory": "animal"}],
    }


@st.composite
def mutated_coco(draw):
    coco = _tiny()
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(["images", "annotations", "categories", None]))
        if section is None:
            coco[draw(st.sampled_from(["images", "annotations", "categories"]))] = draw(odd_values)
            continue
        if not isinstance(coco.get(section), list) or not coco[section]:
            continue
        record = coco[section][draw(st.integers(0, len(coco[section]) - 1))]
        if not isinstance(record, dict):
            continue
        key = draw(st.sampled_from(sorted(record) + ["extra"]))
        if draw(st.booleans()):
            record.pop(key, None)
        else:
            record[key] = draw(odd_values)
    return coco


@CASES
@given(mutated_coco())
def test_annotation_loader_accepts_or_names_the_problem(coco):
    try:
        checked = check_coco_annotations(copy.deepcopy(coco), "gt.json")
    except KdevalError as exc:
        _assert_named_error(exc, "gt.json")
        return
    # accepted: it must score without surprises
    detections = perfect_detections(checked)
    stats = coco_stats(checked, detections)
    assert all(math.isfinite(v) for v in stats.values())
    curves = error_curves(checked, detections)
    assert curves.precision.shape[0] == 7


@st.composite
def foreign_detections(draw):
    base = [
        {"image_id": 1, "category_id": 1, "bbox": [2.0, 2.0, 10.0, 10.0], "score": 0.9},
        {"image_id": 2, "category_id": 2, "bbox": [4.0, 4.0, 20.0, 20.0], "score": 0.8},
    ]
    dets = copy.deepcopy(base) * draw(st.integers(0, 3))
    for det in dets:
        if draw(st.booleans()):  # what mmdetection and detectron2 add
            det.update(draw(st.dictionaries(st.sampled_from(["segmentation", "id", "area", "iscrowd", "attributes"]), odd_values, max_size=3)))
        if draw(st.integers(0, 3)) == 0:
            key = draw(st.sampled_from(["image_id", "category_id", "bbox", "score"]))
            det[key] = draw(st.one_of(odd_values, st.integers(-3, 100), st.lists(st.floats(-50, 50), min_size=4, max_size=4)))
        if draw(st.integers(0, 9)) == 0:
            det.pop(draw(st.sampled_from(["image_id", "category_id", "bbox", "score"])), None)
    return draw(st.one_of(st.just(dets), st.just(dets), odd_values))


@CASES
@given(foreign_detections(), st.sampled_from(["xywh", "xyxy"]))
def test_results_loader_accepts_or_names_every_problem(tmp_path_factory, results, box_format):
    path = tmp_path_factory.mktemp("r") / "results.json"
    try:
        path.write_text(json.dumps(results, allow_nan=True))
    except (TypeError, ValueError):
        return
    gt = _tiny()
    try:
        detections = load_results(path, gt, box_format=box_format)
    except KdevalError as exc:
        _assert_named_error(exc, str(path))
        return
    assert all(d["bbox"][2] >= 0 and d["bbox"][3] >= 0 and math.isfinite(d["score"]) for d in detections)
    stats = coco_stats(gt, detections)
    assert all(math.isfinite(v) for v in stats.values())


@CASES
@given(st.one_of(odd_values, st.dictionaries(st.one_of(st.text(max_size=4), st.integers(-3, 99)), odd_values, max_size=4)),
       st.sampled_from([".json", ".yaml"]))
@example({"²": 0}, ".json")  # found by a 2,000-case run: "²".isdigit() is True, int("²") raises
def test_category_map_loader_accepts_or_names_the_problem(tmp_path_factory, content, suffix):
    path = tmp_path_factory.mktemp("m") / f"map{suffix}"
    try:
        path.write_text(json.dumps(content, allow_nan=True))  # JSON is valid YAML too
    except (TypeError, ValueError):
        return
    try:
        mapping = CategoryMap.load(path)
    except KdevalError as exc:
        _assert_named_error(exc, str(path))
        return
    assert mapping.ids or mapping.names


def _study_fields() -> list[str]:
    import dataclasses

    from kdeval.study import StudySettings

    return [field.name for field in dataclasses.fields(StudySettings)]


def _load_study_config(path):
    from kdeval.config import read_settings_file, settings_from_mapping
    from kdeval.study import StudySettings

    return settings_from_mapping(StudySettings, read_settings_file(path), str(path))


@CASES
@given(st.dictionaries(st.one_of(st.sampled_from(_study_fields()), st.sampled_from(["colour", "epochs", "Seed"]), st.text(max_size=6)),
                       st.one_of(odd_values, st.sampled_from(["r50", "ssim,l2", "fog", "1-5", "shapes"]),
                                 st.lists(st.sampled_from(["ssim", "l2", "cosine"]), max_size=3)), max_size=5),
       st.sampled_from([".yaml", ".json"]))
@example({"losses": "0\r0"}, ".yaml")  # found by a 2,000-case run: a carriage return split the error line
@example({"\x1e": None}, ".yaml")  # found in the timed run: so did a record separator in a key
def test_config_loader_accepts_or_names_the_problem(tmp_path_factory, mapping, suffix):
    """Any study setting (or a made-up one) with any value: a StudySettings whose values are in
    range, or one line naming the file (and the key)."""
    import math

    path = tmp_path_factory.mktemp("c") / f"study{suffix}"
    path.write_text(json.dumps(mapping, allow_nan=True))  # JSON is valid YAML too
    try:
        settings = _load_study_config(path)
    except KdevalError as exc:
        _assert_named_error(exc, str(path))
        return
    assert settings.teacher_epochs >= 1 and settings.student_epochs >= 1 and settings.robustness_images >= 1
    assert settings.severities and all(1 <= severity <= 5 for severity in settings.severities)
    assert 0 <= settings.pseudo_threshold <= 1 and all(math.isfinite(w) and w >= 0 for w in settings.distill_weights)


@CASES
@given(st.text(max_size=60), st.sampled_from([".yaml", ".toml", ".json"]))
def test_config_loader_survives_any_text(tmp_path_factory, text, suffix):
    path = tmp_path_factory.mktemp("c") / f"study{suffix}"
    path.write_text(text, encoding="utf-8")
    try:
        _load_study_config(path)
    except KdevalError as exc:
        _assert_named_error(exc, str(path))


def _remove_folder(folder) -> None:
    """Each example writes a whole checkpoint (tens of MB); pytest would keep every one of them
    until the session ends."""
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def checkpoint_bytes(trained) -> bytes:
    return trained.read_bytes()


@pytest.mark.slow
@CHECKPOINT_CASES
@given(st.data())
def test_checkpoint_loader_survives_damaged_files(tmp_path_factory, checkpoint_bytes, data):
    raw = bytearray(checkpoint_bytes)
    how = data.draw(st.sampled_from(["truncate", "flip", "splice"]))
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 20))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
    else:
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=64))
    path = tmp_path_factory.mktemp("c") / "model.pt"
    path.write_bytes(bytes(raw))
    try:
        load_checkpoint(path)
    except KdevalError as exc:
        _assert_named_error(exc, str(path))
    finally:
        _remove_folder(path.parent)


@pytest.mark.slow
@CHECKPOINT_CASES
@given(st.data())
def test_checkpoint_loader_survives_wrong_fields(tmp_path_factory, trained, data):
    payload = torch.load(trained, weights_only=True)
    key = data.draw(st.sampled_from(["model", "categories", "label_category_ids", "role", "state_dict", "format_version"]))
    if data.draw(st.booleans()):
        del payload[key]
    else:
        payload[key] = data.draw(odd_values)
    if key == "model" and isinstance(payload.get("model"), dict) and data.draw(st.booleans()):
        payload["model"] = {**torch.load(trained, weights_only=True)["model"], **data.draw(st.dictionaries(st.sampled_from(["arch", "num_classes", "fpn_channels", "min_size", "norm"]), odd_values, max_size=2))}
    path = tmp_path_factory.mktemp("c") / "model.pt"
    torch.save(payload, path)
    try:
        load_checkpoint(path)
    except KdevalError as exc:
        _assert_named_error(exc, str(path))
    finally:
        _remove_folder(path.parent)


def test_check_results_takes_a_list_it_does_not_own():
    dets = [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 1, "extra": "kept out"}]
    original = copy.deepcopy(dets)
    cleaned = check_results(dets, _tiny(), "r.json")
    assert dets == original and "extra" not in cleaned[0] and isinstance(cleaned[0]["score"], float)


# ---------------------------------------------------------------- output folders


def _evaluate(tmp_path, tiny_coco, out):
    from typer.testing import CliRunner

    from conftest import write_json
    from kdeval.cli import app

    gt = write_json(tmp_path / "gt.json", tiny_coco)
    dets = write_json(tmp_path / "d.json", perfect_detections(tiny_coco))
    return CliRunner().invoke(app, ["evaluate", str(dets), "--annotations", str(gt), "--out", str(out)])


def test_a_second_kdeval_on_the_same_folder_is_refused_and_a_killed_one_leaves_no_lock(tmp_path, tiny_coco):
    import subprocess
    import sys

    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom kdeval.fileio import run_lock\n"
         "with run_lock(sys.argv[1], 'train'):\n    print('held', flush=True)\n    time.sleep(60)\n", str(out)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = _evaluate(tmp_path, tiny_coco, out)
        assert result.exit_code == 2
        assert "in use by kdeval train (pid" in result.output and not (out / "ap_table.csv").exists()
    finally:
        holder.kill()  # SIGKILL: no chance to clean up
        holder.wait()
    assert _evaluate(tmp_path, tiny_coco, out).exit_code == 0
    assert (out / "ap_table.csv").is_file()


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path):
    """Atomic writes go through mkstemp's 0600 temporaries: the files must still be as readable as
    open() would make them (0644 under the usual umask 022), on shared machines above all."""
    import os
    import stat

    from kdeval.fileio import torch_save_atomic, write_text_atomic

    for mask in (0o022, 0o027):  # the usual umask, and a stricter one: each as open() would apply it
        before = os.umask(mask)
        try:
            (tmp_path / f"plain{mask}.txt").write_text("x")
            written = [write_text_atomic(tmp_path / f"table{mask}.md", "| a |"), torch_save_atomic(tmp_path / f"model{mask}.pt", {"w": 1})]
        finally:
            os.umask(before)
        for path in written:
            assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE((tmp_path / f"plain{mask}.txt").stat().st_mode) == 0o666 & ~mask


def test_temporaries_of_killed_writes_are_removed_unless_another_kdeval_holds_their_folder(tmp_path):
    """An atomic write killed before its rename leaves ".NAME.XXXXXXXX.tmp"; the next run that takes the
    folder's lock deletes those, but not in a sub-folder whose lock a live kdeval holds, nor files
    that only look alike."""
    import fcntl

    from kdeval.fileio import run_lock

    run = tmp_path / "run"
    busy = run / "busy"
    busy.mkdir(parents=True)
    stale = [run / ".ap_table.csv.a1B2c3D4.tmp", run / "sub" / ".model.pt.zz_9yy8x.tmp"]
    stale[1].parent.mkdir()
    kept = [run / "ap_table.csv", run / "notes.tmp", run / ".short.abc.tmp", busy / ".model.pt.q1w2e3r4.tmp",
            run / "sub" / ".log.jsonl.n3w3r0n3.tmp"]
    for path in stale + kept:
        path.write_text("x")
    # written after the clean-up began, by a kdeval that took sub/'s lock just after it was checked
    os.utime(kept[-1], ns=(time.time_ns() + 10**10,) * 2)
    fd = os.open(busy / ".kdeval.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # stands for another live kdeval writing busy/
    try:
        with run_lock(run, "test"):
            pass
    finally:
        os.close(fd)
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)


def test_a_lock_held_for_an_instant_does_not_refuse_a_run(tmp_path, monkeypatch):
    """remove_stale_temporaries probes a sub-folder's lock by taking it for microseconds; a kdeval
    starting on that sub-folder at that instant waits out the probe instead of being refused."""
    import fcntl

    from kdeval import fileio
    from kdeval.errors import KdevalError
    from kdeval.fileio import run_lock

    folder = tmp_path / "run"
    folder.mkdir()
    fd = os.open(folder / ".kdeval.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the probe, let go while run_lock waits
    waits = []
    monkeypatch.setattr(fileio.time, "sleep", lambda seconds: waits.append(seconds) or (len(waits) == 1 and os.close(fd)))
    with run_lock(folder, "test"):
        assert len(waits) == 1
    fd = os.open(folder / ".kdeval.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a run that holds on
    waits.clear()
    waits.append("not the first")  # this holder is never let go
    try:
        with pytest.raises(KdevalError, match="in use by"):
            with run_lock(folder, "test"):
                pass
    finally:
        os.close(fd)
    assert len(waits) == fileio.LOCK_TRIES  # the marker and a wait before each retry


def test_an_unwritable_or_full_output_folder_is_refused_before_the_work(tmp_path, tiny_coco, monkeypatch):
    from collections import namedtuple

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = _evaluate(tmp_path, tiny_coco, blocker / "out")
    assert result.exit_code == 2 and "not writable" in result.output

    import kdeval.analysis.evaluation as evaluation_module
    import kdeval.fileio as fileio

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(fileio.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 10**6, 10**6))
    monkeypatch.setattr(evaluation_module, "coco_stats", lambda *a: pytest.fail("scored despite a full disk"))
    result = _evaluate(tmp_path, tiny_coco, tmp_path / "full")
    assert result.exit_code == 2 and "MiB free" in result.output


# ---------------------------------------------------------------- images as they come



def _unusual_images(folder):
    """Grayscale, RGBA, 16-bit, 8×8, 8000×6000 and EXIF-rotated files in `folder`: {file name: image}."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "gray.png": Image.fromarray(rng.integers(0, 255, (48, 64), dtype=np.uint8), "L"),
        "rgba.png": Image.fromarray(rng.integers(0, 255, (48, 64, 4), dtype=np.uint8), "RGBA"),
        "deep.png": Image.fromarray(rng.integers(0, 65535, (48, 64), dtype=np.uint16)),
        "tiny.png": Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)),
        "huge.jpg": Image.new("RGB", (8000, 6000), (90, 120, 150)),
    }
    for name, image in files.items():
        image.save(folder / name)
    rotated = Image.fromarray(rng.integers(0, 255, (40, 70, 3), dtype=np.uint8))
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    rotated.save(folder / "exif.jpg", exif=exif)
    files["exif.jpg"] = rotated
    return files


def test_unusual_images_load_as_cocos_loader_reads_them(tmp_path, trained):
    """Grayscale, RGBA, 16-bit, tiny, huge and EXIF-rotated files: decoded by PIL and converted to RGB,
    without EXIF rotation (torchvision's CocoDetection does the same), and scored without a crash."""
    from PIL import Image
    from typer.testing import CliRunner

    from conftest import write_json
    from kdeval.cli import app
    from kdeval.data.dataset import read_rgb

    folder = tmp_path / "images"
    files = _unusual_images(folder)
    for name, image in files.items():
        loaded = read_rgb(folder / name)
        assert loaded.mode == "RGB" and loaded.size == image.size, name  # no EXIF transpose
    assert Image.open(folder / "deep.png").mode.startswith("I")
    images = [{"id": i + 1, "file_name": name, "width": im.size[0], "height": im.size[1]} for i, (name, im) in enumerate(files.items())]
    coco = {"images": images, "categories": json.loads(json.dumps(torch.load(trained, weights_only=True)["categories"])),
            "annotations": [{"id": 1, "image_id": 1, "category_id": torch.load(trained, weights_only=True)["categories"][0]["id"],
                             "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0}]}
    gt = write_json(tmp_path / "gt.json", coco)
    result = CliRunner().invoke(app, ["evaluate", f"m={trained}", "--images", str(folder), "--annotations", str(gt),
                                      "--device", "cpu", "--no-progress", "--batch-size", "1", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_corruptions_apply_to_unusual_images(tmp_path):
    """Every corruption at the harshest severity on each unusual file, as robustness reads it: an
    RGB array of the file's own size comes back. The 8000×6000 photo gets the three cheapest (all 19
    on it take minutes; benchmarks/RESULTS.md has that run)."""
    import numpy as np

    from kdeval.data.corrupted import ALL_CORRUPTIONS, CLEAN_SCENARIO, Scenario, corrupted_rgb

    folder = tmp_path / "images"
    files = _unusual_images(folder)
    for name, image in files.items():
        corruptions = ("jpeg_compression", "pixelate", "contrast") if name == "huge.jpg" else ALL_CORRUPTIONS
        for corruption in corruptions:
            out = corrupted_rgb(folder / name, name, Scenario(corruption, 5), seed=0)
            assert out.dtype == np.uint8 and out.shape == (image.size[1], image.size[0], 3), (name, corruption)
    # the corrupted pixels differ from the clean ones (the corruption did something)
    clean = corrupted_rgb(folder / "gray.png", "gray.png", CLEAN_SCENARIO, seed=0)
    assert not np.array_equal(clean, corrupted_rgb(folder / "gray.png", "gray.png", Scenario("gaussian_noise", 5), seed=0))


def test_jpeg_bytes_decode_to_the_pixels_pil_gives(tmp_path):
    """The GPU path hands JPEGs over undecoded and decodes them in batches (nvJPEG on CUDA, libjpeg
    here); the pixels must be PIL's: RGB, no EXIF rotation, grayscale replicated. PNGs stay decoded."""
    import numpy as np
    from PIL import Image

    from kdeval.data.dataset import CocoDetectionDataset
    from kdeval.data.source import Split
    from kdeval.engine.predict import images_to_device
    from kdeval.labels import LabelSpace

    folder = tmp_path / "images"
    files = {name: image for name, image in _unusual_images(folder).items() if name != "huge.jpg"}
    gray = Image.fromarray(np.random.default_rng(1).integers(0, 255, (30, 50), dtype=np.uint8), "L")
    gray.save(folder / "gray.jpg")
    files["gray.jpg"] = gray
    coco = {"images": [{"id": i + 1, "file_name": name, "width": im.size[0], "height": im.size[1]} for i, (name, im) in enumerate(files.items())],
            "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    split = Split(tmp_path / "gt.json", folder, "val")
    labels = LabelSpace.from_categories(coco["categories"])
    as_float = CocoDetectionDataset(split, coco, labels)
    as_bytes = CocoDetectionDataset(split, coco, labels, pixels="jpeg-bytes")
    images = [as_bytes[i][0] for i in range(len(files))]
    assert sum(image.dim() == 1 for image in images) == 2  # exif.jpg and gray.jpg travel undecoded
    decoded = images_to_device(images, torch.device("cpu"))
    for position, name in enumerate(files):
        expected = as_float[position][0]
        assert decoded[position].dtype == torch.float32 and decoded[position].shape == expected.shape, name
        assert torch.equal(decoded[position], expected), name
    with pytest.raises(KdevalError, match="image 7: cannot decode JPEG"):
        images_to_device(images[:1] * 6 + [torch.tensor([255, 216, 255, 0], dtype=torch.uint8)], torch.device("cpu"), list(range(1, 8)))


def test_outputs_come_back_from_the_device_unchanged_in_one_copy():
    """On CUDA a batch's outputs are packed into one tensor for one copy; the split must give every
    image its own boxes, scores and integer labels back (here on the CPU, where the packing runs too)."""
    from kdeval.engine.predict import packed_to_cpu

    torch.manual_seed(0)
    outputs = [{"boxes": torch.rand(n, 4) * 100, "scores": torch.rand(n), "labels": torch.randint(1, 91, (n,))} for n in (3, 0, 5)]
    moved = packed_to_cpu(outputs)
    assert len(moved) == 3
    for before, after in zip(outputs, moved):
        assert torch.equal(before["boxes"], after["boxes"]) and torch.equal(before["scores"], after["scores"])
        assert after["labels"].dtype == torch.int64 and torch.equal(before["labels"], after["labels"])
