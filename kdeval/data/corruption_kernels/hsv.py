"""scikit-image's rgb2hsv and hsv2rgb for float64 H×W×3 images, bit for bit, compiled.

`imagecorruptions`' brightness (a benchmark corruption) and saturate (an extra one) convert the
whole image to HSV and back with scikit-image, whose vectorised code makes a dozen full-size
temporaries: the conversions are most of brightness's time.

The functions below do scikit-image's arithmetic pixel by pixel, in its order and float64:
V = max, S = (max − min)/max (0 where max = min), H from the channel that holds the max — blue
over green over red where they tie, as scikit-image's later assignments overwrite the earlier —,
then (H/6) mod 1; back, hi = ⌊6H⌋ mod 6, f = 6H − ⌊6H⌋ and p, q, t as scikit-image computes them.
Only finite, non-negative float64 images qualify (and, back to RGB, hues in [0, 1]): everything
else goes to scikit-image. Tested against the installed scikit-image on random and tie-heavy images,
and probed at first use by .probe.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=False, nogil=True)
def _rgb_to_hsv(rgb, out):  # pragma: no cover - compiled; tested through rgb2hsv_like_skimage
    height, width, _ = rgb.shape
    for i in range(height):
        for j in range(width):
            r, g, b = rgb[i, j, 0], rgb[i, j, 1], rgb[i, j, 2]
            value = max(r, max(g, b))
            delta = value - min(r, min(g, b))
            if delta == 0.0:
                saturation = 0.0
                hue = 0.0
            else:
                saturation = delta / value
                if b == value:
                    hue = 4.0 + (r - g) / delta
                elif g == value:
                    hue = 2.0 + (b - r) / delta
                else:
                    hue = (g - b) / delta
                hue = (hue / 6.0) % 1.0
            out[i, j, 0] = hue
            out[i, j, 1] = saturation
            out[i, j, 2] = value


@numba.njit(cache=False, nogil=True)
def _hsv_to_rgb(hsv, out):  # pragma: no cover - compiled; tested through hsv2rgb_like_skimage
    height, width, _ = hsv.shape
    for i in range(height):
        for j in range(width):
            hue, saturation, value = hsv[i, j, 0], hsv[i, j, 1], hsv[i, j, 2]
            sector = np.floor(hue * 6)
            f = hue * 6 - sector
            p = value * (1 - saturation)
            q = value * (1 - f * saturation)
            t = value * (1 - (1 - f) * saturation)
            k = np.int64(sector) % 6
            if k == 0:
                out[i, j, 0], out[i, j, 1], out[i, j, 2] = value, t, p
            elif k == 1:
                out[i, j, 0], out[i, j, 1], out[i, j, 2] = q, value, p
            elif k == 2:
                out[i, j, 0], out[i, j, 1], out[i, j, 2] = p, value, t
            elif k == 3:
                out[i, j, 0], out[i, j, 1], out[i, j, 2] = p, q, value
            elif k == 4:
                out[i, j, 0], out[i, j, 1], out[i, j, 2] = t, p, value
            else:
                out[i, j, 0], out[i, j, 1], out[i, j, 2] = value, p, q


def _qualifies(image, kwargs) -> bool:
    """Finite, non-negative float64 H×W×3 (images are; a negative channel under a zero maximum would
    divide by zero here, where scikit-image gives inf)."""
    return (not kwargs and isinstance(image, np.ndarray) and image.dtype == np.float64 and image.ndim == 3
            and image.shape[2] == 3 and image.size > 0 and bool(np.isfinite(image).all()) and image.min() >= 0)


def rgb2hsv_like_skimage(rgb, **kwargs):
    """skimage.color.rgb2hsv: compiled for a finite float64 H×W×3 image, else scikit-image's own."""
    if not _qualifies(rgb, kwargs):
        from skimage.color import rgb2hsv

        return rgb2hsv(rgb, **kwargs)
    out = np.empty_like(rgb, order="C")
    _rgb_to_hsv(np.ascontiguousarray(rgb), out)
    return out


def hsv2rgb_like_skimage(hsv, **kwargs):
    """skimage.color.hsv2rgb: compiled for a finite float64 H×W×3 image with hues in [0, 1], else
    scikit-image's own (outside [0, 1] its uint8 cast of ⌊6H⌋ is not defined the same way here)."""
    if not (_qualifies(hsv, kwargs) and 0.0 <= hsv[..., 0].min() and hsv[..., 0].max() <= 1.0):
        from skimage.color import hsv2rgb

        return hsv2rgb(hsv, **kwargs)
    out = np.empty_like(hsv, order="C")
    _hsv_to_rgb(np.ascontiguousarray(hsv), out)
    return out
