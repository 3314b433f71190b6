"""The compiled kernels put in place of the library code that imagecorruptions' corruptions call.

imagecorruptions.corruptions imports scipy's zoom (as `scizoom`, used by clipped_zoom in zoom_blur
and snow), scipy's map_coordinates (elastic_transform) and scikit-image (`sk`, whose HSV conversions
brightness and saturate use) into its module globals; for one corruption at a time those names are
pointed at the compiled drop-ins, which give the same values bit for bit, and put back after.
"""

from __future__ import annotations

import contextlib
import os
from types import SimpleNamespace

ZOOMING = ("zoom_blur", "snow")
WARPING = ("elastic_transform",)
HSV_CONVERTING = ("brightness", "saturate")
COMPILED_PART = {**dict.fromkeys(ZOOMING, "zoom"), **dict.fromkeys(WARPING, "warp"), **dict.fromkeys(HSV_CONVERTING, "hsv")}


def part_replacements(part: str) -> dict:
    """The names in imagecorruptions.corruptions that a compiled `part` replaces, with their replacements."""
    from kdeval.data.corruption_kernels import hsv, interpolation

    if part == "zoom":
        return {"scizoom": interpolation.zoom_like_scipy}
    if part == "warp":
        return {"map_coordinates": interpolation.map_coordinates_like_scipy}
    # brightness and saturate use nothing of skimage (`sk`) but sk.color's pair
    return {"sk": SimpleNamespace(color=SimpleNamespace(rgb2hsv=hsv.rgb2hsv_like_skimage, hsv2rgb=hsv.hsv2rgb_like_skimage))}


def compiled_replacements(corruption: str) -> dict:
    """The names in imagecorruptions.corruptions that `corruption` runs with compiled equivalents
    (none where the environment sets KDEVAL_LIBRARY_CORRUPTIONS=1: the libraries' own code, to
    compare with or to time against; none where the part disagrees with the installed library)."""
    from kdeval.data.corruption_kernels.probe import compiled_part_agrees

    part = COMPILED_PART.get(corruption)
    if part is None or os.environ.get("KDEVAL_LIBRARY_CORRUPTIONS") == "1" or not compiled_part_agrees(part):
        return {}
    return part_replacements(part)


@contextlib.contextmanager
def compiled_library_parts(corruption: str):
    """For the block, the library's scipy zoom (zoom_blur, snow) and map_coordinates
    (elastic_transform), or its scikit-image HSV conversions (brightness, saturate), replaced by
    compiled functions that return the same values; calls those cannot reproduce exactly still go
    to scipy and scikit-image. Other corruptions run unchanged."""
    from imagecorruptions import corruptions

    replacements = compiled_replacements(corruption)
    library_parts = {name: getattr(corruptions, name) for name in replacements}
    for name, replacement in replacements.items():
        setattr(corruptions, name, replacement)
    try:
        yield
    finally:
        for name, part in library_parts.items():
            setattr(corruptions, name, part)
