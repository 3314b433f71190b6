"""Plain detection training of a RetinaNet, resumable after a kill.

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
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from kdeval.data.coco import LabelSpace, load_coco_annotations
from kdeval.data.dataset import CocoDetectionDataset, collate
from kdeval.data.source import Split
from kdeval.errors import KdevalError
from kdeval.fileio import torch_save_atomic, write_json_atomic, write_text_atomic
from kdeval.distill.student import DetectorWithFeatures, FeatureTeacher
from kdeval.engine.distributed import start_distributed
from kdeval.engine.predict import default_workers
from kdeval.models.checkpoint import load_checkpoint, save_checkpoint, torch_load_safely
from kdeval.models.retinanet import ModelSpec, build_retinanet, load_backbone_weights
from kdeval.vocab import OPTIMIZERS

log = logging.getLogger("kdeval")


@dataclass(frozen=True)
class TrainSettings:
    """Settings of one training run. Defaults suit the embedded Shapes benchmark on a CPU;
    `RECIPES['coco-1x']` holds the paper's COCO schedule."""

    arch: str = "r18"
    role: str = "baseline"
    epochs: int = 8
    batch_size: int = 16
    optimizer: str = "adamw"  # from scratch, AdamW learns Shapes far faster than SGD (METHOD.md)
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    decay_at: tuple[float, ...] = (8 / 12, 11 / 12)  # fractions of the schedule, as COCO 1x (epochs 8 and 11 of 12)
    decay_gamma: float = 0.1
    grad_clip_norm: float = 10.0
    hflip: float = 0.5
    fpn_channels: int = 64
    norm: str = "bn"
    head_norm: str = "gn"  # GroupNorm in the head: +1.6 AP on Shapes after 375 iterations at no extra cost
    min_size: int = 128
    max_size: int = 128
    anchor_size_per_stride: float = 2.0
    seed: int = 0
    amp: bool = True  # only takes effect on CUDA
    save_every: int = 25  # iterations between resumable states
    # distillation (issue: feature losses between student and teacher FPN maps; hard output labels)
    teacher: str | None = None  # checkpoint whose FPN maps the student imitates
    distill_loss: str | None = None  # ssim | ms-ssim | l1+ms-ssim | smooth-l1 | l2
    distill_weight: float = 3.0  # λ; 3 beat 1 on Shapes (benchmarks/RESULTS.md)
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


def warmup_for(warmup_iters: int, total_iters: int) -> int:
    """A short schedule must not spend itself warming up: warm-up is at most a fifth of it (one epoch
    of 300 Shapes images is 18 iterations, against the recipes' 100 or 500)."""
    return max(1, min(warmup_iters, total_iters // 5))


def differing_settings(saved: TrainSettings, settings: TrainSettings, ignored: tuple[str, ...] = ()) -> list[str]:
    """The names of the fields in which `settings` differ from `saved`, in field order."""
    return [f.name for f in fields(TrainSettings)
            if f.name not in ignored and getattr(saved, f.name) != getattr(settings, f.name)]


# what a finished run is compared on: not the checkpoints' paths (the same file may be spelt otherwise,
# as a study resumed with another --out spelling does), nor how often it saved its state
_NOT_COMPARED_WHEN_FINISHED = ("teacher", "pseudo_labels", "save_every")


def _check_finished_settings(checkpoint_path: Path, settings: TrainSettings) -> None:
    """--resume on a finished run: nothing to do when it was trained with these settings; with others
    (more epochs, say: the schedule's warm-up and decays sit at fractions of it, so a finished run
    cannot simply go on) say so rather than report it finished. The finished model's own record of
    its settings is compared (settings.json is rewritten when a retraining starts)."""
    stored = torch_load_safely(checkpoint_path).get("train_settings")
    if not stored:  # written before checkpoints recorded their settings
        return
    saved = settings_from_dict(stored)
    changed = [f"{name} {getattr(saved, name)} there, {getattr(settings, name)} now"
               for name in differing_settings(saved, settings, _NOT_COMPARED_WHEN_FINISHED)]
    if changed:
        raise KdevalError(f"{checkpoint_path}: finished with other settings ({'; '.join(changed[:3])}); a finished "
                          f"schedule cannot be extended: train again with --overwrite, or into another folder")


def lr_at(settings: TrainSettings, iteration: int, total_iters: int) -> float:
    """Linear warm-up from lr·warmup_factor, then step decay at fixed fractions of the schedule (never
    at the first iteration, where a one-iteration run would put every decay)."""
    lr = settings.lr * settings.decay_gamma ** sum(iteration >= max(1, int(f * total_iters)) for f in settings.decay_at)
    warmup = warmup_for(settings.warmup_iters, total_iters)
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


def _make_optimizer(settings: TrainSettings, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    raise KdevalError(f"unknown optimizer '{settings.optimizer}' (expected one of {', '.join(OPTIMIZERS)})")


def _autocast(device: torch.device, enabled: bool):
    if device.type != "cuda" or not enabled:
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


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


@dataclass
class TrainResult:
    checkpoint: Path
    iterations: int
    seconds: float
    resumed_from: int
    model: torch.nn.Module | None = None


PSEUDO_LABEL_BATCH_SIZE = 16  # the teacher's inference batch for --pseudo-labels


def _pseudo_labelled(settings: TrainSettings, coco: dict, train_split: Split, device: str) -> dict:
    """The training split labelled by the teacher's confident detections instead of the ground truth.
    Under torchrun the ranks share the teacher's inference, rank 0 alone holds all its detections
    (COCO train2017: about 12 million, some 5 GB as Python objects) and sends every rank only the
    confident ones, as the labelled split."""
    from kdeval.distill.pseudo_labels import pseudo_label_coco
    from kdeval.engine import distributed
    from kdeval.engine.predict import PredictSettings, cached_predict

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
    out_dir = Path(out_dir)
    checkpoint_path, state_path, log_path = out_dir / "model.pt", out_dir / "train_state.pt", out_dir / "log.jsonl"
    if checkpoint_path.exists() and not overwrite:
        if resume:
            _check_finished_settings(checkpoint_path, settings)
            return TrainResult(checkpoint_path, 0, 0.0, -1)
        raise KdevalError(f"{checkpoint_path}: a finished model is already there (--overwrite to train again)")
    if state_path.exists() and not resume and not overwrite:
        raise KdevalError(f"{state_path}: an interrupted run is there; pass --resume to continue it or --overwrite to start over")
    out_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:  # a retraining killed before it finishes must not leave the old model looking finished
        checkpoint_path.unlink(missing_ok=True)

    dist_env, device = start_distributed(device)
    if settings.batch_size % dist_env.world:
        raise KdevalError(f"--batch-size {settings.batch_size} (the global batch) must be divisible by the {dist_env.world} processes")
    if settings.distill_loss is not None and settings.teacher is None:
        raise KdevalError("--distill needs --teacher CHECKPOINT")
    coco = load_coco_annotations(train_split.annotations)
    labels = LabelSpace.from_categories(coco["categories"])
    dataset = CocoDetectionDataset(train_split, coco, labels, hflip=settings.hflip, seed=settings.seed)
    if len(dataset) < settings.batch_size:
        raise KdevalError(f"{train_split.annotations}: {len(dataset)} images, fewer than one batch of {settings.batch_size}")
    dataset.check_images_exist()
    if settings.pseudo_labels is not None:
        dataset = CocoDetectionDataset(train_split, _pseudo_labelled(settings, coco, train_split, device), labels, hflip=settings.hflip, seed=settings.seed)

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
    use_scaler = torch_device.type == "cuda" and settings.amp and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    per_epoch = len(dataset) // settings.batch_size
    total_iters = settings.epochs * per_epoch
    start = 0
    if resume and state_path.exists():
        state = torch_load_safely(state_path)
        saved = settings_from_dict(state.get("settings", {}))
        if saved != settings:
            raise KdevalError(f"{state_path}: settings differ from the interrupted run ({', '.join(differing_settings(saved, settings))}); "
                              f"use --overwrite to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["iteration"])
    if dist_env.is_main:
        _truncate_log(log_path, start)
        write_json_atomic(out_dir / "settings.json", asdict(settings))

    def save_state(iteration: int) -> None:
        if not dist_env.is_main:
            return
        torch_save_atomic(
            state_path,
            {
                "settings": asdict(settings),
                "iteration": iteration,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "torch_rng": torch.get_rng_state(),
            },
        )

    end = total_iters if stop_after is None else min(total_iters, stop_after)
    loader = DataLoader(
        dataset,
        batch_sampler=EpochBatches(len(dataset), settings.batch_size, settings.seed, start, end, dist_env.rank, dist_env.world),
        num_workers=default_workers(torch_device) if workers is None else workers,  # samples are a function of their index: any count gives the same batches
        collate_fn=collate,
        pin_memory=torch_device.type == "cuda",
        persistent_workers=False,
    )
    model.train()
    started = time.perf_counter()
    bar = tqdm(total=total_iters, initial=start, desc=f"train {settings.role} {settings.arch}", disable=not (progress and dist_env.is_main), unit="it")
    with open(log_path if dist_env.is_main else os.devnull, "a", encoding="utf-8") as log:
        iteration = start
        tick = time.perf_counter()
        for images, targets in loader:
            lr = lr_at(settings, iteration, total_iters)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = [image.to(torch_device, non_blocking=True) for image in images]
            targets = [{k: (v.to(torch_device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
            with _autocast(torch_device, settings.amp):
                losses, features, image_list = student(images, targets)
                if teacher is not None:
                    losses["distill"] = teacher.loss(features, image_list)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise KdevalError(f"training diverged at iteration {iteration} (loss {loss.item()}); lower --lr")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if settings.grad_clip_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip_norm)
            scaler.step(optimizer)
            scaler.update()
            iteration += 1
            now = time.perf_counter()
            images_per_s = len(images) * dist_env.world / max(now - tick, 1e-9)
            tick = now
            record = {
                "iter": iteration - 1,
                "epoch": (iteration - 1) // per_epoch,
                "loss": round(loss.item(), 5),
                **{name: round(value.item(), 5) for name, value in losses.items()},
                "lr": lr,
                "images_per_s": round(images_per_s, 2),
            }
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2g}", img_s=f"{images_per_s:.1f}")
            bar.update(1)
            if iteration % settings.save_every == 0 or iteration % per_epoch == 0 or iteration == end:
                save_state(iteration)
            if on_iteration is not None:
                on_iteration(iteration)
    bar.close()
    seconds = time.perf_counter() - started
    if dist_env.world > 1:
        # BatchNorm statistics are updated per process; the model that is kept is rank 0's
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)
    if iteration < total_iters:
        return TrainResult(state_path, iteration - start, seconds, start, model)
    if dist_env.is_main:
        train_settings = {**asdict(settings), "iterations": total_iters, "train_annotations": str(train_split.annotations)}
        save_checkpoint(checkpoint_path, model, spec, coco["categories"], settings.role, train_settings)
    if dist_env.world > 1:
        torch.distributed.barrier()
    return TrainResult(checkpoint_path, iteration - start, seconds, start, model)


