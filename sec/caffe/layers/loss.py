"""Loss layers (Caffe's loss_layers family): SoftmaxWithLoss, SigmoidCrossEntropyLoss, Accuracy."""
import math

import torch
import torch.nn.functional as F

from sec.caffe.layers.base import canonical_axis, need_bottoms

NORM_FULL, NORM_VALID, NORM_BATCH_SIZE, NORM_NONE = 0, 1, 2, 3


def _outer_inner(shape, axis):
    return math.prod(shape[:axis]), math.prod(shape[axis + 1:])


def _check_labels(scores, labels, axis):
    outer, inner = _outer_inner(scores, axis)
    if math.prod(labels) != outer * inner:
        raise ValueError(f"label blob {tuple(labels)} must hold {outer * inner} values (outer x inner "
                         f"of scores {tuple(scores)} around axis {axis}), has {math.prod(labels)}")


class SoftmaxWithLoss:
    """Multinomial logistic loss of softmax(bottom[0]) along `axis` against integer labels
    bottom[1] (stored as floats). One top: the loss (shape ()).

    Normalization as Caffe: VALID (default) divides by the non-ignored count, FULL by all
    positions, BATCH_SIZE by the outer count, NONE by 1; the legacy `normalize` flag maps to
    VALID/BATCH_SIZE when `normalization` is not set. The divisor is at least 1.
    """

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 2)
        if len(lp.top) != 1:
            # BVLC Caffe 1.0 declares a second (probability) top but its inner Softmax copies the
            # layer's loss_weight list, so Net::Init fails for every loss_weight choice.
            raise ValueError(f"needs exactly 1 top (the loss), got {len(lp.top)}: BVLC Caffe 1.0 rejects "
                             "a second (probability) top; add a Softmax layer for the probabilities")
        self.axis = canonical_axis(lp.softmax_param.axis, len(shapes[0]), "softmax_param.axis")
        lparam = lp.loss_param
        self.ignore = lparam.ignore_label if lparam.HasField("ignore_label") else None
        if lparam.HasField("normalize") and not lparam.HasField("normalization"):
            self.norm = NORM_VALID if lparam.normalize else NORM_BATCH_SIZE
        else:
            self.norm = lparam.normalization
        self.params = []

    def shapes(self, shapes):
        _check_labels(shapes[0], shapes[1], self.axis)
        return [()]

    def forward(self, scores, labels):
        shape = scores.shape
        outer, inner = _outer_inner(shape, self.axis)
        logp = F.log_softmax(scores, dim=self.axis)
        logp3 = logp.reshape(outer, shape[self.axis], inner)
        lab = labels.detach().reshape(outer, inner).long()
        if self.ignore is not None:
            valid = lab != self.ignore
            picked = logp3.gather(1, torch.where(valid, lab, 0).unsqueeze(1)).squeeze(1)
            loss_sum = -(picked * valid).sum()
        else:
            valid = None
            loss_sum = -logp3.gather(1, lab.unsqueeze(1)).sum()
        return (loss_sum / self._normalizer(outer, inner, valid),)

    def _normalizer(self, outer, inner, valid):
        if self.norm == NORM_VALID and valid is not None:
            return valid.sum().clamp(min=1).to(torch.float32)
        if self.norm in (NORM_FULL, NORM_VALID):
            return float(max(1, outer * inner))
        if self.norm == NORM_BATCH_SIZE:
            return float(max(1, outer))
        return 1.0


class SigmoidCrossEntropyLoss:
    """Logistic loss of sigmoid(bottom[0]) against targets bottom[1] (same count, values in [0, 1]):
    -sum(t log s(x) + (1 - t) log(1 - s(x))), in the stable form max(x, 0) - x t + log(1 + e^-|x|).
    Top: loss (shape ()). The gradient (s(x) - t) / normalizer goes to the scores only.

    As Caffe's layer: a position whose target, truncated to int, equals `ignore_label` adds nothing
    (and gets no gradient); normalization FULL/VALID/BATCH_SIZE/NONE with outer = shape[0] and
    inner = count / shape[0]; when neither `normalization` nor the legacy `normalize` is set the
    default is BATCH_SIZE (this layer's own default, unlike SoftmaxWithLoss's VALID). The divisor
    is at least 1.
    """

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 2)
        if len(lp.top) != 1:
            raise ValueError(f"needs 1 top (loss), got {len(lp.top)}")
        lparam = lp.loss_param
        self.ignore = lparam.ignore_label if lparam.HasField("ignore_label") else None
        if lparam.HasField("normalization"):
            self.norm = lparam.normalization
        elif lparam.HasField("normalize"):
            self.norm = NORM_VALID if lparam.normalize else NORM_BATCH_SIZE
        else:
            self.norm = NORM_BATCH_SIZE
        self.params = []

    def shapes(self, shapes):
        scores, targets = tuple(shapes[0]), tuple(shapes[1])
        if not scores:
            raise ValueError("scores must have at least one axis (the batch)")
        if math.prod(scores) != math.prod(targets):
            raise ValueError(f"scores {scores} and targets {targets} must have the same count "
                             f"({math.prod(scores)} vs {math.prod(targets)})")
        return [()]

    def forward(self, scores, targets):
        t = targets.detach().reshape(scores.shape).to(scores.dtype)
        terms = F.binary_cross_entropy_with_logits(scores, t, reduction="none")
        outer = scores.shape[0]
        count = scores.numel()
        if self.ignore is None:
            return (terms.sum() / self._normalizer(outer, count, count),)
        valid = t.trunc() != self.ignore
        loss_sum = torch.where(valid, terms, torch.zeros_like(terms)).sum()
        return (loss_sum / self._normalizer(outer, count, valid.sum()),)

    def _normalizer(self, outer, count, valid_count):
        if self.norm == NORM_VALID:
            if isinstance(valid_count, torch.Tensor):
                return valid_count.clamp(min=1).to(torch.float32)
            return float(max(1, valid_count))
        if self.norm == NORM_FULL:
            return float(max(1, count))
        if self.norm == NORM_BATCH_SIZE:
            return float(max(1, outer))
        return 1.0


class Accuracy:
    """Top-k accuracy as Caffe counts it: a position is right when fewer than k classes score
    at least as high as the true class minus one (the true class itself). Ignored labels do not
    count. Optional second top: per-class accuracy (C,). No gradient."""

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 2)
        if len(lp.top) not in (1, 2):
            raise ValueError(f"needs 1 or 2 tops, got {len(lp.top)}")
        p = lp.accuracy_param
        self.axis = canonical_axis(p.axis, len(shapes[0]), "accuracy_param.axis")
        self.top_k = int(p.top_k)
        if not 1 <= self.top_k <= shapes[0][self.axis]:
            raise ValueError(f"accuracy_param.top_k {self.top_k} must be in 1..{shapes[0][self.axis]} (classes)")
        self.ignore = p.ignore_label if p.HasField("ignore_label") else None
        self.ntop = len(lp.top)
        self.params = []

    def shapes(self, shapes):
        _check_labels(shapes[0], shapes[1], self.axis)
        return [()] + [(shapes[0][self.axis],)] * (self.ntop - 1)

    def forward(self, scores, labels):
        with torch.no_grad():
            shape = scores.shape
            outer, inner = _outer_inner(shape, self.axis)
            classes = shape[self.axis]
            x = scores.reshape(outer, classes, inner)
            lab = labels.reshape(outer, inner).long()
            valid = lab != self.ignore if self.ignore is not None else torch.ones_like(lab, dtype=torch.bool)
            safe = torch.where(valid, lab, 0)
            true_score = x.gather(1, safe.unsqueeze(1))
            better = (x >= true_score).sum(1) - 1
            correct = (better < self.top_k) & valid
            count = valid.sum()
            accuracy = torch.where(count > 0, correct.sum() / count.clamp(min=1), 0.0).to(torch.float32)
            if self.ntop == 1:
                return (accuracy,)
            onehot = F.one_hot(safe, classes)
            per_count = (onehot * valid.unsqueeze(-1)).sum((0, 1))
            per_correct = (onehot * correct.unsqueeze(-1)).sum((0, 1))
            per_class = torch.where(per_count > 0, per_correct / per_count.clamp(min=1), 0.0)
            return accuracy, per_class.to(torch.float32)
