"""Time of one distilled training step over one baseline step: same student, same batch.

    python benchmarks/distill_step_time.py [--student r18 --teacher-arch r34 --batch 16 --size 128 --steps 10]

The teacher's weights do not change its cost, so a freshly built one stands in when no checkpoint
is given.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from kdeval.distill.losses import FeatureLossSettings
from kdeval.distill.student import DetectorWithFeatures, FeatureTeacher
from kdeval.models.retinanet import ModelSpec, build_retinanet


def step_times(student, teacher, images, targets, steps: int, device) -> list[float]:
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        losses, features, image_list = student(images, targets)
        if teacher is not None:
            losses["distill"] = teacher.loss(features, image_list)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="r18")
    parser.add_argument("--teacher-arch", default="r34")
    parser.add_argument("--fpn-channels", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--losses", default="ssim,ms-ssim,l1+ms-ssim,smooth-l1,l2")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    def spec(arch):
        return ModelSpec(arch, num_classes=6, fpn_channels=args.fpn_channels, min_size=args.size, max_size=args.size, anchor_size_per_stride=2.0)

    student = DetectorWithFeatures(build_retinanet(spec(args.student)).to(device)).train()
    teacher_net = build_retinanet(spec(args.teacher_arch)).to(device)
    images = [torch.rand(3, args.size, args.size, device=device) for _ in range(args.batch)]
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0], [70.0, 20.0, 100.0, 90.0]], device=device), "labels": torch.tensor([1, 4], device=device)}
        for _ in images
    ]
    rows = [("baseline", statistics.median(step_times(student, None, images, targets, args.steps, device)))]
    for loss in args.losses.split(","):
        teacher = FeatureTeacher(teacher_net, FeatureLossSettings(loss=loss), 1.0)
        rows.append((f"distilled ({loss})", statistics.median(step_times(student, teacher, images, targets, args.steps, device))))
    base = rows[0][1]
    print(f"student {args.student}, teacher {args.teacher_arch}, batch {args.batch} at {args.size} px, {args.fpn_channels}-channel FPN, {device}, {torch.get_num_threads()} threads")
    print(f"{'step':<24}{'median s':>10}{'× baseline':>12}")
    for name, seconds in rows:
        print(f"{name:<24}{seconds:>10.3f}{seconds / base:>12.2f}")


if __name__ == "__main__":
    main()
