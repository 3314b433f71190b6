"""Compiled (numba) copies of the scipy and scikit-image steps that imagecorruptions' slowest
corruptions spend their time in, equal to the libraries' values bit for bit:

  interpolation  scipy.ndimage's linear zoom (zoom_blur, snow) and map_coordinates (elastic_transform)
  hsv            scikit-image's rgb2hsv and hsv2rgb (brightness, saturate)
  probe          checks each kernel against the installed library once per process before it is used
  patching       puts the kernels in place of the library's code for one corruption at a time

kdeval.data.corrupted asks for `compiled_library_parts(corruption)` and nothing else.
"""

from kdeval.data.corruption_kernels.patching import COMPILED_PART, compiled_library_parts

__all__ = ["COMPILED_PART", "compiled_library_parts"]
