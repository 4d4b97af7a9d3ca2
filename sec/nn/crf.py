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
import functools
import math
import operator
import struct

import torch

from krahenbuhl2013 import (DEFAULT_ITERATIONS, MAX_ITERATIONS, SEC_BILATERAL_SRGB, SEC_BILATERAL_SXY,
                           SEC_BILATERAL_WEIGHT, SEC_GAUSSIAN_SXY, SEC_GAUSSIAN_WEIGHT, sec_kernels)
from pylayers.crf import MAX_ITER, MEAN_BGR, PIXEL_MAX, SCALE_FACTOR
from pylayers.functions import MIN_PROB

from .checks import ValueChecks, need_one_device, need_tensor, number_param
from .functional import clamp_and_normalise, float32
from .lattice import NORM_EPSILON, Lattice, SparseFilter, slice_scale

METHODS = ("lattice", "exact")
EXACT_MAX_PIXELS = 4096
"""Largest image (H x W) the exact method accepts: its kernels are N x N per image."""
GAUSSIAN_CACHE_SIZE = 4
"""Gaussian kernels kept built (batch size, H, W, width, weight, device): training reuses one;
deploy sees a few image sizes in a row."""


def float32_width(value, name):
    """A kernel width as the C++ receives it: a positive finite float32 (host only, no tensor)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"need a number for {name}, got {value!r}") from None
    try:
        rounded = struct.unpack("f", struct.pack("f", number))[0]
    except OverflowError:
        rounded = math.inf
    if not (math.isfinite(rounded) and rounded > 0):
        raise ValueError(f"need {name} finite and > 0 (as float32), got {value!r}")
    return rounded


def _divided(values, width):
    """values / width in float32 with a true division (a Python-number divisor may become a
    multiplication by its reciprocal on CUDA, which rounds differently from the C++)."""
    return values / torch.full((), width, dtype=torch.float32, device=values.device)


@functools.lru_cache(maxsize=GAUSSIAN_CACHE_SIZE)
def _positions(height, width, sxy, device):
    """(H W) x 2 float32 features (x / sxy, y / sxy), x the column, in pixel order."""
    rows, cols = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32),
                                torch.arange(width, device=device, dtype=torch.float32), indexing="ij")
    return _divided(torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=1), sxy)


def _position_bounds(height, width, sxy):
    return [0.0, 0.0], [(width - 1) / sxy, (height - 1) / sxy]


@functools.lru_cache(maxsize=GAUSSIAN_CACHE_SIZE)
def _gaussian(num, height, width, sxy, weight, device):
    """The Gaussian kernel's filter on a batch of ``num`` H x W images: it depends on nothing else,
    so it is built once (one lattice, images as groups) and reused by every later call."""
    positions = _positions(height, width, sxy, device)
    features = positions.repeat(num, 1)
    return _lattice_filter(features, _groups(num, height * width, device), _position_bounds(height, width, sxy),
                           num, weight)


def _groups(num, points, device):
    return torch.arange(num, device=device)[:, None].expand(num, points).reshape(-1)


def _lattice_filter(features, groups, bounds, num_groups, weight):
    lattice = Lattice(features, groups, bounds=bounds, num_groups=num_groups)
    return SparseFilter(lattice, lattice.symmetric_weights(), float(weight) * slice_scale(lattice.dim))


def _bilateral(pixels, sxy, srgb, weight):
    """The bilateral kernel's filter on pixels N x H x W x 3 (integer values 0..255, float32)."""
    num, height, width = pixels.shape[:3]
    positions = _positions(height, width, sxy, pixels.device).expand(num, -1, -1)
    colours = _divided(pixels.reshape(num, height * width, 3), srgb)
    features = torch.cat([positions, colours], dim=2).reshape(num * height * width, 5)
    low, high = _position_bounds(height, width, sxy)
    bounds = (low + [0.0] * 3, high + [PIXEL_MAX / srgb] * 3)
    return _lattice_filter(features, _groups(num, height * width, pixels.device), bounds, num, weight)


class _LatticeKernels:
    """The Gaussian (cached) and bilateral kernels of a batch as sparse filters: message(q, energy)
    = energy + sum_k w_k n_k .* K_k(n_k .* q), q (N H W) x L."""

    def __init__(self, pixels, settings):
        num, height, width = pixels.shape[:3]
        device = pixels.device
        self.filters = []
        if settings["gaussian_weight"] != 0:
            self.filters.append(_gaussian(num, height, width, settings["gaussian_sxy"], settings["gaussian_weight"],
                                          device))
        if settings["bilateral_weight"] != 0:
            self.filters.append(_bilateral(pixels, settings["bilateral_sxy"], settings["bilateral_srgb"],
                                           settings["bilateral_weight"]))

    def energy(self, q, scores):
        for kernel in self.filters:
            scores = kernel.apply(q, add_to=scores)
        return scores


class _ExactKernels:
    """The same kernels as dense N x N matrices per image: K exact Gaussians exp(-|f_i - f_j|^2 / 2)."""

    def __init__(self, pixels, settings):
        num, height, width = pixels.shape[:3]
        if height * width > EXACT_MAX_PIXELS:
            raise ValueError(f"method 'exact' needs at most {EXACT_MAX_PIXELS} pixels per image, got "
                             f"{height * width}: use method 'lattice'")
        self.shape = (num, height * width)
        self.matrices = []
        for kind in ("gaussian", "bilateral"):
            if settings[f"{kind}_weight"] == 0:
                continue
            features = _positions(height, width, settings[f"{kind}_sxy"], pixels.device).expand(num, -1, -1)
            if kind == "bilateral":
                colours = _divided(pixels.reshape(num, height * width, 3), settings["bilateral_srgb"])
                features = torch.cat([features, colours], dim=2)
            kernel = torch.exp(-0.5 * torch.cdist(features, features,
                                                  compute_mode="donot_use_mm_for_euclid_dist").square())
            norm = 1.0 / torch.sqrt(kernel.sum(dim=2) + NORM_EPSILON)
            self.matrices.append(float(settings[f"{kind}_weight"]) * norm[:, :, None] * kernel * norm[:, None, :])

    def energy(self, q, scores):
        q = q.reshape(*self.shape, -1)
        for matrix in self.matrices:
            scores = scores + torch.matmul(matrix, q).reshape(scores.shape)
        return scores


def check_crf_inputs(images, unaries, maxiter, method, where="dense_crf"):
    """dense_crf's argument checks (krahenbuhl2013's wording) on everything but the values;
    returns maxiter as an int."""
    if method not in METHODS:
        raise ValueError(f"{where}: need method in {METHODS}, got {method!r}")
    for name, tensor in (("images", images), ("unaries", unaries)):
        need_tensor(where, name, tensor)
    if images.ndim != 4 or unaries.ndim != 4 or images.shape[3] != 3 or images.shape[:3] != unaries.shape[:3]:
        raise ValueError(f"{where}: need images N x H x W x 3 and unaries N x H x W x L, got shapes "
                         f"{tuple(images.shape)} and {tuple(unaries.shape)}")
    if images.shape[1] == 0 or images.shape[2] == 0 or unaries.shape[3] == 0:
        raise ValueError(f"{where}: need non-empty images and at least one label, got shapes "
                         f"{tuple(images.shape)} and {tuple(unaries.shape)}")
    need_one_device(where, images=images, unaries=unaries)
    try:
        iterations = operator.index(maxiter)
    except TypeError:
        iterations = None
    if isinstance(maxiter, bool) or iterations is None or not 0 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"{where}: need 0 <= maxiter <= {MAX_ITERATIONS}, got {maxiter!r}")
    return iterations


def check_crf_values(images, unaries, where="dense_crf"):
    """Images 0..255 (what the C++ wrapper's uint8 conversion keeps), unaries finite or -inf; one
    host read."""
    checks = ValueChecks()
    if images.dtype != torch.uint8:
        checks.within("images", images, 0, PIXEL_MAX, "0..255")
    checks.add("unaries", (torch.isnan(unaries) | (unaries == math.inf)).any(),
               lambda: "need scores that are finite or -inf, got NaN or +inf")
    checks.raise_first(where)


@float32
def dense_crf(images, unaries, *, maxiter=DEFAULT_ITERATIONS, gaussian_sxy=SEC_GAUSSIAN_SXY,
              gaussian_weight=SEC_GAUSSIAN_WEIGHT, bilateral_sxy=SEC_BILATERAL_SXY,
              bilateral_srgb=SEC_BILATERAL_SRGB, bilateral_weight=SEC_BILATERAL_WEIGHT, method="lattice",
              check=True):
    """Marginals N x H x W x L float32 of the dense CRF on a batch (`krahenbuhl2013.dense_crf_batch`
    on any device). images N x H x W x 3 (0..255), unaries N x H x W x L; a weight of 0 turns a
    kernel off. ``check=False`` skips the value checks (one host read), not the others."""
    maxiter = check_crf_inputs(images, unaries, maxiter, method)
    settings = {"gaussian_sxy": float32_width(gaussian_sxy, "gaussian_sxy"),
                "bilateral_sxy": float32_width(bilateral_sxy, "bilateral_sxy"),
                "bilateral_srgb": float32_width(bilateral_srgb, "bilateral_srgb"),
                "gaussian_weight": number_param("dense_crf", "gaussian_weight", gaussian_weight, math.isfinite, "finite"),
                "bilateral_weight": number_param("dense_crf", "bilateral_weight", bilateral_weight, math.isfinite, "finite")}
    with torch.no_grad():
        if check:
            check_crf_values(images, unaries)
        num, height, width, labels = unaries.shape
        scores = unaries.to(torch.float32).reshape(num * height * width, labels)
        q = torch.softmax(scores, dim=1)
        if maxiter == 0 or num == 0:
            return q.reshape(unaries.shape)
        pixels = torch.trunc(images.to(torch.float32))   # the C++ wrapper's astype(uint8)
        kernels = (_LatticeKernels if method == "lattice" else _ExactKernels)(pixels, settings)
        for _ in range(maxiter):
            q = torch.softmax(kernels.energy(q, scores), dim=1)
        return q.reshape(unaries.shape)


def crf(images, unaries, maxiter=DEFAULT_ITERATIONS, scale_factor=1.0, method="lattice", check=True):
    """The SEC wrapper (`krahenbuhl2013.CRF_batch`): SEC's kernels at ``scale_factor``."""
    return dense_crf(images, unaries, maxiter=maxiter, method=method, check=check, **sec_kernels(scale_factor))


@functools.lru_cache(maxsize=GAUSSIAN_CACHE_SIZE)
def _mean(mean, device):
    return torch.tensor(mean, dtype=torch.float64).to(device)


def shrink_images(images, height, width, mean=MEAN_BGR):
    """N x 3 x H x W mean-subtracted BGR -> N x height x width x 3 values 0..255 (float64 integers).

    `pylayers.crf.shrink_images` in torch: corner-aligned linear zoom in float64 (scipy's
    ndimage.zoom order 1), the mean added back, rounded half to even, clipped to 0..255.
    """
    small = torch.nn.functional.interpolate(images.to(torch.float64), size=(height, width), mode="bilinear",
                                            align_corners=True)
    small = small.permute(0, 2, 3, 1) + _mean(tuple(float(m) for m in mean), images.device)
    return torch.clamp(torch.round(small), 0, PIXEL_MAX)


def crf_log_probs(scores, images, scale_factor=SCALE_FACTOR, maxiter=MAX_ITER, min_prob=MIN_PROB,
                  mean=MEAN_BGR, method="lattice"):
    """`pylayers.crf.crf_log_probs` in torch: log of the clamped, renormalised CRF marginals
    (N x C x h x w float32) of raw ``scores`` N x C x h x w on ``images`` N x 3 x H x W
    (mean-subtracted BGR, the network input) shrunk to h x w. No value checks (no host read but
    the bilateral lattice's one): the engine's CRF layer and `sec.nn.DenseCRF` check before."""
    num, _, height, width = scores.shape
    with torch.no_grad():
        small = shrink_images(images, height, width, mean)
        unaries = scores.detach().to(torch.float32).permute(0, 2, 3, 1)
        marginals = crf(small, unaries, maxiter=maxiter, scale_factor=scale_factor, method=method, check=False)
        return torch.log(clamp_and_normalise(marginals.permute(0, 3, 1, 2), min_prob)).contiguous()
