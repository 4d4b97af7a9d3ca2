"""Validation and conversion of user input at the boundary of the C++ core.

Everything the user passes is checked here and converted to what the core needs
(C-contiguous uint8 HxWx3 images, float32 HxWxL unaries in any layout); a bad value is a
ValueError that says what was needed and what was given.
"""
import math
import operator

import numpy as np

# The core's limits: mean-field iterations per call, and pixels (H*W) per image (every
# lattice index must fit in int32).
from ._core import MAX_ITERATIONS, MAX_PIXELS

RGB_CHANNELS = 3
PIXEL_MAX = 255
# Float images are truncated to uint8 as the original wrapper's `astype('ubyte')` did;
# that conversion is only defined for values in (-1, 256).
FLOAT_PIXEL_LOW, FLOAT_PIXEL_HIGH = -1.0, 256.0
INT32_MAX = 2**31 - 1
NUMERIC_KINDS = "biuf"


def _describe(array):
    return f"dtype {array.dtype} shape {array.shape}"


def as_image(image, where=""):
    """HxWx3 image with values 0..255 (any numeric dtype) -> C-contiguous uint8 copy/view."""
    array = np.asarray(image)
    if array.dtype.kind not in NUMERIC_KINDS:
        raise ValueError(f"{where}need a numeric HxWx3 image, got {_describe(array)}")
    if array.ndim != 3 or array.shape[2] != RGB_CHANNELS:
        raise ValueError(f"{where}need an HxWx3 image, got {_describe(array)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{where}need a non-empty HxWx3 image, got {_describe(array)}")
    if array.ndim == 3 and array.shape[0] * array.shape[1] > MAX_PIXELS:
        raise ValueError(
            f"{where}need an image of at most 2**26 = {MAX_PIXELS} pixels (H*W), got "
            f"{array.shape[0]}x{array.shape[1]} = {array.shape[0] * array.shape[1]}"
        )
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{where}need finite image values 0..255, got NaN or inf")
        low, high = float(array.min()), float(array.max())
        if low <= FLOAT_PIXEL_LOW or high >= FLOAT_PIXEL_HIGH:
            raise ValueError(f"{where}need image values 0..255, got values in [{low}, {high}]")
    elif array.dtype.kind in "iu" and array.dtype != np.uint8:  # uint8 is always 0..255
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > PIXEL_MAX:
            raise ValueError(f"{where}need image values 0..255, got values in [{low}, {high}]")
    return np.ascontiguousarray(array, dtype=np.uint8)


def as_unary(unary, image_shape, where=""):
    """HxWxL scores (any numeric dtype) -> float32 (any memory layout), checked against the image."""
    array = np.asarray(unary)
    if array.dtype.kind not in NUMERIC_KINDS:
        raise ValueError(f"{where}need a numeric HxWxL unary, got {_describe(array)}")
    if array.ndim != 3:
        raise ValueError(f"{where}need an HxWxL unary, got {_describe(array)}")
    if array.shape[:2] != tuple(image_shape[:2]):
        raise ValueError(
            f"{where}need a unary with the image's height and width {tuple(image_shape[:2])}, "
            f"got shape {array.shape}"
        )
    if array.shape[2] < 1:
        raise ValueError(f"{where}need at least one label in the unary, got shape {array.shape}")
    # float32 in any layout goes to the core as it is: it copies other layouts into a
    # reused per-thread buffer, which is cheaper than a fresh C-order array here.
    if array.dtype == np.float32:
        converted = array
    else:
        with np.errstate(over="ignore"):  # overflow to inf is reported just below
            converted = array.astype(np.float32)
    largest = converted.max()  # NaN when any entry is NaN
    if np.isnan(largest) or largest == np.inf:
        raise ValueError(f"{where}need unary scores that are finite or -inf (as float32), got NaN or +inf")
    return converted


def as_pair(image, unary, where=""):
    checked_image = as_image(image, where)
    return checked_image, as_unary(unary, checked_image.shape, where)


def _count(value, name, requirement):
    """`value` as a Python int in 0..INT32_MAX (what the C++ core takes), else ValueError."""
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"need an integer {name}, got {value!r}") from None
    if not 0 <= value <= INT32_MAX:
        raise ValueError(f"need {requirement}, got {value}")
    return value


def as_iterations(maxiter):
    value = _count(maxiter, "maxiter", f"0 <= maxiter <= {MAX_ITERATIONS}")
    if value > MAX_ITERATIONS:
        raise ValueError(f"need 0 <= maxiter <= {MAX_ITERATIONS}, got {value}")
    return value


def as_threads(num_threads):
    return _count(num_threads, "num_threads", "num_threads >= 0 (0: all cores)")


def as_width(value, name):
    number = _as_float(value, name)
    if not number > 0:
        raise ValueError(f"need {name} > 0, got {value!r}")
    return number


def as_weight(value, name):
    return _as_float(value, name)


def _as_float(value, name):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"need a number for {name}, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"need a finite {name}, got {value!r}")
    return number
