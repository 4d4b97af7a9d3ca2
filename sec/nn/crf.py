"""The dense CRF of `krahenbuhl2013` in torch (mean-field, Gaussian + bilateral Potts kernels).

Same model and parameters as the C++ extension (CRF/README.md): Q0 = softmax(unary), then
``maxiter`` times Q <- softmax(unary + sum_k w_k n_k .* K_k(n_k .* Q)), n_k = 1/sqrt(K_k 1 + 1e-20),
kernels Gaussian (x/sxy, y/sxy) and bilateral (x/sxy, y/sxy, c0/srgb, c1/srgb, c2/srgb), x the
column, y the row, each pixel's own value included. Two ways to apply K:

* ``method="lattice"`` (default): the permutohedral lattice of `sec.nn.lattice`, the same
  approximation the C++ computes (marginals equal to ~1e-6);
* ``method="exact"``: the exact O(N^2) Gaussians exp(-|f_i - f_j|^2 / 2) as dense matrices, the
  target the lattice approximates (`krahenbuhl2013.exact_dense_crf`); small images only.

Tensors: ``images`` N x H x W x 3 with values 0..255 (any dtype; floats are truncated as the C++
wrapper does; channel order as given), ``unaries`` N x H x W x L scores (energy = -unary).
Results are N x H x W x L float32 marginals. No gradient flows through the CRF.
"""
import torch

from krahenbuhl2013 import (DEFAULT_ITERATIONS, SEC_BILATERAL_SRGB, SEC_BILATERAL_SXY,
                           SEC_BILATERAL_WEIGHT, SEC_GAUSSIAN_SXY, SEC_GAUSSIAN_WEIGHT, sec_kernels)
from pylayers.crf import MAX_ITER, MEAN_BGR, PIXEL_MAX, SCALE_FACTOR
from pylayers.functions import MIN_PROB

from .functional import clamp_and_normalise, float32
from .lattice import NORM_EPSILON, Lattice, slice_scale

METHODS = ("lattice", "exact")
EXACT_MAX_PIXELS = 4096
"""Largest image (H x W) the exact method accepts: its kernels are N x N per image."""


def _width(value, name):
    """A kernel width as the C++ receives it: float32 (the division happens in float32)."""
    width = torch.tensor(float(value), dtype=torch.float32)
    if not (bool(torch.isfinite(width)) and float(width) > 0):
        raise ValueError(f"need {name} finite and > 0, got {value!r}")
    return width


def _features(images, sxy, srgb=None):
    """N x (H W) x d float32 features: (x/sxy, y/sxy[, c/srgb]) with float32 divisions."""
    num, height, width = images.shape[:3]
    device = images.device
    rows, cols = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32),
                                torch.arange(width, device=device, dtype=torch.float32), indexing="ij")
    sxy = _width(sxy, "sxy").to(device)
    columns = [(cols / sxy).reshape(-1), (rows / sxy).reshape(-1)]
    position = torch.stack(columns, dim=1).expand(num, -1, -1)
    if srgb is None:
        return position
    colour = images.reshape(num, height * width, 3).to(torch.float32) / _width(srgb, "srgb").to(device)
    return torch.cat([position, colour], dim=2)


def _as_pixels(images):
    """0..255 values truncated to integers, as the C++ wrapper's astype(uint8) does."""
    if images.dtype.is_floating_point:
        if bool(((images < 0) | (images > PIXEL_MAX)).any()):
            raise ValueError("need image values in 0..255")
        return torch.trunc(images)
    return images


class _LatticeKernel:
    """One kernel on a batch: w n .* K(n .* Q) through one lattice shared by all images."""

    def __init__(self, features, weight, shared):
        num, points, dim = features.shape
        self.num, self.shared = num, shared
        if shared:   # same features in every image (the Gaussian): one lattice, images as channels
            self.lattice = Lattice(features[0])
        else:
            groups = torch.arange(num, device=features.device).repeat_interleave(points)
            self.lattice = Lattice(features.reshape(num * points, dim), groups)
        self.splat, self.slice = self.lattice.sparse_filter(self.lattice.symmetric_weights())
        self.scale = float(weight) * slice_scale(self.lattice.dim)

    def _filter(self, values):
        return (self.slice @ self.lattice.blur(self.splat @ values)) * self.scale

    def message(self, q):
        num, points, labels = q.shape
        if self.shared:
            out = self._filter(q.permute(1, 0, 2).reshape(points, num * labels))
            return out.reshape(points, num, labels).permute(1, 0, 2)
        return self._filter(q.reshape(num * points, labels)).reshape(q.shape)


class _ExactKernel:
    """One kernel on a batch as dense N x N matrices: w n .* K(n .* Q), K exact Gaussians."""

    def __init__(self, features, weight, shared):
        if features.shape[1] > EXACT_MAX_PIXELS:
            raise ValueError(f"method 'exact' needs at most {EXACT_MAX_PIXELS} pixels per image, got "
                             f"{features.shape[1]}: use method 'lattice'")
        feats = features[:1] if shared else features
        kernel = torch.exp(-0.5 * torch.cdist(feats, feats, compute_mode="donot_use_mm_for_euclid_dist").square())
        norm = 1.0 / torch.sqrt(kernel.sum(dim=2) + NORM_EPSILON)
        self.matrix = float(weight) * norm[:, :, None] * kernel * norm[:, None, :]

    def message(self, q):
        return torch.matmul(self.matrix, q)


@float32
def dense_crf(images, unaries, *, maxiter=DEFAULT_ITERATIONS, gaussian_sxy=SEC_GAUSSIAN_SXY,
              gaussian_weight=SEC_GAUSSIAN_WEIGHT, bilateral_sxy=SEC_BILATERAL_SXY,
              bilateral_srgb=SEC_BILATERAL_SRGB, bilateral_weight=SEC_BILATERAL_WEIGHT, method="lattice"):
    """Marginals N x H x W x L float32 of the dense CRF on a batch (`krahenbuhl2013.dense_crf_batch`
    on any device). images N x H x W x 3 (0..255), unaries N x H x W x L; a weight of 0 turns a
    kernel off."""
    if method not in METHODS:
        raise ValueError(f"need method in {METHODS}, got {method!r}")
    if images.ndim != 4 or unaries.ndim != 4 or images.shape[3] != 3 or images.shape[:3] != unaries.shape[:3]:
        raise ValueError(f"need images N x H x W x 3 and unaries N x H x W x L, got shapes "
                         f"{tuple(images.shape)} and {tuple(unaries.shape)}")
    if int(maxiter) != maxiter or maxiter < 0:
        raise ValueError(f"need maxiter a non-negative integer, got {maxiter!r}")
    with torch.no_grad():
        num, height, width, labels = unaries.shape
        scores = unaries.to(torch.float32).reshape(num, height * width, labels)
        q = torch.softmax(scores, dim=2)
        if maxiter == 0 or num == 0:
            return q.reshape(unaries.shape)
        pixels = _as_pixels(images)
        kind = _LatticeKernel if method == "lattice" else _ExactKernel
        kernels = []
        if gaussian_weight != 0:
            kernels.append(kind(_features(pixels, gaussian_sxy), gaussian_weight, shared=True))
        if bilateral_weight != 0:
            kernels.append(kind(_features(pixels, bilateral_sxy, bilateral_srgb), bilateral_weight, shared=False))
        for _ in range(int(maxiter)):
            energy = scores
            for kernel in kernels:
                energy = energy + kernel.message(q)
            q = torch.softmax(energy, dim=2)
        return q.reshape(unaries.shape)


def crf(images, unaries, maxiter=DEFAULT_ITERATIONS, scale_factor=1.0, method="lattice"):
    """The SEC wrapper (`krahenbuhl2013.CRF_batch`): SEC's kernels at ``scale_factor``."""
    return dense_crf(images, unaries, maxiter=maxiter, method=method, **sec_kernels(scale_factor))


def shrink_images(images, height, width, mean=MEAN_BGR):
    """N x 3 x H x W mean-subtracted BGR -> N x height x width x 3 values 0..255 (float64 integers).

    `pylayers.crf.shrink_images` in torch: corner-aligned linear zoom in float64 (scipy's
    ndimage.zoom order 1), the mean added back, rounded half to even, clipped to 0..255.
    """
    small = torch.nn.functional.interpolate(images.to(torch.float64), size=(height, width), mode="bilinear",
                                            align_corners=True)
    small = small.permute(0, 2, 3, 1) + torch.tensor(mean, dtype=torch.float64, device=images.device)
    return torch.clamp(torch.round(small), 0, PIXEL_MAX)


def crf_log_probs(scores, images, scale_factor=SCALE_FACTOR, maxiter=MAX_ITER, min_prob=MIN_PROB,
                  mean=MEAN_BGR, method="lattice"):
    """`pylayers.crf.crf_log_probs` in torch: log of the clamped, renormalised CRF marginals
    (N x C x h x w float32) of raw ``scores`` N x C x h x w on ``images`` N x 3 x H x W
    (mean-subtracted BGR, the network input) shrunk to h x w."""
    num, _, height, width = scores.shape
    with torch.no_grad():
        small = shrink_images(images, height, width, mean)
        unaries = scores.detach().to(torch.float32).permute(0, 2, 3, 1)
        marginals = crf(small, unaries, maxiter=maxiter, scale_factor=scale_factor, method=method)
        return torch.log(clamp_and_normalise(marginals.permute(0, 3, 1, 2), min_prob)).contiguous()
