import pytest
import torch
from torchvision.models import resnet18
from torchvision.models.detection import retinanet_resnet50_fpn

from kdeval.errors import KdevalError
from kdeval.labels import LabelSpace
from kdeval.models.checkpoint import load_checkpoint, save_checkpoint
from kdeval.models.retinanet import ModelSpec, build_retinanet, fpn_features, load_backbone_weights

CATEGORIES = [{"id": 3, "name": "a", "supercategory": "x"}, {"id": 7, "name": "b", "supercategory": "x"}]


@pytest.mark.parametrize("arch,fpn_channels", [("r18", 16), ("r34", 16), ("r50", 256), ("r101", 32)])
def test_every_arch_gives_five_fpn_levels(arch, fpn_channels):
    torch.manual_seed(0)
    model = build_retinanet(ModelSpec(arch, num_classes=2, fpn_channels=fpn_channels, min_size=64, max_size=64)).eval()
    with torch.no_grad():
        features = fpn_features(model, [torch.rand(3, 64, 64)])
    assert list(features) == ["0", "1", "2", "p6", "p7"]  # P3..P7
    assert [f.shape[1] for f in features.values()] == [fpn_channels] * 5
    assert [f.shape[-1] for f in features.values()] == [8, 4, 2, 1, 1]  # strides 8..128 on a 64-px input


def test_torchvision_coco_retinanet_weights_load_and_give_the_same_detections(tmp_path):
    torch.manual_seed(0)
    reference = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, min_size=96, max_size=128, detections_per_img=100).eval()
    # the initial prior (score 0.01) would leave nothing above the 0.05 threshold: compare real detections
    torch.nn.init.constant_(reference.head.classification_head.cls_logits.bias, -1.5)
    path = tmp_path / "retinanet_resnet50_fpn_coco-eeacb38b.pth"
    torch.save(reference.state_dict(), path)
    loaded = load_checkpoint(path)
    assert loaded.source == "torchvision" and loaded.spec.arch == "r50" and loaded.spec.num_classes == 91
    assert loaded.labels.category_ids[1] == 1 and loaded.labels.names[1] == "person"
    assert loaded.labels.category_ids[12] == -1  # an 'N/A' slot of COCO's 91-id space
    model = loaded.model.eval()
    model.transform.min_size, model.transform.max_size = (96,), 128
    images = [torch.rand(3, 80, 96), torch.rand(3, 96, 80)]  # one batch, padded, each clipped to its own size
    with torch.no_grad():
        ours, theirs = model(images), reference(images)
    for one, other in zip(ours, theirs):
        assert len(one["scores"]) == 100
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(one[key], other[key])


def test_imagenet_backbone_weights_load_from_a_path(tmp_path):
    torch.manual_seed(1)
    imagenet = resnet18()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(imagenet.state_dict(), path)
    model = build_retinanet(ModelSpec("r18", num_classes=2, fpn_channels=16))
    load_backbone_weights(model, path)
    assert torch.equal(model.backbone.body.layer3[1].conv2.weight, imagenet.layer3[1].conv2.weight)
    assert torch.equal(model.backbone.body.bn1.running_var, imagenet.bn1.running_var)
    wrong = build_retinanet(ModelSpec("r50", num_classes=2, fpn_channels=16))
    with pytest.raises(KdevalError, match="does not fit this backbone"):
        load_backbone_weights(wrong, path)
    # an R34's weights hold every tensor an R18 needs, and more blocks: refused, not silently cut
    from torchvision.models import resnet34

    deeper = tmp_path / "resnet34-b627a593.pth"
    torch.save(resnet34().state_dict(), deeper)
    with pytest.raises(KdevalError, match=r"tensors this backbone lacks \(e.g. 'layer1.2.bn1.bias'\).*--arch"):
        load_backbone_weights(model, deeper)


def test_checkpoint_round_trip_keeps_everything(tmp_path):
    torch.manual_seed(2)
    spec = ModelSpec("r18", num_classes=2, fpn_channels=16, min_size=64, max_size=64, anchor_size_per_stride=2.0)
    model = build_retinanet(spec).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, spec, CATEGORIES, "distilled", {"lr": 0.1})
    loaded = load_checkpoint(path)
    assert loaded.spec == spec and loaded.role == "distilled" and loaded.train_settings == {"lr": 0.1}
    assert loaded.labels == LabelSpace((3, 7), ("a", "b"))
    assert [c["supercategory"] for c in loaded.categories] == ["x", "x"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key])
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temporary file


def test_foreign_and_mismatched_files_get_one_line_errors(tmp_path):
    torch.save({"some": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(KdevalError, match="expected a kdeval checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(KdevalError, match="not a readable PyTorch file"):
        load_checkpoint(tmp_path / "garbage.pt")
    with pytest.raises(KdevalError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    spec = ModelSpec("r18", num_classes=2, fpn_channels=16)
    path = save_checkpoint(tmp_path / "m.pt", build_retinanet(spec), spec, CATEGORIES, "baseline")
    payload = torch.load(path, weights_only=True)
    payload["model"]["arch"] = "r34"
    torch.save(payload, tmp_path / "wrong_arch.pt")
    with pytest.raises(KdevalError, match="do not fit RetinaNet r34") as info:
        load_checkpoint(tmp_path / "wrong_arch.pt")
    assert "\n" not in str(info.value)
    payload["model"]["arch"], payload["format_version"] = "r18", 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(KdevalError, match="format version 99"):
        load_checkpoint(tmp_path / "future.pt")


def test_a_pickle_that_needs_code_is_refused(tmp_path):
    import argparse

    # any class outside torch's weights-only allow-list needs full unpickling
    torch.save({"format": "kdeval-checkpoint", "obj": argparse.Namespace(a=1)}, tmp_path / "evil.pt")
    with pytest.raises(KdevalError, match="refused"):
        load_checkpoint(tmp_path / "evil.pt")


@pytest.mark.parametrize("fpn_channels,groups", [(64, 16), (256, 32), (16, 4), (9, 1), (10, 2)])
def test_group_norm_head_round_trips_and_old_checkpoints_keep_their_head(tmp_path, fpn_channels, groups):
    torch.manual_seed(3)
    spec = ModelSpec("r18", num_classes=2, fpn_channels=fpn_channels, head_norm="gn", min_size=64, max_size=64)
    model = build_retinanet(spec).eval()
    norms = [m for m in model.head.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 8 and {m.num_groups for m in norms} == {groups}  # 4 tower convs in each of the two heads
    loaded = load_checkpoint(save_checkpoint(tmp_path / "gn.pt", model, spec, CATEGORIES, "baseline", {}))
    assert loaded.spec.head_norm == "gn"
    image = torch.rand(3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model([image])[0]["scores"], loaded.model.eval()([image])[0]["scores"])
    # a checkpoint written before head_norm existed has no such field: it gets the original head
    payload = torch.load(tmp_path / "gn.pt", weights_only=True)
    plain = ModelSpec("r18", num_classes=2, fpn_channels=fpn_channels, min_size=64, max_size=64)
    save_checkpoint(tmp_path / "old.pt", build_retinanet(plain), plain, CATEGORIES, "baseline", {})
    old = torch.load(tmp_path / "old.pt", weights_only=True)
    del old["model"]["head_norm"]
    torch.save(old, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").spec.head_norm == "none"
    assert payload["model"]["head_norm"] == "gn"
    with pytest.raises(KdevalError, match="unknown head_norm 'bn'"):
        ModelSpec("r18", num_classes=2, head_norm="bn")


def _with_running_statistics(model):
    """Non-trivial BatchNorm statistics and affine parameters, as a trained model has."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if hasattr(module, "running_var") and module.running_var is not None:
            shape = module.running_var.shape
            module.running_mean.copy_(torch.rand(shape, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(shape, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(shape, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(shape, generator=generator) * 0.4 - 0.2)
    return model


@pytest.mark.parametrize("arch,norm,folds", [("r18", "bn", 20), ("r50", "frozen-bn", 53), ("r18", "gn", 0)])
def test_folded_batch_norms_compute_the_same_features(arch, norm, folds):
    from kdeval.models.retinanet import fold_batch_norms

    torch.manual_seed(0)
    model = _with_running_statistics(build_retinanet(ModelSpec(arch, num_classes=3, fpn_channels=32, norm=norm, min_size=96, max_size=96))).eval()
    images = [torch.rand(3, 96, 80), torch.rand(3, 64, 96)]
    with torch.no_grad():
        before = fpn_features(model, images)
        assert fold_batch_norms(model) == folds
        after = fpn_features(model, images)
        assert fold_batch_norms(model) == 0  # nothing left to fold
    for level in before:
        scale = before[level].abs().max()
        assert (before[level] - after[level]).abs().max() <= 1e-5 * scale, level
    kinds = {type(m).__name__ for m in model.backbone.body.modules()}
    assert not kinds & {"BatchNorm2d", "FrozenBatchNorm2d"} if folds else "GroupNorm" in kinds


def test_inference_model_folds_a_copy_and_training_batch_norms_are_left(tmp_path):
    from kdeval.engine.predict import PredictSettings, inference_model
    from kdeval.models.retinanet import fold_batch_norms

    model = build_retinanet(ModelSpec("r18", num_classes=2, fpn_channels=16))
    ready = inference_model(model, PredictSettings())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in ready.modules()) and not ready.training
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 20  # the caller's model is as it was
    kept = inference_model(model, PredictSettings(fold_batch_norms=False))
    assert kept is not model and sum(isinstance(m, torch.nn.BatchNorm2d) for m in kept.modules()) == 20
    assert fold_batch_norms(model.train()) == 0  # batch statistics while training: nothing to fold


@pytest.mark.parametrize("mmdet_style", [False, True])
def test_p6_and_p7_are_computed_in_fp32_under_autocast_and_train_with_finite_gradients(mmdet_style):
    """On 64-px images P7 is a stride-2 conv of a 1×1 map. There oneDNN's bf16 convolution gave
    non-finite weight gradients about 2 times in 5 (the tests' tiny training runs diverged at
    iteration 1), so the extra levels run in fp32 whatever the autocast: finite in every trial."""
    from kdeval.models.mmdet_network import build_mmdet_backbone
    from kdeval.models.retinanet import build_backbone

    spec = ModelSpec(arch="r18", num_classes=3, fpn_channels=16, min_size=64, max_size=64)
    torch.manual_seed(0)
    backbone = (build_mmdet_backbone if mmdet_style else build_backbone)(spec)
    for _ in range(20):
        backbone.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            features = backbone(torch.randn(2, 3, 64, 64))
        assert features["p6"].dtype == features["p7"].dtype == torch.float32
        assert features["p7"].shape[-2:] == (1, 1)
        sum(f.float().square().mean() for f in features.values()).backward()
        extra = backbone.fpn.extra_blocks
        assert torch.isfinite(extra.p6.weight.grad).all() and torch.isfinite(extra.p7.weight.grad).all()
