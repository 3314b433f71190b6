"""kdeval.data.corruption_kernels: interpolation against scipy.ndimage's zoom and map_coordinates, hsv
against scikit-image's HSV conversions, the probes, and the corruptions that use them against the
library's own call."""

import random

import numpy as np
import pytest
from scipy.ndimage import map_coordinates
from scipy.ndimage import zoom as scipy_zoom
from skimage.color import hsv2rgb, rgb2hsv

from kdeval.data.corrupted import corrupt_image, corruption_seed
from kdeval.data.corruption_kernels.hsv import hsv2rgb_like_skimage, rgb2hsv_like_skimage
from kdeval.data.corruption_kernels.interpolation import (
    linear_map_coordinates,
    linear_zoom,
    map_coordinates_compatible,
    map_coordinates_like_scipy,
    scipy_zoom_compatible,
    zoom_like_scipy,
)

# zoom_blur's factors at its five severities, and snow's
ZOOM_BLUR_FACTORS = sorted({round(float(z), 2) for step, top in ((0.01, 1.11), (0.01, 1.16), (0.02, 1.21), (0.02, 1.26), (0.03, 1.31))
                            for z in np.arange(1, top, step)})
SNOW_FACTORS = [2.0, 2.5, 3.0, 4.0, 4.5]


@pytest.mark.parametrize("shape,dtype", [((120, 160, 3), np.float32), ((61, 47, 3), np.float32), ((50, 33, 1), np.float64),
                                         ((1, 5, 2), np.float32), ((2, 2, 3), np.float64)])
def test_linear_zoom_equals_scipy_bit_for_bit(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    image = rng.random(shape).astype(dtype)
    for factor in ZOOM_BLUR_FACTORS + SNOW_FACTORS + [0.8, 1.7]:
        ours, theirs = linear_zoom(image, (factor, factor, 1)), scipy_zoom(image, (factor, factor, 1), order=1)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, factor
        assert np.array_equal(ours, theirs), factor


def test_zoom_blur_sized_crops_of_a_photo_sized_image_equal_scipy():
    """The crops zoom_blur zooms on a 480×640 image (clipped_zoom's centre crop, then the zoom)."""
    image = np.random.default_rng(0).random((480, 640, 3), dtype=np.float32)
    for factor in (1.0, 1.07, 1.13, 1.3):
        rows, columns = int(np.ceil(480 / factor)), int(np.ceil(640 / factor))
        crop = image[(480 - rows) // 2:(480 - rows) // 2 + rows, (640 - columns) // 2:(640 - columns) // 2 + columns]
        assert np.array_equal(linear_zoom(crop, (factor, factor, 1)), scipy_zoom(crop, (factor, factor, 1), order=1))


def test_a_last_coordinate_rounded_past_the_edge_gives_scipys_zero_row():
    """29 rows zoomed 3×: (87 − 1) × (28 / 86) rounds above 28 in float64, so scipy's constant mode
    leaves the last output row at cval; the compiled zoom must do the same, not interpolate it."""
    assert 86 * (28 / 86) > 28
    image = np.random.default_rng(1).random((29, 7, 2)).astype(np.float32) + 0.5
    theirs = scipy_zoom(image, (3, 1, 1), order=1)
    assert (theirs[-1] == 0).all() and (theirs[:-1] > 0).all()
    assert np.array_equal(linear_zoom(image, (3, 1, 1)), theirs)


@pytest.mark.parametrize("image,zoom,options", [
    (np.ones((8, 8), np.float32), (1.5, 1.5), {}),  # 2-D
    (np.ones((8, 8, 3), np.float32), (1.5, 1.5, 1), {"order": 3}),  # another order
    (np.ones((8, 8, 3), np.float32), (1.5, 1.5, 2), {"order": 1}),  # the channels zoomed
    (np.ones((8, 8, 3), np.uint8), (1.5, 1.5, 1), {"order": 1}),  # integer rounding
    (np.ones((8, 8, 3), np.float32), (1.5, 1.5, 1), {"order": 1, "mode": "nearest"}),
    (np.ones((8, 8, 3), np.float32), (1.5, 1.5, 1), {"order": 1, "cval": 2.0}),
    (np.full((8, 8, 3), np.nan, np.float32), (1.5, 1.5, 1), {"order": 1}),  # NaN would leak across channels in scipy
])
def test_calls_the_compiled_zoom_cannot_reproduce_go_to_scipy(image, zoom, options):
    assert not scipy_zoom_compatible(image, zoom, **options)
    ours, theirs = zoom_like_scipy(image, zoom, **options), scipy_zoom(image, zoom, **options)
    assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs, equal_nan=True)


def test_signed_zeros_come_out_as_scipys():
    """scipy also sums the channel axis's zero-weight tap: -0.0 beside a positive channel becomes +0.0."""
    image = np.zeros((6, 7, 3), np.float32)
    image[..., 0], image[..., 1] = -0.0, 1.0
    ours, theirs = linear_zoom(image, (1.5, 1.5, 1)), scipy_zoom(image, (1.5, 1.5, 1), order=1)
    assert np.array_equal(np.signbit(ours), np.signbit(theirs)) and not np.signbit(theirs[..., 0]).any()


def test_float32_factors_are_left_to_scipy():
    """scipy sizes the output by round(n × f) in the factor's own type; float32 factors go to scipy."""
    image = np.zeros((150, 5, 3), np.float32)
    factors = np.array([1.7566667, 1, 1], np.float32)
    assert int(round(150 * factors[0])) != int(round(150 * float(factors[0])))
    assert not scipy_zoom_compatible(image, factors, order=1)
    assert not scipy_zoom_compatible(image, (factors[0], 1.0, 1.0), order=1)
    assert zoom_like_scipy(image, factors, order=1).shape == scipy_zoom(image, factors, order=1).shape == (264, 5, 3)
    assert zoom_like_scipy(input=image, zoom=(2.0, 2.0, 1), order=1).shape == (300, 10, 3)  # scipy's keyword name


def test_the_library_call_qualifies():
    image = np.zeros((10, 12, 3), np.float32)
    assert scipy_zoom_compatible(image, (1.1, 1.1, 1), order=1)  # clipped_zoom's call
    assert not scipy_zoom_compatible(image, (0.01, 0.01, 1), order=1)  # nothing left to zoom to


@pytest.mark.parametrize("shape,dtype", [((30, 41, 3), np.float32), ((7, 5, 1), np.float64), ((1, 9, 2), np.float32)])
def test_linear_map_coordinates_equals_scipy_reflect_bit_for_bit(shape, dtype):
    """Coordinates inside, on and far outside the edges (reflected once or several times), just below
    zero (scipy's 1e-15 guard), integers, and fractional channel coordinates."""
    rng = np.random.default_rng(sum(shape))
    image = rng.random(shape).astype(dtype)
    points = 2000
    coordinates = np.stack([rng.uniform(-3 * n - 2, 3 * n + 2, points) for n in shape]).reshape(3, 40, 50)
    coordinates[:, 0] = np.round(coordinates[:, 0])
    coordinates[0, 1, :10], coordinates[1, 1, 10:20] = -1e-16, shape[1] - 1 + 1e-13
    coordinates[:, 2] = [[0.0], [shape[1] - 1.0], [shape[2] - 1.0]]  # the last row, column and channel
    ours, theirs = linear_map_coordinates(image, coordinates), map_coordinates(image, coordinates, order=1, mode="reflect")
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape == (40, 50)
    assert np.array_equal(ours, theirs)


def test_elastic_transform_sized_warp_equals_scipy():
    """The call elastic_transform makes on a 480×640 image: (N, 1) row, column and channel index arrays."""
    rng = np.random.default_rng(3)
    image = rng.random((480, 640, 3), dtype=np.float32)
    columns, rows, channels = np.meshgrid(np.arange(640), np.arange(480), np.arange(3))
    shift_rows, shift_columns = (rng.normal(size=(2, 480, 640, 1)) * 4).astype(np.float32)
    indices = np.reshape(rows + shift_rows, (-1, 1)), np.reshape(columns + shift_columns, (-1, 1)), np.reshape(channels, (-1, 1))
    assert map_coordinates_compatible(image, indices, order=1, mode="reflect")
    assert np.array_equal(map_coordinates_like_scipy(image, indices, order=1, mode="reflect"),
                          map_coordinates(image, indices, order=1, mode="reflect"))


@pytest.mark.parametrize("image,coordinates,options", [
    (np.ones((8, 8, 3), np.float32), np.zeros((3, 5)), {"order": 1}),  # mode 'constant'
    (np.ones((8, 8, 3), np.float32), np.zeros((3, 5)), {"order": 3, "mode": "reflect"}),
    (np.ones((8, 8), np.float32), np.zeros((2, 5)), {"order": 1, "mode": "reflect"}),  # 2-D
    (np.ones((8, 8, 3), np.float32), np.full((3, 5), np.nan), {"order": 1, "mode": "reflect"}),
])
def test_warps_the_compiled_code_cannot_reproduce_go_to_scipy(image, coordinates, options):
    assert not map_coordinates_compatible(image, coordinates, **options)
    ours, theirs = map_coordinates_like_scipy(image, coordinates, **options), map_coordinates(image, coordinates, **options)
    assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs, equal_nan=True)


def rgb_images():
    rng = np.random.default_rng(2)
    yield "random floats", rng.random((60, 80, 3))
    yield "8-bit levels", rng.integers(0, 256, (60, 80, 3)).astype(np.uint8) / 255.0
    # four levels a channel: channels tie for the max (blue over green over red), greys and black
    yield "ties", (rng.integers(0, 4, (60, 80, 3)) * 85).astype(np.uint8) / 255.0


@pytest.mark.parametrize("name,image", list(rgb_images()))
def test_hsv_conversions_equal_scikit_images_bit_for_bit(name, image):
    hsv = rgb2hsv_like_skimage(image)
    assert np.array_equal(hsv, rgb2hsv(image)), name
    assert (hsv[..., 1] == 0).any() or name == "random floats"
    for value_shift, saturation_scale in ((0.3, 1.0), (0.0, 5.0)):  # brightness's and saturate's edits
        edited = hsv.copy()
        edited[..., 2] = np.clip(edited[..., 2] + value_shift, 0, 1)
        edited[..., 1] = np.clip(edited[..., 1] * saturation_scale, 0, 1)
        assert np.array_equal(hsv2rgb_like_skimage(edited), hsv2rgb(edited)), name


@pytest.mark.parametrize("convert,reference,image", [
    (rgb2hsv_like_skimage, rgb2hsv, np.full((4, 4, 3), 0.5, np.float32)),  # float32: scikit-image's own
    (rgb2hsv_like_skimage, rgb2hsv, np.full((4, 4, 3), np.nan)),
    (hsv2rgb_like_skimage, hsv2rgb, np.dstack([np.full((4, 4), 1.7), np.full((4, 4), 0.5), np.full((4, 4), 0.5)])),  # hue > 1
    (hsv2rgb_like_skimage, hsv2rgb, np.full((4, 4, 4), 0.5)),  # not three channels: scikit-image's error
    (rgb2hsv_like_skimage, rgb2hsv, np.array([[[0.0, -0.5, -0.2]]])),  # max 0, delta 0.5: scikit-image's inf
])
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # scikit-image's own, on the max-0 pixel
def test_hsv_inputs_the_compiled_code_does_not_take_go_to_scikit_image(convert, reference, image):
    try:
        expected = reference(image)
    except ValueError as error:
        with pytest.raises(ValueError, match=str(error)[:30]):
            convert(image)
        return
    assert np.array_equal(convert(image), expected, equal_nan=True)


@pytest.mark.parametrize("corruption", ["zoom_blur", "snow", "elastic_transform", "brightness", "saturate"])
@pytest.mark.parametrize("shape", [(300, 451), (128, 128), (33, 70)])
def test_compiled_corruptions_equal_the_librarys_own_call_at_every_severity(corruption, shape):
    from imagecorruptions import corrupt

    rgb = (np.random.default_rng(shape[0]).random((*shape, 3)) * 255).astype(np.uint8)
    rgb[:8, :8] = 128  # grey: hue and saturation 0
    for severity in range(1, 6):
        seed = corruption_seed("image.png", corruption, severity, 0)
        np.random.seed(seed)
        random.seed(seed)
        reference = np.asarray(corrupt(rgb.copy(), corruption_name=corruption, severity=severity))  # scipy's, scikit-image's
        assert np.array_equal(corrupt_image(rgb, corruption, severity, seed), reference), severity


def test_the_library_is_left_as_it_was():
    from imagecorruptions import corruptions

    parts = corruptions.scizoom, corruptions.map_coordinates, corruptions.sk
    for corruption in ("zoom_blur", "elastic_transform", "brightness"):
        corrupt_image(np.zeros((40, 40, 3), np.uint8), corruption, 1, 0)
    assert (corruptions.scizoom, corruptions.map_coordinates, corruptions.sk) == parts


@pytest.mark.parametrize("corruption,module,kernel", [
    ("zoom_blur", "interpolation", "_zoom_rows_and_columns"), ("snow", "interpolation", "_zoom_rows_and_columns"),
    ("elastic_transform", "interpolation", "_map_coordinates_reflect"),
    ("brightness", "hsv", "_rgb_to_hsv"), ("saturate", "hsv", "_hsv_to_rgb")])
@pytest.mark.parametrize("library_code", [False, True], ids=["compiled", "KDEVAL_LIBRARY_CORRUPTIONS=1"])
def test_the_compiled_code_is_what_runs_unless_the_library_code_is_asked_for(corruption, module, kernel, library_code, monkeypatch):
    import importlib

    compiled = importlib.import_module(f"kdeval.data.corruption_kernels.{module}")
    calls = []
    original = getattr(compiled, kernel)
    monkeypatch.setattr(compiled, kernel, lambda *args: calls.append(1) or original(*args))
    if library_code:
        monkeypatch.setenv("KDEVAL_LIBRARY_CORRUPTIONS", "1")
    else:
        monkeypatch.delenv("KDEVAL_LIBRARY_CORRUPTIONS", raising=False)
    image = np.full((40, 48, 3), 90, np.uint8)
    image[::3] = 200
    corrupted = corrupt_image(image, corruption, 2, 0)
    assert bool(calls) is not library_code
    monkeypatch.setenv("KDEVAL_LIBRARY_CORRUPTIONS", "0" if library_code else "1")  # the other way: the same pixels
    assert np.array_equal(corrupted, corrupt_image(image, corruption, 2, 0))


@pytest.fixture
def fresh_probes():
    from kdeval.data.corruption_kernels.probe import compiled_part_agrees

    compiled_part_agrees.cache_clear()
    yield compiled_part_agrees
    compiled_part_agrees.cache_clear()


def test_the_probes_agree_with_the_pinned_libraries(fresh_probes):
    assert all(fresh_probes(part) for part in ("zoom", "warp", "hsv"))


def test_a_part_that_disagrees_with_the_installed_library_is_not_used(fresh_probes, monkeypatch):
    """As if another scipy zoomed differently: the probe notices, warns once, and zoom_blur runs on
    the library's own code (the compiled kernel, off by one part in a thousand here, is not called)."""
    from imagecorruptions import corrupt

    from kdeval.data.corruption_kernels import interpolation

    original = interpolation._zoom_rows_and_columns
    calls = []

    def slightly_off(image, out, rows, columns):
        calls.append(1)
        original(image, out, rows, columns)
        out *= 1.001

    monkeypatch.setattr(interpolation, "_zoom_rows_and_columns", slightly_off)
    rgb = (np.random.default_rng(4).random((40, 48, 3)) * 255).astype(np.uint8)
    with pytest.warns(RuntimeWarning, match="zoom step differently"):
        corrupted = corrupt_image(rgb, "zoom_blur", 2, 7)
    probe_calls = len(calls)
    assert probe_calls and corrupt_image(rgb, "zoom_blur", 2, 7).shape == rgb.shape and len(calls) == probe_calls
    np.random.seed(7)
    random.seed(7)
    assert np.array_equal(corrupted, np.asarray(corrupt(rgb.copy(), corruption_name="zoom_blur", severity=2)))
    assert fresh_probes("hsv")  # the other parts are still used
