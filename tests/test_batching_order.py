"""Images batched by their padded input shape (engine/predict.batching_order), detections in the
dataset's order all the same."""

import gzip
import json

import pytest
import torch

from conftest import confident_checkpoint, shapes_args
from kdeval.engine.predict import PredictSettings, batching_order, padded_input_shape
from kdeval.models.retinanet import ModelSpec, build_retinanet


def images_of(sizes):
    return [{"id": i + 1, "file_name": f"{i}.jpg", "height": h, "width": w} for i, (h, w) in enumerate(sizes)]


@pytest.mark.parametrize("min_size,max_size", [(800, 1333), (64, 64), (512, 853)])
def test_padded_input_shape_is_what_the_transform_makes(min_size, max_size):
    model = build_retinanet(ModelSpec("r18", num_classes=2, fpn_channels=8, min_size=min_size, max_size=max_size)).eval()
    # COCO's common sizes, and some odd ones
    sizes = [(480, 640), (640, 480), (427, 640), (640, 427), (425, 640), (360, 640), (640, 640), (500, 375), (333, 500),
             (612, 612), (240, 320), (1024, 683), (32, 64), (64, 32), (100, 37)]
    for height, width in sizes:
        batch, _ = model.transform([torch.zeros(3, height, width)])
        assert tuple(batch.tensors.shape[-2:]) == padded_input_shape(height, width, model.transform), (height, width)


def padded_pixels(sizes, order, batch_size, transform):
    shapes = [padded_input_shape(h, w, transform) for h, w in sizes]
    total = 0
    for start in range(0, len(order), batch_size):
        batch = [shapes[p] for p in order[start:start + batch_size]]
        total += len(batch) * max(h for h, _ in batch) * max(w for _, w in batch)
    return total


def test_batches_group_shapes_and_pad_less_than_the_datasets_order():
    model = build_retinanet(ModelSpec("r18", num_classes=2, fpn_channels=8))  # 800 / 1333
    generator = torch.Generator().manual_seed(0)
    pool = [(480, 640), (427, 640), (640, 480), (640, 427), (360, 640), (640, 640)]
    sizes = [pool[int(i)] for i in torch.randint(len(pool), (64,), generator=generator)]
    order = batching_order(model, images_of(sizes))
    assert sorted(order) == list(range(len(sizes)))
    shapes = [padded_input_shape(h, w, model.transform) for h, w in sizes]
    assert [shapes[p] for p in order] == sorted(shapes)  # grouped by shape ...
    for shape in set(shapes):  # ... in the dataset's order within one
        positions = [p for p in order if shapes[p] == shape]
        assert positions == sorted(positions)
    in_order, grouped = (padded_pixels(sizes, o, 8, model.transform) for o in (list(range(len(sizes))), order))
    assert grouped < 0.8 * in_order


def test_without_sizes_or_a_torchvision_transform_the_datasets_order_stays():
    model = build_retinanet(ModelSpec("r18", num_classes=2, fpn_channels=8))
    sizes = [(640, 480), (480, 640), (640, 480)]
    assert batching_order(model, images_of(sizes)) == [1, 0, 2]
    assert batching_order(model, [{**image, "height": None} for image in images_of(sizes)]) == [0, 1, 2]
    assert batching_order(lambda images: images, images_of(sizes)) == [0, 1, 2]


def test_predict_batches_images_of_one_shape_and_returns_the_datasets_order(mixed_shapes, monkeypatch):
    from kdeval.data.coco import load_coco_annotations
    from kdeval.data.source import Split
    from kdeval.engine.detections import predict
    from kdeval.labels import LabelSpace
    from kdeval.models.checkpoint import LoadedModel
    from kdeval.models.postprocess import BatchedRetinaNet

    split = Split(mixed_shapes / "annotations" / "instances_val.json", mixed_shapes / "val", "val")
    coco = load_coco_annotations(split.annotations)
    labels = LabelSpace.from_categories(coco["categories"])
    torch.manual_seed(0)
    spec = ModelSpec("r18", num_classes=labels.num_classes, fpn_channels=8, min_size=64, max_size=64)
    model = build_retinanet(spec).eval()
    torch.nn.init.constant_(model.head.classification_head.cls_logits.bias, -1.0)
    batches = []
    network_outputs = BatchedRetinaNet.network_outputs
    monkeypatch.setattr(BatchedRetinaNet, "network_outputs",
                        lambda self, images: batches.append([tuple(i.shape[-2:]) for i in images]) or network_outputs(self, images))
    detections = predict(LoadedModel(model, spec, labels, coco["categories"], "baseline", {}, "kdeval"), split, PredictSettings(batch_size=2, workers=0), progress=False)
    assert batches == [[(32, 64)] * 2, [(64, 32)] * 2, [(64, 64)] * 2]  # the dataset alternates them
    image_ids = sorted(image["id"] for image in coco["images"])
    assert [d["image_id"] for d in detections] == sorted((d["image_id"] for d in detections), key=image_ids.index)
    assert {d["image_id"] for d in detections} == set(image_ids) and len(detections) > 50 * len(image_ids)


def test_robustness_writes_each_scenarios_detections_in_the_datasets_order(mixed_shapes, trained, tmp_path):
    from test_robustness import ROBUST_ARGS, run

    model = confident_checkpoint(trained, tmp_path / "confident.pt")  # boxes on every image
    result = run("robustness", f"m={model}", *shapes_args(mixed_shapes), *ROBUST_ARGS, "--corruptions", "fog",
                 "--severities", "1", "--workers", 0, "--batch-size", 2, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    coco = json.loads((mixed_shapes / "annotations" / "instances_val.json").read_text())
    image_ids = sorted(image["id"] for image in coco["images"])
    files = sorted((tmp_path / "run" / "detections" / "m").glob("*.json.gz"))
    assert len(files) == 2  # clean and fog-1
    for path in files:
        found = [d["image_id"] for d in json.loads(gzip.decompress(path.read_bytes()))]
        assert len(set(found)) > 3 and found == sorted(found, key=image_ids.index), path.name


def test_robustness_runs_on_mixed_sizes_made_before_are_refused_and_uniform_ones_kept(tiny_shapes, mixed_shapes):
    """Images of several sizes are batched otherwise than before, so a robustness run on them made
    before cannot be continued (its key gains the batching); on images of one size nothing changed."""
    from kdeval.data.coco import load_coco_annotations
    from kdeval.data.source import Split
    from kdeval.engine.robustness import RobustnessSettings
    from kdeval.engine.robustness.store import _change, data_key as _data_key

    def key(root):
        split = Split(root / "annotations" / "instances_val.json", root / "val", "val")
        return _data_key(split, load_coco_annotations(split.annotations), RobustnessSettings())

    assert "batching" not in key(tiny_shapes)
    assert key(mixed_shapes)["batching"] == "by padded shape"
    assert _change("batching", None, "by padded shape") == "batching unset there, by padded shape now"
