"""SEC's losses and dense CRF as torch.nn.Modules, for any PyTorch training loop.

Shapes (NCHW): scores/logits N x C x H x W; probabilities N x C x H x W (channel 0 background);
cues N x C x H x W (1 = seeded); labels N x C (or N x 1 x 1 x C), 1 for a present class, column 0
(background) ignored; images N x 3 x H' x W' as the network input (mean-subtracted BGR, any
resolution: the CRF shrinks them to H x W). Every loss returns a 0-d float32 tensor (float32
even under bf16 autocast); the CRF output is a constant (no gradient).
"""
import torch

from pylayers.crf import MAX_ITER, MEAN_BGR, SCALE_FACTOR

from . import crf as _crf
from . import functional as F


class SoftmaxWithFloor(torch.nn.Module):
    """logits N x C x H x W -> probabilities (softmax + min_prob, renormalised)."""

    def __init__(self, min_prob=F.MIN_PROB):
        super().__init__()
        self.min_prob = float(min_prob)

    def forward(self, scores):
        return F.softmax_with_floor(scores, self.min_prob)


class SeedLoss(torch.nn.Module):
    """Seeding loss: forward(probs, cues) -> -mean_i sum(cues log probs) / #cue pixels of image i."""

    def forward(self, probs, cues):
        return F.seed_loss(probs, cues)


class ExpandLoss(torch.nn.Module):
    """Expansion loss with global weighted rank pooling: forward(probs, labels).

    pooling: "gwrp" (decays q_fg for foreground, q_bg for background), "gmp" or "gap".
    """

    def __init__(self, q_fg=F.Q_FG, q_bg=F.Q_BG, pooling="gwrp"):
        super().__init__()
        if pooling not in F.POOLINGS:
            raise ValueError(f"need pooling in {F.POOLINGS}, got {pooling!r}")
        self.q_fg, self.q_bg, self.pooling = float(q_fg), float(q_bg), pooling

    def forward(self, probs, labels):
        return F.expand_loss(probs, labels, self.q_fg, self.q_bg, self.pooling)


class ConstrainLoss(torch.nn.Module):
    """Constrain-to-boundary loss: forward(probs, log_q) -> mean over pixels of KL(Q || P)."""

    def forward(self, probs, log_q):
        return F.constrain_loss(probs, log_q)


class DenseCRF(torch.nn.Module):
    """SEC's CRF step: forward(scores, images) -> CRF log-probabilities N x C x H x W.

    scores: raw logits N x C x H x W (unary = scores); images: N x 3 x H' x W' mean-subtracted
    BGR (``mean`` added back after a corner-aligned linear shrink to H x W). Kernels are the SEC
    wrapper's at ``scale_factor`` (12 for 41 x 41 maps of 321 x 321 inputs, 1 at full
    resolution); marginals are clamped at ``min_prob``, renormalised and logged.
    ``method``: "lattice" (as krahenbuhl2013) or "exact" (dense N x N kernels, small maps only).
    """

    def __init__(self, scale_factor=SCALE_FACTOR, maxiter=MAX_ITER, min_prob=F.MIN_PROB, mean=MEAN_BGR,
                 method="lattice"):
        super().__init__()
        if method not in _crf.METHODS:
            raise ValueError(f"need method in {_crf.METHODS}, got {method!r}")
        self.scale_factor, self.maxiter, self.min_prob = float(scale_factor), int(maxiter), float(min_prob)
        self.mean, self.method = tuple(float(m) for m in mean), method

    def forward(self, scores, images):
        return _crf.crf_log_probs(scores, images, self.scale_factor, self.maxiter, self.min_prob, self.mean,
                                  self.method)


class SECLoss(torch.nn.Module):
    """The three SEC losses from logits: forward(scores, images, labels, cues) -> (total, parts).

    total = seed + expand + constrain (loss weights 1, as SEC); parts is a dict of the three
    0-d tensors. The CRF runs on the detached scores, in float32.
    """

    def __init__(self, min_prob=F.MIN_PROB, expand=None, crf=None):
        super().__init__()
        self.softmax = SoftmaxWithFloor(min_prob)
        self.seed = SeedLoss()
        self.expand = expand if expand is not None else ExpandLoss()
        self.constrain = ConstrainLoss()
        self.crf = crf if crf is not None else DenseCRF(min_prob=min_prob)

    def forward(self, scores, images, labels, cues):
        probs = self.softmax(scores)
        log_q = self.crf(scores, images)
        parts = {"seed": self.seed(probs, cues), "expand": self.expand(probs, labels),
                 "constrain": self.constrain(probs, log_q)}
        return parts["seed"] + parts["expand"] + parts["constrain"], parts
