"""Distilled training end to end on tiny Shapes: feature losses, pseudo-labels, torchrun with gloo."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from kdeval.cli import app
from kdeval.distill.pseudo_labels import pseudo_label_coco
from kdeval.models.checkpoint import load_checkpoint

from conftest import TINY_TRAIN_ARGS, confident_checkpoint, run_whole_group, shapes_args

runner = CliRunner()


def _train(*args):
    return runner.invoke(app, ["train", *map(str, args)])


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["ssim", "l2"])
def test_feature_distillation_adds_its_loss_and_records_it(tiny_shapes, trained, tmp_path, loss):
    result = _train(*shapes_args(tiny_shapes, "train"), *TINY_TRAIN_ARGS, "--teacher", trained, "--distill", loss, "--distill-weight", 2.0, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    log = _log(tmp_path)
    assert all(record["distill"] > 0 for record in log)
    assert all(record["loss"] == pytest.approx(record["classification"] + record["bbox_regression"] + record["distill"], abs=1e-3) for record in log)
    loaded = load_checkpoint(tmp_path / "model.pt")
    assert loaded.role == "distilled"
    assert loaded.train_settings["distill_loss"] == loss and loaded.train_settings["distill_weight"] == 2.0
    assert loaded.train_settings["teacher"] == str(trained)


def test_teacher_and_student_maps_must_match(tiny_shapes, trained, tmp_path):
    args = [a if a != "16" else "32" for a in TINY_TRAIN_ARGS]  # a student with a 32-channel FPN
    result = _train(*shapes_args(tiny_shapes, "train"), *args, "--teacher", trained, "--distill", "ssim", "--out", tmp_path)
    assert result.exit_code == 2 and "--fpn-channels 16" in result.stderr
    result = _train(*shapes_args(tiny_shapes, "train"), *TINY_TRAIN_ARGS, "--teacher", trained, "--out", tmp_path)
    assert result.exit_code == 2 and "--teacher needs --distill" in result.stderr


def test_pseudo_labels_keep_only_confident_teacher_detections(tiny_coco):
    detections = [
        {"image_id": 1, "category_id": 2, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [0.0, 0.0, 5.0, 5.0], "score": 0.3},  # not > 0.3
        {"image_id": 3, "category_id": 1, "bbox": [2.0, 2.0, 2.0, 2.0], "score": 0.31},
    ]
    labelled = pseudo_label_coco(tiny_coco, detections, threshold=0.3)
    assert [(a["image_id"], a["category_id"], a["bbox"]) for a in labelled["annotations"]] == [(1, 2, [1.0, 2.0, 3.0, 4.0]), (3, 1, [2.0, 2.0, 2.0, 2.0])]
    assert labelled["images"] == tiny_coco["images"] and len(tiny_coco["annotations"]) == 4  # input untouched


@pytest.mark.slow
def test_hard_output_distillation_trains_on_teacher_detections(tiny_shapes, trained, tmp_path, monkeypatch):
    import kdeval.engine.train as train_module

    seen = {}
    original = train_module.CocoDetectionDataset

    def spy(split, coco, *args, **kwargs):
        seen["annotations"] = coco["annotations"]
        return original(split, coco, *args, **kwargs)

    monkeypatch.setattr(train_module, "CocoDetectionDataset", spy)
    import kdeval.engine.detections as detections_module

    teacher_amp, real_predict = [], detections_module.cached_predict
    monkeypatch.setattr(detections_module, "cached_predict", lambda checkpoint, split, settings, **kw: teacher_amp.append(
        settings.amp) or real_predict(checkpoint, split, settings, **kw))
    # the 2-iteration model's scores sit about the threshold (it may find nothing above 0.05):
    # with its class prior lifted it reports boxes for sure
    teacher = confident_checkpoint(trained, tmp_path / "confident.pt")
    result = _train(*shapes_args(tiny_shapes, "train"), *TINY_TRAIN_ARGS, "--pseudo-labels", teacher, "--pseudo-threshold", 0.05,
                    "--out", tmp_path / "student")
    assert result.exit_code == 0, result.output
    gt = json.loads((tiny_shapes / "annotations" / "instances_train.json").read_text())
    assert seen["annotations"] and seen["annotations"] != gt["annotations"]
    assert all(a["score"] > 0.05 for a in seen["annotations"])
    assert load_checkpoint(tmp_path / "student" / "model.pt").train_settings["pseudo_labels"] == str(teacher)
    assert "kdeval: note: pseudo labels: " in result.output and " training images" in result.output
    # a threshold above every detection of the teacher: one line saying so, not a run on no boxes
    result = _train(*shapes_args(tiny_shapes, "train"), *TINY_TRAIN_ARGS, "--pseudo-labels", teacher,
                    "--pseudo-threshold", 0.999, "--fp32", "--out", tmp_path / "none")
    assert teacher_amp == [True, False]  # the teacher runs in the run's precision: --fp32 covers both
    assert result.exit_code == 2 and "scores above --pseudo-threshold 0.999 (the best: 0." in result.output
    assert "lower --pseudo-threshold" in result.output and not (tmp_path / "none" / "model.pt").exists()


@pytest.fixture(scope="module")
def two_gloo_ranks(tiny_shapes, tmp_path_factory) -> Path:
    """The run folder of a training under torchrun with two gloo processes (ddp_worker.py)."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(Path(__file__).parent / "ddp_worker.py"), str(tiny_shapes), str(out)]
    completed = run_whole_group(command, env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return out


@pytest.mark.slow
def test_torchrun_with_two_gloo_processes_ends_with_identical_weights(two_gloo_ranks):
    tmp_path = two_gloo_ranks
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    saved = load_checkpoint(tmp_path / "model.pt").model.state_dict()
    assert all(torch.equal(saved[k], rank0[k]) for k in rank0)
    assert len(_log(tmp_path)) == 2  # 8 images, global batch 4: rank 0 alone writes the log


@pytest.mark.slow
def test_torchrun_logs_the_losses_averaged_over_the_ranks(two_gloo_ranks):
    """Each rank computes its losses on its own half of the global batch; the log (written by rank 0)
    holds their mean over the ranks, not rank 0's own values."""
    log = _log(two_gloo_ranks)
    own = [json.loads((two_gloo_ranks / f"losses_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert len(own[0]) == len(own[1]) == len(log) == 2
    for record, rank0, rank1 in zip(log, *own):
        assert set(rank0) == {"loss", "classification", "bbox_regression"}
        for name in rank0:
            assert record[name] == pytest.approx((rank0[name] + rank1[name]) / 2, abs=2e-5)
    # the ranks' own values differ, so a log of rank 0's alone would fail the comparison above
    assert any(abs(record["loss"] - rank0["loss"]) > 1e-3 for record, rank0 in zip(log, own[0]))


@pytest.mark.slow
@pytest.mark.parametrize("command,compared,data", [
    ("evaluate", ["coco_stats.json"], "mixed_shapes"),  # images of three shapes, batched by shape
    ("errors", ["error_curves.csv", "tide.csv"], "tiny_shapes"),
    ("visualize", ["detections.js", "selection.csv"], "tiny_shapes"),
])
def test_torchrun_shards_images_and_matches_one_process(request, trained, tmp_path, command, compared, data):
    """evaluate, errors and visualize under torchrun: the ranks share the images, rank 0 alone gets the
    detections and writes what one process writes."""
    from conftest import shapes_args

    model = confident_checkpoint(trained, tmp_path / "confident.pt")
    args = [command, f"m={model}", *shapes_args(request.getfixturevalue(data)), "--device", "cpu", "--no-progress", "--batch-size", "2"]
    outputs = {}
    for label, launcher in (("one", [sys.executable, "-m", "kdeval"]),
                            ("two", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "kdeval"])):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "KDEVAL_CACHE": str(tmp_path / f"cache-{label}")}
        completed = run_whole_group([*launcher, *args, "--out", str(tmp_path / label)], env, timeout=300)
        assert completed.returncode == 0, completed.stderr[-3000:]
        outputs[label] = [(tmp_path / label / name).read_bytes() for name in compared]
        cached = list((tmp_path / f"cache-{label}" / "detections").glob("*.json"))
        assert len(cached) == 1
        outputs[label + "-dets"] = cached[0].read_bytes()
    assert outputs["one-dets"] == outputs["two-dets"]  # the same detections, in the same order
    assert len(json.loads(outputs["one-dets"])) > 100
    assert outputs["one"] == outputs["two"]


@pytest.mark.slow
def test_torchrun_ranks_train_on_the_same_pseudo_labels_as_one_process(tiny_shapes, trained, tmp_path):
    """Hard distillation under torchrun: the ranks share the teacher's inference, and every rank gets
    the pseudo-labelled split one process makes (the worker runs the teacher in batches of 2, so each
    rank labels 4 of the 8 images)."""
    model = confident_checkpoint(trained, tmp_path / "confident.pt")
    worker = [str(Path(__file__).parent / "ddp_worker.py"), str(tiny_shapes), str(tmp_path), "pseudo-labels", str(model)]
    for label, launcher in (("one", [sys.executable]),
                            ("two", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"])):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "KDEVAL_CACHE": str(tmp_path / f"cache-{label}")}
        completed = run_whole_group([*launcher, *worker], env, timeout=300)
        assert completed.returncode == 0, completed.stderr[-3000:]
    alone = json.loads((tmp_path / "pseudo_labels_alone.json").read_text())
    assert len(alone["annotations"]) > 20
    for rank in (0, 1):
        assert json.loads((tmp_path / f"pseudo_labels_rank{rank}.json").read_text()) == alone


@pytest.mark.parametrize("n,world,batch", [(10, 2, 4), (7, 3, 2), (3, 4, 8), (16, 2, 1)])
def test_ranks_take_whole_batches_and_together_cover_every_image_once(n, world, batch):
    from kdeval.engine.distributed import Distributed

    shards = [Distributed(rank=rank, world=world, local_rank=rank).shard(n, batch) for rank in range(world)]
    assert sorted(p for shard in shards for p in shard) == list(range(n))
    single_batches = [list(range(start, min(start + batch, n))) for start in range(0, n, batch)]
    for shard in shards:  # cut into batches as the DataLoader does: each is one of the single process's batches
        assert all(shard[i:i + batch] in single_batches for i in range(0, len(shard), batch))


def test_ranks_join_with_the_collective_timeout_and_their_own_gpu(monkeypatch):
    """start_distributed: gloo on the CPU, NCCL with the rank's GPU set first, both with kdeval's 30-minute
    collective timeout (NCCL's own default is 10 minutes)."""
    import torch

    from kdeval.engine import distributed

    joined, devices = [], []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend, **kwargs: joined.append((backend, kwargs)))
    monkeypatch.setattr(torch.cuda, "set_device", devices.append)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.start_distributed("cpu")[1] == "cpu"
    assert distributed.start_distributed("cuda")[1] == "cuda:1"
    assert devices == ["cuda:1"]
    assert joined == [("gloo", {"timeout": distributed.COLLECTIVE_TIMEOUT}), ("nccl", {"timeout": distributed.COLLECTIVE_TIMEOUT})]
    assert distributed.COLLECTIVE_TIMEOUT.total_seconds() == 30 * 60


def test_a_command_that_succeeds_leaves_the_job_with_every_rank_and_one_that_fails_leaves_alone(monkeypatch):
    """Under torchrun each command ends with distributed.leave (a barrier, then the process group
    destroyed: a rank that exits first with gloo's threads alive can abort, and torchrun then kills
    rank 0 mid-write); after an error nothing waits for ranks that may never come."""
    import torch
    import typer

    import importlib

    from kdeval.cli import user_errors
    from kdeval.errors import KdevalError

    importlib.import_module("kdeval.engine.distributed")  # as a command that joined a job has it

    calls, group = [], {"alive": True, "backend": "gloo"}

    def destroy():
        calls.append("destroy")
        group["alive"] = False

    def barrier():
        calls.append("barrier")
        if group.get("barrier fails"):
            raise RuntimeError("gloo: connection closed by peer")

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: group["alive"])
    monkeypatch.setattr(torch.distributed, "get_backend", lambda: group["backend"])
    monkeypatch.setattr(torch.distributed, "barrier", barrier)
    monkeypatch.setattr(torch.distributed, "destroy_process_group", destroy)

    def outcome(command, raised=None, **state):
        calls.clear()
        group.clear()
        group.update({"alive": True, "backend": "gloo", **state})
        if raised is None:
            assert user_errors(command)() == "done"
        else:
            with pytest.raises(raised):
                user_errors(command)()
        return list(calls)

    def failing(error):
        def command():
            raise error
        return command

    def leaves_then_fails():
        from kdeval.engine.distributed import leave

        leave()  # as commands do right after their last collective
        raise KdevalError("a bad file, found by rank 0 alone")

    assert outcome(lambda: "done") == ["barrier", "destroy"]
    # a failing rank leaves alone, without the barrier: under gloo it destroys its group (else its
    # threads can abort the exit), under NCCL it leaves the teardown to torchrun
    assert outcome(failing(KdevalError("bad input")), typer.Exit) == ["destroy"]
    assert outcome(failing(ValueError("a bug")), ValueError) == ["destroy"]
    assert outcome(failing(KdevalError("bad input")), typer.Exit, backend="nccl") == []
    assert outcome(leaves_then_fails, typer.Exit) == ["barrier", "destroy"]  # nothing left to destroy
    assert outcome(lambda: "done", RuntimeError, **{"barrier fails": True}) == ["barrier", "destroy"]


def test_a_failing_rank_exits_even_when_destroying_its_group_hangs(monkeypatch):
    """gloo's destroy waits for a collective the rank had started until the other ranks join or exit:
    abandon gives it ABANDON_WAIT, then lets the rank exit with its error."""
    import threading
    import time
    from datetime import timedelta

    import torch

    from kdeval.engine import distributed

    release = threading.Event()
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_backend", lambda: "gloo")
    monkeypatch.setattr(torch.distributed, "destroy_process_group", lambda: release.wait(10))  # 10 s: "forever"
    monkeypatch.setattr(distributed, "ABANDON_WAIT", timedelta(seconds=0.3))
    start = time.perf_counter()
    distributed.abandon()
    assert 0.3 <= time.perf_counter() - start < 5
    release.set()


def test_predict_under_torchrun_gathers_on_rank_0_alone(tiny_shapes, trained, tmp_path, monkeypatch):
    """predict: each rank runs its share of the batches; rank 0 gets every rank's detections in
    single-process order, the other ranks None (gather_lists to rank 0, not to all)."""
    from kdeval.data.source import Split
    from kdeval.engine import distributed
    from kdeval.engine.detections import predict
    from kdeval.engine.predict import PredictSettings
    from kdeval.models.checkpoint import load_checkpoint

    split = Split(tiny_shapes / "annotations" / "instances_val.json", tiny_shapes / "val", "val")
    loaded = load_checkpoint(confident_checkpoint(trained, tmp_path / "confident.pt"))
    settings = PredictSettings(batch_size=2)
    alone = predict(loaded, split, settings, progress=False)
    assert {det["image_id"] for det in alone} == {image["id"] for image in json.loads(split.annotations.read_text())["images"]}
    shares, gathered_to = {}, []
    for rank in (1, 0):
        monkeypatch.setattr(distributed, "current", lambda rank=rank: distributed.Distributed(rank=rank, world=2))

        def gather_lists(items, dst=0, rank=rank):
            gathered_to.append(dst)
            shares[rank] = items
            return [shares[0], shares[1]] if rank == dst else None

        monkeypatch.setattr(distributed, "gather_lists", gather_lists)
        result = predict(loaded, split, settings, progress=False)
        assert (result is None) == (rank == 1)
    assert gathered_to == [0, 0]
    assert shares[0] and shares[1] and {d["image_id"] for d in shares[0]}.isdisjoint(d["image_id"] for d in shares[1])
    assert result == alone


def test_ranks_leave_the_job_before_rank_0_scores(tiny_coco, tmp_path, monkeypatch):
    """evaluate: the ranks leave right after the detections are gathered, so rank 0's scoring and
    writing, however long, runs outside the collective timeout."""
    from kdeval.analysis import evaluation
    from kdeval.data.source import Split
    from kdeval.engine import distributed, evaluate
    from kdeval.engine.detections import ModelInput

    annotations, results = tmp_path / "annotations.json", tmp_path / "results.json"
    annotations.write_text(json.dumps(tiny_coco))
    results.write_text(json.dumps([{"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": ann["bbox"], "score": 0.9}
                                   for ann in tiny_coco["annotations"]]))
    events = []
    monkeypatch.setattr(distributed, "leave", lambda: events.append("leave"))
    real_stats = evaluation.coco_stats
    monkeypatch.setattr(evaluation, "coco_stats", lambda gt, found: events.append("score") or real_stats(gt, found))
    table = evaluate.evaluate_models([ModelInput("m", results)], Split(annotations, tmp_path, "tiny")).table
    assert events == ["leave", "score"]
    assert table.loc["m", "AP"] > 0.5
