"""CUDA graphs of the network (models/cuda_graphs.py): which batches replay a graph, that a replay's
outputs stay the caller's, and that detections do not change. On the CPU a stand-in capture keeps a
graph's memory semantics (one static input and static outputs per shape, overwritten by every
replay); the CUDA cases capture real graphs (benchmarks/gpu_check.sh, step tests, runs them)."""

import copy

import pytest
import torch

from conftest import CUDA, scoring_run
from kdeval.models import cuda_graphs
from kdeval.models.cuda_graphs import GraphedNetwork
from kdeval.models.retinanet import ModelSpec, build_retinanet


def doubled_and_summed(batch):
    return [batch * 2], {"sum": batch.sum(dim=(1, 2, 3))}


def test_a_shape_is_captured_when_seen_again_and_graphs_are_capped(cpu_captures):
    graphed = GraphedNetwork(doubled_and_summed, torch.device("cpu"), max_graphs=2)
    shapes = [(2, 3, 4, 4), (2, 3, 4, 4), (2, 3, 4, 4), (1, 3, 4, 4), (2, 3, 8, 4), (2, 3, 8, 4), (1, 3, 4, 4), (1, 3, 4, 4)]
    with torch.inference_mode():
        for shape in shapes:
            graphed(torch.ones(shape))
    # (2,3,4,4) on its second sighting, (2,3,8,4) on its second; (1,3,4,4) came third: no room, eager
    assert cpu_captures == [(2, 3, 4, 4), (2, 3, 8, 4)]
    assert graphed.replays == 3  # the second sighting replays at once, as do later ones
    with torch.inference_mode(), torch.enable_grad():  # autograd on: never a replay
        graphed(torch.ones(2, 3, 4, 4))
    with torch.no_grad():  # outside inference mode the static input could not be written: eager
        graphed(torch.ones(2, 3, 4, 4))
    assert graphed.replays == 3


def test_a_failed_capture_is_a_clear_error(monkeypatch):
    from kdeval.errors import KdevalError

    def failing(function, example, shared):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setitem(cuda_graphs.CAPTURES, "cpu", failing)
    graphed = GraphedNetwork(doubled_and_summed, torch.device("cpu"), sightings_to_capture=1)
    with torch.inference_mode(), pytest.raises(KdevalError, match="operation not permitted.*run without --cuda-graphs"):
        graphed(torch.ones(1, 3, 4, 4))


def test_a_graphed_model_is_freed_as_soon_as_it_is_dropped(cpu_captures):
    """The model holds its GraphedNetwork, which must not hold the model (with its graphs' GPU memory)
    until Python's cycle collector happens to run."""
    import gc
    import weakref

    from kdeval.engine.predict import PredictSettings, inference_model

    model = inference_model(build_retinanet(ModelSpec("r18", num_classes=3, fpn_channels=8, min_size=64, max_size=64)),
                            PredictSettings(cuda_graphs=True))
    with torch.inference_mode():
        model.network_outputs([torch.rand(3, 64, 64)])
    dropped = weakref.ref(model)
    gc.disable()
    try:
        del model
        assert dropped() is None
    finally:
        gc.enable()


def test_the_autocast_state_and_strides_are_part_of_a_graphs_key():
    batch = torch.ones(2, 3, 8, 8)
    keys = {GraphedNetwork.key(batch), GraphedNetwork.key(batch.to(memory_format=torch.channels_last))}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        keys.add(GraphedNetwork.key(batch))
    with torch.autocast("cpu", dtype=torch.float16):
        keys.add(GraphedNetwork.key(batch))
    assert len(keys) == 4


def test_outputs_of_a_replay_stay_the_callers_after_the_next_replay(cpu_captures):
    """The overlap holds a batch's head outputs while the next batch's network runs: a replay's outputs
    must not be the graph's static outputs, which the next replay overwrites."""
    graphed = GraphedNetwork(doubled_and_summed, torch.device("cpu"), sightings_to_capture=1)
    first, second = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    with torch.inference_mode():
        held = graphed(first)
        graphed(second)
    assert graphed.replays == 2
    expected = doubled_and_summed(first)
    assert torch.equal(held[0][0], expected[0][0]) and torch.equal(held[1]["sum"], expected[1]["sum"])


def test_a_copy_of_a_graphed_model_has_no_graphs(cpu_captures):
    from kdeval.engine.predict import PredictSettings, inference_model

    model = build_retinanet(ModelSpec("r18", num_classes=3, fpn_channels=8, min_size=64, max_size=64))
    graphed = inference_model(model, PredictSettings(cuda_graphs=True))
    assert isinstance(graphed.graphed_network, GraphedNetwork)
    assert inference_model(model, PredictSettings()).graphed_network is None
    assert copy.deepcopy(graphed).graphed_network is None


def test_run_model_with_graphs_and_deferred_postprocessing_finds_the_same_detections(tiny_shapes, cpu_captures, monkeypatch):
    """Graphs replayed while each batch's postprocessing waits for the next batch's network (both
    forced on the CPU, as on CUDA): the same detections as eager inference."""
    from dataclasses import replace

    from kdeval.engine.predict import OverlappedPostprocessing, run_model

    model, dataset, settings, labels, coco = scoring_run(tiny_shapes)
    eager = run_model(model, dataset, settings, labels, progress=False)
    monkeypatch.setattr(OverlappedPostprocessing, "DEFER_ON", ("cpu", "cuda"))
    graphed = run_model(model, dataset, replace(settings, cuda_graphs=True), labels, progress=False)
    assert len(coco["images"]) >= 3 * settings.batch_size and cpu_captures  # replays followed the capture
    assert len(eager) == 100 * len(coco["images"]) and graphed == eager


@CUDA
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "fp16"])
def test_cuda_graphs_replay_what_the_eager_network_computes(amp):
    """Real CUDA graphs of a tiny RetinaNet's backbone and head, two shapes, each call in an autocast
    context of its own: the memory of the previous context's cached fp16 weights is freed and filled
    with NaN before each call, so a graph that read autocast's cached casts would show it."""
    from kdeval.engine.predict import AMP_DTYPE, PredictSettings, inference_model
    from kdeval.models.cuda_graphs import cloned

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = inference_model(build_retinanet(ModelSpec("r18", num_classes=4, fpn_channels=8, min_size=96, max_size=160)),
                            PredictSettings(device="cuda", cuda_graphs=True))
    graphed = model.graphed_network
    generator = torch.Generator().manual_seed(3)
    batches = [torch.rand(shape, generator=generator).to(device) for shape in [(2, 3, 96, 160)] * 3 + [(3, 3, 128, 128)] * 3]
    with torch.inference_mode(), torch.autocast("cuda", enabled=amp, dtype=AMP_DTYPE):
        expected = [cloned(model.backbone_and_head(batch)) for batch in batches]
    for round_ in range(2):
        for batch, reference in zip(batches, expected):
            with torch.inference_mode(), torch.autocast("cuda", enabled=amp, dtype=AMP_DTYPE):
                filler = [torch.full_like(p, float("nan"), dtype=AMP_DTYPE) for p in model.parameters()]
                got = graphed(batch)
                del filler
            for g, e in zip(got[0] + list(got[1].values()), reference[0] + list(reference[1].values())):
                torch.testing.assert_close(g, e)
    # per shape and round: eager, then capture and replay, then replay; then three replays
    assert len(graphed.graphs) == 2 and graphed.replays == 2 * (2 + 3)


@CUDA
def test_cuda_predict_with_graphs_finds_the_same_detections(tiny_shapes, monkeypatch):
    """run_model on CUDA with graphs (workers pinning memory meanwhile, postprocessing overlapped) against
    without; the graphs were captured and replayed."""
    from dataclasses import replace

    from kdeval.engine.predict import run_model

    captured = []

    def counting(function, example, shared):
        captured.append(tuple(example.shape))
        return cuda_graphs.capture_cuda_graph(function, example, shared)

    monkeypatch.setitem(cuda_graphs.CAPTURES, "cuda", counting)
    model, dataset, settings, labels, coco = scoring_run(tiny_shapes, device="cuda")
    settings = replace(settings, workers=2)
    eager = run_model(model, dataset, settings, labels, progress=False)
    assert not captured
    graphed = run_model(model, dataset, replace(settings, cuda_graphs=True), labels, progress=False)
    assert captured and len(coco["images"]) >= 3 * settings.batch_size
    assert len(graphed) == len(eager)
    for g, e in zip(graphed, eager):
        assert (g["image_id"], g["category_id"]) == (e["image_id"], e["category_id"])
        assert abs(g["score"] - e["score"]) < 1e-3 and max(abs(a - b) for a, b in zip(g["bbox"], e["bbox"])) < 0.05


def test_the_graphed_function_returns_the_fpn_grids_not_the_maps():
    """A graph's outputs are kept for good and copied after every replay: backbone_and_head returns
    empty stand-ins with each FPN level's grid, not the maps (the anchors read only the sizes)."""
    from kdeval.models.retinanet import fpn_features

    model = build_retinanet(ModelSpec("r18", num_classes=3, fpn_channels=8, min_size=64, max_size=96)).eval()
    batch = torch.rand(2, 3, 64, 96)
    with torch.inference_mode():
        grids, head_outputs = model.backbone_and_head(batch)
        maps = list(fpn_features(model, list(batch)).values())
    assert [tuple(g.shape) for g in grids] == [(0, 0, *m.shape[-2:]) for m in maps] and all(g.numel() == 0 for g in grids)
    assert head_outputs["cls_logits"].shape[1] == 9 * sum(m.shape[-2] * m.shape[-1] for m in maps)
