"""mmdetection RetinaNet checkpoints: key coverage, mmdetection's own test expectations as oracles, round trips.

No mmdetection code runs here: the expected numbers are the values mmdetection's and mmcv's unit tests
assert, cited by file at each test.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kdeval.cli import app
from kdeval.errors import KdevalError
from kdeval.models.checkpoint import checkpoint_labels, load_checkpoint
from kdeval.models.mmdet import kdeval_key, map_state_dict, mmdet_checkpoint_payload
from kdeval.models.mmdet_network import MMDetAnchorGenerator, MMDetBoxCoder, rescaled_size
from kdeval.models.retinanet import ModelSpec, build_retinanet

from conftest import shapes_args

KEYS = json.loads((Path(__file__).parent / "data" / "mmdet_retinanet_keys.json").read_text())


@pytest.mark.parametrize("name, arch", [("retinanet_r50_fpn", "r50"), ("retinanet_r101_fpn", "r101")])
def test_every_mmdet_key_maps_onto_the_mmdet_style_model(name, arch):
    mmdet_shapes = KEYS[name]
    mapped = {}
    for key, shape in mmdet_shapes.items():
        target = kdeval_key(key)
        if target is None:
            assert key.endswith("num_batches_tracked")
            continue
        assert target not in mapped, f"{key} and another key both map to {target}"
        mapped[target] = shape
    model = build_retinanet(ModelSpec(arch=arch, num_classes=80, norm="frozen-bn", style="mmdet"))
    wanted = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert set(mapped) == set(wanted)  # every key mapped, none left over on either side
    assert mapped == wanted  # and every shape agrees


def test_a_whole_r50_checkpoint_in_mmdet_names_loads(tmp_path):
    state_dict = {k: torch.zeros(shape) if shape else torch.tensor(0) for k, shape in KEYS["retinanet_r50_fpn"].items()}
    from torchvision.models.detection import RetinaNet_ResNet50_FPN_Weights

    coco_names = [n for n in RetinaNet_ResNet50_FPN_Weights.COCO_V1.meta["categories"] if n not in ("__background__", "N/A")]
    torch.save({"meta": {"CLASSES": tuple(coco_names)}, "state_dict": state_dict}, tmp_path / "r50.pth")
    loaded = load_checkpoint(tmp_path / "r50.pth")
    assert (loaded.spec.arch, loaded.spec.style, loaded.source) == ("r50", "mmdet", "mmdetection")
    # mmdetection's COCO class order → COCO's own category ids
    assert loaded.labels.category_ids[:3] == (1, 2, 3) and loaded.labels.category_ids[-1] == 90
    assert loaded.labels.names[0] == "person" and loaded.labels.names[-1] == "toothbrush"


@pytest.mark.parametrize("extra_key, what", [
    ("backbone.layer2.0.conv2.conv_offset.weight", "DCN"),
    ("bbox_head.cls_convs.0.gn.weight", "GroupNorm"),
    ("bbox_head.atss_centerness.weight", "head other than RetinaHead"),
    ("neck.fpn_convs.5.conv.weight", "FPN other than"),
])
def test_unsupported_mmdet_models_are_named_on_one_line(tmp_path, extra_key, what):
    state_dict = {k: torch.zeros(shape) if shape else torch.tensor(0) for k, shape in KEYS["retinanet_r50_fpn"].items()}
    state_dict[extra_key] = torch.zeros(1)
    with pytest.raises(KdevalError, match=what) as error:
        map_state_dict(state_dict, tmp_path / "x.pth")
    assert "\n" not in str(error.value)


def test_retina_anchor_base_anchors_match_mmdetection():
    # mmdetection tests/test_core/test_anchor/test_anchor_generator.py::test_retina_anchor
    # (octave_base_scale 4, scales_per_octave 3, ratios 0.5/1/2, strides 8–128): the first level's nine
    # base anchors and the last level's first three
    stride8 = torch.tensor([[-22.6274, -11.3137, 22.6274, 11.3137], [-28.5088, -14.2544, 28.5088, 14.2544],
                            [-35.9188, -17.9594, 35.9188, 17.9594], [-16.0000, -16.0000, 16.0000, 16.0000],
                            [-20.1587, -20.1587, 20.1587, 20.1587], [-25.3984, -25.3984, 25.3984, 25.3984],
                            [-11.3137, -22.6274, 11.3137, 22.6274], [-14.2544, -28.5088, 14.2544, 28.5088],
                            [-17.9594, -35.9188, 17.9594, 35.9188]])
    stride128 = torch.tensor([[-362.0387, -181.0193, 362.0387, 181.0193], [-456.1401, -228.0701, 456.1401, 228.0701],
                              [-574.7006, -287.3503, 574.7006, 287.3503]])
    generator = MMDetAnchorGenerator()
    assert generator.cell_anchors[0].allclose(stride8, atol=1e-4)
    assert generator.cell_anchors[4][:3].allclose(stride128, atol=1e-4)
    # its valid-flag counts on (80, 80) … (5, 5) grids are every anchor: 57600, 14400, 3600, 900, 225
    grids = [(80, 80), (40, 40), (20, 20), (10, 10), (5, 5)]
    assert [len(a) for a in generator.grid_anchors(grids, None)] == [57600, 14400, 3600, 900, 225]


def test_anchor_strides_match_mmdetection():
    # mmdetection tests/test_core/test_anchor/test_anchor_generator.py::test_strides:
    # AnchorGenerator(strides=[10], ratios=[1.], scales=[1.], base_sizes=[10]) on a 2×2 grid
    generator = MMDetAnchorGenerator(1.0, strides=(10,), ratios=(1.0,), scales_per_octave=1)
    expected = torch.tensor([[-5., -5., 5., 5.], [5., -5., 15., 5.], [-5., 5., 5., 15.], [5., 5., 15., 15.]])
    assert torch.equal(generator.grid_anchors([(2, 2)], None)[0], expected)


def test_anchors_use_the_network_strides_not_the_padded_size():
    # torchvision derives a stride from padded size // grid size: 800 // 13 = 61 on an 800-px input's P6
    generator = MMDetAnchorGenerator()
    p6 = generator.grid_anchors([(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)], None)[3]
    centres = (p6[:, :2] + p6[:, 2:]) / 2
    assert centres[9 * 19 * 12, 1] == 12 * 64


def test_delta_decode_matches_mmdetection():
    # mmdetection tests/test_core/test_bbox/test_coder/test_delta_xywh_bbox_coder.py::test_delta_bbox_coder
    # (means 0, stds 1, max_shape (32, 32)); the clamp to the image is batched_postprocess's, as here
    rois = torch.tensor([[0., 0., 1., 1.], [0., 0., 1., 1.], [0., 0., 1., 1.], [5., 5., 5., 5.]])
    deltas = torch.tensor([[0., 0., 0., 0.], [1., 1., 1., 1.], [0., 0., 2., -1.], [0.7, -1.9, -0.5, 0.3]])
    expected = torch.tensor([[0.0000, 0.0000, 1.0000, 1.0000], [0.1409, 0.1409, 2.8591, 2.8591],
                             [0.0000, 0.3161, 4.1945, 0.6839], [5.0000, 5.0000, 5.0000, 5.0000]])
    decoded = MMDetBoxCoder().decode_single(deltas, rois).clamp(0, 32)
    assert decoded.allclose(expected, atol=1e-4)


def test_delta_decode_clamps_small_sizes_too():
    # delta2bbox clamps dw, dh to ±|log(16/1000)|; torchvision's BoxCoder only from above
    decoded = MMDetBoxCoder().decode_single(torch.tensor([[0., 0., -10., -10.]]), torch.tensor([[0., 0., 1000., 1000.]]))
    assert decoded[0, 2] - decoded[0, 0] == pytest.approx(16.0, rel=1e-5)


@pytest.mark.parametrize("width, height, scale, expected_wh", [
    # mmcv tests/test_image/test_geometric.py::test_rescale_size: an image (w, h) = (400, 300)
    (400, 300, (1000, 600), (800, 600)),
    (400, 300, (180, 200), (200, 150)),
    # COCO's 640×480 at mmdetection's 1333×800: 1066.67 rounds to 1067 (torchvision floors to 1066)
    (640, 480, (1333, 800), (1067, 800)),
])
def test_resize_arithmetic_matches_mmcv(width, height, scale, expected_wh):
    assert rescaled_size(height, width, scale)[::-1] == expected_wh


def test_transform_resizes_normalises_and_pads_as_mmdetection():
    model = build_retinanet(ModelSpec(arch="r18", num_classes=2, fpn_channels=16, norm="frozen-bn", style="mmdet")).eval()
    image = torch.full((3, 480, 640), 128 / 255)
    batch, _ = model.transform([image])
    assert batch.image_sizes == [(800, 1067)] and tuple(batch.tensors.shape[-2:]) == (800, 1088)
    # (128 − 123.675) / 58.395 in the red channel, 0 in the padding
    assert batch.tensors[0, 0, 10, 10].item() == pytest.approx((128 - 123.675) / 58.395, rel=1e-5)
    assert batch.tensors[0, :, :, 1070:].abs().max() == 0


def test_head_boxes_equal_a_hand_decode():
    spec = ModelSpec(arch="r18", num_classes=2, fpn_channels=16, norm="frozen-bn", style="mmdet", min_size=64, max_size=64)
    model = build_retinanet(spec).eval()
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = model.network_outputs([image])
    regression = outputs.head_outputs["bbox_regression"][0][0]  # P3, the first image: [8·8·9, 4]
    anchors = outputs.anchors[0][0]
    for index in (0, 40, 9 * 27 + 4):
        (x0, y0, x1, y1), (dx, dy, dw, dh) = anchors[index].tolist(), regression[index].tolist()
        width, height = x1 - x0, y1 - y0
        cx, cy = x0 + 0.5 * width + dx * width, y0 + 0.5 * height + dy * height
        w, h = width * torch.tensor(dw).exp().item(), height * torch.tensor(dh).exp().item()
        decoded = model.box_coder.decode_single(regression[index:index + 1], anchors[index:index + 1])[0]
        assert decoded.tolist() == pytest.approx([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], abs=1e-4)
    # anchor 9·27 + 4: row 3, column 3 of the 8×8 P3 grid, ratio 1, scale 2^(1/3), centred on (24, 24)
    assert ((anchors[9 * 27 + 4, :2] + anchors[9 * 27 + 4, 2:]) / 2).tolist() == [24.0, 24.0]


def _random_mmdet_model(num_classes: int, arch: str = "r18"):
    torch.manual_seed(0)
    # mmdetection's own test scale (1333×800): a checkpoint's weights carry no input size
    spec = ModelSpec(arch=arch, num_classes=num_classes, fpn_channels=16, norm="frozen-bn", style="mmdet")
    model = build_retinanet(spec).eval()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            elif name.endswith(("running_mean", "bias")):
                tensor.normal_(0, 0.1)
            else:
                tensor.normal_(0, 0.05)
        model.head.classification_head.cls_logits.bias.fill_(0.0)  # many boxes above score_thr
    return spec, model


def _detections(model, images):
    with torch.no_grad():
        return model(images)


@pytest.mark.parametrize("meta_layout", ["2.x", "3.x"])
def test_round_trip_through_mmdet_layout_gives_identical_detections(tmp_path, meta_layout):
    spec, model = _random_mmdet_model(2)
    path = tmp_path / "mm.pth"
    torch.save(mmdet_checkpoint_payload(model, ["circle", "square"], meta_layout), path)
    loaded = load_checkpoint(path)
    assert loaded.spec == spec and loaded.labels.names == ("circle", "square")
    assert checkpoint_labels(path) == loaded.labels
    images = [torch.rand(3, 64, 48, generator=torch.Generator().manual_seed(1)), torch.rand(3, 40, 64)]
    expected, got = _detections(model, images), _detections(loaded.model.eval(), images)
    assert len(expected[0]["boxes"]) > 0
    for e, g in zip(expected, got):
        assert torch.equal(e["boxes"], g["boxes"]) and torch.equal(e["scores"], g["scores"]) and torch.equal(e["labels"], g["labels"])


def test_mmrazor_wrapper_loads_its_student(tmp_path):
    _, student = _random_mmdet_model(2)
    _, teacher = _random_mmdet_model(2, arch="r34")
    plain = mmdet_checkpoint_payload(student, ["circle", "square"])
    teacher_state = mmdet_checkpoint_payload(teacher, ["circle", "square"])["state_dict"]
    wrapped = {f"architecture.{k}": v for k, v in plain["state_dict"].items()}
    wrapped.update({f"teacher.{k}": v for k, v in teacher_state.items()})
    wrapped["distiller.connectors.loss_s4_sfeat.conv.weight"] = torch.zeros(16, 16, 1, 1)
    torch.save({"meta": plain["meta"], "state_dict": wrapped}, tmp_path / "razor.pth")
    loaded = load_checkpoint(tmp_path / "razor.pth")
    assert loaded.spec.arch == "r18"
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(2))]
    assert torch.equal(_detections(student, images)[0]["boxes"], _detections(loaded.model.eval(), images)[0]["boxes"])


def test_checkpoint_without_class_names_is_refused(tmp_path):
    _, model = _random_mmdet_model(2)
    payload = mmdet_checkpoint_payload(model, ["a", "b"])
    payload["meta"] = {}
    torch.save(payload, tmp_path / "nameless.pth")
    with pytest.raises(KdevalError, match="without class names"):
        load_checkpoint(tmp_path / "nameless.pth")


def _shapes_mmdet_checkpoint(tiny_shapes: Path, path: Path) -> Path:
    coco = json.loads((tiny_shapes / "annotations" / "instances_val.json").read_text())
    names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    assert [c["id"] for c in sorted(coco["categories"], key=lambda c: c["id"])] == list(range(1, len(names) + 1))
    _, model = _random_mmdet_model(len(names))
    torch.save(mmdet_checkpoint_payload(model, names, "2.x"), path)
    return path


def test_cli_evaluates_an_mmdet_checkpoint(tiny_shapes, tmp_path):
    checkpoint = _shapes_mmdet_checkpoint(tiny_shapes, tmp_path / "retinanet_r18_fpn_mm.pth")
    result = CliRunner().invoke(app, ["evaluate", f"mm={checkpoint}", *shapes_args(tiny_shapes), "--out", str(tmp_path / "eval"), "--no-progress"])
    assert result.exit_code == 0, result.output


def test_cli_refuses_an_unsupported_mmdet_checkpoint_with_exit_2(tiny_shapes, tmp_path):
    checkpoint = _shapes_mmdet_checkpoint(tiny_shapes, tmp_path / "dcn.pth")
    payload = torch.load(checkpoint, weights_only=True)
    payload["state_dict"]["backbone.layer3.0.conv2.conv_offset.weight"] = torch.zeros(1)
    torch.save(payload, checkpoint)
    result = CliRunner().invoke(app, ["evaluate", f"mm={checkpoint}", *shapes_args(tiny_shapes), "--out", str(tmp_path / "eval"), "--no-progress"])
    assert result.exit_code == 2
    assert "DCN" in result.output


def test_convert_writes_a_kdeval_checkpoint_with_the_same_detections(tiny_shapes, tmp_path):
    checkpoint = _shapes_mmdet_checkpoint(tiny_shapes, tmp_path / "mm.pth")
    result = CliRunner().invoke(app, ["convert", str(checkpoint), str(tmp_path / "converted.pt")])
    assert result.exit_code == 0, result.output
    original, converted = load_checkpoint(checkpoint), load_checkpoint(tmp_path / "converted.pt")
    assert converted.source == "kdeval" and converted.spec == original.spec and converted.spec.style == "mmdet"
    assert converted.labels == original.labels and converted.train_settings == {"converted_from": "mmdetection"}
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(3))]
    first, second = _detections(original.model.eval(), images)[0], _detections(converted.model.eval(), images)[0]
    assert torch.equal(first["boxes"], second["boxes"]) and torch.equal(first["scores"], second["scores"])


def test_cli_robustness_runs_an_mmdet_checkpoint(tiny_shapes, tmp_path):
    checkpoint = _shapes_mmdet_checkpoint(tiny_shapes, tmp_path / "mm.pth")
    result = CliRunner().invoke(app, ["robustness", f"mm={checkpoint}", *shapes_args(tiny_shapes), "--device", "cpu", "--no-progress",
                                      "--corruptions", "gaussian_noise", "--severities", "1", "--max-images", "2",
                                      "--out", str(tmp_path / "robust")])
    assert result.exit_code == 0, result.output


def test_train_distils_from_an_mmdet_teacher(tiny_shapes, tmp_path):
    from conftest import TINY_TRAIN_ARGS

    teacher = _shapes_mmdet_checkpoint(tiny_shapes, tmp_path / "teacher_mm.pth")  # FPN width 16, as TINY_TRAIN_ARGS
    result = CliRunner().invoke(app, ["train", *shapes_args(tiny_shapes, "train"), *TINY_TRAIN_ARGS, "--teacher", str(teacher),
                                      "--distill", "ssim", "--device", "cpu", "--out", str(tmp_path / "student")])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "student" / "model.pt").role == "distilled"


def test_a_training_checkpoint_with_numpy_and_history_buffers_loads_as_weights(tmp_path):
    # mmengine's message_hub keeps HistoryBuffer objects (numpy arrays inside), meta numpy scalars: the
    # pickle names the class; a stand-in module with that name writes the same opcodes as mmengine would
    import numpy as np
    import sys
    import types

    module = types.ModuleType("mmengine.logging.history_buffer")

    class HistoryBuffer:
        def __init__(self):
            self._log_history, self._count_history = np.array([0.5, 0.4]), np.array([1, 1])

    HistoryBuffer.__module__, HistoryBuffer.__qualname__ = module.__name__, "HistoryBuffer"
    module.HistoryBuffer = HistoryBuffer
    _, model = _random_mmdet_model(2)
    payload = mmdet_checkpoint_payload(model, ["circle", "square"])
    payload["meta"]["seed"] = np.int64(7)
    payload["message_hub"] = {"log_scalars": {"train/loss": HistoryBuffer()}, "runtime_info": {"epoch": 12}}
    names = ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer")
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules.update({name: types.ModuleType(name) for name in names[:2]} | {names[2]: module})
    try:
        torch.save(payload, tmp_path / "epoch_12.pth")
    finally:
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value
    assert load_checkpoint(tmp_path / "epoch_12.pth").labels.names == ("circle", "square")


@pytest.mark.parametrize("config_line, what", [
    ("backbone=dict(type='ResNet', depth=50, style='caffe')", "caffe-style"),
    ("neck=dict(type='FPN', add_extra_convs='on_output', num_outs=5)", "P6 is not made from C5"),
])
def test_config_text_in_meta_refuses_what_the_weights_cannot_show(tmp_path, config_line, what):
    _, model = _random_mmdet_model(2)
    payload = mmdet_checkpoint_payload(model, ["a", "b"], "2.x")
    payload["meta"]["config"] = f"model = dict(\n    {config_line})\n"
    torch.save(payload, tmp_path / "mm.pth")
    with pytest.raises(KdevalError, match=what):
        load_checkpoint(tmp_path / "mm.pth")
    payload["meta"]["config"] = "model = dict(backbone=dict(type='ResNet', depth=18, style='pytorch'))\n"
    torch.save(payload, tmp_path / "mm.pth")
    assert load_checkpoint(tmp_path / "mm.pth").spec.arch == "r18"


def test_boxes_clipped_to_no_width_are_dropped_as_min_bbox_size_0_does():
    # mmdetection's RetinaNet test_cfg has min_bbox_size=0: a box needs width and height above 0
    model = build_retinanet(ModelSpec(arch="r18", num_classes=1, fpn_channels=16, norm="frozen-bn", style="mmdet")).eval()
    anchors = [[torch.tensor([[10., 10., 20., 20.], [100., 10., 120., 20.]])]]
    head_outputs = {"cls_logits": [torch.full((1, 2, 1), 5.0)], "bbox_regression": [torch.zeros(1, 2, 4)]}
    detections = model.postprocess_detections(head_outputs, anchors, [(32, 32)])[0]
    assert detections["boxes"].tolist() == [[10., 10., 20., 20.]]


def test_an_mmdet_models_classes_reach_the_dataset_by_name(tiny_shapes, tmp_path):
    """mmdetection knows classes by name and index alone: a checkpoint whose class order differs from
    the dataset's ids gets each class's dataset id by name, in predict, evaluate and robustness; a kdeval
    checkpoint's ids are its own and a mismatch stays an error (--category-map maps it)."""
    from kdeval.models.checkpoint import dataset_labels

    coco = json.loads((tiny_shapes / "annotations" / "instances_val.json").read_text())
    by_name = {c["name"]: c["id"] for c in coco["categories"]}
    names = sorted(by_name, reverse=True)  # the dataset's ids are in generator order: this is another
    _, model = _random_mmdet_model(len(names))
    checkpoint = tmp_path / "reordered.pth"
    torch.save(mmdet_checkpoint_payload(model, names, "3.x"), checkpoint)
    loaded = load_checkpoint(checkpoint)
    assert loaded.labels.category_ids != tuple(by_name[n] for n in names)  # kdeval's own 1..N
    mapped = dataset_labels(loaded, coco["categories"], "val")
    assert mapped.category_ids == tuple(by_name[n] for n in names) and mapped.names == tuple(names)

    result = CliRunner().invoke(app, ["evaluate", f"mm={checkpoint}", *shapes_args(tiny_shapes), "--out", str(tmp_path / "eval"),
                                      "--no-progress", "--bootstrap", "0"])
    assert result.exit_code == 0, result.output  # by id alone: "category id 1 is 'circle' in the dataset but 'triangle' …"

    native = replace(loaded, spec=replace(loaded.spec, style="torchvision"))
    with pytest.raises(KdevalError, match="--category-map"):
        dataset_labels(native, coco["categories"], "val")


# test_cfg as mmdetection 2.x's pretty_text prints a RetinaNet config (meta.config); 3.x's mmengine prints
# the same dict(...) text under meta.cfg
_RETINANET_CONFIG_TEXT = """model = dict(
    type='RetinaNet',
    backbone=dict(type='ResNet', depth=18, num_stages=4, out_indices=(0, 1, 2, 3), style='pytorch'),
    neck=dict(type='FPN', in_channels=[128, 256, 512], out_channels=16, start_level=1,
              add_extra_convs='on_input', num_outs=5),
    train_cfg=dict(
        assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0, ignore_iof_thr=-1),
        allowed_border=-1, pos_weight=-1, debug=False),
    test_cfg=dict(
        nms_pre=%(nms_pre)s,
        min_bbox_size=%(min_bbox_size)s,
        score_thr=%(score_thr)s,
        nms=dict(type='%(nms)s', iou_threshold=%(iou)s),
        max_per_img=%(max_per_img)s))
"""
_DEFAULT_TEST_CFG = {"nms_pre": 1000, "min_bbox_size": 0, "score_thr": 0.05, "nms": "nms", "iou": 0.5, "max_per_img": 100}


@pytest.mark.parametrize("meta_layout, key", [("2.x", "config"), ("3.x", "cfg")])
def test_test_cfg_in_meta_sets_the_postprocessing(tmp_path, meta_layout, key):
    _, model = _random_mmdet_model(2)
    payload = mmdet_checkpoint_payload(model, ["a", "b"], meta_layout)
    payload["meta"][key] = _RETINANET_CONFIG_TEXT % _DEFAULT_TEST_CFG
    torch.save(payload, tmp_path / "default.pth")
    default = load_checkpoint(tmp_path / "default.pth")
    assert (default.spec.topk_candidates, default.spec.score_thresh, default.spec.nms_thresh, default.spec.detections_per_img) == (1000, 0.05, 0.5, 100)
    changed = dict(_DEFAULT_TEST_CFG, nms_pre=50, score_thr=0.3, iou=0.3, max_per_img=7)
    payload["meta"][key] = _RETINANET_CONFIG_TEXT % changed
    torch.save(payload, tmp_path / "changed.pth")
    loaded = load_checkpoint(tmp_path / "changed.pth")
    assert (loaded.spec.topk_candidates, loaded.spec.score_thresh, loaded.spec.nms_thresh, loaded.spec.detections_per_img) == (50, 0.3, 0.3, 7)
    net = loaded.model.eval()
    assert (net.topk_candidates, net.score_thresh, net.nms_thresh, net.detections_per_img) == (50, 0.3, 0.3, 7)
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(4))]
    many, few = _detections(default.model.eval(), images)[0], _detections(net, images)[0]
    assert len(many["scores"]) == 100 and len(few["scores"]) == 7 and bool((few["scores"] > 0.3).all())


@pytest.mark.parametrize("change, what", [
    ({"nms": "soft_nms"}, "nms type 'soft_nms'"),
    ({"min_bbox_size": 2}, "min_bbox_size=2"),
])
def test_a_test_cfg_kdeval_cannot_run_is_refused(tmp_path, change, what):
    _, model = _random_mmdet_model(2)
    payload = mmdet_checkpoint_payload(model, ["a", "b"], "2.x")
    payload["meta"]["config"] = _RETINANET_CONFIG_TEXT % dict(_DEFAULT_TEST_CFG, **change)
    torch.save(payload, tmp_path / "mm.pth")
    with pytest.raises(KdevalError, match=what):
        load_checkpoint(tmp_path / "mm.pth")


def test_boxes_return_to_the_input_image_before_nms_as_mmdetection_orders_it():
    """mmdetection 3.x multiplies the clipped boxes by 1 / its scale factors (float32), then runs NMS;
    torchvision runs NMS in the resized image and rescales after. IoU does not change under a per-axis
    scaling, but its float32 value can cross the threshold: two boxes at IoU exactly 0.5 in an 800-row
    resize of a 43-row image are at 0.50000006 there, and NMS (IoU > 0.5) keeps only the better."""
    from torchvision.ops import box_iou

    from kdeval.models.postprocess import BatchedRetinaNet, NetworkOutputs

    model = build_retinanet(ModelSpec(arch="r18", num_classes=1, fpn_channels=16, norm="frozen-bn", style="mmdet")).eval()
    anchors = torch.tensor([[0., 0., 16., 16.], [0., 0., 16., 8.]])  # decoded as they are: zero deltas
    outputs = NetworkOutputs(head_outputs={"cls_logits": [torch.tensor([[[3.0], [2.0]]])], "bbox_regression": [torch.zeros(1, 2, 4)]},
                             anchors=[[anchors]], image_sizes=[(800, 600)], original_image_sizes=[(43, 600)])
    scale = torch.tensor([1.0, 1 / (800 / 43)] * 2, dtype=torch.float32)
    assert box_iou(anchors[:1], anchors[1:]).item() == 0.5 and box_iou(anchors[:1] * scale, anchors[1:] * scale).item() > 0.5
    torchvision_order = BatchedRetinaNet.postprocess_batch(model, outputs)[0]
    mmdet_order = model.postprocess_batch(outputs)[0]
    assert len(torchvision_order["boxes"]) == 2
    assert len(mmdet_order["boxes"]) == 1 and torch.equal(mmdet_order["boxes"][0], anchors[0] * scale)


def test_rescaled_boxes_are_mmdetections_arithmetic_bit_for_bit():
    """Random weights on two images of unequal x and y scale factors: every kept box is the clipped box
    of the resized image times float32(1 / scale factor), as mmdetection 3.x's scale_boxes computes it."""
    from kdeval.models.postprocess import batched_postprocess

    _, model = _random_mmdet_model(2)
    images = [torch.rand(3, 61, 47, generator=torch.Generator().manual_seed(5)), torch.rand(3, 58, 73)]
    with torch.no_grad():
        outputs = model.network_outputs(images)
        got = model.postprocess_batch(outputs)
        everything = batched_postprocess(outputs.head_outputs["cls_logits"], outputs.head_outputs["bbox_regression"], outputs.anchors[0],
                                         outputs.image_sizes, model.box_coder, model.score_thresh, model.topk_candidates, model.nms_thresh,
                                         10_000)
    for (height, width), (resized_h, resized_w), image, mine in zip(outputs.original_image_sizes, outputs.image_sizes, everything, got):
        assert resized_w / width != resized_h / height and len(mine["boxes"]) == 100
        keep = ((image["boxes"][:, 2] > image["boxes"][:, 0]) & (image["boxes"][:, 3] > image["boxes"][:, 1])).nonzero().squeeze(1)[:100]
        scale = torch.tensor([1 / (resized_w / width), 1 / (resized_h / height)] * 2, dtype=torch.float32)
        assert torch.equal(mine["boxes"], image["boxes"][keep] * scale)
        assert torch.equal(mine["scores"], image["scores"][keep]) and torch.equal(mine["labels"], image["labels"][keep])


def test_test_cfg_in_mmengines_own_layout_is_read():
    # mmengine 0.10's Config.pretty_text of a 3.x model: keys sorted, nms's type after its threshold
    from kdeval.models.mmdet import postprocessing_settings

    text = ("model = dict(\n    test_cfg=dict(\n        max_per_img=50,\n        min_bbox_size=0,\n"
            "        nms=dict(iou_threshold=0.6, type='nms'),\n        nms_pre=500,\n        score_thr=0.1),\n    type='RetinaNet')\n")
    expected = {"topk_candidates": 500, "score_thresh": 0.1, "detections_per_img": 50, "nms_thresh": 0.6}
    assert postprocessing_settings({"cfg": text}, Path("mm.pth")) == expected
    # mmdetection 2.0–2.3 spelled NMS's threshold iou_thr
    assert postprocessing_settings({"config": text.replace("iou_threshold", "iou_thr")}, Path("mm.pth")) == expected
    with pytest.raises(KdevalError, match="soft_nms"):
        postprocessing_settings({"cfg": text.replace("type='nms'", "type='soft_nms'")}, Path("mm.pth"))
