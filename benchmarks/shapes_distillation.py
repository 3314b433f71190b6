"""The paper's appendix Table 1 on the Shapes benchmark: baseline R18 and R18 distilled from an R34
teacher with each feature loss, same schedule and seed.

    python benchmarks/shapes_distillation.py --teacher reports/bench/teacher-r34/model.pt \
        [--baseline reports/baseline-r18/model.pt] [--losses ssim,ms-ssim,l1+ms-ssim,smooth-l1,l2] \
        [--weights auto] [--extra ssim:w=0.5 ssim:window=5 ...] [--out reports/bench/shapes]

λ: the losses' raw magnitudes differ by two orders (1 − SSIM starts near 1, L2 on raw FPN maps
near 200), so by default (`--weights auto`) each loss gets λ = 1 / L0, its value between a fresh
student and the teacher on the first training batch: every loss starts with the same pull.
`--extra LOSS:key=value,...` adds ablation rows (w = λ, window = SSIM window side).

Every run is resumable: rerunning skips finished models and continues interrupted ones.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from kdeval.data.coco import load_coco_annotations
from kdeval.data.dataset import CocoDetectionDataset
from kdeval.data.source import shapes_split
from kdeval.distill.losses import feature_distillation_loss
from kdeval.engine.detections import ModelInput
from kdeval.engine.evaluate import evaluate_models
from kdeval.engine.train import TrainSettings, train
from kdeval.labels import LabelSpace
from kdeval.models.checkpoint import load_checkpoint
from kdeval.models.retinanet import build_retinanet
from kdeval.report.tables import to_text, write_tables


def initial_loss(settings: TrainSettings, teacher_path: Path) -> float:
    """The feature loss between a freshly initialised student and the teacher on the first batch."""
    split = shapes_split("train")
    coco = load_coco_annotations(split.annotations)
    dataset = CocoDetectionDataset(split, coco, LabelSpace.from_categories(coco["categories"]))
    torch.manual_seed(settings.seed)
    student = build_retinanet(settings.model_spec(len(coco["categories"]))).train()
    teacher = load_checkpoint(teacher_path).model.eval()
    image_list, _ = student.transform([dataset[i][0] for i in range(settings.batch_size)])
    with torch.no_grad():
        value = feature_distillation_loss(student.backbone(image_list.tensors), teacher.backbone(image_list.tensors), settings.feature_loss_settings())
    return float(value)


def parse_extra(text: str) -> tuple[str, dict]:
    loss, _, options = text.partition(":")
    values = dict(item.split("=", 1) for item in options.split(",") if item)
    return loss, values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--baseline", type=Path, default=None, help="an R18 baseline trained with the same defaults; trained here if absent")
    parser.add_argument("--losses", default="ssim,ms-ssim,l1+ms-ssim,smooth-l1,l2")
    parser.add_argument("--weights", default="auto", help="'auto' (1/L0) or a number used for every loss")
    parser.add_argument("--extra", nargs="*", default=[], help="ablation rows, e.g. ssim:w=0.5 ssim:window=5")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/shapes"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    base = TrainSettings()
    split = shapes_split("train")
    runs: list[tuple[str, Path]] = [("teacher R34", args.teacher)]
    baseline = args.baseline or args.out / "baseline-r18" / "model.pt"
    if not baseline.exists():
        train(base, split, baseline.parent, device=args.device, resume=True)
    runs.append(("vanilla R18", baseline))

    plan = [(loss, {}) for loss in args.losses.split(",")] + [parse_extra(text) for text in args.extra]
    for loss, options in plan:
        settings = replace(base, role="distilled", teacher=str(args.teacher), distill_loss=loss, ssim_window=int(options.get("window", base.ssim_window)))
        if "w" in options:
            weight = float(options["w"])
        elif args.weights == "auto":
            weight = float(f"{1 / initial_loss(settings, args.teacher):.2g}")
        else:
            weight = float(args.weights)
        settings = replace(settings, distill_weight=weight)
        name = f"R18 {loss} λ={weight:g}" + (f" window={settings.ssim_window}" if "window" in options else "")
        run_dir = args.out / name.replace(" ", "_").replace("=", "").replace("λ", "w")
        print(f"== {name} -> {run_dir}", flush=True)
        train(settings, split, run_dir, device=args.device, resume=True)
        runs.append((name, run_dir / "model.pt"))

    table = evaluate_models([ModelInput(name, path) for name, path in runs], shapes_split("val")).table
    write_tables(table, args.out, "table1_shapes", baseline="vanilla R18", caption="Feature losses compared on Shapes (RetinaNet R34 → R18)")
    print(to_text(table, "vanilla R18", title="Shapes val, COCO bbox AP (gains over vanilla R18)"))


if __name__ == "__main__":
    main()
