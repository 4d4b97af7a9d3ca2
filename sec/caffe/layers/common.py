"""Common layers (Caffe's common and normalization layers): InnerProduct, BatchNorm, Scale, Bias,
Softmax."""
import math

import torch
import torch.nn.functional as F

from sec.caffe.layers.base import TEST, UnaryLayer, canonical_axis, need_bottoms


class InnerProduct:
    """Caffe's InnerProduct: flattens axes [axis, end) to K, maps to num_output."""

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 1)
        p = lp.inner_product_param
        if not p.HasField("num_output") or p.num_output <= 0:
            raise ValueError("inner_product_param.num_output must be set and positive")
        self.axis = canonical_axis(p.axis, len(shapes[0]), "inner_product_param.axis")
        self.num_input = math.prod(shapes[0][self.axis:])
        self.num_output = int(p.num_output)
        self.transpose = p.transpose
        wshape = (self.num_input, self.num_output) if self.transpose else (self.num_output, self.num_input)
        self.weight, self.bias, self.params = ctx.weight_and_bias(lp, p, wshape, self.num_output)

    def shapes(self, shapes):
        shape = tuple(shapes[0])
        if len(shape) <= self.axis or math.prod(shape[self.axis:]) != self.num_input:
            raise ValueError(f"input {shape} flattens from axis {self.axis} to "
                             f"{math.prod(shape[self.axis:])} values, the weights take {self.num_input}")
        return [shape[:self.axis] + (self.num_output,)]

    def forward(self, x):
        flat = x.reshape(x.shape[:self.axis] + (self.num_input,))
        weight = self.weight.t() if self.transpose else self.weight
        return (F.linear(flat, weight, self.bias),)


class BatchNorm(UnaryLayer):
    """Caffe's BatchNorm (no affine part; a Scale layer follows in Caffe nets).

    Blobs: running mean (C,), running variance (C,), scale factor (1,); the statistics are the
    blobs divided by the factor (0 when the factor is 0). use_global_stats defaults to
    phase == TEST. With batch statistics, the running blobs are updated as Caffe does:
    blob = blob * moving_average_fraction + batch value (variance with m/(m-1) correction),
    factor = factor * moving_average_fraction + 1. These blobs are not learnable.
    """

    def __init__(self, lp, shapes, ctx):
        super().__init__(lp, shapes, ctx)
        p = lp.batch_norm_param
        self.use_global = p.use_global_stats if p.HasField("use_global_stats") else ctx.phase == TEST
        self.fraction, self.eps = p.moving_average_fraction, p.eps
        channels = shapes[0][1] if len(shapes[0]) > 1 else 1
        self.mean = ctx.param(lp, 0, (channels,), None, learnable=False)
        self.var = ctx.param(lp, 1, (channels,), None, learnable=False)
        self.factor = ctx.param(lp, 2, (1,), None, learnable=False)
        self.params = [self.mean, self.var, self.factor]

    def forward(self, x):
        bshape = (1, -1) + (1,) * (x.dim() - 2)
        if self.use_global:
            factor = self.factor[0]
            scale = torch.where(factor == 0, torch.zeros_like(factor), 1.0 / factor)
            mean, var = self.mean * scale, self.var * scale
        else:
            dims = [0] + list(range(2, x.dim()))
            mean = x.mean(dim=dims)
            var = ((x - mean.reshape(bshape)) ** 2).mean(dim=dims)
            count = x.numel() // x.shape[1]
            correction = count / (count - 1) if count > 1 else 1.0
            with torch.no_grad():
                self.factor.mul_(self.fraction).add_(1.0)
                self.mean.mul_(self.fraction).add_(mean.detach())
                self.var.mul_(self.fraction).add_(var.detach() * correction)
        return ((x - mean.reshape(bshape)) / torch.sqrt(var.reshape(bshape) + self.eps),)


class Scale:
    """y = x * scale (+ bias), scale broadcast over axes [axis, axis + its ndim).

    The scale is a learned blob (filler default constant 1) or, with two bottoms, bottom[1].
    """

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 1, 2)
        p = lp.scale_param
        x = shapes[0]
        self.axis, sshape = _broadcast_blob(p, shapes, "scale_param")
        if len(shapes) == 2:
            self.scale = None
        else:
            filler = p.filler if p.HasField("filler") else _constant_one()
            self.scale = ctx.param(lp, 0, sshape, filler)
        self.sshape = sshape
        self.bias = None
        if p.bias_term:
            index = 0 if self.scale is None else 1
            self.bias = ctx.param(lp, index, sshape, p.bias_filler if p.HasField("bias_filler") else None)
        self.params = [t for t in (self.scale, self.bias) if t is not None]
        self.trailing = (1,) * (len(x) - self.axis - len(sshape))
        self.bshape = sshape + self.trailing

    def shapes(self, shapes):
        x = tuple(shapes[0])
        given = tuple(shapes[1]) if len(shapes) == 2 else self.sshape
        if x[self.axis:self.axis + len(given)] != given or len(x) - self.axis - len(given) != len(self.trailing):
            raise ValueError(f"scale of shape {given} does not match input {x} at axis {self.axis}")
        return [x]

    def forward(self, x, scale=None):
        scale = self.scale if scale is None else scale
        y = x * scale.reshape(self.bshape)
        if self.bias is not None:
            y = y + self.bias.reshape(self.bshape)
        return (y,)


class Bias:
    """y = x + bias, the bias broadcast over axes [axis, axis + its ndim): a learned blob of shape
    x.shape[axis:axis + num_axes] (num_axes -1: to the end, 0: a scalar; filler default constant 0)
    or, with two bottoms, bottom[1]."""

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 1, 2)
        p = lp.bias_param
        self.axis, bshape = _broadcast_blob(p, shapes, "bias_param")
        self.bias = None
        if len(shapes) == 1:
            self.bias = ctx.param(lp, 0, bshape, p.filler if p.HasField("filler") else None)
        self.given = bshape
        self.params = [self.bias] if self.bias is not None else []
        self.trailing = (1,) * (len(shapes[0]) - self.axis - len(bshape))

    def shapes(self, shapes):
        x = tuple(shapes[0])
        given = tuple(shapes[1]) if len(shapes) == 2 else self.given
        if x[self.axis:self.axis + len(given)] != given or len(x) - self.axis - len(given) != len(self.trailing):
            raise ValueError(f"bias of shape {given} does not match input {x} at axis {self.axis}")
        return [x]

    def forward(self, x, bias=None):
        bias = self.bias if bias is None else bias
        return (x + bias.reshape(tuple(bias.shape) + self.trailing),)


def _broadcast_blob(p, shapes, field):
    """(axis, shape) of a Scale/Bias operand: bottom[1]'s shape, or x.shape[axis:axis + num_axes]
    from `p` (a ScaleParameter or BiasParameter; num_axes -1 = to the end, 0 = a scalar)."""
    x = shapes[0]
    axis = canonical_axis(p.axis, len(x), f"{field}.axis") if len(x) else 0
    if len(shapes) == 2:
        return axis, tuple(shapes[1])
    if p.num_axes < -1:
        raise ValueError(f"{field}.num_axes must be >= -1, got {p.num_axes}")
    end = len(x) if p.num_axes == -1 else axis + p.num_axes
    if end > len(x):
        raise ValueError(f"{field} axis {p.axis} + num_axes {p.num_axes} exceed the {len(x)}-axis input")
    return axis, tuple(x[axis:end])


def _constant_one():
    from sec.proto import caffe_pb2
    return caffe_pb2.FillerParameter(type="constant", value=1.0)


class Softmax:
    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 1)
        self.axis = canonical_axis(lp.softmax_param.axis, len(shapes[0]), "softmax_param.axis")
        self.params = []

    def shapes(self, shapes):
        return [tuple(shapes[0])]

    def forward(self, x):
        return (F.softmax(x, dim=self.axis),)
