"""Detection training of a RetinaNet, plain or distilled from a teacher, resumable after a kill.

`train` reads as its steps, as torchvision's references/detection do: check the run folder, `setup`
(data, model, teacher, optimiser), `resume_from` the last saved state, `train_one_epoch` until the
schedule or `stop_after` ends, and save the model.

The run folder holds:
    model.pt        the finished checkpoint (written once, at the end, atomically)
    train_state.pt  model, optimiser, scaler, iteration and RNG state (atomically, every few iterations)
    log.jsonl       one JSON line per iteration: iter, epoch, loss terms, lr, images/s
    settings.json   the resolved TrainSettings

Determinism: the batch order of epoch e is a permutation seeded by (seed, e), and augmentation is a
function of (seed, epoch, image), so a run resumed at iteration i sees exactly the batches that an
uninterrupted run sees from i on; on the CPU the weights come out the same.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from itertools import islice
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from kdeval.data.coco import load_coco_annotations
from kdeval.labels import LabelSpace
from kdeval.data.dataset import CocoDetectionDataset, collate
from kdeval.data.source import Split
from kdeval.errors import KdevalError
from kdeval.fileio import torch_save_atomic, write_json_atomic, write_text_atomic
from kdeval.distill.student import DetectorWithFeatures, FeatureTeacher
from kdeval.engine.distributed import Distributed, start_distributed
from kdeval.engine.predict import default_workers
from kdeval.models.checkpoint import load_checkpoint, save_checkpoint, torch_load_safely
from kdeval.models.retinanet import ModelSpec, build_retinanet, load_backbone_weights
from kdeval.vocab import DEFAULT_DISTILL_WEIGHTS, OPTIMIZERS, SCHEDULES

log = logging.getLogger("kdeval")


@dataclass(frozen=True)
class TrainSettings:
    """Settings of one training run. Defaults suit the embedded Shapes benchmark on a CPU;
    `RECIPES['coco-1x']` holds the paper's COCO schedule."""

    arch: str = "r18"
    role: str = "baseline"
    epochs: int = 8
    batch_size: int = 16
    optimizer: str = "adamw"  # from scratch, AdamW learns Shapes far faster than SGD
    lr: float = 2e-3  # with the cosine: 16.0 AP against 14.7 for 1e-3 and step decay (R18, 4 epochs; benchmarks/RESULTS.md)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    schedule: str = "cosine"  # cosine: from lr down to 0 over the run; step: decays at decay_at (COCO's)
    decay_at: tuple[float, ...] = (8 / 12, 11 / 12)  # fractions of the schedule, as COCO 1x (epochs 8 and 11 of 12)
    decay_gamma: float = 0.1
    grad_clip_norm: float = 10.0
    hflip: float = 0.5
    fpn_channels: int = 64
    norm: str = "bn"
    head_norm: str = "gn"  # GroupNorm in the head: a stronger Shapes model at no cost per step (benchmarks/RESULTS.md)
    min_size: int = 128
    max_size: int = 128
    anchor_size_per_stride: float = 2.0
    seed: int = 0
    amp: bool = True  # bf16 (fp16 where CUDA lacks bf16) mixed precision on CUDA, and on CPUs with native bf16
    # iterations between resumable states besides the one at each epoch's end; 0: only there. A Shapes
    # epoch is about a minute on a CPU, and each state (weights and AdamW's moments, 260 MB for R34,
    # fsync'd) costs seconds, so more often would spend a tenth of the run saving
    save_every: int = 0
    # distillation: feature losses between student and teacher FPN maps, or the teacher's detections as labels
    teacher: str | None = None  # checkpoint whose FPN maps the student imitates
    distill_loss: str | None = None  # ssim | ms-ssim | l1+ms-ssim | smooth-l1 | l2
    distill_weight: float = DEFAULT_DISTILL_WEIGHTS["ssim"]  # λ
    ssim_window: int = 3
    ssim_window_shape: str = "uniform"
    ssim_rescale: str = "channel"
    pseudo_labels: str | None = None  # checkpoint whose detections replace the ground truth
    pseudo_threshold: float = 0.3

    def feature_loss_settings(self):
        from kdeval.distill.losses import FeatureLossSettings

        return FeatureLossSettings(
            loss=self.distill_loss, window=self.ssim_window, window_shape=self.ssim_window_shape, rescale=self.ssim_rescale
        )

    def with_image_size(self, image_size: int | None) -> "TrainSettings":
        """These settings with the short side resized to `image_size` and the long side's cap scaled in
        the same proportion, never below the short side (unchanged for None)."""
        if image_size is None:
            return self
        return replace(self, min_size=image_size, max_size=max(image_size, self.max_size * image_size // self.min_size))

    def model_spec(self, num_classes: int) -> ModelSpec:
        return ModelSpec(
            arch=self.arch,
            num_classes=num_classes,
            fpn_channels=self.fpn_channels,
            norm=self.norm,
            head_norm=self.head_norm,
            min_size=self.min_size,
            max_size=self.max_size,
            anchor_size_per_stride=self.anchor_size_per_stride,
        )


RECIPES = {
    "shapes": TrainSettings(),
    "coco-1x": TrainSettings(
        arch="r50",
        epochs=12,
        optimizer="sgd",
        schedule="step",
        lr=0.01,
        weight_decay=1e-4,
        warmup_iters=500,
        fpn_channels=256,
        norm="frozen-bn",
        head_norm="none",  # torchvision's RetinaNet (v1) head: its COCO checkpoint loads unchanged
        min_size=800,
        max_size=1333,
        anchor_size_per_stride=4.0,
        save_every=500,
    ),
}


def settings_from_dict(raw: dict) -> TrainSettings:
    known = {f.name for f in fields(TrainSettings)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in raw.items() if k in known}
    return TrainSettings(**values)


def differing_settings(saved: TrainSettings, settings: TrainSettings, ignored: tuple[str, ...] = ()) -> list[str]:
    """The names of the fields in which `settings` differ from `saved`, in field order."""
    return [f.name for f in fields(TrainSettings)
            if f.name not in ignored and getattr(saved, f.name) != getattr(settings, f.name)]


# ---------------------------------------------------------------- the schedule


def warmup_for(warmup_iters: int, total_iters: int) -> int:
    """A short schedule must not spend itself warming up: warm-up is at most a fifth of it (one epoch
    of 300 Shapes images is 18 iterations, against the recipes' 100 or 500)."""
    return max(1, min(warmup_iters, total_iters // 5))


def lr_at(settings: TrainSettings, iteration: int, total_iters: int) -> float:
    """Linear warm-up from lr·warmup_factor, then either step decay at fixed fractions of the schedule
    (never at the first iteration, where a one-iteration run would put every decay) or a cosine from lr
    after the warm-up down to 0 at the end."""
    warmup = warmup_for(settings.warmup_iters, total_iters)
    if settings.schedule == "cosine":
        progress = max(0, iteration - warmup) / max(1, total_iters - warmup)
        lr = settings.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    elif settings.schedule == "step":
        lr = settings.lr * settings.decay_gamma ** sum(iteration >= max(1, int(f * total_iters)) for f in settings.decay_at)
    else:
        raise KdevalError(f"unknown schedule '{settings.schedule}' (expected one of {', '.join(SCHEDULES)})")
    if iteration < warmup:
        alpha = iteration / warmup
        lr *= settings.warmup_factor * (1 - alpha) + alpha
    return lr


class EpochBatches(Sampler):
    """Batches of (epoch, image) pairs from iteration `start` to `total`: epoch e's order is a
    permutation seeded by (seed, e); the last incomplete batch of an epoch is dropped.

    Under torchrun, `batch_size` is the global batch and process `rank` of `world` takes every
    world-th image of it: the images of an iteration are the same whatever the process count,
    as a DistributedSampler would shard them, and the order stays resumable."""

    def __init__(self, num_images: int, batch_size: int, seed: int, start: int, total: int, rank: int = 0, world: int = 1):
        self.num_images, self.batch_size, self.seed = num_images, batch_size, seed
        self.start, self.total = start, total
        self.rank, self.world = rank, world
        self.per_epoch = num_images // batch_size

    def __len__(self) -> int:
        return self.total - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for iteration in range(self.start, self.total):
            epoch, step = divmod(iteration, self.per_epoch)
            order = torch.randperm(self.num_images, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            positions = order[step * self.batch_size : (step + 1) * self.batch_size].tolist()[self.rank :: self.world]
            yield [(epoch, p) for p in positions]


# ---------------------------------------------------------------- the run folder


@dataclass(frozen=True)
class RunFolder:
    """The files of a run (the module's docstring says what each holds)."""

    root: Path
    checkpoint: Path
    state: Path
    log: Path
    settings: Path

    @classmethod
    def at(cls, root: Path) -> "RunFolder":
        return cls(root, root / "model.pt", root / "train_state.pt", root / "log.jsonl", root / "settings.json")


def _open_run_folder(folder: RunFolder, settings: TrainSettings, resume: bool, overwrite: bool) -> bool:
    """Make the folder ready for training; True when it holds a finished run that --resume has nothing
    to add to. A finished or interrupted run is never replaced unless --overwrite asks for it."""
    if folder.checkpoint.exists() and not overwrite:
        if resume:
            _check_finished_settings(folder.checkpoint, settings)
            return True
        raise KdevalError(f"{folder.checkpoint}: a finished model is already there (--overwrite to train again)")
    if folder.state.exists() and not resume and not overwrite:
        raise KdevalError(f"{folder.state}: an interrupted run is there; pass --resume to continue it or --overwrite to start over")
    folder.root.mkdir(parents=True, exist_ok=True)
    if overwrite:  # a retraining killed before it finishes must not leave the old model looking finished
        folder.checkpoint.unlink(missing_ok=True)
    return False


# what a finished run is compared on: not the checkpoints' paths (the same file may be spelt otherwise,
# as a study resumed with another --out spelling does), nor how often it saved its state
_NOT_COMPARED_WHEN_FINISHED = ("teacher", "pseudo_labels", "save_every")


def _check_finished_settings(checkpoint_path: Path, settings: TrainSettings) -> None:
    """--resume on a finished run: nothing to do when it was trained with these settings; with others
    (more epochs, say: the schedule's warm-up and decays sit at fractions of it, so a finished run
    cannot simply go on) say so rather than report it finished. The finished model's own record of
    its settings is compared (settings.json is rewritten when a retraining starts)."""
    stored = torch_load_safely(checkpoint_path).get("train_settings")
    if not stored:  # a checkpoint that records no settings: nothing to compare them with
        return
    saved = settings_from_dict(stored)
    changed = [f"{name} {getattr(saved, name)} there, {getattr(settings, name)} now"
               for name in differing_settings(saved, settings, _NOT_COMPARED_WHEN_FINISHED)]
    if changed:
        raise KdevalError(f"{checkpoint_path}: finished with other settings ({'; '.join(changed[:3])}); a finished "
                          f"schedule cannot be extended: train again with --overwrite, or into another folder")


def _truncate_log(log_path: Path, keep_below: int) -> None:
    """Drop log lines of iterations that a resumed run will redo."""
    if not log_path.exists():
        return
    kept = []
    for line in log_path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["iter"] < keep_below:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            break  # a line cut by a kill: everything after it is redone
    write_text_atomic(log_path, "".join(line + "\n" for line in kept))


# ---------------------------------------------------------------- setup


PSEUDO_LABEL_BATCH_SIZE = 16  # the teacher's inference batch for --pseudo-labels


def _pseudo_labelled(settings: TrainSettings, coco: dict, train_split: Split, device: str) -> dict:
    """The training split labelled by the teacher's confident detections instead of the ground truth.
    Under torchrun the ranks share the teacher's inference, rank 0 alone holds all its detections
    (COCO train2017: about 12 million, some 5 GB as Python objects) and sends every rank only the
    confident ones, as the labelled split."""
    from kdeval.distill.pseudo_labels import pseudo_label_coco
    from kdeval.engine import distributed
    from kdeval.engine.detections import cached_predict
    from kdeval.engine.predict import PredictSettings

    # the teacher runs in the precision the run trains in: --fp32 (the way out of an fp16 overflow) covers both
    detections = cached_predict(Path(settings.pseudo_labels), train_split, PredictSettings(batch_size=PSEUDO_LABEL_BATCH_SIZE, device=device, amp=settings.amp),
                                progress=False)
    labelled, best = None, None
    if distributed.current().is_main:
        labelled = pseudo_label_coco(coco, detections, settings.pseudo_threshold)
        if not labelled["annotations"]:  # only then is the best score needed: for the error below
            best = max((d["score"] for d in detections), default=0.0)
    labelled, best = distributed.broadcast_from_main((labelled, best))
    kept = len(labelled["annotations"])
    if kept == 0:  # every rank alike: training on no boxes would only learn that there are none
        raise KdevalError(f"{settings.pseudo_labels}: none of the teacher's detections on the {len(coco['images'])} training "
                          f"images scores above --pseudo-threshold {settings.pseudo_threshold:g} (the best: {best:.3f}); "
                          f"nothing to train on: lower --pseudo-threshold or train the teacher longer")
    if distributed.current().is_main:
        log.warning(f"pseudo labels: {kept} teacher detections above {settings.pseudo_threshold:g} on "
                    f"{len({a['image_id'] for a in labelled['annotations']})} of {len(coco['images'])} training images")
    return labelled


def _feature_teacher(settings: TrainSettings, spec: ModelSpec, device: torch.device):
    if settings.distill_loss is None:
        return None
    teacher = load_checkpoint(Path(settings.teacher))
    if teacher.spec.fpn_channels != spec.fpn_channels:
        raise KdevalError(
            f"{settings.teacher}: teacher FPN maps have {teacher.spec.fpn_channels} channels, the student's {spec.fpn_channels}; "
            f"train the student with --fpn-channels {teacher.spec.fpn_channels}"
        )
    return FeatureTeacher(teacher.model.to(device), settings.feature_loss_settings(), settings.distill_weight)


def _make_optimizer(settings: TrainSettings, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    raise KdevalError(f"unknown optimizer '{settings.optimizer}' (expected one of {', '.join(OPTIMIZERS)})")


@dataclass
class Training:
    """What `setup` builds for a run, and what its steps share."""

    settings: TrainSettings
    dist_env: Distributed
    device: torch.device
    categories: list[dict]  # the training split's, recorded in the checkpoint
    dataset: CocoDetectionDataset
    spec: ModelSpec
    model: torch.nn.Module  # the RetinaNet whose weights are saved
    student: torch.nn.Module  # the model giving losses and FPN maps; DistributedDataParallel under torchrun
    teacher: FeatureTeacher | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler

    @property
    def per_epoch(self) -> int:
        return len(self.dataset) // self.settings.batch_size

    @property
    def total_iters(self) -> int:
        return self.settings.epochs * self.per_epoch


def _training_data(settings: TrainSettings, train_split: Split, device: str) -> tuple[dict, LabelSpace, CocoDetectionDataset]:
    """The split's annotations, its label space, and the dataset trained on: the ground truth, or with
    --pseudo-labels the teacher's confident detections."""
    coco = load_coco_annotations(train_split.annotations)
    labels = LabelSpace.from_categories(coco["categories"])
    dataset = CocoDetectionDataset(train_split, coco, labels, hflip=settings.hflip, seed=settings.seed)
    if len(dataset) < settings.batch_size:
        raise KdevalError(f"{train_split.annotations}: {len(dataset)} images, fewer than one batch of {settings.batch_size}")
    dataset.check_images_exist()
    if settings.pseudo_labels is not None:
        dataset = CocoDetectionDataset(train_split, _pseudo_labelled(settings, coco, train_split, device), labels, hflip=settings.hflip, seed=settings.seed)
    return coco, labels, dataset


def setup(settings: TrainSettings, train_split: Split, device: str, backbone_weights: Path | None = None) -> Training:
    """Join the torchrun job if there is one, then load the data and build the model (seeded), the
    teacher, the optimiser and the gradient scaler."""
    dist_env, device = start_distributed(device)
    if settings.batch_size % dist_env.world:
        raise KdevalError(f"--batch-size {settings.batch_size} (the global batch) must be divisible by the {dist_env.world} processes")
    if settings.distill_loss is not None and settings.teacher is None:
        raise KdevalError("--distill needs --teacher CHECKPOINT")
    coco, labels, dataset = _training_data(settings, train_split, device)

    torch.manual_seed(settings.seed)
    spec = settings.model_spec(labels.num_classes)
    model = build_retinanet(spec)
    if backbone_weights is not None:
        load_backbone_weights(model, backbone_weights)
    torch_device = torch.device(device)
    model.to(torch_device)
    teacher = _feature_teacher(settings, spec, torch_device)
    student = DetectorWithFeatures(model)
    if dist_env.world > 1:
        student = torch.nn.parallel.DistributedDataParallel(
            student, device_ids=[torch_device.index] if torch_device.type == "cuda" else None
        )
    optimizer = _make_optimizer(settings, model)
    scaler = torch.amp.GradScaler("cuda", enabled=training_precision(torch_device, settings.amp) == "fp16")
    return Training(settings, dist_env, torch_device, coco["categories"], dataset, spec, model, student, teacher, optimizer, scaler)


# ---------------------------------------------------------------- resume and save


def resume_from(state_path: Path, run: Training) -> int:
    """Load an interrupted run's weights, optimiser, scaler and RNG state into `run`; the iteration it
    goes on from. The settings must be those it was started with."""
    state = torch_load_safely(state_path)
    saved = settings_from_dict(state.get("settings", {}))
    if saved != run.settings:
        raise KdevalError(f"{state_path}: settings differ from the interrupted run ({', '.join(differing_settings(saved, run.settings))}); "
                          f"use --overwrite to start over")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["iteration"])


def save_state(state_path: Path, run: Training, iteration: int) -> None:
    """The resumable state after `iteration` iterations (rank 0 writes it; the ranks' weights are equal)."""
    if not run.dist_env.is_main:
        return
    torch_save_atomic(
        state_path,
        {
            "settings": asdict(run.settings),
            "iteration": iteration,
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        },
    )


def save_model(checkpoint_path: Path, run: Training, train_split: Split) -> None:
    """The finished checkpoint, with the settings and data that made it (rank 0 writes it)."""
    if run.dist_env.is_main:
        train_settings = {**asdict(run.settings), "iterations": run.total_iters, "train_annotations": str(train_split.annotations)}
        save_checkpoint(checkpoint_path, run.model, run.spec, run.categories, run.settings.role, train_settings)
    if run.dist_env.world > 1:
        torch.distributed.barrier()


# ---------------------------------------------------------------- one epoch


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions in hardware here (AVX512-BF16 or AMX); elsewhere bf16 is
    emulated and slower than fp32, so the CPU trains in fp32."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def training_precision(device: torch.device, amp: bool) -> str:
    """What a run's convolutions compute in: fp32, bf16 or fp16."""
    if not amp:
        return "fp32"
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"  # about 1.5× the steps per second of fp32 on Shapes (benchmarks/RESULTS.md)
    return "fp32"


def _autocast(device: torch.device, enabled: bool):
    precision = training_precision(device, enabled)
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _loader(run: Training, start: int, end: int, workers: int | None) -> DataLoader:
    """The batches of iterations start..end-1, across epochs, in one loader: creating its iterator
    draws from torch's RNG, so a loader per epoch would change the RNG state a resumed run restores."""
    return DataLoader(
        run.dataset,
        batch_sampler=EpochBatches(len(run.dataset), run.settings.batch_size, run.settings.seed, start, end, run.dist_env.rank, run.dist_env.world),
        num_workers=default_workers(run.device) if workers is None else workers,  # samples are a function of their index: any count gives the same batches
        collate_fn=collate,
        pin_memory=run.device.type == "cuda",
        persistent_workers=False,
    )


def _step(run: Training, images: list[torch.Tensor], targets: list[dict], iteration: int) -> dict[str, torch.Tensor]:
    """One optimiser step on a batch; the loss terms it took, and their sum as "loss"."""
    images = [image.to(run.device, non_blocking=True) for image in images]
    targets = [{k: (v.to(run.device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
    with _autocast(run.device, run.settings.amp):
        losses, features, image_list = run.student(images, targets)
        if run.teacher is not None:
            losses["distill"] = run.teacher.loss(features, image_list)
    loss = sum(losses.values())
    if not torch.isfinite(loss):
        raise KdevalError(f"training diverged at iteration {iteration} (loss {loss.item()}); lower --lr")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    if run.settings.grad_clip_norm > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.settings.grad_clip_norm)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return {"loss": loss, **losses}


def _mean_over_ranks(values: dict[str, torch.Tensor], world: int) -> dict[str, float]:
    """The values to log: under torchrun each rank's come from its own share of the batch, so the
    log shows their mean over the ranks; a process alone logs its own, with no collective."""
    if world == 1:
        return {name: value.item() for name, value in values.items()}
    stacked = torch.stack([value.detach().double() for value in values.values()])
    torch.distributed.all_reduce(stacked)
    return dict(zip(values, (stacked / world).tolist()))


def train_one_epoch(run: Training, batches: Iterable, first: int, log_file: IO[str], bar: tqdm,
                    after_step: Callable[[int], None]) -> int:
    """The iterations of one epoch from iteration `first` (mid-epoch after a resume), each followed by
    a log line and `after_step(iterations done)`; the iteration reached."""
    iteration = first
    tick = time.perf_counter()
    for images, targets in batches:
        lr = lr_at(run.settings, iteration, run.total_iters)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        losses = _step(run, images, targets, iteration)
        now = time.perf_counter()
        images_per_s = len(images) * run.dist_env.world / max(now - tick, 1e-9)
        tick = now
        record = {
            "iter": iteration,
            "epoch": iteration // run.per_epoch,
            **{name: round(value, 5) for name, value in _mean_over_ranks(losses, run.dist_env.world).items()},
            "lr": lr,
            "images_per_s": round(images_per_s, 2),
        }
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()
        bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2g}", img_s=f"{images_per_s:.1f}")
        bar.update(1)
        iteration += 1
        after_step(iteration)
    return iteration


# ---------------------------------------------------------------- the run


@dataclass
class TrainResult:
    checkpoint: Path
    iterations: int
    seconds: float
    resumed_from: int
    model: torch.nn.Module | None = None


def train(
    settings: TrainSettings,
    train_split: Split,
    out_dir: Path,
    device: str = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
    backbone_weights: Path | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    on_iteration: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train to `out_dir/model.pt`. `stop_after` ends the run after that many iterations in total
    (leaving a resumable state, as a kill would); tests use it."""
    folder = RunFolder.at(Path(out_dir))
    if _open_run_folder(folder, settings, resume, overwrite):
        return TrainResult(folder.checkpoint, 0, 0.0, -1)
    run = setup(settings, train_split, device, backbone_weights)
    start = resume_from(folder.state, run) if resume and folder.state.exists() else 0
    end = run.total_iters if stop_after is None else min(run.total_iters, stop_after)
    if run.dist_env.is_main:
        _truncate_log(folder.log, start)
        write_json_atomic(folder.settings, asdict(settings))

    def after_step(done: int) -> None:  # a resumable state every save_every iterations, after each epoch, and at the end
        if (settings.save_every and done % settings.save_every == 0) or done % run.per_epoch == 0 or done == end:
            save_state(folder.state, run, done)
        if on_iteration is not None:
            on_iteration(done)

    loader = _loader(run, start, end, workers)
    run.model.train()
    started = time.perf_counter()
    iteration = start
    bar = tqdm(total=run.total_iters, initial=start, desc=f"train {settings.role} {settings.arch}", disable=not (progress and run.dist_env.is_main), unit="it")
    with open(folder.log if run.dist_env.is_main else os.devnull, "a", encoding="utf-8") as log_file:
        batches = iter(loader)
        while iteration < end:  # an epoch at a time, the first from where a resumed run stopped
            epoch_end = min(end, (iteration // run.per_epoch + 1) * run.per_epoch)
            iteration = train_one_epoch(run, islice(batches, epoch_end - iteration), iteration, log_file, bar, after_step)
    bar.close()
    seconds = time.perf_counter() - started
    if run.dist_env.world > 1:
        # BatchNorm statistics are updated per process; the model that is kept is rank 0's
        for buffer in run.model.buffers():
            torch.distributed.broadcast(buffer, src=0)
    if iteration < run.total_iters:
        return TrainResult(folder.state, iteration - start, seconds, start, run.model)
    save_model(folder.checkpoint, run, train_split)
    return TrainResult(folder.checkpoint, iteration - start, seconds, start, run.model)
