"""Neuron layers (Caffe's neuron_layers family): one bottom, one top of the same shape, applied
value by value: ReLU, Sigmoid, TanH, Dropout, AbsVal, BNLL, Clip, ELU, Exp, Log, Power, PReLU,
Swish, Threshold.

Blobs are float32 of any shape. ReLU, Sigmoid, TanH and Dropout use torch's own ops and
autograd. The others compute Caffe's forward and, in backward, Caffe's own derivative formula
(`derivative(bottom, top)`, Backward_cpu of <type>_layer.cpp) through one autograd Function, so
that Caffe's choices at the edges hold (Clip passes the gradient at min and max, BNLL caps the
exponent at 50, Power's special cases). In place (top == bottom), Caffe's Backward reads the
bottom blob after Forward has overwritten it with the top: layers whose formula reads the bottom
(ReLU with a negative slope, BNLL, Clip, ELU, Log, Power) then evaluate it at the top, as Caffe
does; AbsVal refuses in-place use as Caffe does; PReLU keeps a copy of the bottom (Caffe's
bottom_memory_), so it is unaffected. Log and Power, in place, also write their bottom diff (the
top diff's memory) before reading the top diff, so Caffe's bottom diff is the derivative squared,
whatever the top diff: followed too (measured against the real Caffe, caffe_cases_neuron.py).
"""
import numpy as np
import torch
import torch.nn.functional as F

from sec.caffe.layers.base import TRAIN, UnaryLayer, constant_filler, in_place

BNLL_THRESHOLD = 50.0        # Caffe's kBNLL_THRESHOLD: the backward caps the exponent here
NATURAL_BASE = -1.0          # Exp/Log base -1 means e (log_base exactly 1)
PRELU_DEFAULT_SLOPE = 0.25   # PReLU's filler when none is given


class _CaffeNeuron(torch.autograd.Function):
    """top = layer.value(x); backward: top_diff * layer.derivative(bottom, top), with `bottom`
    the top itself where Caffe's in-place Backward reads the overwritten bottom."""

    @staticmethod
    def forward(ctx, x, layer):
        top = layer.value(x)
        ctx.layer = layer
        ctx.save_for_backward(top if layer.bottom_is_top else x, top)
        return top

    @staticmethod
    def backward(ctx, grad):
        bottom, top = ctx.saved_tensors
        slope = ctx.layer.derivative(bottom, top)
        if ctx.layer.top_diff_lost:
            return slope * slope, None
        return grad * slope, None


class NeuronLayer(UnaryLayer):
    """A neuron layer with Caffe's backward: subclasses define value(x) and derivative(bottom,
    top); `reads_bottom` says whether Caffe's Backward_cpu reads the bottom blob,
    `writes_diff_first` whether it writes the bottom diff before reading the top diff."""
    reads_bottom = True
    writes_diff_first = False

    def __init__(self, lp, shapes, ctx):
        super().__init__(lp, shapes, ctx)
        self.name = lp.name
        self.bottom_is_top = self.reads_bottom and in_place(lp)
        self.top_diff_lost = self.writes_diff_first and in_place(lp)

    def forward(self, x):
        return (_CaffeNeuron.apply(x, self),)


class ReLU(NeuronLayer):
    """max(x, 0) + negative_slope min(x, 0). torch's own op, except in place with a negative
    slope, where Caffe's backward (reading the top) differs from the derivative."""

    def __init__(self, lp, shapes, ctx):
        super().__init__(lp, shapes, ctx)
        self.slope = lp.relu_param.negative_slope
        self.bottom_is_top = self.bottom_is_top and self.slope < 0

    def value(self, x):
        if self.slope == 0:
            return F.relu(x)
        return F.leaky_relu(x, self.slope)

    def derivative(self, bottom, top):
        return torch.where(bottom > 0, 1.0, self.slope).to(bottom.dtype)

    def forward(self, x):
        if self.bottom_is_top:
            return super().forward(x)
        return (self.value(x),)


class Sigmoid(UnaryLayer):
    def forward(self, x):
        return (torch.sigmoid(x),)


class TanH(UnaryLayer):
    def forward(self, x):
        return (torch.tanh(x),)


class Dropout(UnaryLayer):
    """TRAIN: zero with probability p, scale survivors by 1/(1-p) (Caffe's scaling); TEST: identity."""

    def __init__(self, lp, shapes, ctx):
        super().__init__(lp, shapes, ctx)
        self.ratio = lp.dropout_param.dropout_ratio
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"dropout_param.dropout_ratio must be in [0, 1), got {self.ratio}")
        self.train = ctx.phase == TRAIN

    def forward(self, x):
        if self.train:
            return (F.dropout(x, self.ratio, True),)
        return (x,)


class AbsVal(NeuronLayer):
    """|x|; backward sign(x) (0 at 0). Caffe refuses in-place use."""

    def __init__(self, lp, shapes, ctx):
        super().__init__(lp, shapes, ctx)
        if in_place(lp):
            raise ValueError("AbsVal does not allow in-place computation (top == bottom), as in Caffe")

    def value(self, x):
        return x.abs()

    def derivative(self, bottom, top):
        return torch.sign(bottom)


class BNLL(NeuronLayer):
    """log(1 + exp(x)); backward exp(min(x, 50)) / (exp(min(x, 50)) + 1)."""

    def value(self, x):
        return torch.where(x > 0, x + torch.log1p(torch.exp(-x)), torch.log1p(torch.exp(x)))

    def derivative(self, bottom, top):
        e = torch.exp(bottom.clamp(max=BNLL_THRESHOLD))
        return e / (e + 1.0)


class Clip(NeuronLayer):
    """max(min, min(x, max)) (so min > max gives min everywhere, as Caffe); backward passes the
    gradient where min <= x <= max."""

    def __init__(self, lp, shapes, ctx):
        super().__init__(lp, shapes, ctx)
        p = lp.clip_param
        if lp.HasField("clip_param"):
            # Caffe's prototxt parser refuses a clip_param without its required fields; without
            # clip_param at all it builds with min = max = 0.
            missing = [f for f in ("min", "max") if not p.HasField(f)]
            if missing:
                raise ValueError(f"clip_param.{missing[0]} is required (Caffe's parser refuses the net)")
        self.low, self.high = float(np.float32(p.min)), float(np.float32(p.max))

    def value(self, x):
        return x.clamp(max=self.high).clamp(min=self.low)

    def derivative(self, bottom, top):
        return ((bottom >= self.low) & (bottom <= self.high)).to(bottom.dtype)


class ELU(NeuronLayer):
    """max(x, 0) + alpha (exp(min(x, 0)) - 1); backward (x > 0) + (alpha + y) (x <= 0)."""

    def __init__(self, lp, shapes, ctx):
        super().__init__(lp, shapes, ctx)
        self.alpha = lp.elu_param.alpha

    def value(self, x):
        return x.clamp(min=0) + self.alpha * (torch.exp(x.clamp(max=0)) - 1.0)

    def derivative(self, bottom, top):
        return torch.where(bottom > 0, torch.ones_like(top), self.alpha + top)


def _log_base(base, field):
    """Caffe's log_base of an Exp/Log base: 1 for -1 (base e), else log(base) (float32)."""
    if base == NATURAL_BASE:
        return np.float32(1.0)
    if not base > 0:
        raise ValueError(f"{field} must be strictly positive (or -1 for e), got {base}")
    log_base = np.log(np.float32(base))
    if not np.isfinite(log_base):
        raise ValueError(f"{field} {base} gives log(base) = {log_base}")
    return log_base


class Exp(NeuronLayer):
    """base ^ (shift + scale x) = outer exp(inner x) with inner = ln(base) scale and
    outer = base ^ shift; backward inner y."""
    reads_bottom = False

    def __init__(self, lp, shapes, ctx):
        super().__init__(lp, shapes, ctx)
        p = lp.exp_param
        log_base = _log_base(p.base, "exp_param.base")
        self.inner = float(log_base * np.float32(p.scale))
        if p.shift == 0:
            self.outer = 1.0
        elif p.base == NATURAL_BASE:
            self.outer = float(np.exp(np.float32(p.shift)))
        else:
            self.outer = float(np.power(np.float32(p.base), np.float32(p.shift)))

    def value(self, x):
        y = torch.exp(x if self.inner == 1 else x * self.inner)
        return y if self.outer == 1 else y * self.outer

    def derivative(self, bottom, top):
        return top if self.inner == 1 else top * self.inner


class Log(NeuronLayer):
    """log_base(shift + scale x); backward scale / (ln(base) (shift + scale x))."""
    writes_diff_first = True

    def __init__(self, lp, shapes, ctx):
        super().__init__(lp, shapes, ctx)
        p = lp.log_param
        log_base = _log_base(p.base, "log_param.base")
        if log_base == 0:
            raise ValueError(f"log_param.base {p.base} gives 1 / log(base) = inf")
        self.base_scale = float(np.float32(1.0) / log_base)
        self.scale, self.shift = float(np.float32(p.scale)), float(np.float32(p.shift))
        self.backward_scale = float(np.float32(p.scale) / log_base)

    def _affine(self, x):
        if self.scale != 1:
            x = x * self.scale
        return x + self.shift if self.shift != 0 else x

    def value(self, x):
        y = torch.log(self._affine(x))
        return y if self.base_scale == 1 else y * self.base_scale

    def derivative(self, bottom, top):
        inverse = self._affine(bottom).reciprocal()
        return inverse if self.backward_scale == 1 else inverse * self.backward_scale


class Power(NeuronLayer):
    """(shift + scale x) ^ power, with Caffe's special cases: scale or power 0 gives the constant
    (1 for power 0, else shift ^ power) and no gradient; backward power scale (shift + scale x) ^
    (power - 1), computed as Caffe does (power 1 and 2, shift 0: power y / x)."""
    writes_diff_first = True

    def __init__(self, lp, shapes, ctx):
        super().__init__(lp, shapes, ctx)
        p = lp.power_param
        self.power, self.scale, self.shift = (float(np.float32(v)) for v in (p.power, p.scale, p.shift))
        self.diff_scale = float(np.float32(self.power) * np.float32(self.scale))

    def value(self, x):
        if self.diff_scale == 0:
            constant = 1.0 if self.power == 0 else float(np.power(np.float32(self.shift), np.float32(self.power)))
            return torch.full_like(x, constant)
        y = x * self.scale if self.scale != 1 else x
        y = y + self.shift if self.shift != 0 else y
        return y.pow(self.power) if self.power != 1 else y

    def derivative(self, bottom, top):
        if self.diff_scale == 0:
            return torch.zeros_like(top)
        if self.power == 1:
            return torch.full_like(top, self.diff_scale)
        if self.power == 2:
            d = bottom * float(np.float32(self.diff_scale) * np.float32(self.scale))
            return d + float(np.float32(self.diff_scale) * np.float32(self.shift)) if self.shift != 0 else d
        if self.shift == 0:
            return top / bottom * self.power
        base = bottom * self.scale if self.scale != 1 else bottom
        d = top / (base + self.shift)
        return d * self.diff_scale if self.diff_scale != 1 else d


class Swish(NeuronLayer):
    """x sigmoid(beta x); backward beta y + sigmoid(beta x) (1 - beta y). Caffe keeps the
    sigmoid of the original bottom, so in-place use is exact."""
    reads_bottom = False

    def __init__(self, lp, shapes, ctx):
        super().__init__(lp, shapes, ctx)
        self.beta = lp.swish_param.beta

    def value(self, x):
        return x * torch.sigmoid(x * self.beta)

    def derivative(self, bottom, top):
        sig = torch.sigmoid(bottom * self.beta)
        return self.beta * top + sig * (1.0 - self.beta * top)


class Threshold(NeuronLayer):
    """1 where x > threshold, else 0. Caffe has no backward (NOT_IMPLEMENTED): a backward that
    reaches this layer's bottom is an error naming the layer."""
    reads_bottom = False

    def __init__(self, lp, shapes, ctx):
        super().__init__(lp, shapes, ctx)
        self.threshold = float(np.float32(lp.threshold_param.threshold))

    def value(self, x):
        return (x > self.threshold).to(x.dtype)

    def derivative(self, bottom, top):
        raise RuntimeError(f"layer '{self.name}' (type Threshold): Caffe has no backward for Threshold "
                           "(NOT_IMPLEMENTED); stop the gradient before it, e.g. propagate_down: false")


class PReLU:
    """max(x, 0) + a_c min(x, 0), a learnable slope per channel (axis 1; one shared slope with
    channel_shared, a 0-axis blob as in Caffe). Filler default constant 0.25. Caffe's backward
    reads a copy of the bottom when in place, so in-place use is exact."""

    def __init__(self, lp, shapes, ctx):
        if len(shapes) != 1:
            raise ValueError(f"needs 1 bottom blob, got {len(shapes)}")
        if len(shapes[0]) < 2:
            raise ValueError(f"bottom must have at least 2 axes (N, C, ...), got shape {tuple(shapes[0])}")
        p = lp.prelu_param
        self.shared = p.channel_shared
        self.channels = shapes[0][1]
        shape = () if self.shared else (self.channels,)
        filler = p.filler if p.HasField("filler") else constant_filler(PRELU_DEFAULT_SLOPE)
        self.slope = ctx.param(lp, 0, shape, filler)
        self.params = [self.slope]

    def shapes(self, shapes):
        shape = tuple(shapes[0])
        if len(shape) < 2:
            raise ValueError(f"bottom must have at least 2 axes (N, C, ...), got shape {shape}")
        if not self.shared and shape[1] != self.channels:
            raise ValueError(f"bottom has {shape[1]} channels, the slopes were built for {self.channels}")
        return [shape]

    def forward(self, x):
        slope = self.slope if self.shared else self.slope.reshape((1, -1) + (1,) * (x.dim() - 2))
        return (torch.where(x > 0, x, x * slope),)

