"""Distance and margin losses (Caffe's loss_layers family): EuclideanLoss, HingeLoss,
ContrastiveLoss. Each has one top, the loss (shape ()), loss_weight 1 by default."""
import math

import torch
import torch.nn.functional as F

from sec.caffe.layers.base import need_bottoms
from sec.caffe.layers.loss import check_batches, item_labels, layer_label, need_tops

HINGE_L1, HINGE_L2 = 1, 2
# ContrastiveLoss's gradient of the distance divides by (distance + CONTRASTIVE_EPS), not by the
# distance (contrastive_loss_layer.cpp), so identical pairs get a finite gradient.
CONTRASTIVE_EPS = 1e-4
LEGACY_AXES = 4   # Caffe's num/channels/height/width accessors refuse blobs of more axes


def _legacy_dims(shape, what):
    """(num, channels, height, width) of a blob as Caffe's legacy accessors read it."""
    shape = tuple(shape)
    if len(shape) > LEGACY_AXES:
        raise ValueError(f"{what} {shape} has more than {LEGACY_AXES} axes")
    return shape + (1,) * (LEGACY_AXES - len(shape))


class EuclideanLoss:
    """sum((a - b)^2) / (2 N), N = a.shape[0]; a and b hold the same number of values per item.
    Both bottoms get a gradient (Caffe allows force_backward to either)."""

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 2)
        need_tops(lp, 1)
        self.params = []
        self.shapes(shapes)

    def shapes(self, shapes):
        check_batches(shapes)
        a, b = tuple(shapes[0]), tuple(shapes[1])
        if math.prod(a[1:]) != math.prod(b[1:]):
            raise ValueError(f"bottoms {a} and {b} must hold the same number of values per item")
        return [()]

    def forward(self, a, b):
        diff = a - b.reshape(a.shape)
        return ((diff * diff).sum() / a.shape[0] / 2,)


class HingeLoss:
    """Caffe's HingeLoss on scores (N x ...: the item's values flattened, D of them) and one
    integer label per item: t_ij = max(0, 1 + s_ij x_ij) with s = -1 at the label, +1 elsewhere;
    loss sum(t) / N (norm L1, the default) or sum(t^2) / N (L2). The L1 gradient is s sign(t) / N
    (0 where t = 0, as Caffe). Labels outside [0, D) are an error."""

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 2)
        need_tops(lp, 1)
        self.norm = lp.hinge_loss_param.norm
        if self.norm not in (HINGE_L1, HINGE_L2):
            raise ValueError(f"hinge_loss_param.norm {self.norm} is not L1 or L2")
        self.where, self.params = layer_label(lp), []
        self.shapes(shapes)

    def shapes(self, shapes):
        check_batches(shapes)
        if math.prod(shapes[1]) != shapes[0][0]:
            raise ValueError(f"labels {tuple(shapes[1])} must hold one label per item ({shapes[0][0]})")
        return [()]

    def forward(self, scores, labels):
        num, flat, lab = item_labels(scores, labels, self.where)
        sign = torch.ones_like(flat).scatter_(1, lab.unsqueeze(1), -1.0)
        margins = F.relu(1 + sign * flat)
        total = margins.sum() if self.norm == HINGE_L1 else (margins * margins).sum()
        return (total / num,)


class _SqrtEps(torch.autograd.Function):
    """sqrt(x) forward; backward divides by 2 (sqrt(x) + CONTRASTIVE_EPS), Caffe's form."""

    @staticmethod
    def forward(ctx, x):
        root = x.sqrt()
        ctx.save_for_backward(root)
        return root

    @staticmethod
    def backward(ctx, grad):
        (root,) = ctx.saved_tensors
        return grad / (2 * (root + CONTRASTIVE_EPS))


class ContrastiveLoss:
    """Caffe's ContrastiveLoss on feature pairs a, b (N x C x 1 x 1, or fewer axes) and a
    similarity y per pair (truncated to int: non-zero = similar): with d = ||a - b||,
    similar pairs add d^2, dissimilar ones max(margin - d, 0)^2 (or, with legacy_version,
    max(margin - d^2, 0)); the sum is divided by 2 N. Gradients to a and b as Caffe's (the
    distance's derivative uses d + 1e-4); none to y."""

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 3)
        need_tops(lp, 1)
        p = lp.contrastive_loss_param
        self.margin, self.legacy = float(p.margin), p.legacy_version
        self.params = []
        self.shapes(shapes)

    def shapes(self, shapes):
        check_batches(shapes)
        a, b = _legacy_dims(shapes[0], "bottom 0"), _legacy_dims(shapes[1], "bottom 1")
        y = _legacy_dims(shapes[2], "bottom 2 (similarity)")
        if a[1] != b[1] or a[2:] != (1, 1) or b[2:] != (1, 1):
            raise ValueError(f"bottoms 0 {tuple(shapes[0])} and 1 {tuple(shapes[1])} must both be N x C x 1 x 1 "
                             "with the same C")
        if y[1:] != (1, 1, 1) or y[0] != a[0]:
            raise ValueError(f"bottom 2 (similarity) {tuple(shapes[2])} must be N x 1 x 1 x 1 with N = {a[0]}")
        return [()]

    def forward(self, a, b, similar):
        num = a.shape[0]
        diff = (a - b).reshape(num, -1)
        dist_sq = (diff * diff).sum(1)
        same = similar.detach().reshape(num).trunc() != 0
        if self.legacy:
            apart = F.relu(self.margin - dist_sq)
        else:
            apart = F.relu(self.margin - _SqrtEps.apply(dist_sq)) ** 2
        return (torch.where(same, dist_sq, apart).sum() / num / 2,)
