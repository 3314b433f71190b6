"""scipy.ndimage.zoom's linear (order 1) zoom of an H×W×C array, channels untouched, bit for bit, compiled.

`imagecorruptions`' zoom_blur averages 11 to 16 zooms of the whole image, each by scipy's
general-purpose `zoom`, which visits 2 × 2 × 2 taps per output value (the channel axis is
interpolated too, with weights 1 and 0): on 640×480 images zoom_blur is about 47 % of a benchmark
pass's corruption time (benchmarks/RESULTS.md), and snow zooms its noise layer the same way.

`linear_zoom` does scipy's arithmetic and nothing else: the coordinate of output index k is
k × (n_in − 1)/(n_out − 1) in float64 (scipy's grid_mode=False); the two weights are w = 1 − t for
t = coordinate − floor(coordinate), and 1 − w (which is not always t in float64); each tap is (value × row weight) × column weight, the four
taps are summed in scipy's order (the channel axis's zero-weight taps add nothing to finite values),
and the sum is rounded once to the input's dtype. A coordinate that float64 rounding puts beyond
the last input row or column is outside the image for scipy's mode 'constant', and its output row
or column is cval (0), as scipy gives it. The values are identical to scipy's (tested over zoom
factors, sizes and dtypes against the installed scipy); `scipy_zoom_compatible` says which calls
qualify, and everything else goes to scipy.
"""

from __future__ import annotations

import numba
import numpy as np

FAST_DTYPES = (np.float32, np.float64)


@numba.njit(cache=False, nogil=True)
def _zoom_rows_and_columns(image, out, rows, columns):  # pragma: no cover - compiled; tested through linear_zoom
    height, width, channels = image.shape
    for i in range(rows.shape[0]):
        y = rows[i]
        if y > height - 1:  # outside the image: scipy's constant mode gives cval
            out[i, :, :] = 0
            continue
        y0 = np.int64(np.floor(y))
        row_weight0 = 1.0 - (y - y0)
        row_weight1 = 1.0 - row_weight0  # scipy makes the last weight 1 minus the others, not t itself
        y1 = y0 + 1 if y0 + 1 < height else max(y0 - 1, 0)  # a zero-weight tap at the last row
        for j in range(columns.shape[0]):
            x = columns[j]
            if x > width - 1:
                out[i, j, :] = 0
                continue
            x0 = np.int64(np.floor(x))
            column_weight0 = 1.0 - (x - x0)
            column_weight1 = 1.0 - column_weight0
            x1 = x0 + 1 if x0 + 1 < width else max(x0 - 1, 0)
            for c in range(channels):
                total = np.float64(image[y0, x0, c]) * row_weight0 * column_weight0
                total += np.float64(image[y0, x1, c]) * row_weight0 * column_weight1
                total += np.float64(image[y1, x0, c]) * row_weight1 * column_weight0
                total += np.float64(image[y1, x1, c]) * row_weight1 * column_weight1
                out[i, j, c] = total


def axis_coordinates(n_in: int, n_out: int) -> np.ndarray:
    """scipy's input coordinate of every output index along one axis (grid_mode=False)."""
    step = (n_in - 1) / (n_out - 1) if n_out > 1 else 1.0
    return np.arange(n_out, dtype=np.float64) * step


def scipy_zoom_compatible(image, zoom, output=None, order=3, mode="constant", cval=0.0, prefilter=True, grid_mode=False) -> bool:
    """Whether `scipy.ndimage.zoom(image, zoom, ...)` is one `linear_zoom` reproduces exactly."""
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.dtype in FAST_DTYPES and image.size):
        return False
    if output is not None or order != 1 or mode != "constant" or cval != 0.0 or grid_mode:
        return False
    factors = np.broadcast_to(np.asarray(zoom, dtype=np.float64), (3,))
    if not (factors[2] == 1.0 and np.isfinite(factors).all()):
        return False
    sizes = [int(round(n * f)) for n, f in zip(image.shape[:2], factors[:2])]
    return min(sizes) >= 1 and bool(np.isfinite(image).all())


def linear_zoom(image: np.ndarray, zoom) -> np.ndarray:
    """`scipy.ndimage.zoom(image, (zy, zx, 1), order=1)` for a finite float32/float64 H×W×C array."""
    factors = np.broadcast_to(np.asarray(zoom, dtype=np.float64), (3,))
    height, width, channels = image.shape
    out_height, out_width = int(round(height * factors[0])), int(round(width * factors[1]))
    out = np.empty((out_height, out_width, channels), dtype=image.dtype)
    _zoom_rows_and_columns(np.ascontiguousarray(image), out, axis_coordinates(height, out_height), axis_coordinates(width, out_width))
    return out


def zoom_like_scipy(image, zoom, *args, **kwargs):
    """A drop-in for scipy.ndimage.zoom: `linear_zoom` where it gives scipy's values, else scipy."""
    from scipy.ndimage import zoom as scipy_zoom

    names = ("output", "order", "mode", "cval", "prefilter")
    options = dict(zip(names, args), **kwargs)
    if scipy_zoom_compatible(image, zoom, **options):
        return linear_zoom(image, zoom)
    return scipy_zoom(image, zoom, *args, **kwargs)
