"""kdeval's batch-wide RetinaNet postprocessing against torchvision's per-image, per-level loop."""

import pytest
import torch

from conftest import CUDA
from kdeval.models import postprocess
from kdeval.models.postprocess import BatchedRetinaNet, with_torchvision_inference
from torchvision.models.detection import RetinaNet
from kdeval.models.retinanet import ModelSpec, build_retinanet


def head_outputs(model, image_sizes, padded, logit_mean, seed=0, dtype=torch.float32, device="cpu"):
    """Split head outputs and anchors as RetinaNet.forward hands them to postprocess_detections (drawn
    on the CPU, so every device gets the same values)."""
    generator = torch.Generator().manual_seed(seed)
    grids = [((padded[0] + s - 1) // s, (padded[1] + s - 1) // s) for s in (8, 16, 32, 64, 128)]
    batch, classes = len(image_sizes), model.head.classification_head.num_classes
    features = [torch.zeros(batch, 1, h, w, device=device) for h, w in grids]

    class Images:
        tensors = torch.zeros(batch, 3, *padded, device=device)

    Images.image_sizes = image_sizes
    anchors = model.anchor_generator(Images, features)
    per_level = [h * w * model.anchor_generator.num_anchors_per_location()[0] for h, w in grids]
    logits = torch.randn(batch, sum(per_level), classes, generator=generator) + torch.as_tensor(logit_mean).view(-1, 1, 1)
    regression = torch.randn(batch, sum(per_level), 4, generator=generator) * 0.5
    split = {"cls_logits": list(logits.to(device, dtype).split(per_level, dim=1)),
             "bbox_regression": list(regression.to(device, dtype).split(per_level, dim=1))}
    return split, [list(a.split(per_level)) for a in anchors]


def torchvision_postprocess(model, split, anchors, image_sizes):
    return with_torchvision_inference(model).postprocess_detections(split, anchors, image_sizes)


def assert_same(ours, theirs):
    assert len(ours) == len(theirs)
    for one, other in zip(ours, theirs):
        for key in ("boxes", "scores", "labels"):
            assert one[key].dtype == other[key].dtype
            assert torch.equal(one[key], other[key]), key


@pytest.mark.parametrize("topk_candidates", [1000, 7])
@pytest.mark.parametrize("dense_from", [0, 10**9], ids=["row-wise-topk", "sorted-candidates"])
def test_same_detections_as_torchvision_for_a_padded_batch(topk_candidates, dense_from, monkeypatch, device):
    monkeypatch.setattr(postprocess, "DENSE_CANDIDATES_PER_TOPK", dense_from)
    model = build_retinanet(ModelSpec("r18", num_classes=5, fpn_channels=8)).eval().to(device)
    model.topk_candidates = topk_candidates
    assert isinstance(model, BatchedRetinaNet)
    # four images of a padded 96×160 batch: each is clipped to its own size; the last keeps nothing
    image_sizes = [(96, 160), (80, 128), (96, 101), (64, 160)]
    split, anchors = head_outputs(model, image_sizes, (96, 160), logit_mean=[-2.0, -2.5, -3.0, -30.0], device=device)
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
    assert ours[0]["boxes"].device.type == device.type
    widths = torch.tensor([w for _, w in image_sizes[:3]], dtype=torch.float32, device=device)
    assert all((d["boxes"][:, 2] <= w).all() and (d["boxes"] >= 0).all() for d, w in zip(ours, widths))
    assert any((d["boxes"][:, 2] == w).any() for d, w in zip(ours, widths))  # clipping did happen


def test_few_candidates_keep_torchvisions_order_and_count(device):
    """Fewer candidates above the threshold than detections_per_img: all of them survive NMS's order."""
    model = build_retinanet(ModelSpec("r18", num_classes=3, fpn_channels=8)).eval().to(device)
    image_sizes = [(64, 64), (64, 48)]
    split, anchors = head_outputs(model, image_sizes, (64, 64), logit_mean=[-5.0, -4.5], seed=1, device=device)
    with torch.inference_mode():
        ours = model.postprocess_detections(split, anchors, image_sizes)
        theirs = torchvision_postprocess(model, split, anchors, image_sizes)
    assert all(0 < len(d["scores"]) < 100 for d in ours)
    assert_same(ours, theirs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_head_outputs_are_scored_and_decoded_in_float32(dtype, device):
    """Under autocast the head's outputs are bf16/fp16; kdeval scores and decodes them in float32, where
    torchvision would decode in half precision. (Half-precision logits tie often, and ties may be
    broken differently from torchvision, so the comparison is with kdeval on the float32 values.)"""
    model = build_retinanet(ModelSpec("r18", num_classes=4, fpn_channels=8)).eval().to(device)
    image_sizes = [(800, 1067), (800, 1088)]
    split, anchors = head_outputs(model, image_sizes, (800, 1088), logit_mean=[-4.0, -4.0], dtype=dtype, device=device)
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
def test_nan_scores_are_passed_over_as_torchvision_does(dense_from, monkeypatch, device):
    """NaN is never above the threshold; in the row-wise path it must not take a top-k place either."""
    monkeypatch.setattr(postprocess, "DENSE_CANDIDATES_PER_TOPK", dense_from)
    model = build_retinanet(ModelSpec("r18", num_classes=4, fpn_channels=8)).eval().to(device)
    model.topk_candidates = 50
    image_sizes = [(96, 96), (96, 80)]
    split, anchors = head_outputs(model, image_sizes, (96, 96), logit_mean=[-2.0, -2.0], seed=2, device=device)
    split["cls_logits"][0][0, :60] = float("nan")  # 60 anchors × 4 classes of the first image's P3
    with torch.inference_mode():
        ours = model.postprocess_detections(split, anchors, image_sizes)
        theirs = torchvision_postprocess(model, split, anchors, image_sizes)
    assert all(len(d["scores"]) == 100 and not d["scores"].isnan().any() for d in ours)
    assert_same(ours, theirs)


@pytest.mark.parametrize("cached_grids", [8, 0], ids=["cached", "torchvision's-way"])
def test_anchors_are_float32_under_autocast_and_stay_so(cached_grids):
    from torchvision.models.detection.image_list import ImageList

    model = build_retinanet(ModelSpec("r18", num_classes=2, fpn_channels=8)).eval()
    model.anchor_generator.CACHED_GRIDS = cached_grids
    image_list = ImageList(torch.zeros(2, 3, 800, 1088), [(800, 1067), (800, 1088)])
    sizes = [(100, 136), (50, 68), (25, 34), (13, 17), (7, 9)]

    def anchors(dtype):
        model.anchor_generator._by_grid.clear()  # each call builds them
        return model.anchor_generator(image_list, [torch.zeros(2, 8, h, w, dtype=dtype) for h, w in sizes])

    reference, half, again = anchors(torch.float32), anchors(torch.bfloat16), anchors(torch.float32)
    assert reference[0].dtype == half[0].dtype == torch.float32 and reference[0].max() > 1000
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(reference, half, again))


def test_anchors_are_built_once_per_grid_in_eval_mode_and_as_torchvision_builds_them():
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    model = build_retinanet(ModelSpec("r18", num_classes=2, fpn_channels=8)).eval()
    generator = model.anchor_generator
    generator.CACHED_GRIDS = 2
    torchvision_generator = AnchorGenerator(generator.sizes, generator.aspect_ratios)

    def grid(height, width, images=3):
        image_list = ImageList(torch.zeros(images, 3, height, width), [(height, width)] * images)
        return image_list, [torch.zeros(images, 1, (height + s - 1) // s, (width + s - 1) // s) for s in (8, 16, 32, 64, 128)]

    first = generator(*grid(64, 96))
    assert len(first) == 3 and all(a is first[0] for a in first)  # one tensor for every image of the batch
    assert all(torch.equal(a, b) for a, b in zip(first, torchvision_generator(*grid(64, 96))))
    assert generator(*grid(64, 96, images=1))[0] is first[0]  # the same grid: not rebuilt
    generator(*grid(96, 64))
    generator(*grid(128, 128))  # a third grid evicts the least recently used, (64, 96)
    assert generator(*grid(64, 96))[0] is not first[0]
    assert len(generator._by_grid) == 2
    model.train()  # training builds them per image, as torchvision does
    trained = generator(*grid(64, 96))
    assert trained[0] is not trained[1] and torch.equal(trained[0], first[0])


def test_whole_model_inference_equals_torchvisions_over_batches_of_different_sizes(device):
    """transform (normalise, resize, pad, boxes back to each image's size), anchors and postprocessing
    together, over batches whose padded sizes repeat and change (the anchor cache hit and missed).
    Scores must not tie (ties may be ordered differently, see the module's docstring): the head's
    towers get a positive bias, so that no position's features are all zero, and paddings stay small."""
    torch.manual_seed(3)
    model = build_retinanet(ModelSpec("r18", num_classes=3, fpn_channels=8, min_size=96, max_size=160)).eval()
    for name, parameter in model.head.named_parameters():
        if name.endswith("bias"):
            torch.nn.init.constant_(parameter, -2.0 if "cls_logits" in name else 0.05)
    torch.nn.init.normal_(model.head.classification_head.cls_logits.weight, std=0.3)
    model.to(device)
    reference = with_torchvision_inference(model)
    assert type(reference.transform).__name__ == "GeneralizedRCNNTransform"
    batches = [[(77, 93), (70, 90), (72, 96)], [(77, 93)], [(96, 128), (72, 96)], [(77, 93), (70, 90), (72, 96)]]
    with torch.inference_mode():
        for sizes in batches:
            images = [torch.rand(3, h, w).to(device) for h, w in sizes]
            ours, theirs = model(images), reference(images)
            assert all(len(d["scores"]) == 100 for d in ours)
            assert all(len(d["scores"].unique()) >= 95 for d in ours)  # (almost) no ties
            assert_same(ours, theirs)


def test_sync_free_transform_is_torchvisions_bit_for_bit(device):
    from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

    from kdeval.models.transform import SyncFreeTransform, float32_ratio

    generator = torch.Generator().manual_seed(4)
    settings = (96, 160, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    ours, theirs = SyncFreeTransform(*settings).eval(), GeneralizedRCNNTransform(*settings).eval()
    images = [torch.rand(3, 77, 93, generator=generator).to(device), torch.rand(3, 120, 45, generator=generator).to(device)]
    (ours_list, _), (theirs_list, _) = ours(images), theirs(images)
    assert torch.equal(ours_list.tensors, theirs_list.tensors) and ours_list.image_sizes == theirs_list.image_sizes
    for resized in range(40, 1400, 7):  # every ratio torchvision's float32 division would give
        for original in (45, 77, 93, 480, 640, 1333):
            expected = torch.tensor(original, dtype=torch.float32) / torch.tensor(resized, dtype=torch.float32)
            assert float32_ratio(original, resized) == expected.item()
    boxes = (torch.rand(50, 4, generator=generator) * 300).to(device)
    detections = [{"boxes": boxes, "scores": torch.rand(50, device=device), "labels": torch.zeros(50, dtype=torch.int64, device=device)}]
    rescaled = ours.postprocess([dict(detections[0])], [(127, 299)], [(480, 1133)])[0]["boxes"]
    assert torch.equal(rescaled, resize_boxes(boxes, [127, 299], [480, 1133]))
    assert torch.equal(rescaled, theirs.postprocess([dict(detections[0])], [(127, 299)], [(480, 1133)])[0]["boxes"])


@CUDA
def test_transform_and_anchors_do_not_synchronise_with_the_gpu():
    model = build_retinanet(ModelSpec("r18", num_classes=3, fpn_channels=8, min_size=96, max_size=160)).eval().cuda()
    images = [torch.rand(3, 77, 93, device="cuda"), torch.rand(3, 93, 77, device="cuda")]
    with torch.inference_mode():
        model.transform(images)  # the mean and std reach the device once
        image_list, _ = model.transform(images)
        features = list(model.backbone(image_list.tensors).values())
        model.anchor_generator(image_list, features)
        detections = [{"boxes": torch.rand(5, 4, device="cuda"), "scores": torch.rand(5, device="cuda"),
                       "labels": torch.zeros(5, dtype=torch.int64, device="cuda")}] * 2
        torch.cuda.set_sync_debug_mode("error")
        try:
            model.transform(images)
            model.anchor_generator(image_list, features)
            model.transform.postprocess([dict(d) for d in detections], image_list.image_sizes, [(77, 93), (93, 77)])
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("output", ["cls_logits", "bbox_regression"])
def test_float16_outputs_that_overflowed_are_an_error_not_silently_dropped_boxes(output, device):
    from kdeval.errors import KdevalError

    model = build_retinanet(ModelSpec("r18", num_classes=3, fpn_channels=8)).eval().to(device)
    image_sizes = [(64, 64)]
    split, anchors = head_outputs(model, image_sizes, (64, 64), logit_mean=[-3.0], dtype=torch.float16, device=device)
    with torch.inference_mode():
        assert len(model.postprocess_detections(split, anchors, image_sizes)[0]["scores"]) > 0
        split[output][2][0, 5, 1] = float("inf")
        with pytest.raises(KdevalError, match="overflowed float16 under AMP.*--fp32"):
            model.postprocess_detections(split, anchors, image_sizes)


def test_a_batch_dispatches_under_a_third_of_torchvisions_operations():
    """On a GPU every operation is a kernel launch paid by the host: kdeval's inference path (transform,
    anchors, postprocessing) must stay far below torchvision's for the same batch and detections."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += 1
            return func(*args, **(kwargs or {}))

    torch.manual_seed(5)
    model = build_retinanet(ModelSpec("r18", num_classes=3, fpn_channels=8, min_size=96, max_size=160)).eval()
    torch.nn.init.constant_(model.head.classification_head.cls_logits.bias, -2.0)
    reference = with_torchvision_inference(model)
    images = [torch.rand(3, 77, 93) for _ in range(8)]
    counts = []
    with torch.inference_mode():
        for way in (model, reference):
            way(images)  # warm-up: mean, std and anchors on the device
            with Count() as counter:
                way(images)
            counts.append(counter.count)
    ours, theirs = counts
    assert ours < theirs / 3, (ours, theirs)  # 804 against 3,574 when written


def tiny_scoring_model(device):
    """A small RetinaNet whose class prior is lifted, so that untrained it still keeps many boxes."""
    torch.manual_seed(0)
    model = build_retinanet(ModelSpec("r18", num_classes=4, fpn_channels=8, min_size=96, max_size=160)).eval().to(device)
    torch.nn.init.constant_(model.head.classification_head.cls_logits.bias, -1.0)
    return model


def test_two_step_inference_is_torchvisions_eval_forward(device):
    """network_outputs, then postprocess_batch (what OverlappedPostprocessing runs apart), give what
    torchvision's own eval forward gives with the same modules, bit for bit."""
    model = tiny_scoring_model(device)
    images = [torch.rand(3, 90, 150, device=device), torch.rand(3, 70, 120, device=device)]
    with torch.inference_mode():
        theirs = RetinaNet.forward(model, images)
        ours = model(images)
        two_steps = model.postprocess_batch(model.network_outputs(images))
    assert all(len(d["scores"]) == 100 for d in theirs)
    assert_same(ours, theirs)
    assert_same(two_steps, theirs)


@pytest.mark.parametrize("defer", [True, False], ids=["one-push-later", "at-once"])
def test_overlapped_postprocessing_returns_every_batch_once_in_order(defer, device, monkeypatch):
    from kdeval.engine.predict import OverlappedPostprocessing, PredictSettings, inference_model, outputs_to_cpu

    monkeypatch.setattr(OverlappedPostprocessing, "DEFER_ON", ("cpu", "cuda") if defer else ())
    model = inference_model(tiny_scoring_model(device), PredictSettings(device=str(device)))
    generator = torch.Generator().manual_seed(1)
    batches = [[torch.rand(3, 80 + 10 * i, 120, generator=generator).to(device) for _ in range(2)] for i in range(3)]
    with torch.inference_mode():
        expected = [outputs_to_cpu(model(images)) for images in batches]
        overlapped = OverlappedPostprocessing(device)
        finished, returned = [], []
        for index, images in enumerate(batches):
            got = overlapped.push(model, images, f"batch {index}")
            returned.append(len(got))
            finished += got
        finished += overlapped.drain()
        assert overlapped.drain() == []
    assert returned == ([0, 1, 1] if defer else [1, 1, 1])
    assert [payload for payload, _ in finished] == ["batch 0", "batch 1", "batch 2"]
    for (_, outputs), reference in zip(finished, expected):
        assert outputs[0]["boxes"].device.type == "cpu"
        assert_same(outputs, reference)


def test_overlapped_postprocessing_takes_other_detectors_whole():
    """A model that is not kdeval's RetinaNet is called as it is; its outputs come back in order."""
    from kdeval.engine.predict import OverlappedPostprocessing

    def detector(images):
        return [{"boxes": torch.zeros(1, 4), "scores": torch.ones(1) * len(image), "labels": torch.zeros(1, dtype=torch.long)}
                for image in images]

    overlapped = OverlappedPostprocessing(torch.device("cpu"))
    finished = overlapped.push(detector, [torch.zeros(3, 4, 4)], "a") + overlapped.drain()
    assert [(payload, outputs[0]["scores"].item()) for payload, outputs in finished] == [("a", 3.0)]


@CUDA
def test_postprocessing_waits_for_its_own_batch_only_on_cuda():
    """The GPU busy with the next batch's network (a ~0.2-s sleep kernel queued after it): the batch
    before still comes back, equal to postprocessing at once, while that work is still queued — the
    postprocessing synchronised its own stream, not the network's. (Run by gpu_check.sh's step tests.)"""
    from kdeval.engine.predict import OverlappedPostprocessing, PredictSettings, inference_model, outputs_to_cpu

    device = torch.device("cuda")
    model = inference_model(tiny_scoring_model(device), PredictSettings(device="cuda"))
    generator = torch.Generator().manual_seed(2)
    batches = [[torch.rand(3, 96, 128, generator=generator).to(device) for _ in range(2)] for _ in range(3)]
    with torch.inference_mode():
        expected = [outputs_to_cpu(model(images)) for images in batches]
        network_outputs = model.network_outputs

        def slow_network(images):
            launched = network_outputs(images)
            torch.cuda._sleep(400_000_000)  # some 0.2 s of GPU clock cycles on the model's stream
            return launched

        model.network_outputs = slow_network
        overlapped = OverlappedPostprocessing(device)
        assert overlapped.defers and overlapped.side_stream is not None
        finished, still_busy = [], []
        for index, images in enumerate(batches):
            finished += overlapped.push(model, images, index)
            still_busy.append(not torch.cuda.current_stream(device).query())
        finished += overlapped.drain()
    assert [payload for payload, _ in finished] == [0, 1, 2]
    for (_, outputs), reference in zip(finished, expected):
        assert_same(outputs, reference)
    assert still_busy[1:] == [True, True]  # batches 0 and 1 came back while the next network's sleep was queued


def test_run_model_with_postprocessing_deferred_finds_the_same_detections(tiny_shapes, monkeypatch):
    """run_model's last batch comes from the drain: deferred (forced on the CPU, as on CUDA) or not,
    the same detections in the same order."""
    from conftest import scoring_run
    from kdeval.engine.predict import OverlappedPostprocessing, run_model

    model, dataset, settings, labels, coco = scoring_run(tiny_shapes, batch_size=3)
    at_once = run_model(model, dataset, settings, labels, progress=False)
    monkeypatch.setattr(OverlappedPostprocessing, "DEFER_ON", ("cpu", "cuda"))
    deferred = run_model(model, dataset, settings, labels, progress=False)
    assert len(coco["images"]) > settings.batch_size  # several batches; the drain gives the last
    assert len(at_once) == 100 * len(coco["images"]) and deferred == at_once
