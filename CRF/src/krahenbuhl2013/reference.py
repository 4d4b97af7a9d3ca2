"""Exact O(N^2) mean-field of the same CRF, in numpy: the target the lattice approximates.

For small images only (it builds the N x N kernel matrices).  Kernel between pixels i, j:
    k(i, j) = exp(-|f_i - f_j|^2 / (2 * variance)),   variance = 1 by default,
with f the features divided by the kernel widths (so sxy and srgb are standard
deviations, as in Kraehenbuehl & Koltun 2011), including i == j (the lattice also
filters each pixel's own value).  Normalisation, Potts messages and updates are as in
densecrf v2: Q <- softmax(unary + sum_k w_k * n_k * (K_k @ (n_k * Q))), n_k = 1/sqrt(K_k 1).
"""
import numpy as np

NORM_EPSILON = 1e-20


def _features(image, sxy, srgb=None):
    height, width = image.shape[:2]
    rows, cols = np.mgrid[:height, :width]
    columns = [cols / sxy, rows / sxy]
    if srgb is not None:
        columns += [image[..., c].astype(np.float64) / srgb for c in range(3)]
    return np.stack([c.ravel() for c in columns], axis=1)


def _normalised_kernel(features, variance):
    squared = ((features[:, None, :] - features[None, :, :]) ** 2).sum(-1)
    kernel = np.exp(-squared / (2.0 * variance))
    norm = 1.0 / np.sqrt(kernel.sum(1) + NORM_EPSILON)
    return norm[:, None] * kernel * norm[None, :]


def _softmax(scores):
    shifted = np.exp(scores - scores.max(1, keepdims=True))
    return shifted / shifted.sum(1, keepdims=True)


def exact_dense_crf(image, unary, *, maxiter=10, gaussian_sxy=3.0, gaussian_weight=3.0, bilateral_sxy=80.0,
                    bilateral_srgb=13.0, bilateral_weight=10.0, variance=1.0):
    """Marginals HxWxL float64; image HxWx3 (0..255, truncated to integers), unary HxWxL scores."""
    pixels = np.asarray(image).astype(np.uint8)
    scores = np.asarray(unary, dtype=np.float64)
    height, width, labels = scores.shape
    scores = scores.reshape(-1, labels)
    gaussian = gaussian_weight * _normalised_kernel(_features(pixels, gaussian_sxy), variance)
    bilateral = bilateral_weight * _normalised_kernel(_features(pixels, bilateral_sxy, bilateral_srgb), variance)
    pairwise = gaussian + bilateral
    q = _softmax(scores)
    for _ in range(maxiter):
        q = _softmax(scores + pairwise @ q)
    return q.reshape(height, width, labels)
