"""Untrusted files must not run code or write files because of what they contain."""

from __future__ import annotations

import builtins
import pickle
import struct

import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_TRAIN_ARGS, shapes_args, write_json
from kdeval.cli import app
from kdeval.data.coco import image_path
from kdeval.errors import KdevalError
from kdeval.models.checkpoint import load_checkpoint, trusting_checkpoints

runner = CliRunner()


class _CreatesAFile:
    """Unpickling this calls open(path, 'w'): the file appears only if the pickle is executed."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (builtins.open, (self.path, "w"))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_checkpoint_whose_unpickling_writes_a_file_is_refused(tmp_path, tiny_shapes, protocol):
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "kdeval-checkpoint", "payload": _CreatesAFile(marker)}, evil, pickle_protocol=protocol)
    data = [*shapes_args(tiny_shapes), "--device", "cpu", "--no-progress"]
    commands = [
        ["evaluate", f"m={evil}", *data, "--out", str(tmp_path / "e")],
        ["errors", f"m={evil}", *data, "--out", str(tmp_path / "x")],
        ["predict", str(evil), *data, "-o", str(tmp_path / "d.json")],
        ["train", *shapes_args(tiny_shapes, "train"), *TINY_TRAIN_ARGS, "--teacher", str(evil), "--distill", "ssim",
         "--out", str(tmp_path / "t"), "--device", "cpu"],
    ]
    for command in commands:
        result = runner.invoke(app, command)
        assert result.exit_code == 2, (command[0], result.output)
        assert "refused" in result.output and "--trust-checkpoint" in result.output, result.output
        assert not marker.exists()


def test_trust_is_explicit_and_lasts_one_call(tmp_path, trained):
    import argparse

    payload = torch.load(trained, weights_only=True)
    payload["note"] = argparse.Namespace(origin="an old pickle")  # outside torch's allow-list
    torch.save(payload, tmp_path / "old.pt")
    with pytest.raises(KdevalError, match="--trust-checkpoint"):
        load_checkpoint(tmp_path / "old.pt")
    with trusting_checkpoints():
        assert load_checkpoint(tmp_path / "old.pt").spec.arch == "r18"
    with pytest.raises(KdevalError, match="refused"):
        load_checkpoint(tmp_path / "old.pt")  # trust ended with the block


@pytest.mark.parametrize("file_name", ["../../x.png", "/etc/passwd", "a/../../b.png"])
def test_image_file_names_cannot_leave_the_images_folder(tmp_path, file_name):
    with pytest.raises(KdevalError, match="outside the images folder"):
        image_path(tmp_path / "images", file_name)


def test_a_dataset_pointing_outside_its_folder_is_refused_before_anything_runs(tmp_path, tiny_shapes, trained):
    import json

    coco = json.loads((tiny_shapes / "annotations" / "instances_val.json").read_text())
    coco["images"][0]["file_name"] = "../../../../etc/hostname"
    ann = write_json(tmp_path / "gt.json", coco)
    result = runner.invoke(app, ["evaluate", f"m={trained}", "--images", str(tiny_shapes / "val"), "--annotations", str(ann),
                                 "--device", "cpu", "--out", str(tmp_path / "o"), "--no-progress"])
    assert result.exit_code == 2
    assert "outside the images folder" in result.output


@pytest.mark.slow
def test_model_names_cannot_steer_where_files_are_written(tmp_path, tiny_coco):
    from conftest import perfect_detections

    gt = write_json(tmp_path / "gt.json", tiny_coco)
    dets = write_json(tmp_path / "d.json", [dict(d, bbox=[v + 2 for v in d["bbox"]]) for d in perfect_detections(tiny_coco)])
    out = tmp_path / "deep" / "out"
    result = runner.invoke(app, ["errors", f"../../escaped={dets}", f"/abs/x={dets}", "--annotations", str(gt), "--out", str(out),
                                 "--no-progress", "--per-category"])
    assert result.exit_code == 0, result.output
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - {gt, dets}
    assert written and all(out in p.parents for p in written), sorted(map(str, written))


# ---------------------------------------------------------------- mmdetection's robustness pickles


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_a_robustness_pickle_whose_unpickling_writes_a_file_is_refused(tmp_path, protocol):
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil_results.pkl"
    evil.write_bytes(pickle.dumps({"fog": {0: {"bbox": {"AP": _CreatesAFile(marker)}}}}, protocol=protocol))
    result = runner.invoke(app, ["robustness", "--import", str(evil), "--name", "m", "--out", str(tmp_path / "rob")])
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("kdeval: error:") and "\n" not in message, message
    assert "evil_results.pkl" in message and "refused" in message and "open" in message and "convert" in message
    assert not marker.exists()
    assert not (tmp_path / "rob" / "imported").exists()


def _hand_pickle(*opcodes: bytes) -> bytes:
    return b"\x80\x02" + b"".join(opcodes) + b"."


@pytest.mark.parametrize("payload, refused", [
    # a global named the protocol-0 way, and by STACK_GLOBAL
    (b"cos\nsystem\n(S'touch pwned'\ntR", "os.system"),
    (b"\x8c\x02os\x8c\x06system\x93\x8c\x0btouch pwned\x85R", "os.system"),
    # INST builds an instance of a named class
    (b"(S'touch pwned'\nios\nsystem\n", "os.system"),
    # what numpy needs is admitted as kdeval's stand-ins only: no arrays, no object or string dtypes,
    # no other codec, no state pushed into a stand-in
    (b"cnumpy.core.multiarray\n_reconstruct\n", "a numpy array"),
    (b"cnumpy\ndtype\n(X\x02\x00\x00\x00O8\x89\x88tR", "numpy.dtype"),
    (b"c_codecs\nencode\n(X\x01\x00\x00\x00xX\x05\x00\x00\x00rot13tR", "_codecs.encode"),
    (b"cnumpy\ndtype\n}b", "a change to numpy.dtype"),
    (b"cnumpy.core.multiarray\nscalar\n(cnumpy\ndtype\n(X\x02\x00\x00\x00f8\x89\x88tR(K\x03X\x01\x00\x00\x00<tbC\x03abctR",
     "f8 scalar of 3 bytes"),
    (b"cbuiltins\neval\n", "builtins.eval"),
    (b"P0\n", "persistent id"),
])
def test_a_robustness_pickle_may_name_no_code(tmp_path, payload, refused):
    path = tmp_path / "crafted.pkl"
    path.write_bytes(_hand_pickle(payload))
    with pytest.raises(KdevalError, match="refused") as caught:
        from kdeval.data.mmdet_robustness import load_plain_pickle

        load_plain_pickle(path)
    assert refused in str(caught.value) and "crafted.pkl" in str(caught.value)
    assert not (tmp_path / "pwned").exists()


def test_numpy_scalars_are_decoded_without_numpy(tmp_path):
    import numpy as np

    from kdeval.data.mmdet_robustness import load_plain_pickle

    values = [np.float64(0.356), np.float32(0.25), np.float16(0.5), np.int64(3), np.uint8(7), np.float64(-1.0)]
    path = tmp_path / "n.pkl"
    path.write_bytes(pickle.dumps(values, protocol=2))
    loaded = load_plain_pickle(path)
    assert loaded == [0.356, 0.25, 0.5, 3, 7, -1.0] and [type(v) for v in loaded] == [float, float, float, int, int, float]
    # the byte order travels in the dtype's state: a big-endian float64 written by hand
    path.write_bytes(_hand_pickle(b"cnumpy.core.multiarray\nscalar\n(cnumpy\ndtype\n(X\x02\x00\x00\x00f8\x89\x88tR(K\x03X\x01\x00\x00\x00>tbC\x08"
                                  + struct.pack(">d", 0.125) + b"tR"))
    assert load_plain_pickle(path) == 0.125
