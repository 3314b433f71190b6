"""The student's training forward, exposing its FPN maps, and the frozen teacher beside it."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection import RetinaNet

from kdeval.distill.losses import FeatureLossSettings, feature_distillation_loss


class DetectorWithFeatures(nn.Module):
    """RetinaNet's training forward (transform → backbone → head → loss), returning the FPN maps
    and the transformed batch as well, so a teacher can see exactly the student's input.

    It is one module so that DistributedDataParallel sees every forward that produces gradients.
    """

    def __init__(self, retinanet: RetinaNet):
        super().__init__()
        self.retinanet = retinanet

    def forward(self, images: list[torch.Tensor], targets: list[dict]):
        net = self.retinanet
        image_list, targets = net.transform(images, targets)
        features = net.backbone(image_list.tensors)
        levels = list(features.values())
        losses = net.compute_loss(targets, net.head(levels), net.anchor_generator(image_list, levels))
        return losses, features, image_list


class FeatureTeacher:
    """A frozen teacher whose backbone sees the student's transformed batch under inference_mode."""

    def __init__(self, teacher: RetinaNet, settings: FeatureLossSettings, weight: float):
        self.teacher = teacher.eval().requires_grad_(False)
        self.settings = settings
        self.weight = weight

    def loss(self, student_features: dict[str, torch.Tensor], image_list) -> torch.Tensor:
        with torch.inference_mode():
            teacher_features = self.teacher.backbone(image_list.tensors)
        # inference tensors cannot be saved for backward: clone them into ordinary tensors
        teacher_features = {name: value.clone() for name, value in teacher_features.items()}
        padded_hw = tuple(image_list.tensors.shape[-2:])
        value = feature_distillation_loss(student_features, teacher_features, self.settings, image_list.image_sizes, padded_hw)
        return self.weight * value
