"""The SEC loss math in torch, on any device: tensors in, a differentiable 0-d loss out.

The twins of `pylayers.functions` (the numpy source of truth, which real Caffe runs), with the
same constants (imported from there), the same normalisation and the same degenerate-image
rules, so that losses and gradients agree to float rounding (tests/test_nn_losses.py).
Gradients come from autograd; a loss weight is just a multiplication of the result.

Layouts (NCHW, as the SEC net):

* ``scores`` N x C x H x W logits; ``probs`` N x C x H x W probabilities (channel 0 = background),
  floating point; losses are computed in float32 at least (bf16/fp16 inputs are upcast).
* ``cues`` N x C x H x W, 1 where a class is seeded at a pixel, else 0.
* ``labels`` N x C or N x 1 x 1 x C image labels, > 0.5 for a present class (column 0 ignored).
* ``log_q`` N x C x H x W CRF log-probabilities (treated as constants: no gradient).

Degenerate images never give NaN: a term whose normaliser would be zero (no cue pixel, no present
or no absent foreground class) contributes 0 for that image, and means still divide by N.
Reductions that numpy does in float64 are done in float64 here too; the loss returned has the
dtype of the (upcast) probabilities.
"""
import functools

import torch

from pylayers.functions import MIN_PROB, POOLINGS, PRESENT_THRESHOLD, Q_BG, Q_FG

RANK_WEIGHT_CACHE_SIZE = 16
"""GWRP weight vectors kept (map sizes x decays x devices): training uses two."""

__all__ = ["MIN_PROB", "POOLINGS", "Q_BG", "Q_FG", "clamp_and_normalise", "constrain_loss",
           "expand_loss", "global_pool", "rank_weights", "seed_loss", "softmax_with_floor"]


def float32(fn):
    """Run ``fn`` with autocast off on the device of its first argument (float32 math under a
    bf16/fp16 autocast region of the network)."""
    @functools.wraps(fn)
    def wrapper(tensor, *args, **kwargs):
        with torch.autocast(device_type=tensor.device.type, enabled=False):
            return fn(tensor, *args, **kwargs)
    return wrapper


def _as_float(tensor):
    """float32 for half-precision inputs (losses stay in float32 under autocast), else as is."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


@float32
def softmax_with_floor(scores, min_prob=MIN_PROB):
    """Channel softmax of N x C x H x W ``scores`` plus ``min_prob``, renormalised: every
    probability is at least min_prob / (1 + C min_prob)."""
    scores = _as_float(scores)
    return (torch.softmax(scores, dim=1) + min_prob) / (1.0 + scores.shape[1] * min_prob)


def _per_image_weights(counts, num_images):
    """1 / (N * count) where count > 0, else 0 (float64)."""
    counts = counts.to(torch.float64)
    return torch.where(counts > 0, 1.0 / (num_images * counts.clamp(min=1e-300)), torch.zeros_like(counts))


@float32
def seed_loss(probs, cues):
    """-mean over images of sum(cues * log probs) / (number of cue pixels); logs only where seeded."""
    probs = _as_float(probs)
    num_images = probs.shape[0]
    cues = cues.to(probs.dtype)
    seeded = cues != 0
    log_probs = torch.where(seeded, torch.log(torch.where(seeded, probs, torch.ones_like(probs))),
                            torch.zeros_like(probs))
    per_image = (cues * log_probs).reshape(num_images, -1).sum(dim=1, dtype=torch.float64)
    weights = _per_image_weights(cues.reshape(num_images, -1).sum(dim=1, dtype=torch.float64), num_images)
    return (-(per_image * weights).sum()).to(probs.dtype)


def rank_weights(length, decay, device=None):
    """GWRP weights d^j for ranks j = 0..length-1 (descending order), normalised to sum 1, float64.
    Made once per (length, decay, device): a constant of the training loop, not a per-step upload."""
    return _rank_weights(int(length), float(decay), torch.device(device) if device is not None else torch.device("cpu"))


@functools.lru_cache(maxsize=RANK_WEIGHT_CACHE_SIZE)
def _rank_weights(length, decay, device):
    weights = torch.pow(torch.tensor(decay, dtype=torch.float64), torch.arange(length, dtype=torch.float64))
    return (weights / weights.sum()).to(device)


def global_pool(rows, pooling="gwrp", decay=Q_FG):
    """Pool the last axis of ``rows`` (... x K); float64 result.

    ``gwrp``: sorted descending, weighted by d^j / sum d^j; ``gmp``: the same with d = 0 (max);
    ``gap``: mean. Tied values are ranked as pylayers ranks them (a stable ascending sort, read
    backwards: of equal values the later one ranks first), so gradients agree at ties too.
    """
    if pooling == "gap":
        return rows.to(torch.float64).mean(dim=-1)
    if pooling == "gmp":
        decay = 0.0
    elif pooling != "gwrp":
        raise ValueError(f"need pooling in {POOLINGS}, got {pooling!r}")
    ordered = torch.sort(rows, dim=-1, stable=True).values.flip(-1)
    return ordered.to(torch.float64) @ rank_weights(rows.shape[-1], decay, rows.device)


@float32
def expand_loss(probs, labels, q_fg=Q_FG, q_bg=Q_BG, pooling="gwrp"):
    """Expansion loss of SEC (`pylayers.functions.expand_loss`):

    - mean_i [sum_{present fg c} log pool_{q_fg}(p_c) / #present]
    - mean_i [sum_{absent fg c} log(1 - max p_c) / #absent]
    - mean_i log pool_{q_bg}(p_background)
    """
    probs = _as_float(probs)
    num_images, num_classes = probs.shape[:2]
    flat = probs.reshape(num_images, num_classes, -1)
    present = labels.reshape(num_images, num_classes)[:, 1:] > PRESENT_THRESHOLD
    absent = ~present
    fg = flat[:, 1:]

    present_weight = _per_image_weights(present.sum(dim=1), num_images)[:, None]
    pooled = global_pool(fg, pooling, q_fg)
    log_pooled = torch.log(torch.where(present, pooled, torch.ones_like(pooled)))
    loss = -(torch.where(present, present_weight * log_pooled, torch.zeros_like(log_pooled))).sum()

    absent_weight = _per_image_weights(absent.sum(dim=1), num_images)[:, None]
    peak = fg.max(dim=2).values.to(torch.float64)
    log_rest = torch.log1p(-torch.where(absent, peak, torch.zeros_like(peak)))
    loss = loss - torch.where(absent, absent_weight * log_rest, torch.zeros_like(log_rest)).sum()

    background = global_pool(flat[:, 0], pooling, q_bg)
    loss = loss - torch.log(background).sum() / num_images
    return loss.to(probs.dtype)


@float32
def constrain_loss(probs, log_q):
    """Mean over images and pixels of KL(Q || P) = sum_c Q log(Q / P); no gradient to ``log_q``."""
    probs = _as_float(probs)
    log_q = log_q.detach().to(probs.dtype)
    num_pixels = probs.shape[0] * probs.shape[2] * probs.shape[3]
    terms = torch.exp(log_q) * (log_q - torch.log(probs))
    return (terms.sum(dtype=torch.float64) / num_pixels).to(probs.dtype)


def clamp_and_normalise(probs, min_prob=MIN_PROB):
    """Raise every probability below ``min_prob`` to it, renormalise over dim 1 (a new tensor)."""
    clamped = probs.clamp(min=min_prob)
    return clamped / clamped.sum(dim=1, keepdim=True)
