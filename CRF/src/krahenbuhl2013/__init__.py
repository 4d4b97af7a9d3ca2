"""Fully connected CRF with Gaussian edge potentials (Kraehenbuehl & Koltun, NIPS 2011).

Mean-field inference with two Potts kernels, filtered on a permutohedral lattice
(Adams, Baek & Davis 2010):
  - Gaussian (smoothness): features (x, y) / sxy;
  - bilateral (appearance): features (x/sxy, y/sxy, c0/srgb, c1/srgb, c2/srgb).
Each kernel is normalised symmetrically (norm = 1/sqrt(K 1)), as densecrf v2 does.

Conventions: images are HxWx3 with values 0..255 (uint8, or any numeric dtype holding
such values; floats are truncated to uint8 as the original wrapper did); the channel
order does not matter because all three colour widths are equal.  Unaries are HxWxL
scores or log-probabilities (energy = -unary).  Results are HxWxL float32 marginals.

Limits: maxiter <= MAX_ITERATIONS (1000) and H*W <= MAX_PIXELS (2**26) per image, else
ValueError.  A call can be interrupted (Ctrl-C): every thread stops before its next
mean-field iteration and the call raises KeyboardInterrupt (whatever the SIGINT handler
raises).
"""
import numpy as np

from . import _checks
from ._checks import MAX_ITERATIONS, MAX_PIXELS
from ._core import dense_crf_into as _dense_crf_into
from .reference import exact_dense_crf

__all__ = ["CRF", "dense_crf", "CRF_batch", "dense_crf_batch", "sec_kernels", "exact_dense_crf",
           "MAX_ITERATIONS", "MAX_PIXELS"]

# The SEC wrapper's kernels at scale_factor 1 (scaled positions divide by scale_factor).
SEC_GAUSSIAN_SXY = 3.0
SEC_GAUSSIAN_WEIGHT = 3.0
SEC_BILATERAL_SXY = 80.0
SEC_BILATERAL_SRGB = 13.0
SEC_BILATERAL_WEIGHT = 10.0
DEFAULT_ITERATIONS = 10


def sec_kernels(scale_factor=1.0):
    """Keyword arguments of dense_crf that reproduce the SEC wrapper at `scale_factor`."""
    scale = _checks.as_width(scale_factor, "scale_factor")
    return {
        "gaussian_sxy": SEC_GAUSSIAN_SXY / scale,
        "gaussian_weight": SEC_GAUSSIAN_WEIGHT,
        "bilateral_sxy": SEC_BILATERAL_SXY / scale,
        "bilateral_srgb": SEC_BILATERAL_SRGB,
        "bilateral_weight": SEC_BILATERAL_WEIGHT,
    }


def _core_settings(maxiter, gaussian_sxy, gaussian_weight, bilateral_sxy, bilateral_srgb, bilateral_weight):
    return {
        "maxiter": _checks.as_iterations(maxiter),
        "gaussian_sxy": _checks.as_width(gaussian_sxy, "gaussian_sxy"),
        "gaussian_weight": _checks.as_weight(gaussian_weight, "gaussian_weight"),
        "bilateral_sxy": _checks.as_width(bilateral_sxy, "bilateral_sxy"),
        "bilateral_srgb": _checks.as_width(bilateral_srgb, "bilateral_srgb"),
        "bilateral_weight": _checks.as_weight(bilateral_weight, "bilateral_weight"),
    }


def dense_crf(
    image,
    unary,
    *,
    maxiter=DEFAULT_ITERATIONS,
    gaussian_sxy=SEC_GAUSSIAN_SXY,
    gaussian_weight=SEC_GAUSSIAN_WEIGHT,
    bilateral_sxy=SEC_BILATERAL_SXY,
    bilateral_srgb=SEC_BILATERAL_SRGB,
    bilateral_weight=SEC_BILATERAL_WEIGHT,
):
    """Marginals (HxWxL float32) of the dense CRF on one image, with named kernel settings.

    image: HxWx3, values 0..255; unary: HxWxL scores (energy = -unary); widths in pixels
    (sxy) and intensity levels (srgb); a weight of 0 switches that kernel off.
    """
    settings = _core_settings(
        maxiter, gaussian_sxy, gaussian_weight, bilateral_sxy, bilateral_srgb, bilateral_weight
    )
    checked_image, checked_unary = _checks.as_pair(image, unary)
    out = np.empty(checked_unary.shape, dtype=np.float32)
    _dense_crf_into([checked_image], [checked_unary], [out], num_threads=1, **settings)
    return out


def dense_crf_batch(
    images,
    unaries,
    *,
    num_threads=0,
    maxiter=DEFAULT_ITERATIONS,
    gaussian_sxy=SEC_GAUSSIAN_SXY,
    gaussian_weight=SEC_GAUSSIAN_WEIGHT,
    bilateral_sxy=SEC_BILATERAL_SXY,
    bilateral_srgb=SEC_BILATERAL_SRGB,
    bilateral_weight=SEC_BILATERAL_WEIGHT,
):
    """dense_crf over many images in parallel threads (GIL released; 0 threads = all cores).

    Either arrays images NxHxWx3 and unaries NxHxWxL (returns an NxHxWxL float32 array) or
    equal-length lists of per-image arrays, sizes free (returns a list of HxWxL float32).
    Each image's result is bitwise equal to dense_crf on that image alone.
    """
    settings = _core_settings(
        maxiter, gaussian_sxy, gaussian_weight, bilateral_sxy, bilateral_srgb, bilateral_weight
    )
    threads = _checks.as_threads(num_threads)
    if isinstance(images, (list, tuple)) and isinstance(unaries, (list, tuple)):
        if len(images) != len(unaries):
            raise ValueError(f"need as many unaries as images, got {len(images)} images and {len(unaries)} unaries")
        pairs = [_checks.as_pair(im, un, f"image {i}: ") for i, (im, un) in enumerate(zip(images, unaries))]
        outputs = [np.empty(un.shape, dtype=np.float32) for _, un in pairs]
        _dense_crf_into([p[0] for p in pairs], [p[1] for p in pairs], outputs, num_threads=threads, **settings)
        return outputs
    if isinstance(images, (list, tuple)) or isinstance(unaries, (list, tuple)):
        raise ValueError(
            f"need images and unaries both as arrays or both as lists, got {type(images).__name__} "
            f"and {type(unaries).__name__}"
        )
    image_stack, unary_stack = np.asarray(images), np.asarray(unaries)
    if image_stack.ndim != 4 or unary_stack.ndim != 4:
        raise ValueError(
            f"need images NxHxWx3 and unaries NxHxWxL, got shapes {image_stack.shape} and {unary_stack.shape}"
        )
    if image_stack.shape[0] != unary_stack.shape[0]:
        raise ValueError(
            f"need as many unaries as images, got shapes {image_stack.shape} and {unary_stack.shape}"
        )
    out = np.empty(unary_stack.shape, dtype=np.float32)
    if image_stack.shape[0] == 0:
        return out
    # Checking the whole stack at once keeps the per-image views contiguous and cheap.
    rows = image_stack.shape[0] * image_stack.shape[1]  # not -1: ambiguous when an axis is 0
    checked_images = _checks.as_image(image_stack.reshape((rows,) + image_stack.shape[2:]), "images: ")
    checked_images = checked_images.reshape(image_stack.shape)
    checked_unaries = [
        _checks.as_unary(unary_stack[i], image_stack.shape[1:], f"image {i}: ") for i in range(len(out))
    ]
    _dense_crf_into(list(checked_images), checked_unaries, list(out), num_threads=threads, **settings)
    return out


def CRF(image, unary, maxiter=DEFAULT_ITERATIONS, scale_factor=1.0):
    """The original SEC wrapper: marginals HxWxL float32 of the CRF with SEC's kernels.

    Gaussian sxy = 3/scale_factor, weight 3; bilateral sxy = 80/scale_factor, srgb = 13,
    weight 10; Potts compatibility.  image HxWx3 0..255, unary HxWxL scores.
    """
    return dense_crf(image, unary, maxiter=maxiter, **sec_kernels(scale_factor))


def CRF_batch(images, unaries, maxiter=DEFAULT_ITERATIONS, scale_factor=1.0, num_threads=0):
    """CRF over a batch (NxHxWx3 + NxHxWxL arrays, or equal-length lists), in threads."""
    return dense_crf_batch(images, unaries, num_threads=num_threads, maxiter=maxiter, **sec_kernels(scale_factor))
