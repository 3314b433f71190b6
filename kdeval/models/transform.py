"""torchvision's detection transform (normalise, resize, pad; boxes back to the input size) without its
host-to-device copies.

torchvision's `GeneralizedRCNNTransform` builds small tensors from Python numbers on the images'
device for every image: the mean and std in `normalize` (two per image) and four size tensors in
`postprocess`'s `resize_boxes`. On CUDA each such copy from pageable memory waits for the stream: a
batch synchronises several times per image in the transform alone, and rescaling its boxes costs
dozens of small operations.
`SyncFreeTransform` keeps the mean and std on the device once per (dtype, device) and rescales
boxes by Python floats that hold torchvision's float32 ratios exactly — the same arithmetic on the
same float32 values, so images and boxes are bit-identical to torchvision's (tests) with no
synchronisation and 6 operations per image.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform


def float32_ratio(numerator: int, denominator: int) -> float:
    """torchvision's `torch.tensor(numerator, float32) / torch.tensor(denominator, float32)` as a Python
    float (exact: a float32 value converts to float64 and back unchanged)."""
    return float(np.float32(numerator) / np.float32(denominator))


class SyncFreeTransform(GeneralizedRCNNTransform):
    """GeneralizedRCNNTransform (same settings, no state) whose normalisation and box rescaling launch
    no host-to-device copies."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._mean_std: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}

    def normalize(self, image: Tensor) -> Tensor:
        if not image.is_floating_point():
            raise TypeError(f"expected a floating-point image (values in [0, 1]), got {image.dtype}")
        key = (image.dtype, image.device)
        if key not in self._mean_std:
            self._mean_std[key] = tuple(torch.as_tensor(v, dtype=image.dtype, device=image.device)[:, None, None]
                                        for v in (self.image_mean, self.image_std))
        mean, std = self._mean_std[key]
        return (image - mean) / std

    def postprocess(self, result: list[dict[str, Tensor]], image_shapes: list[tuple[int, int]],
                    original_image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        if self.training or any(set(detections) - {"boxes", "scores", "labels"} for detections in result):
            return super().postprocess(result, image_shapes, original_image_sizes)  # masks, keypoints
        # torchvision's resize_boxes: x times original width / resized width, y likewise, in float32
        for detections, (height, width), (original_height, original_width) in zip(result, image_shapes, original_image_sizes):
            ratio_height = float32_ratio(original_height, height)
            ratio_width = float32_ratio(original_width, width)
            x0, y0, x1, y1 = detections["boxes"].unbind(1)
            detections["boxes"] = torch.stack((x0 * ratio_width, y0 * ratio_height, x1 * ratio_width, y1 * ratio_height), dim=1)
        return result


def with_settings_of(transform: GeneralizedRCNNTransform, transform_class: type) -> GeneralizedRCNNTransform:
    """A `transform_class` transform with `transform`'s resize, mean and std, padding and mode."""
    rebuilt = transform_class(transform.min_size, transform.max_size, transform.image_mean, transform.image_std,
                              size_divisible=transform.size_divisible, fixed_size=transform.fixed_size,
                              _skip_resize=transform._skip_resize)
    return rebuilt.train(transform.training)
