"""The probe that checks each compiled kernel against the installed library, once per process.

kdeval is tested against the pinned scipy and scikit-image, bit for bit; another version may compute
differently. Before a part ("zoom", "warp", "hsv") replaces the library's code it runs once on inputs
built to hit its edge cases and is compared with the installed library there; a part that disagrees
is not used, and its corruptions run on the library's own code, with one warning.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np

from kdeval.data.corruption_kernels.hsv import hsv2rgb_like_skimage, rgb2hsv_like_skimage
from kdeval.data.corruption_kernels.interpolation import linear_map_coordinates, linear_zoom


def _same(ours: np.ndarray, theirs: np.ndarray) -> bool:
    return (ours.shape == theirs.shape and ours.dtype == theirs.dtype and np.array_equal(ours, theirs)
            and np.array_equal(np.signbit(ours), np.signbit(theirs)))


def zoom_agrees_with_installed_scipy() -> bool:
    """Whether `linear_zoom` gives the installed scipy's values on a probe built to hit its edge cases
    (zero sums, a coordinate rounded past the last row, float64 noise)."""
    from scipy.ndimage import zoom

    rng = np.random.default_rng(0)
    image = rng.random((29, 23, 3), dtype=np.float32)
    image[:3] = 0.0
    noise = rng.normal(size=(20, 17, 1))
    return all(_same(linear_zoom(a, (f, f, 1)), zoom(a, (f, f, 1), order=1)) for a, f in ((image, 1.13), (image, 3.0), (noise, 2.5)))


def map_coordinates_agrees_with_installed_scipy() -> bool:
    """Whether `linear_map_coordinates` gives the installed scipy's values on coordinates inside, on and
    far outside the edges, integers among them, and just below zero."""
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(0)
    image = rng.random((9, 11, 3), dtype=np.float32)
    coordinates = np.stack([rng.uniform(-2 * n, 2 * n, 300) for n in image.shape])
    coordinates[:, :40] = np.round(coordinates[:, :40])
    coordinates[0, 40:50] = -1e-16
    return _same(linear_map_coordinates(image, coordinates), map_coordinates(image, coordinates, order=1, mode="reflect"))


def hsv_agrees_with_installed_skimage() -> bool:
    """Whether the compiled conversions give the installed scikit-image's values on a probe with
    channel ties, greys and black, there and back after brightness's and saturate's edits."""
    from skimage.color import hsv2rgb, rgb2hsv

    rng = np.random.default_rng(0)
    image = np.concatenate([(rng.integers(0, 4, (16, 16, 3)) * 85).astype(np.uint8) / 255.0, rng.random((16, 16, 3))])
    hsv = rgb2hsv(image)
    if not np.array_equal(rgb2hsv_like_skimage(image), hsv):
        return False
    edited = hsv.copy()
    edited[..., 2] = np.clip(edited[..., 2] + 0.3, 0, 1)
    edited[..., 1] = np.clip(edited[..., 1] * 5 + 0.1, 0, 1)
    return all(np.array_equal(hsv2rgb_like_skimage(h), hsv2rgb(h)) for h in (hsv, edited))


PROBES = {"zoom": zoom_agrees_with_installed_scipy, "warp": map_coordinates_agrees_with_installed_scipy,
          "hsv": hsv_agrees_with_installed_skimage}


@functools.cache
def compiled_part_agrees(part: str) -> bool:
    """Whether the compiled `part` ("zoom", "warp", "hsv") gives the installed library's values,
    probed once per process at first use; warns once where it does not."""
    agrees = PROBES[part]()
    if not agrees:
        warnings.warn(f"kdeval: the installed scipy/scikit-image computes the corruptions' {part} step differently from "
                      "kdeval's compiled copy; the library's own (slower) code runs instead", RuntimeWarning, stacklevel=2)
    return agrees
