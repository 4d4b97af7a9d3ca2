"""The CRF step of the constrain loss as plain functions (the dense CRF itself is `krahenbuhl2013`).

Images arrive as the network input: N x 3 x H x W float, BGR, mean-subtracted, full resolution.
Scores are the network's raw N x C x h x w logits (unary energy = -scores).
"""
import numpy as np
from scipy import ndimage

from .functions import MIN_PROB, clamp_and_normalise

MEAN_BGR = (104.0, 117.0, 123.0)
"""Per-channel BGR mean subtracted by the SEC data layer."""
SCALE_FACTOR = 12.0
"""Multiplier of the CRF's spatial kernel widths at the 41 x 41 score resolution (SEC)."""
MAX_ITER = 10
"""Mean-field iterations."""
MAX_ITERATIONS = 1000
"""The most mean-field iterations krahenbuhl2013 runs (its MAX_ITERATIONS; a test checks they agree):
the layer refuses more at setup, naming the parameter, rather than failing at every forward."""
PIXEL_MAX = 255


def shrink_images(images, height, width, mean=MEAN_BGR):
    """N x 3 x H x W mean-subtracted BGR float -> N x height x width x 3 uint8 BGR.

    Linear, corner-aligned zoom (scipy.ndimage.zoom, order=1: output pixel k samples input
    position k * (H - 1) / (height - 1)), then the mean added back, rounded, clipped to 0..255.
    """
    num, channels, in_height, in_width = images.shape
    factors = (1.0, 1.0, height / in_height, width / in_width)
    small = ndimage.zoom(np.asarray(images, dtype=np.float64), factors, order=1)
    if small.shape != (num, channels, height, width):
        raise ValueError(f"zoom of images {images.shape} gave {small.shape}, need {height}x{width}")
    small = small.transpose(0, 2, 3, 1) + np.asarray(mean, dtype=np.float64)
    return np.ascontiguousarray(np.clip(np.round(small), 0, PIXEL_MAX).astype(np.uint8))


def crf_log_probs(scores, images, crf_batch, scale_factor=SCALE_FACTOR, maxiter=MAX_ITER,
                  min_prob=MIN_PROB, mean=MEAN_BGR):
    """Dense-CRF log-probabilities N x C x h x w (float32) of ``scores`` on the shrunk ``images``.

    ``crf_batch`` is ``krahenbuhl2013.CRF_batch``. The CRF marginals are clamped at ``min_prob``
    and renormalised before the log.
    """
    num, _, height, width = scores.shape
    small = shrink_images(images, height, width, mean)
    unaries = np.ascontiguousarray(np.asarray(scores, dtype=np.float32).transpose(0, 2, 3, 1))
    marginals = np.asarray(crf_batch(small, unaries, maxiter=maxiter, scale_factor=scale_factor),
                           dtype=np.float32)
    if marginals.shape != unaries.shape:
        raise ValueError(f"CRF_batch returned shape {marginals.shape}, need {unaries.shape}")
    probs = np.ascontiguousarray(marginals.transpose(0, 3, 1, 2))
    return np.log(clamp_and_normalise(probs, min_prob))
