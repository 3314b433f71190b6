"""scipy.ndimage's linear (order 1) `zoom` and `map_coordinates` of H×W×C arrays, bit for bit, compiled.

`imagecorruptions`' zoom_blur averages 11 to 16 zooms of the whole image, each by scipy's
general-purpose `zoom`, which visits 2 × 2 × 2 taps per output value (the channel axis is
interpolated too, with weights 1 and 0), which makes zoom_blur the costliest of the benchmark's
corruptions; snow zooms its noise layer the same way, and elastic_transform spends half its time in
one `map_coordinates(image, ..., order=1, mode='reflect')`.

The functions below do scipy's arithmetic (scipy/ndimage/src/ni_interpolation.c, ni_splines.c) and
nothing else. Along each axis a coordinate c gives the taps ⌊c⌋ and ⌊c⌋ + 1 with weights w = 1 − t
for t = c − ⌊c⌋, and 1 − w (which is not always t in float64); each tap's value is multiplied by the
axes' weights in axis order, the taps are summed in scipy's order (last axis fastest) in float64, and
the sum is rounded once to the input's dtype.
- `linear_zoom`: the coordinate of output index k is k × (n_in − 1)/(n_out − 1) (grid_mode=False);
  zooms leave the channel axis alone, whose zero-weight taps add ±0 (summed too where the sum is
  zero, the one case where they can change its sign). A
  coordinate that float64 rounding puts beyond the last row or column is outside the image for
  scipy's mode 'constant', and its output row or column is cval (0), as scipy gives it.
- `linear_map_coordinates`, mode 'reflect': a coordinate outside [0, n − 1] is first reflected
  (scipy's map_coordinate, its 1e-15 guard included), then a tap outside the array is reflected
  again (half-sample symmetric: −1 → 0, n → n − 1); all 2 × 2 × 2 taps are summed, as scipy does.
The values are identical to scipy's (tested over sizes, factors, coordinates and dtypes against the
installed scipy, and probed at first use by .probe); `*_compatible` say which calls qualify, and
everything else goes to scipy.
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
                if total == 0.0:
                    # scipy sums eight taps from 0.0: the channel axis's second tap has weight 0 and
                    # adds ±0, which can change only the sign of a zero sum; redo it scipy's way
                    c1 = c + 1 if c + 1 < channels else max(c - 1, 0)
                    total = 0.0
                    for y, row_weight in ((y0, row_weight0), (y1, row_weight1)):
                        for x, column_weight in ((x0, column_weight0), (x1, column_weight1)):
                            total += np.float64(image[y, x, c]) * row_weight * column_weight * 1.0
                            total += np.float64(image[y, x, c1]) * row_weight * column_weight * 0.0
                out[i, j, c] = total


def axis_coordinates(n_in: int, n_out: int) -> np.ndarray:
    """scipy's input coordinate of every output index along one axis (grid_mode=False)."""
    step = (n_in - 1) / (n_out - 1) if n_out > 1 else 1.0
    return np.arange(n_out, dtype=np.float64) * step


def _zoom_factors(zoom) -> tuple | None:
    """The three zoom factors as scipy reads them, where they are Python or float64 numbers (whose
    output sizes round(n × f) are float64 products here and in scipy); else None."""
    if isinstance(zoom, np.ndarray) and not (zoom.dtype == np.float64 or zoom.dtype.kind in "iu"):
        return None
    if np.ndim(zoom) > 1:
        return None
    factors = (zoom,) * 3 if np.ndim(zoom) == 0 else tuple(zoom)
    if len(factors) != 3:
        return None
    if not all(isinstance(f, (int, float, np.integer)) and not isinstance(f, bool) and np.isfinite(f) for f in factors):
        return None  # np.float32 factors, say: scipy's sizes would be float32 products
    return factors


def scipy_zoom_compatible(input, zoom, output=None, order=3, mode="constant", cval=0.0, prefilter=True, *, grid_mode=False) -> bool:
    """Whether `scipy.ndimage.zoom(input, zoom, ...)` is one `linear_zoom` reproduces exactly."""
    if not (isinstance(input, np.ndarray) and input.ndim == 3 and input.dtype in FAST_DTYPES and input.size):
        return False
    if output is not None or order != 1 or mode != "constant" or cval != 0.0 or grid_mode:
        return False
    factors = _zoom_factors(zoom)
    if factors is None or factors[2] != 1 or min(factors[:2]) <= 0:
        return False
    sizes = [int(round(n * f)) for n, f in zip(input.shape[:2], factors[:2])]
    return min(sizes) >= 1 and bool(np.isfinite(input).all())


def linear_zoom(image: np.ndarray, zoom) -> np.ndarray:
    """`scipy.ndimage.zoom(image, (zy, zx, 1), order=1)` for a finite float32/float64 H×W×C array and
    Python or float64 factors."""
    zoom_rows, zoom_columns, _ = _zoom_factors(zoom)
    height, width, channels = image.shape
    out_height, out_width = int(round(height * zoom_rows)), int(round(width * zoom_columns))
    out = np.empty((out_height, out_width, channels), dtype=image.dtype)
    _zoom_rows_and_columns(np.ascontiguousarray(image), out, axis_coordinates(height, out_height), axis_coordinates(width, out_width))
    return out


def zoom_like_scipy(input, zoom, *args, **kwargs):  # `input`: scipy's own name for the array
    """A drop-in for scipy.ndimage.zoom: `linear_zoom` where it gives scipy's values, else scipy."""
    from scipy.ndimage import zoom as scipy_zoom

    names = ("output", "order", "mode", "cval", "prefilter")
    if len(args) <= len(names) and set(kwargs) <= {*names, "grid_mode"}:
        if scipy_zoom_compatible(input, zoom, **dict(zip(names, args)), **kwargs):
            return linear_zoom(input, zoom)
    return scipy_zoom(input, zoom, *args, **kwargs)


@numba.njit(cache=False, nogil=True)
def _reflect_coordinate(c, n):  # pragma: no cover - compiled; tested through linear_map_coordinates
    """scipy's map_coordinate for mode 'reflect' (ni_interpolation.c)."""
    if n <= 1:
        return 0.0
    size2 = 2 * n
    if c < 0:
        if c < -size2:
            c = size2 * np.int64(-c / size2) + c
        if c < -n:
            c = c + size2
        else:
            c = (1e-15 if c > -1e-15 else -c) - 1
    elif c > n - 1:
        c -= size2 * np.int64(c / size2)
        if c >= n:
            c = size2 - c - 1
    return c


@numba.njit(cache=False, nogil=True)
def _reflect_taps(c, n):  # pragma: no cover - compiled
    """The two taps and weights of coordinate c along an axis of length n, mode 'reflect'."""
    c = _reflect_coordinate(c, n)
    start = np.int64(np.floor(c))
    weight0 = 1.0 - (c - np.floor(c))
    first, second = start, start + 1
    if start < 0 or start + 1 >= n:  # taps outside the array: reflected again (scipy's spline_mode)
        first = np.int64(_reflect_coordinate(np.float64(start), n))
        second = np.int64(_reflect_coordinate(np.float64(start + 1), n))
    return first, second, weight0, 1.0 - weight0


@numba.njit(cache=False, nogil=True)
def _map_coordinates_reflect(image, rows, columns, channels, out):  # pragma: no cover - compiled
    height, width, depth = image.shape
    for k in range(rows.shape[0]):
        r0, r1, wr0, wr1 = _reflect_taps(rows[k], height)
        c0, c1, wc0, wc1 = _reflect_taps(columns[k], width)
        d0, d1, wd0, wd1 = _reflect_taps(channels[k], depth)
        total = 0.0
        for r, wr in ((r0, wr0), (r1, wr1)):
            for c, wc in ((c0, wc0), (c1, wc1)):
                total += np.float64(image[r, c, d0]) * wr * wc * wd0
                total += np.float64(image[r, c, d1]) * wr * wc * wd1
        out[k] = total


def map_coordinates_compatible(input, coordinates, output=None, order=3, mode="constant", cval=0.0, prefilter=True) -> bool:
    """Whether `scipy.ndimage.map_coordinates(input, coordinates, ...)` is one `linear_map_coordinates`
    reproduces exactly: a finite float32/float64 3-D image, order 1, mode 'reflect', finite float32,
    float64 or integer coordinates (scipy reads those; it refuses float16 and long doubles)."""
    if not (isinstance(input, np.ndarray) and input.ndim == 3 and input.dtype in FAST_DTYPES and input.size):
        return False
    if output is not None or order != 1 or mode != "reflect":
        return False
    coordinates = np.asarray(coordinates)
    if not (coordinates.dtype in (np.float32, np.float64) or coordinates.dtype.kind in "iu"):
        return False
    if coordinates.ndim < 2 or coordinates.shape[0] != 3:
        return False
    return bool(np.isfinite(input).all() and np.isfinite(coordinates).all() and np.abs(coordinates).max(initial=0) < 2.0**52)


def linear_map_coordinates(image: np.ndarray, coordinates) -> np.ndarray:
    """`scipy.ndimage.map_coordinates(image, coordinates, order=1, mode='reflect')` for a finite
    float32/float64 H×W×C image and (3, ...) coordinates."""
    coordinates = np.asarray(coordinates, dtype=np.float64)
    flat = coordinates.reshape(3, -1)
    out = np.empty(flat.shape[1], dtype=image.dtype)
    _map_coordinates_reflect(np.ascontiguousarray(image), np.ascontiguousarray(flat[0]), np.ascontiguousarray(flat[1]),
                             np.ascontiguousarray(flat[2]), out)
    return out.reshape(coordinates.shape[1:])


def map_coordinates_like_scipy(input, coordinates, *args, **kwargs):  # `input`: scipy's own name for the array
    """A drop-in for scipy.ndimage.map_coordinates: `linear_map_coordinates` where it gives scipy's
    values, else scipy."""
    from scipy.ndimage import map_coordinates

    names = ("output", "order", "mode", "cval", "prefilter")
    coordinates = np.asarray(coordinates)  # once: elastic_transform passes a tuple of three (N, 1) arrays
    if len(args) <= len(names) and set(kwargs) <= set(names):
        if map_coordinates_compatible(input, coordinates, **dict(zip(names, args)), **kwargs):
            return linear_map_coordinates(input, coordinates)
    return map_coordinates(input, coordinates, *args, **kwargs)
