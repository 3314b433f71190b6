import json
import math
from dataclasses import asdict, replace

import pytest
import torch

from kdeval.data.source import Split
from kdeval.engine.train import RECIPES, EpochBatches, TrainSettings, lr_at, train
from kdeval.errors import KdevalError
from kdeval.models.checkpoint import load_checkpoint

TINY = TrainSettings(arch="r18", epochs=2, batch_size=4, fpn_channels=16, min_size=64, max_size=64, warmup_iters=2, save_every=1)


def _split(root):
    return Split(root / "annotations" / "instances_train.json", root / "train")


def test_lr_schedule_warms_up_then_decays_at_fractions():
    settings = TrainSettings(lr=0.01, schedule="step", warmup_iters=10, warmup_factor=0.001, decay_at=(8 / 12, 11 / 12))
    assert lr_at(settings, 0, 120) == pytest.approx(1e-5)
    assert lr_at(settings, 5, 120) == pytest.approx(0.01 * (0.001 * 0.5 + 0.5))
    assert lr_at(settings, 10, 120) == pytest.approx(0.01)
    assert lr_at(settings, 79, 120) == pytest.approx(0.01)
    assert lr_at(settings, 80, 120) == pytest.approx(0.001)
    assert lr_at(settings, 110, 120) == pytest.approx(0.0001)
    # a short run: 18 iterations (one Shapes epoch of 300 images) warm up for 3, not 100
    short = TrainSettings(lr=0.01, schedule="step", warmup_iters=100, warmup_factor=0.001, decay_at=(8 / 12, 11 / 12))
    assert lr_at(short, 3, 18) == pytest.approx(0.01) and lr_at(short, 1, 18) < 0.01
    assert max(lr_at(short, i, 18) for i in range(18)) == pytest.approx(0.01)
    # a single iteration gets the warm-up's first value, and is not also decayed twice at iteration 0
    assert lr_at(short, 0, 1) == pytest.approx(0.01 * 0.001)
    one_step = TrainSettings(lr=0.01, schedule="step", warmup_iters=100, warmup_factor=1.0, decay_at=(8 / 12, 11 / 12))
    assert lr_at(one_step, 0, 1) == pytest.approx(0.01)


def test_cosine_schedule_warms_up_then_falls_to_zero():
    settings = TrainSettings(lr=0.01, schedule="cosine", warmup_iters=10, warmup_factor=0.001)
    assert lr_at(settings, 0, 110) == pytest.approx(1e-5)
    assert lr_at(settings, 10, 110) == pytest.approx(0.01)  # the peak, right after the warm-up
    assert lr_at(settings, 60, 110) == pytest.approx(0.005)  # half-way through what follows it
    assert lr_at(settings, 35, 110) == pytest.approx(0.01 * (1 + 2 ** -0.5) / 2)
    assert lr_at(settings, 109, 110) == pytest.approx(0.01 * (1 - math.cos(math.pi / 100)) / 2)
    after_warmup = [lr_at(settings, i, 110) for i in range(10, 110)]
    assert all(a > b for a, b in zip(after_warmup, after_warmup[1:]))
    assert lr_at(settings, 0, 1) == pytest.approx(0.01 * 0.001)  # one iteration: the warm-up's first value
    # the COCO recipe keeps the paper's step decay; Shapes' default is the cosine
    assert RECIPES["coco-1x"].schedule == "step" and RECIPES["shapes"].schedule == "cosine"


def test_an_unknown_schedule_is_one_line():
    with pytest.raises(KdevalError, match="unknown schedule 'linear'"):
        lr_at(TrainSettings(schedule="linear"), 0, 10)


@pytest.mark.parametrize("native, amp, expected", [(True, True, "bf16"), (False, True, "fp32"), (True, False, "fp32")])
def test_the_cpu_trains_in_bf16_only_where_it_computes_bf16_natively(monkeypatch, native, amp, expected):
    import kdeval.engine.train as training

    monkeypatch.setattr(training, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert training.training_precision(cpu, amp) == expected
    conv = torch.nn.Conv2d(3, 4, 3)
    with training._autocast(cpu, amp):
        out = conv(torch.randn(1, 3, 8, 8))
    assert out.dtype == (torch.bfloat16 if expected == "bf16" else torch.float32)


def test_an_image_size_scales_the_long_side_cap_with_the_recipe():
    """--image-size, in train and study alike: the short side, and the long side's cap in the recipe's
    proportion (COCO's 800/1333), never below the short side."""
    coco = RECIPES["coco-1x"].with_image_size(400)
    assert (coco.min_size, coco.max_size) == (400, 666) and coco.arch == RECIPES["coco-1x"].arch
    assert (RECIPES["shapes"].with_image_size(64).min_size, RECIPES["shapes"].with_image_size(64).max_size) == (64, 64)
    assert TrainSettings(min_size=200, max_size=100).with_image_size(50).max_size == 50
    assert RECIPES["shapes"].with_image_size(None) == RECIPES["shapes"]


def test_batches_cover_each_epoch_once_and_resume_mid_epoch():
    full = list(EpochBatches(10, 3, seed=5, start=0, total=6))
    assert len(full) == 6  # 3 batches per epoch, the incomplete 4th dropped
    for epoch in (0, 1):
        positions = [p for batch in full[epoch * 3 : epoch * 3 + 3] for e, p in batch]
        assert len(set(positions)) == 9 and all(e == epoch for batch in full[epoch * 3 : epoch * 3 + 3] for e, _ in batch)
    assert list(EpochBatches(10, 3, seed=5, start=4, total=6)) == full[4:]
    assert full[:3] != full[3:]  # a new order every epoch


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_weights(tiny_shapes, tmp_path):
    straight = train(TINY, _split(tiny_shapes), tmp_path / "straight", progress=False)
    partial = train(TINY, _split(tiny_shapes), tmp_path / "resumed", progress=False, stop_after=3)
    assert not (tmp_path / "resumed" / "model.pt").exists() and partial.iterations == 3
    with pytest.raises(KdevalError, match="--resume"):
        train(TINY, _split(tiny_shapes), tmp_path / "resumed", progress=False)
    resumed = train(TINY, _split(tiny_shapes), tmp_path / "resumed", progress=False, resume=True)
    assert resumed.resumed_from == 3 and resumed.iterations == 1
    a = load_checkpoint(straight.checkpoint).model.state_dict()
    b = load_checkpoint(resumed.checkpoint).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == [0, 1, 2, 3]
    straight_log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in log] == [r["loss"] for r in straight_log]
    assert set(log[0]) >= {"iter", "epoch", "loss", "classification", "bbox_regression", "lr", "images_per_s"}


@pytest.mark.slow
def test_resuming_with_other_settings_is_refused(tiny_shapes, tmp_path):
    train(TINY, _split(tiny_shapes), tmp_path / "run", progress=False, stop_after=1)
    from dataclasses import replace

    with pytest.raises(KdevalError, match="settings differ.*lr"):
        train(replace(TINY, lr=0.5), _split(tiny_shapes), tmp_path / "run", progress=False, resume=True)


@pytest.mark.slow
def test_the_checkpoint_records_what_made_it(tiny_shapes, tmp_path):
    result = train(TINY, _split(tiny_shapes), tmp_path / "run", progress=False)
    loaded = load_checkpoint(result.checkpoint)
    assert loaded.role == "baseline" and loaded.spec.arch == "r18" and loaded.spec.fpn_channels == 16
    assert loaded.train_settings["iterations"] == 4 and loaded.train_settings["lr"] == TINY.lr
    assert [c["name"] for c in loaded.categories][:2] == ["circle", "ellipse"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["log.jsonl", "model.pt", "settings.json", "train_state.pt"]


@pytest.mark.slow
def test_worker_processes_do_not_change_what_is_learned(tiny_shapes, tmp_path):
    """Flips are a function of (seed, epoch, position), so the default workers beside a GPU train the
    same model as the main process alone."""
    settings = TrainSettings(**{**TINY.__dict__, "hflip": 0.5})
    alone = train(settings, _split(tiny_shapes), tmp_path / "alone", progress=False, workers=0, stop_after=3)
    helped = train(settings, _split(tiny_shapes), tmp_path / "helped", progress=False, workers=2, stop_after=3)
    a, b = (torch.load(r / "train_state.pt", weights_only=True)["model"] for r in (tmp_path / "alone", tmp_path / "helped"))
    assert alone.iterations == helped.iterations == 3
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_default_workers_by_device(monkeypatch):
    from kdeval.engine import predict
    from kdeval.engine.predict import default_workers

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(predict, "usable_cores", lambda: 16)
    assert default_workers(torch.device("cpu")) == 0 and default_workers(torch.device("cuda", 0)) == 8
    monkeypatch.setattr(predict, "usable_cores", lambda: 4)
    assert default_workers(torch.device("cuda")) == 4
    monkeypatch.setattr(predict, "usable_cores", lambda: 32)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # torchrun, 8 GPUs on a 32-core node: 4 workers per rank
    assert default_workers(torch.device("cuda", 3)) == 4
    monkeypatch.setattr(predict, "usable_cores", lambda: 4)
    assert default_workers(torch.device("cuda", 3)) == 1


def test_resuming_a_finished_run_compares_the_models_own_settings_and_a_retraining_drops_the_old_model(
        tiny_shapes, trained, tmp_path, monkeypatch):
    """settings.json is rewritten when a retraining starts: a killed --overwrite run with new settings
    must neither leave the old model looking finished nor make --resume take it for the new one."""
    import shutil

    import kdeval.engine.train as train_module
    from kdeval.errors import KdevalError
    from kdeval.models.checkpoint import torch_load_safely

    run_dir = tmp_path / "run"
    shutil.copytree(trained.parent, run_dir)
    saved = train_module.settings_from_dict(torch_load_safely(run_dir / "model.pt")["train_settings"])
    split = _split(tiny_shapes)
    # the same settings but for how often it saves: finished, nothing to do
    assert train_module.train(replace(saved, save_every=3), split, run_dir, resume=True).resumed_from == -1
    longer = replace(saved, epochs=saved.epochs + 1)
    (run_dir / "settings.json").write_text(json.dumps(asdict(longer)))  # as a started retraining leaves it
    with pytest.raises(KdevalError, match="finished with other settings .epochs 1 there, 2 now"):
        train_module.train(longer, split, run_dir, resume=True)

    def killed(device):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "start_distributed", killed)
    with pytest.raises(KeyboardInterrupt):
        train_module.train(longer, split, run_dir, overwrite=True)
    assert not (run_dir / "model.pt").exists()



@pytest.mark.parametrize("save_every, saved_after", [(0, [2, 4]), (1, [1, 2, 3, 4]), (3, [2, 3, 4])])
def test_resumable_states_are_written_at_epoch_ends_and_every_save_every_iterations(
        tiny_shapes, tmp_path, monkeypatch, save_every, saved_after):
    """8 images in batches of 4: 2 iterations an epoch, 4 in all. save_every 0 (the Shapes default)
    saves at the end of each epoch alone."""
    import kdeval.engine.train as train_module

    written = []
    monkeypatch.setattr(train_module, "save_state", lambda path, run, iteration: written.append(iteration))
    settings = replace(TINY, epochs=2, save_every=save_every)
    train_module.train(settings, _split(tiny_shapes), tmp_path / "run", progress=False)
    assert written == saved_after
