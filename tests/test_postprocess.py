"""kdeval's batch-wide RetinaNet postprocessing against torchvision's per-image, per-level loop."""

import pytest
import torch

from kdeval.models import postprocess
from kdeval.models.postprocess import BatchedRetinaNet, with_torchvision_postprocessing
from kdeval.models.retinanet import ModelSpec, build_retinanet


def head_outputs(model, image_sizes, padded, logit_mean, seed=0, dtype=torch.float32):
    """Split head outputs and anchors as RetinaNet.forward hands them to postprocess_detections."""
    generator = torch.Generator().manual_seed(seed)
    grids = [((padded[0] + s - 1) // s, (padded[1] + s - 1) // s) for s in (8, 16, 32, 64, 128)]
    batch, classes = len(image_sizes), model.head.classification_head.num_classes
    features = [torch.zeros(batch, 1, h, w) for h, w in grids]

    class Images:
        tensors = torch.zeros(batch, 3, *padded)

    Images.image_sizes = image_sizes
    anchors = model.anchor_generator(Images, features)
    per_level = [h * w * model.anchor_generator.num_anchors_per_location()[0] for h, w in grids]
    logits = torch.randn(batch, sum(per_level), classes, generator=generator) + torch.as_tensor(logit_mean).view(-1, 1, 1)
    regression = torch.randn(batch, sum(per_level), 4, generator=generator) * 0.5
    split = {"cls_logits": list(logits.to(dtype).split(per_level, dim=1)),
             "bbox_regression": list(regression.to(dtype).split(per_level, dim=1))}
    return split, [list(a.split(per_level)) for a in anchors]


def torchvision_postprocess(model, split, anchors, image_sizes):
    return with_torchvision_postprocessing(model).postprocess_detections(split, anchors, image_sizes)


def assert_same(ours, theirs):
    assert len(ours) == len(theirs)
    for one, other in zip(ours, theirs):
        for key in ("boxes", "scores", "labels"):
            assert one[key].dtype == other[key].dtype
            assert torch.equal(one[key], other[key]), key


@pytest.mark.parametrize("topk_candidates", [1000, 7])
@pytest.mark.parametrize("dense_from", [0, 10**9], ids=["row-wise-topk", "sorted-candidates"])
def test_same_detections_as_torchvision_for_a_padded_batch(topk_candidates, dense_from, monkeypatch):
    monkeypatch.setattr(postprocess, "DENSE_CANDIDATES_PER_TOPK", dense_from)
    model = build_retinanet(ModelSpec("r18", num_classes=5, fpn_channels=8)).eval()
    model.topk_candidates = topk_candidates
    assert isinstance(model, BatchedRetinaNet)
    # four images of a padded 96×160 batch: each is clipped to its own size; the last keeps nothing
    image_sizes = [(96, 160), (80, 128), (96, 101), (64, 160)]
    split, anchors = head_outputs(model, image_sizes, (96, 160), logit_mean=[-2.0, -2.5, -3.0, -30.0])
    before = {key: [t.clone() for t in tensors] for key, tensors in split.items()}
    with torch.inference_mode():
        ours = model.postprocess_detections(split, anchors, image_sizes)
        theirs = torchvision_postprocess(model, split, anchors, image_sizes)
    most = min(100, 5 * topk_candidates)  # at most topk_candidates per level reach NMS
    assert [len(d["scores"]) > most // 2 for d in ours] == [True, True, True, False]
    assert all(len(d["scores"]) <= most for d in ours) and len(ours[3]["scores"]) == 0
    assert_same(ours, theirs)
    for key, tensors in split.items():  # the head's outputs are read, not sigmoided in place
        assert all(torch.equal(a, b) for a, b in zip(tensors, before[key]))
    widths = torch.tensor([w for _, w in image_sizes[:3]], dtype=torch.float32)
    assert all((d["boxes"][:, 2] <= w).all() and (d["boxes"] >= 0).all() for d, w in zip(ours, widths))
    assert any((d["boxes"][:, 2] == w).any() for d, w in zip(ours, widths))  # clipping did happen


def test_few_candidates_keep_torchvisions_order_and_count():
    """Fewer candidates above the threshold than detections_per_img: all of them survive NMS's order."""
    model = build_retinanet(ModelSpec("r18", num_classes=3, fpn_channels=8)).eval()
    image_sizes = [(64, 64), (64, 48)]
    split, anchors = head_outputs(model, image_sizes, (64, 64), logit_mean=[-5.0, -4.5], seed=1)
    with torch.inference_mode():
        ours = model.postprocess_detections(split, anchors, image_sizes)
        theirs = torchvision_postprocess(model, split, anchors, image_sizes)
    assert all(0 < len(d["scores"]) < 100 for d in ours)
    assert_same(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_head_outputs_are_scored_and_decoded_in_float32(dtype):
    """Under autocast the head's outputs are bf16/fp16; kdeval scores and decodes them in float32, where
    torchvision would decode in half precision. (Half-precision logits tie often, and ties may be
    broken differently from torchvision, so the comparison is with kdeval on the float32 values.)"""
    model = build_retinanet(ModelSpec("r18", num_classes=4, fpn_channels=8)).eval()
    image_sizes = [(800, 1067), (800, 1088)]
    split, anchors = head_outputs(model, image_sizes, (800, 1088), logit_mean=[-4.0, -4.0], dtype=dtype)
    as_float = {key: [t.float() for t in tensors] for key, tensors in split.items()}
    with torch.inference_mode():
        ours = model.postprocess_detections(split, anchors, image_sizes)
        reference = model.postprocess_detections(as_float, anchors, image_sizes)
    assert ours[0]["boxes"].dtype == torch.float32 and ours[0]["scores"].dtype == torch.float32
    assert all(len(d["scores"]) == 100 for d in ours)
    assert_same(ours, reference)
    # what torchvision's decoding in the head's dtype would cost at 1,000 px (its CPU NMS refuses bf16)
    codes, level_anchors = split["bbox_regression"][0][0], anchors[0][0]
    in_half = model.box_coder.decode_single(codes, level_anchors).float()
    in_float = model.box_coder.decode_single(codes.float(), level_anchors)
    assert (in_half - in_float).abs().max() >= 1.0


@pytest.mark.parametrize("dense_from", [0, 10**9], ids=["row-wise-topk", "sorted-candidates"])
def test_nan_scores_are_passed_over_as_torchvision_does(dense_from, monkeypatch):
    """NaN is never above the threshold; in the row-wise path it must not take a top-k place either."""
    monkeypatch.setattr(postprocess, "DENSE_CANDIDATES_PER_TOPK", dense_from)
    model = build_retinanet(ModelSpec("r18", num_classes=4, fpn_channels=8)).eval()
    model.topk_candidates = 50
    image_sizes = [(96, 96), (96, 80)]
    split, anchors = head_outputs(model, image_sizes, (96, 96), logit_mean=[-2.0, -2.0], seed=2)
    split["cls_logits"][0][0, :60] = float("nan")  # 60 anchors × 4 classes of the first image's P3
    with torch.inference_mode():
        ours = model.postprocess_detections(split, anchors, image_sizes)
        theirs = torchvision_postprocess(model, split, anchors, image_sizes)
    assert all(len(d["scores"]) == 100 and not d["scores"].isnan().any() for d in ours)
    assert_same(ours, theirs)


def test_anchors_are_float32_under_autocast_and_stay_so():
    from torchvision.models.detection.image_list import ImageList

    model = build_retinanet(ModelSpec("r18", num_classes=2, fpn_channels=8)).eval()
    image_list = ImageList(torch.zeros(2, 3, 800, 1088), [(800, 1067), (800, 1088)])
    sizes = [(100, 136), (50, 68), (25, 34), (13, 17), (7, 9)]
    reference = model.anchor_generator(image_list, [torch.zeros(2, 8, h, w) for h, w in sizes])
    half = model.anchor_generator(image_list, [torch.zeros(2, 8, h, w, dtype=torch.bfloat16) for h, w in sizes])
    again = model.anchor_generator(image_list, [torch.zeros(2, 8, h, w) for h, w in sizes])
    assert reference[0].dtype == half[0].dtype == torch.float32 and reference[0].max() > 1000
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(reference, half, again))


@pytest.mark.parametrize("output", ["cls_logits", "bbox_regression"])
def test_float16_outputs_that_overflowed_are_an_error_not_silently_dropped_boxes(output):
    from kdeval.errors import KdevalError

    model = build_retinanet(ModelSpec("r18", num_classes=3, fpn_channels=8)).eval()
    image_sizes = [(64, 64)]
    split, anchors = head_outputs(model, image_sizes, (64, 64), logit_mean=[-3.0], dtype=torch.float16)
    with torch.inference_mode():
        assert len(model.postprocess_detections(split, anchors, image_sizes)[0]["scores"]) > 0
        split[output][2][0, 5, 1] = float("inf")
        with pytest.raises(KdevalError, match="overflowed float16 under --amp.*--fp32"):
            model.postprocess_detections(split, anchors, image_sizes)
