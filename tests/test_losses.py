"""Feature losses against outside references: scikit-image's SSIM and pytorch_msssim's MS-SSIM."""

import numpy as np
import pytest
import torch
from pytorch_msssim import ms_ssim as reference_ms_ssim
from skimage.metrics import structural_similarity

from kdeval.distill.losses import (
    LOSSES,
    FeatureLossSettings,
    feature_distillation_loss,
    minmax_rescale,
    ms_ssim_value,
    ssim_maps,
    valid_mask,
    window_1d,
)


def _appendix_d_ssim(x: np.ndarray, y: np.ndarray, p: int, c1: float, c2: float) -> float:
    """The appendix's equations (1)–(4), written out patch by patch in float64."""
    values = []
    for u in range(x.shape[0] - p + 1):
        for v in range(x.shape[1] - p + 1):
            fs, ft = x[u : u + p, v : v + p], y[u : u + p, v : v + p]
            mu_s, mu_t = fs.mean(), ft.mean()
            var_s = ((fs - mu_s) ** 2).sum() / (p * p - 1)
            var_t = ((ft - mu_t) ** 2).sum() / (p * p - 1)
            cov = ((fs - mu_s) * (ft - mu_t)).sum() / (p * p - 1)
            values.append((2 * mu_s * mu_t + c1) * (2 * cov + c2) / ((mu_s**2 + mu_t**2 + c1) * (var_s + var_t + c2)))
    return float(np.mean(values))


@pytest.mark.parametrize("window,data_range", [(3, 1.0), (5, 1.0), (7, 4.0)])
def test_ssim_equals_scikit_image_and_the_appendix(window, data_range):
    rng = np.random.default_rng(window)
    x = rng.random((24, 20)) * data_range
    y = np.clip(x + rng.normal(0, 0.2 * data_range, x.shape), 0, data_range)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    reference = structural_similarity(x, y, win_size=window, data_range=data_range, gaussian_weights=False, use_sample_covariance=True)
    assert _appendix_d_ssim(x, y, window, c1, c2) == pytest.approx(reference, abs=1e-12)
    win = window_1d(window, "uniform", 1.5)
    ours, _ = ssim_maps(torch.tensor(x, dtype=torch.float32)[None, None], torch.tensor(y, dtype=torch.float32)[None, None], win, c1, c2)
    assert ours.shape[-2:] == (24 - window + 1, 20 - window + 1)  # valid positions only
    assert ours.mean().item() == pytest.approx(reference, abs=1e-4)


def test_gaussian_window_ssim_equals_scikit_image():
    rng = np.random.default_rng(9)
    x = rng.random((32, 32))
    y = np.clip(0.7 * x + 0.3 * rng.random((32, 32)), 0, 1)
    reference = structural_similarity(x, y, win_size=11, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=True)
    ours, _ = ssim_maps(torch.tensor(x, dtype=torch.float32)[None, None], torch.tensor(y, dtype=torch.float32)[None, None], window_1d(11, "gaussian", 1.5), 1e-4, 9e-4)
    assert ours.mean().item() == pytest.approx(reference, abs=1e-4)


def test_ms_ssim_equals_pytorch_msssim_on_images():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 200, 190)
    y = (x + 0.15 * torch.randn_like(x)).clamp(0, 1)
    settings = FeatureLossSettings(loss="ms-ssim", window=11, window_shape="gaussian", sigma=1.5, unbiased=False, rescale="none", data_range=1.0)
    ours = ms_ssim_value(x, y, settings)
    reference = reference_ms_ssim(x, y, data_range=1.0, win_size=11, win_sigma=1.5)
    assert ours.item() == pytest.approx(reference.item(), abs=1e-4)


def _fpn(seed: int, channels: int = 8, sizes=(16, 8, 4, 2, 1)):
    generator = torch.Generator().manual_seed(seed)
    names = ["0", "1", "2", "p6", "p7"]
    return {n: torch.randn(2, channels, s, s, generator=generator) * 3 + 1 for n, s in zip(names, sizes)}


@pytest.mark.parametrize("loss", LOSSES)
def test_identical_maps_give_zero_loss_and_different_maps_do_not(loss):
    settings = FeatureLossSettings(loss=loss)
    maps = _fpn(0)
    assert feature_distillation_loss(maps, {k: v.clone() for k, v in maps.items()}, settings).item() == pytest.approx(0.0, abs=1e-5)
    assert feature_distillation_loss(_fpn(1), maps, settings).item() > 0.01


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("rescale", ["channel", "none"])
@pytest.mark.parametrize("fill", [0.0, 2.5])
def test_gradients_are_finite_for_constant_and_zero_maps(loss, rescale, fill):
    settings = FeatureLossSettings(loss=loss, rescale=rescale)
    student = {k: torch.full_like(v, fill, requires_grad=True) for k, v in _fpn(0).items()}
    for teacher in ({k: torch.full_like(v, fill) for k, v in student.items()}, _fpn(2)):
        value = feature_distillation_loss(student, teacher, settings)
        (grad,) = torch.autograd.grad(value, [student["0"]])
        assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_gradients_pull_the_student_towards_the_teacher():
    teacher = _fpn(3)
    student = {k: v.clone().requires_grad_(True) for k, v in _fpn(4).items()}
    optimizer = torch.optim.Adam(student.values(), lr=0.05)
    settings = FeatureLossSettings(loss="ssim")
    first = feature_distillation_loss(student, teacher, settings).item()
    for _ in range(60):
        optimizer.zero_grad()
        feature_distillation_loss(student, teacher, settings).backward()
        optimizer.step()
    assert feature_distillation_loss(student, teacher, settings).item() < 0.5 * first


def test_levels_smaller_than_the_window_are_shrunk_or_skipped():
    maps = _fpn(0, sizes=(16, 8, 4, 2, 1))
    other = _fpn(1, sizes=(16, 8, 4, 2, 1))
    settings = FeatureLossSettings(loss="ssim", window=7)
    full = feature_distillation_loss(other, maps, settings)
    # p7 (1×1) holds no window and is skipped; p6 (2×2) and P5 (4×4) use the window shrunk to their side
    only_big = feature_distillation_loss({k: other[k] for k in ("0", "1", "2", "p6")}, maps, settings)
    assert full.item() == pytest.approx(only_big.item())


def test_padding_is_masked_out():
    teacher = _fpn(0, sizes=(16, 8, 4, 2, 1))
    student = {k: v.clone() for k, v in teacher.items()}
    for k in student:  # differ only where image 1 is padding (its right half)
        w = student[k].shape[-1]
        student[k][1, :, :, w // 2 + 1 :] += 5.0
    settings = FeatureLossSettings(loss="ssim")
    sizes = [(128, 128), (128, 64)]
    assert feature_distillation_loss(student, teacher, settings, sizes, (128, 128)).item() == pytest.approx(0.0, abs=1e-5)
    assert feature_distillation_loss(student, teacher, settings).item() > 0.01
    assert valid_mask(sizes, (128, 128), (16, 16), "cpu")[1, 0].sum().item() == 16 * 8


def test_minmax_rescale_modes():
    x = torch.randn(2, 3, 5, 5) * 4
    for mode, dims in (("channel", (2, 3)), ("sample", (1, 2, 3)), ("batch", (0, 1, 2, 3))):
        r = minmax_rescale(x, mode)
        assert torch.allclose(r.amin(dim=dims), torch.zeros(1)) and torch.allclose(r.amax(dim=dims), torch.ones(1))
    assert torch.equal(minmax_rescale(x, "none"), x)


def test_mismatched_maps_get_a_clear_error():
    from kdeval.errors import KdevalError

    with pytest.raises(KdevalError, match="same --fpn-channels"):
        feature_distillation_loss(_fpn(0, channels=8), _fpn(0, channels=16), FeatureLossSettings())


@pytest.mark.parametrize("loss", LOSSES)
def test_autocast_does_not_change_the_loss_or_its_gradient(loss, device):
    """Training on CUDA runs under bf16 autocast. The loss must still be the fp32 one: before the fix
    SSIM's window filters ran in bf16, the window masks came out empty and SSIM read as a constant 1
    with no gradient (found on a GPU). CPU autocast to bf16 casts conv2d the same way, so this also
    runs without a GPU."""
    torch.manual_seed(0)
    student = {"p3": torch.randn(2, 8, 16, 16).to(device).requires_grad_(),
               "p4": torch.randn(2, 8, 8, 8).to(device).requires_grad_()}
    teacher = {name: maps.detach() + 0.5 * torch.randn(maps.shape).to(device) for name, maps in student.items()}
    settings = FeatureLossSettings(loss=loss)
    sizes, padded = [(128, 128), (120, 100)], (128, 128)
    plain = feature_distillation_loss(student, teacher, settings, sizes, padded)
    plain_grad = torch.autograd.grad(plain, student["p3"])[0]
    with torch.autocast(device.type, dtype=torch.bfloat16):
        under_amp = feature_distillation_loss(student, teacher, settings, sizes, padded)
    amp_grad = torch.autograd.grad(under_amp, student["p3"])[0]
    assert under_amp.dtype == torch.float32 and 0 < plain.item() < 1.5
    assert torch.allclose(under_amp, plain, rtol=1e-6, atol=1e-7)
    assert plain_grad.abs().sum() > 0 and torch.allclose(amp_grad, plain_grad, rtol=1e-5, atol=1e-8)
