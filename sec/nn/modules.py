"""SEC's losses and dense CRF as torch.nn.Modules, for any PyTorch training loop.

Shapes (NCHW): scores/logits N x C x H x W; probabilities N x C x H x W (channel 0 background);
cues N x C x H x W (1 = seeded); labels N x C (or N x 1 x 1 x C), 1 for a present class, column 0
(background) ignored; images N x 3 x H' x W' as the network input (mean-subtracted BGR, any
resolution: the CRF shrinks them to H x W). Every loss returns a 0-d float32 tensor (float32
even under bf16 autocast); the CRF output is a constant (no gradient).

Arguments and inputs are checked as pylayers' layers check theirs (sec.nn.checks): parameters
when the module is made; types, shapes, devices and empty batches at every call (free); values
(NaN/Inf, probabilities outside [0, 1], a loss that is not finite) at every call with one host
read, unless the module is made with ``check_values=False``. Each failure is one ValueError or
TypeError that names the module and the argument.
"""
import torch

from krahenbuhl2013 import MAX_ITERATIONS
from pylayers.crf import MAX_ITER, MEAN_BGR, SCALE_FACTOR

from . import crf as _crf
from . import functional as F
from .checks import (ValueChecks, count_param, need_layout, need_nonempty, need_one_device, need_shape,
                     need_tensor, number_param, probability_param)

NCHW = "N x C x H x W"


def _probabilities(where, probs, checks):
    need_tensor(where, "probs", probs, floating=True)
    need_layout(where, "probs", probs, NCHW)
    need_nonempty(where, "probs", probs, NCHW)
    if checks is not None:
        checks.within("probs", probs, 0.0, 1.0, "in [0, 1]")


def _probabilities_and_map(where, probs, name, other, checks, floating=False):
    """probs and a map of their shape on their device (cues, log_q), finite."""
    _probabilities(where, probs, checks)
    need_tensor(where, name, other, floating=floating)
    need_shape(where, name, other, probs.shape, "the shape of the probabilities")
    need_one_device(where, **{"probs": probs, name: other})
    if checks is not None:
        checks.finite(name, other)


def _finite_loss(where, loss, checks, cause):
    """The loss must be finite: with valid inputs it is not only when ``cause`` (a log of 0)."""
    if checks is not None:
        checks.add("probs", ~torch.isfinite(loss), lambda: f"give a loss that is not finite: {cause}")
    return loss


class _Checked(torch.nn.Module):
    """forward(*inputs) = compute(*inputs, checks) with the value checks read once at the end."""

    def __init__(self, check_values=True):
        super().__init__()
        self.check_values = bool(check_values)

    def forward(self, *inputs):
        checks = ValueChecks() if self.check_values else None
        out = self.compute(*inputs, checks=checks)
        if checks is not None:
            checks.raise_first(type(self).__name__)
        return out


class SoftmaxWithFloor(_Checked):
    """logits N x C x H x W -> probabilities (softmax + min_prob, renormalised)."""

    def __init__(self, min_prob=F.MIN_PROB, check_values=True):
        super().__init__(check_values)
        self.min_prob = probability_param("SoftmaxWithFloor", "min_prob", min_prob)

    def compute(self, scores, checks=None):
        where = type(self).__name__
        need_tensor(where, "scores", scores, floating=True)
        need_layout(where, "scores", scores, NCHW)
        need_nonempty(where, "scores", scores, NCHW)
        if checks is not None:
            checks.finite("scores", scores)
        return F.softmax_with_floor(scores, self.min_prob)


class SeedLoss(_Checked):
    """Seeding loss: forward(probs, cues) -> -mean_i sum(cues log probs) / #cue pixels of image i."""

    def compute(self, probs, cues, checks=None):
        where = type(self).__name__
        _probabilities_and_map(where, probs, "cues", cues, checks)
        return _finite_loss(where, F.seed_loss(probs, cues), checks, "a probability of 0 where a cue is set")


class ExpandLoss(_Checked):
    """Expansion loss with global weighted rank pooling: forward(probs, labels).

    pooling: "gwrp" (decays q_fg for foreground, q_bg for background), "gmp" or "gap".
    """

    def __init__(self, q_fg=F.Q_FG, q_bg=F.Q_BG, pooling="gwrp", check_values=True):
        super().__init__(check_values)
        if pooling not in F.POOLINGS:
            raise ValueError(f"ExpandLoss: pooling must be one of {F.POOLINGS}, got {pooling!r}")
        self.q_fg = probability_param("ExpandLoss", "q_fg", q_fg, closed=True)
        self.q_bg = probability_param("ExpandLoss", "q_bg", q_bg, closed=True)
        self.pooling = pooling

    def compute(self, probs, labels, checks=None):
        where = type(self).__name__
        _probabilities(where, probs, checks)
        need_tensor(where, "labels", labels)
        num, classes = probs.shape[:2]
        if tuple(labels.shape) not in ((num, classes), (num, 1, 1, classes)):
            raise ValueError(f"{where}: labels need shape {(num, 1, 1, classes)} or {(num, classes)}, "
                             f"got {tuple(labels.shape)}")
        need_one_device(where, probs=probs, labels=labels)
        if checks is not None:
            checks.finite("labels", labels)
        loss = F.expand_loss(probs, labels, self.q_fg, self.q_bg, self.pooling)
        return _finite_loss(where, loss, checks, "a pooled probability of 0, or a maximum of 1 for an absent class")


class ConstrainLoss(_Checked):
    """Constrain-to-boundary loss: forward(probs, log_q) -> mean over pixels of KL(Q || P)."""

    def compute(self, probs, log_q, checks=None):
        where = type(self).__name__
        _probabilities_and_map(where, probs, "log_q", log_q, checks, floating=True)
        return _finite_loss(where, F.constrain_loss(probs, log_q), checks, "a probability of 0")


class DenseCRF(_Checked):
    """SEC's CRF step: forward(scores, images) -> CRF log-probabilities N x C x H x W.

    scores: raw logits N x C x H x W (unary = scores); images: N x 3 x H' x W' mean-subtracted
    BGR (``mean`` added back after a corner-aligned linear shrink to H x W). Kernels are the SEC
    wrapper's at ``scale_factor`` (12 for 41 x 41 maps of 321 x 321 inputs, 1 at full
    resolution); marginals are clamped at ``min_prob``, renormalised and logged.
    ``maxiter``: 0..1000 mean-field iterations (krahenbuhl2013's cap).
    ``method``: "lattice" (as krahenbuhl2013) or "exact" (dense N x N kernels, small maps only).
    """

    def __init__(self, scale_factor=SCALE_FACTOR, maxiter=MAX_ITER, min_prob=F.MIN_PROB, mean=MEAN_BGR,
                 method="lattice", check_values=True):
        super().__init__(check_values)
        where = "DenseCRF"
        if method not in _crf.METHODS:
            raise ValueError(f"{where}: method must be one of {_crf.METHODS}, got {method!r}")
        self.scale_factor = number_param(where, "scale_factor", scale_factor, lambda v: v > 0, "> 0")
        self.maxiter = count_param(where, "maxiter", maxiter, MAX_ITERATIONS)
        self.min_prob = probability_param(where, "min_prob", min_prob)
        try:
            values = [float(m) for m in mean]
        except (TypeError, ValueError):
            values = []
        if len(values) != 3 or not all(v == v and abs(v) != float("inf") for v in values):
            raise ValueError(f"{where}: mean needs 3 finite values (BGR), got {mean!r}")
        self.mean, self.method = tuple(values), method

    def compute(self, scores, images, checks=None):
        where = type(self).__name__
        need_tensor(where, "scores", scores, floating=True)
        need_tensor(where, "images", images)
        if scores.ndim != 4 or images.ndim != 4 or images.shape[0] != scores.shape[0] or images.shape[1] != 3:
            raise ValueError(f"{where}: need scores N x C x h x w and images N x 3 x H x W, "
                             f"got {tuple(scores.shape)} and {tuple(images.shape)}")
        need_nonempty(where, "scores", scores, "N x C x h x w")
        need_nonempty(where, "images", images, "N x 3 x H x W")
        need_one_device(where, scores=scores, images=images)
        if checks is not None:
            checks.add("scores", (torch.isnan(scores) | (scores == float("inf"))).any(),
                       lambda: "need scores that are finite or -inf, got NaN or +inf")
            checks.finite("images", images)
        return _crf.crf_log_probs(scores, images, self.scale_factor, self.maxiter, self.min_prob, self.mean,
                                  self.method)


class SECLoss(torch.nn.Module):
    """The three SEC losses from logits: forward(scores, images, labels, cues) -> (total, parts).

    total = seed + expand + constrain (loss weights 1, as SEC); parts is a dict of the three
    0-d tensors. The CRF runs on the detached scores, in float32. The value checks of all five
    steps are read from the device together, once per call (``check_values``).
    """

    def __init__(self, min_prob=F.MIN_PROB, expand=None, crf=None, check_values=True):
        super().__init__()
        self.check_values = bool(check_values)
        self.softmax = SoftmaxWithFloor(min_prob)
        self.seed = SeedLoss()
        self.expand = expand if expand is not None else ExpandLoss()
        self.constrain = ConstrainLoss()
        self.crf = crf if crf is not None else DenseCRF(min_prob=min_prob)

    def forward(self, scores, images, labels, cues):
        checks = ValueChecks() if self.check_values else None
        probs = self.softmax.compute(scores, checks=checks)
        log_q = self.crf.compute(scores, images, checks=checks)
        parts = {"seed": self.seed.compute(probs, cues, checks=checks),
                 "expand": self.expand.compute(probs, labels, checks=checks),
                 "constrain": self.constrain.compute(probs, log_q, checks=checks)}
        if checks is not None:
            checks.raise_first(type(self).__name__)
        return parts["seed"] + parts["expand"] + parts["constrain"], parts
