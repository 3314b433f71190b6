"""Feature-distillation losses between student and teacher FPN maps.

SSIM follows the paper's appendix D: over every P×Q patch (valid positions only), the patch means,
the *unbiased* variances and covariance (divided by PQ − 1), combined in Wang et al.'s form

    SSIM = ((2 μS μT + C1)(2 σST + C2)) / ((μS² + μT² + C1)(σS² + σT² + C2)),

averaged over positions and channels; the loss is 1 − SSIM, averaged over FPN levels so that each
level weighs the same whatever its size.

FPN features are unbounded and signed, so fixed constants C1 = (K1 L)², C2 = (K2 L)² mean nothing
on raw maps (they vanish against large variances and SSIM degenerates into a raw correlation in
flat regions). By default both maps are therefore first min–max rescaled to [0, 1] per sample and
channel (φ in the main paper), which fixes L = 1, C1 = 1e-4, C2 = 9e-4. With `rescale="none"`, L is
taken from the teacher maps' range in the batch (detached), so the constants still scale with the
features' dynamic range.

Statistics are computed in fp32 even under autocast, and variances are clamped at 0 (E[x²] − μ² can
round below zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdeval.errors import KdevalError
from kdeval.vocab import DISTILL_LOSSES as LOSSES, SSIM_RESCALES as RESCALES, SSIM_WINDOW_SHAPES as WINDOW_SHAPES

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003


@dataclass(frozen=True)
class FeatureLossSettings:
    loss: str = "ssim"
    window: int = 3  # P = Q; shrunk to a level's side where the map is smaller
    window_shape: str = "uniform"  # the appendix's P×Q patch; "gaussian" is the main paper's 11×11, σ 1.5
    sigma: float = 1.5
    k1: float = 0.01
    k2: float = 0.03
    unbiased: bool = True  # appendix D: divide by PQ − 1
    rescale: str = "channel"  # min–max φ to [0, 1]: per sample and channel, per sample, per batch, or none
    scales: int = 5  # MS-SSIM scales at most; fewer where a map is too small (weights renormalised)
    mask_padding: bool = True  # leave out positions that only see the zero padding of the batch
    data_range: float | None = None  # L; None: 1 after rescaling, else the teacher maps' range

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise KdevalError(f"unknown distillation loss '{self.loss}' (expected one of {', '.join(LOSSES)})")
        if self.rescale not in RESCALES:
            raise KdevalError(f"unknown rescale '{self.rescale}' (expected one of {', '.join(RESCALES)})")
        if self.window_shape not in WINDOW_SHAPES:
            raise KdevalError(f"unknown window shape '{self.window_shape}' (expected uniform or gaussian)")
        if self.window < 2:
            raise KdevalError("the SSIM window must be at least 2")


# ---------------------------------------------------------------- windows and statistics


def window_1d(size: int, shape: str, sigma: float, device=None) -> Tensor:
    """A normalised 1-D window; the 2-D window is its outer product (both shapes are separable)."""
    if shape == "uniform":
        weights = torch.ones(size, dtype=torch.float32, device=device)
    else:
        coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
        weights = torch.exp(-(coords**2) / (2 * sigma**2))
    return weights / weights.sum()


def _filter(x: Tensor, win: Tensor) -> Tensor:
    """Valid (unpadded) separable filtering of every channel of (N, C, H, W)."""
    channels = x.shape[1]
    k = win.numel()
    x = F.conv2d(x, win.view(1, 1, k, 1).expand(channels, 1, k, 1), groups=channels)
    return F.conv2d(x, win.view(1, 1, 1, k).expand(channels, 1, 1, k), groups=channels)


def ssim_maps(x: Tensor, y: Tensor, win: Tensor, c1: float, c2: float, unbiased: bool = True) -> tuple[Tensor, Tensor]:
    """(SSIM map, contrast–structure map) over all valid window positions, (N, C, H−k+1, W−k+1)."""
    x, y = x.float(), y.float()
    mu_x, mu_y = _filter(x, win), _filter(y, win)
    # For a uniform window of n = k² taps this turns the biased moments into the unbiased
    # ones (÷ (n − 1)); scikit-image applies the same factor to Gaussian windows.
    n = win.numel() ** 2
    correction = n / (n - 1) if unbiased else 1.0
    var_x = ((_filter(x * x, win) - mu_x**2) * correction).clamp_min(0)
    var_y = ((_filter(y * y, win) - mu_y**2) * correction).clamp_min(0)
    cov = (_filter(x * y, win) - mu_x * mu_y) * correction
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return luminance * cs, cs


# ---------------------------------------------------------------- rescaling and masks


def minmax_rescale(x: Tensor, mode: str, mask: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """φ: map features to [0, 1] by their min and max per sample and channel, per sample, or per
    batch; with a (N, 1, h, w) mask, only valid positions set the min and max."""
    if mode == "none":
        return x
    dims = {"channel": (2, 3), "sample": (1, 2, 3), "batch": (0, 1, 2, 3)}[mode]
    valid = None if mask is None else mask.expand_as(x) > 0
    low = (x if valid is None else x.masked_fill(~valid, float("inf"))).amin(dim=dims, keepdim=True)
    high = (x if valid is None else x.masked_fill(~valid, float("-inf"))).amax(dim=dims, keepdim=True)
    return (x - low) / (high - low).clamp_min(eps)


def valid_mask(image_sizes: list[tuple[int, int]], padded_hw: tuple[int, int], level_hw: tuple[int, int], device) -> Tensor:
    """(N, 1, h, w) mask of the feature positions that cover real image pixels, not batch padding."""
    mask = torch.zeros(len(image_sizes), 1, *level_hw, device=device)
    stride_h, stride_w = padded_hw[0] / level_hw[0], padded_hw[1] / level_hw[1]
    for i, (height, width) in enumerate(image_sizes):
        mask[i, :, : max(1, math.ceil(height / stride_h)), : max(1, math.ceil(width / stride_w))] = 1
    return mask


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over everything, counting only positions where the (N, 1, h, w) mask is 1."""
    if mask is None:
        return values.mean()
    weights = mask.expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(1)


def _window_mask(mask: Tensor | None, win: Tensor) -> Tensor | None:
    """Positions whose whole window lies on valid features."""
    if mask is None:
        return None
    return (_filter(mask, torch.ones_like(win)) > win.numel() ** 2 - 0.5).float()  # counts: exact in any dtype


# ---------------------------------------------------------------- per-level losses


def _level_window(settings: FeatureLossSettings, height: int, width: int) -> int:
    """The window for a map of this size: the configured one, shrunk to the map (odd for Gaussians);
    0 means the level is too small for any window and is skipped."""
    size = min(settings.window, height, width)
    if settings.window_shape == "gaussian" and size % 2 == 0:
        size -= 1
    return size if size >= 2 else 0


def _constants(settings: FeatureLossSettings, teacher: Tensor) -> tuple[float, float]:
    if settings.data_range is not None:
        data_range = settings.data_range
    elif settings.rescale != "none":
        data_range = 1.0
    else:
        data_range = float((teacher.max() - teacher.min()).detach().clamp_min(1e-6))
    return (settings.k1 * data_range) ** 2, (settings.k2 * data_range) ** 2


def ssim_loss_level(s: Tensor, t: Tensor, settings: FeatureLossSettings, mask: Tensor | None = None) -> Tensor | None:
    size = _level_window(settings, s.shape[-2], s.shape[-1])
    if size == 0:
        return None
    win = window_1d(size, settings.window_shape, settings.sigma, s.device)
    c1, c2 = _constants(settings, t)
    ssim_map, _ = ssim_maps(s, t, win, c1, c2, settings.unbiased)
    return 1 - _masked_mean(ssim_map, _window_mask(mask, win))


def ms_ssim_value(x: Tensor, y: Tensor, settings: FeatureLossSettings, mask: Tensor | None = None) -> Tensor | None:
    """Multi-scale SSIM (Wang et al. 2003) per (N, C), then averaged: Π cs_j^w_j · ssim_M^w_M.

    As many scales as the map allows (each halving must still hold the window), at most
    `settings.scales`; with fewer than five, the first weights are renormalised to sum to 1."""
    scales, height, width = 0, x.shape[-2], x.shape[-1]
    size = _level_window(settings, height, width)
    if size == 0:
        return None
    while scales < settings.scales and min(height, width) >= size:
        scales += 1
        height, width = (height + height % 2) // 2, (width + width % 2) // 2
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], device=x.device)
    if scales < len(MS_SSIM_WEIGHTS):
        weights = weights / weights.sum()
    win = window_1d(size, settings.window_shape, settings.sigma, x.device)
    c1, c2 = _constants(settings, y)
    factors = []
    for scale in range(scales):
        ssim_map, cs_map = ssim_maps(x, y, win, c1, c2, settings.unbiased)
        wmask = _window_mask(mask, win)
        chosen = ssim_map if scale == scales - 1 else cs_map
        if wmask is None:
            per_channel = chosen.flatten(2).mean(-1)
        else:
            per_channel = (chosen * wmask).flatten(2).sum(-1) / wmask.flatten(2).sum(-1).clamp_min(1)
        factors.append(torch.relu(per_channel))
        if scale < scales - 1:
            padding = (x.shape[-2] % 2, x.shape[-1] % 2)
            x, y = F.avg_pool2d(x, 2, padding=padding), F.avg_pool2d(y, 2, padding=padding)
            if mask is not None:
                mask = (F.avg_pool2d(mask, 2, padding=padding) > 0.999).float()
    stacked = torch.stack(factors)  # (scales, N, C)
    # a tiny floor keeps the gradient of x**w finite where a factor is exactly 0
    return torch.prod(stacked.clamp_min(1e-8) ** weights.view(-1, 1, 1), dim=0).mean()


def feature_loss_level(s: Tensor, t: Tensor, settings: FeatureLossSettings, mask: Tensor | None = None) -> Tensor | None:
    """The configured loss on one level; None when the level is too small for the window."""
    if settings.loss in ("smooth-l1", "l2"):
        # point-wise losses act on the raw maps, as feature-imitation methods use them
        s32, t32 = s.float(), t.float()
        values = F.smooth_l1_loss(s32, t32, reduction="none") if settings.loss == "smooth-l1" else (s32 - t32) ** 2
        return _masked_mean(values, mask)
    s_r, t_r = minmax_rescale(s.float(), settings.rescale, mask), minmax_rescale(t.float(), settings.rescale, mask)
    if settings.loss == "ssim":
        return ssim_loss_level(s_r, t_r, settings, mask)
    ms = ms_ssim_value(s_r, t_r, settings, mask)
    if ms is None:
        return None
    if settings.loss == "ms-ssim":
        return 1 - ms
    return 0.15 * _masked_mean((s_r - t_r).abs(), mask) + 0.85 * (1 - ms)  # Zhao et al. 2016


def feature_distillation_loss(
    student: dict[str, Tensor],
    teacher: dict[str, Tensor],
    settings: FeatureLossSettings,
    image_sizes: list[tuple[int, int]] | None = None,
    padded_hw: tuple[int, int] | None = None,
) -> Tensor:
    """Mean over FPN levels of the per-level loss; levels too small for the window are skipped.

    Always computed in fp32, autocast switched off: under bf16 autocast the window filters (conv2d)
    would run in bf16, where 9 × bf16(1/9) < 1 − 1e-4 empties every window mask, so SSIM read as 0 and
    the loss as a constant 1 with no gradient."""
    device_type = next(iter(student.values())).device.type
    with torch.autocast(device_type, enabled=False):
        return _feature_distillation_loss_fp32(student, teacher, settings, image_sizes, padded_hw)


def _feature_distillation_loss_fp32(student, teacher, settings, image_sizes, padded_hw) -> Tensor:
    losses = []
    for name, s in student.items():
        t = teacher[name]
        if s.shape != t.shape:
            raise KdevalError(
                f"FPN level {name}: student maps {tuple(s.shape[1:])} and teacher maps {tuple(t.shape[1:])} differ; "
                "pair models with the same --fpn-channels"
            )
        mask = None
        if settings.mask_padding and image_sizes is not None and padded_hw is not None:
            mask = valid_mask(image_sizes, padded_hw, tuple(s.shape[-2:]), s.device)
        value = feature_loss_level(s, t, settings, mask)
        if value is not None:
            losses.append(value)
    if not losses:
        raise KdevalError("every FPN level is smaller than the SSIM window; use a smaller --ssim-window")
    return torch.stack(losses).mean()
