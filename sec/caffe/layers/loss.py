"""Loss layers (Caffe's loss_layers family) built on class scores or probabilities:
SoftmaxWithLoss, InfogainLoss, MultinomialLogisticLoss, SigmoidCrossEntropyLoss, Accuracy.
EuclideanLoss, HingeLoss and ContrastiveLoss are in loss_distance.py.

Caffe's loss layers compute their forward value and their gradient separately; where the two
are not each other's exact derivative (a clamped log whose gradient is not clamped), the
autograd Function `FloorValue` keeps Caffe's pair.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from sec.caffe.layers.base import canonical_axis, need_bottoms

NORM_FULL, NORM_VALID, NORM_BATCH_SIZE, NORM_NONE = 0, 1, 2, 3
# Caffe clamps probabilities before the log: SoftmaxWithLoss at FLT_MIN (so a position adds at
# most -log(FLT_MIN) = 87.34 to the loss), InfogainLoss and MultinomialLogisticLoss at
# kLOG_THRESHOLD (loss_layer.hpp). Logs are taken in float32, as Caffe's.
FLT_MIN = float(np.finfo(np.float32).tiny)
LOG_FLT_MIN = float(np.log(np.float32(FLT_MIN)))
MIN_PROB = float(np.float32(1e-20))   # Caffe's kLOG_THRESHOLD
LOG_MIN_PROB = float(np.log(np.float32(MIN_PROB)))


class FloorValue(torch.autograd.Function):
    """max(x, floor) forward, the gradient passed through unchanged where it was clamped too.
    SoftmaxWithLoss and InfogainLoss clamp log-probabilities this way (Caffe clamps their value,
    not their gradient); MultinomialLogisticLoss clamps the probability before a log, so that the
    log's gradient is Caffe's -1 / max(p, 1e-20)."""

    @staticmethod
    def forward(ctx, x, floor):
        return x.clamp(min=floor)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def layer_label(lp):
    """'layer NAME (type T)': forward-time errors name the layer themselves."""
    return f"layer '{lp.name}' (type {lp.type})"


def need_tops(lp, low, high=None):
    high = low if high is None else high
    if not low <= len(lp.top) <= high:
        want = str(low) if low == high else f"{low} or {high}"
        raise ValueError(f"needs {want} top(s), got {len(lp.top)}")


def check_batches(shapes):
    """Caffe's LossLayer::Reshape: data and labels share their first axis."""
    data, labels = tuple(shapes[0]), tuple(shapes[1])
    if not data or not labels or data[0] != labels[0]:
        raise ValueError(f"bottom 0 {data} and bottom 1 {labels} must have the same first dimension")


def check_label_range(labels, classes, where, valid=None):
    """Labels (int64) outside [0, classes) (where `valid`) are an error naming the layer; Caffe
    checks them only in debug builds and reads past its arrays otherwise."""
    bad = (labels < 0) | (labels >= classes)
    if valid is not None:
        bad &= valid
    if bool(bad.any()):
        raise ValueError(f"{where}: label {int(labels[bad][0])} out of range [0, {classes})")


def _labels(labels, outer, inner, ignore, classes, where):
    """(labels as int64 outer x inner, mask of the counted ones or None when nothing is ignored,
    labels with the ignored ones replaced by 0 for indexing); out-of-range labels are an error."""
    lab = labels.detach().reshape(outer, inner).long()
    valid = lab != ignore if ignore is not None else None
    check_label_range(lab, classes, where, valid)
    return lab, valid, lab if valid is None else torch.where(valid, lab, 0)


def item_labels(values, labels, where):
    """(N, values as N x D, one int64 label per item, checked to index the D values): the layout
    of MultinomialLogisticLoss and HingeLoss."""
    num = values.shape[0]
    flat = values.reshape(num, -1)
    lab = labels.detach().reshape(num).long()
    check_label_range(lab, flat.shape[1], where)
    return num, flat, lab


def _outer_inner(shape, axis):
    return math.prod(shape[:axis]), math.prod(shape[axis + 1:])


def _check_labels(scores, labels, axis):
    outer, inner = _outer_inner(scores, axis)
    if math.prod(labels) != outer * inner:
        raise ValueError(f"label blob {tuple(labels)} must hold {outer * inner} values (outer x inner "
                         f"of scores {tuple(scores)} around axis {axis}), has {math.prod(labels)}")


def _normalization(lparam, default):
    """The normalization mode: `normalization` if set, else the legacy `normalize` (VALID or
    BATCH_SIZE), else the layer's default."""
    if lparam.HasField("normalization"):
        return lparam.normalization
    if lparam.HasField("normalize"):
        return NORM_VALID if lparam.normalize else NORM_BATCH_SIZE
    return default


def _normalizer(norm, outer, inner, valid):
    """Caffe's get_normalizer, at least 1: `valid` is the mask of counted positions (None: all)."""
    if norm == NORM_VALID and valid is not None:
        return valid.sum().clamp(min=1).to(torch.float32)
    if norm in (NORM_FULL, NORM_VALID):
        return float(max(1, outer * inner))
    if norm == NORM_BATCH_SIZE:
        return float(max(1, outer))
    return 1.0


class SoftmaxWithLoss:
    """Multinomial logistic loss of softmax(bottom[0]) along `axis` against integer labels
    bottom[1] (stored as floats). One top: the loss (shape ()).

    Normalization as Caffe: VALID (default) divides by the non-ignored count, FULL by all
    positions, BATCH_SIZE by the outer count, NONE by 1; the legacy `normalize` flag maps to
    VALID/BATCH_SIZE when `normalization` is not set. The divisor is at least 1. As Caffe, each
    position adds at most -log(FLT_MIN) = 87.34 (its probability is clamped at FLT_MIN) while
    its gradient stays softmax - onehot.
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
        self.norm = _normalization(lparam, NORM_VALID)
        self.where, self.params = layer_label(lp), []

    def shapes(self, shapes):
        check_batches(shapes)
        _check_labels(shapes[0], shapes[1], self.axis)
        return [()]

    def forward(self, scores, labels):
        shape = scores.shape
        outer, inner = _outer_inner(shape, self.axis)
        logp = F.log_softmax(scores, dim=self.axis)
        logp3 = FloorValue.apply(logp, LOG_FLT_MIN).reshape(outer, shape[self.axis], inner)
        _, valid, safe = _labels(labels, outer, inner, self.ignore, shape[self.axis], self.where)
        picked = logp3.gather(1, safe.unsqueeze(1)).squeeze(1)
        loss_sum = -(picked.sum() if valid is None else (picked * valid).sum())
        return (loss_sum / _normalizer(self.norm, outer, inner, valid),)


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
        self.norm = _normalization(lparam, NORM_BATCH_SIZE)
        self.params = []

    def shapes(self, shapes):
        scores, targets = tuple(shapes[0]), tuple(shapes[1])
        check_batches(shapes)
        if math.prod(scores) != math.prod(targets):
            raise ValueError(f"scores {scores} and targets {targets} must have the same count "
                             f"({math.prod(scores)} vs {math.prod(targets)})")
        return [()]

    def forward(self, scores, targets):
        t = targets.detach().reshape(scores.shape).to(scores.dtype)
        terms = F.binary_cross_entropy_with_logits(scores, t, reduction="none")
        outer = scores.shape[0]
        inner = scores.numel() // max(1, outer)
        if self.ignore is None:
            return (terms.sum() / _normalizer(self.norm, outer, inner, None),)
        valid = t.trunc() != self.ignore
        loss_sum = torch.where(valid, terms, torch.zeros_like(terms)).sum()
        return (loss_sum / _normalizer(self.norm, outer, inner, valid),)


class Accuracy:
    """Top-k accuracy as Caffe counts it: a position is right when fewer than k classes score
    at least as high as the true class minus one (the true class itself). Ignored labels do not
    count; others outside [0, C) are an error. Optional second top: per-class accuracy (C,).
    No gradient."""

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
        self.where, self.params = layer_label(lp), []

    def shapes(self, shapes):
        _check_labels(shapes[0], shapes[1], self.axis)
        return [()] + [(shapes[0][self.axis],)] * (self.ntop - 1)

    def forward(self, scores, labels):
        with torch.no_grad():
            shape = scores.shape
            outer, inner = _outer_inner(shape, self.axis)
            classes = shape[self.axis]
            x = scores.reshape(outer, classes, inner)
            lab, valid, safe = _labels(labels, outer, inner, self.ignore, classes, self.where)
            if valid is None:
                valid = torch.ones_like(lab, dtype=torch.bool)
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


class InfogainLoss:
    """Caffe 1.0's InfogainLoss: softmax of bottom[0] along `infogain_loss_param.axis`, then
    -sum_l H[label, l] log(max(p_l, 1e-20)) per position, normalized as SoftmaxWithLoss
    (loss_param ignore_label, normalization; default VALID; the legacy `normalize` is refused,
    as Caffe does). H (C x C, any shape of C^2 values) is bottom[2] or the .binaryproto file
    `infogain_loss_param.source`, read at build time. Gradient as Caffe's: (p * sum_l H[label, l]
    - H[label]) / normalizer, unclamped; none to the labels or H. An optional second top is
    the softmax (Caffe then needs a loss_weight for each top); no gradient flows back from it, as
    Caffe ignores its diff. Labels outside [0, C) (other than ignore_label) are an error.
    """

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 2, 3)
        need_tops(lp, 1, 2)
        if len(lp.top) == 2 and not lp.loss_weight:
            raise ValueError("with a second (probability) top, loss_weight must be given for both tops "
                             "(Caffe adds one loss_weight for the loss, then refuses one weight for two tops)")
        lparam = lp.loss_param
        if lparam.HasField("normalize"):
            raise ValueError("loss_param.normalize is deprecated for InfogainLoss (Caffe refuses it); "
                             "use loss_param.normalization")
        self.norm = _normalization(lparam, NORM_VALID)
        self.ignore = lparam.ignore_label if lparam.HasField("ignore_label") else None
        self.axis = canonical_axis(lp.infogain_loss_param.axis, len(shapes[0]), "infogain_loss_param.axis")
        self.where, self.ntop, self.params = layer_label(lp), len(lp.top), []
        self.matrix = None
        if len(shapes) == 2:
            self.matrix = self._read_source(lp.infogain_loss_param)
        self.shapes(shapes)

    @staticmethod
    def _read_source(p):
        from sec.caffe import formats
        from sec.proto import caffe_pb2
        if not p.HasField("source"):
            raise ValueError("infogain_loss_param.source is required when H is not given as bottom[2]")
        try:
            blob = formats._read_binary(p.source, caffe_pb2.BlobProto(), "binaryproto")
            return torch.from_numpy(formats.blob_to_array(blob))
        except (OSError, formats.CaffeFormatError) as err:
            raise ValueError(f"infogain_loss_param.source: {err}") from None

    def shapes(self, shapes):
        check_batches(shapes)
        _check_labels(shapes[0], shapes[1], self.axis)
        classes = shapes[0][self.axis]
        matrix = tuple(self.matrix.shape) if self.matrix is not None else tuple(shapes[2])
        if math.prod(matrix) != classes * classes:
            raise ValueError(f"the infogain matrix H {matrix} must hold {classes} x {classes} values "
                             f"({classes} classes on axis {self.axis})")
        return [()] + [tuple(shapes[0])] * (self.ntop - 1)

    def forward(self, scores, labels, matrix=None):
        shape = scores.shape
        outer, inner = _outer_inner(shape, self.axis)
        classes = shape[self.axis]
        if matrix is None:
            if self.matrix.device != scores.device:   # moved once, with the net
                self.matrix = self.matrix.to(scores.device)
            matrix = self.matrix
        matrix = matrix.detach().reshape(classes, classes)
        logp = F.log_softmax(scores, dim=self.axis)
        logp3 = FloorValue.apply(logp, LOG_MIN_PROB).reshape(outer, classes, inner)
        _, valid, safe = _labels(labels, outer, inner, self.ignore, classes, self.where)
        weights = matrix[safe].permute(0, 2, 1)          # H[label] per position: outer x C x inner
        per_position = -(weights * logp3).sum(1)
        if valid is not None:
            per_position = per_position * valid
        loss = per_position.sum() / _normalizer(self.norm, outer, inner, valid)
        if self.ntop == 1:
            return (loss,)
        return loss, F.softmax(scores.detach(), dim=self.axis)


class MultinomialLogisticLoss:
    """Caffe's MultinomialLogisticLoss on probabilities bottom[0] (N x ...): -sum_i log(max(
    p[i, label_i], 1e-20)) / N, where label_i indexes item i's values flattened; labels are
    N x 1 x 1 x 1 (or fewer axes). Gradient -1 / (N max(p, 1e-20)) at the labels, as Caffe's
    (the clamp applies to the gradient too). Labels outside the item are an error."""

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 2)
        need_tops(lp, 1)
        self.where, self.params = layer_label(lp), []
        self.shapes(shapes)

    def shapes(self, shapes):
        check_batches(shapes)
        labels = tuple(shapes[1])
        if len(labels) > 4 or any(d != 1 for d in labels[1:]):
            raise ValueError(f"labels must be N x 1 x 1 x 1 (one per item), got shape {labels}")
        return [()]

    def forward(self, probs, labels):
        num, flat, lab = item_labels(probs, labels, self.where)
        picked = FloorValue.apply(flat.gather(1, lab.unsqueeze(1)), MIN_PROB)
        return (-torch.log(picked).sum() / num,)
