"""Common layers (Caffe's common and normalization layers): InnerProduct, BatchNorm, Scale, Bias,
Softmax."""
import math

import torch
import torch.nn.functional as F

from sec.caffe.layers.base import TEST, UnaryLayer, canonical_axis, constant_filler, in_place, need_bottoms

BATCH_NORM_BLOBS = 3     # running mean, running variance, moving-average factor


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
    factor = factor * moving_average_fraction + 1. These blobs are not learnable: as Caffe's
    LayerSetUp, a `param` spec given for one of them must have lr_mult 0 (the field defaults to 1),
    else the net is refused. (Three specs are Caffe's old BatchNorm definition: reading the prototxt
    upgrades them to lr_mult and decay_mult 0 first, sec.caffe.upgrade_proto.)
    """

    def __init__(self, lp, shapes, ctx):
        super().__init__(lp, shapes, ctx)
        for index, spec in enumerate(lp.param[:BATCH_NORM_BLOBS]):
            if spec.lr_mult != 0:
                given = "" if spec.HasField("lr_mult") else " (not given: it defaults to 1)"
                raise ValueError(f"param[{index}].lr_mult is {spec.lr_mult:g}{given}, must be 0: Caffe's BatchNorm "
                                 "keeps its statistics out of optimization (\"Cannot configure batch "
                                 "normalization statistics as layer parameters.\")")
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
            filler = p.filler if p.HasField("filler") else constant_filler(1.0)
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


class Softmax:
    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 1)
        self.axis = canonical_axis(lp.softmax_param.axis, len(shapes[0]), "softmax_param.axis")
        self.params = []

    def shapes(self, shapes):
        return [tuple(shapes[0])]

    def forward(self, x):
        return (F.softmax(x, dim=self.axis),)


LEGACY_AXES = 4   # Caffe's num/channels/height/width accessors: at most 4 axes, missing ones are 1


class _MVNVariance(torch.autograd.Function):
    """y = (x - mean) / (std + eps) over the last axis of a (rows, dim) view; backward is
    Caffe's formula (dy - mean(dy) - y mean(dy y)) / (std + eps), which treats eps as part of
    the std (the exact derivative differs by O(eps / std)).

    In place, Caffe's Backward_cpu overwrites the top diff (the same memory as the bottom diff)
    with its intermediate sums, and its non-MKL axpby (scal, then axpy of the same array) doubles
    a term: the bottom diff becomes -2 / dim s (y + sum(y)) / (std + eps) with s = sum(y dy)
    per row; followed (measured against the real Caffe's CPU build)."""

    @staticmethod
    def forward(ctx, x, eps, shared_blob):
        centred = x - x.mean(dim=1, keepdim=True)
        denom = centred.pow(2).mean(dim=1, keepdim=True).sqrt() + eps
        y = centred / denom
        ctx.shared_blob = shared_blob
        ctx.save_for_backward(y, denom)
        return y

    @staticmethod
    def backward(ctx, dy):
        y, denom = ctx.saved_tensors
        if ctx.shared_blob:
            sums = (y * dy).sum(dim=1, keepdim=True)
            dx = (-2.0 / y.shape[1]) * sums * (y + y.sum(dim=1, keepdim=True))
        else:
            dx = dy - dy.mean(dim=1, keepdim=True) - y * (dy * y).mean(dim=1, keepdim=True)
        return dx / denom, None, None


class MVN(UnaryLayer):
    """Caffe's mean-variance normalization: per (n, c) over H x W, or per n over C x H x W with
    across_channels; with normalize_variance (default) divided by sqrt(variance) + eps (eps
    outside the root, Caffe's placement). The top is 4-D: Caffe reshapes it to (num, channels,
    height, width), so a 2-D bottom (N, C) gives (N, C, 1, 1); more than 4 axes are refused.
    In place, the backward is Caffe's (see _MVNVariance), not the derivative."""

    def __init__(self, lp, shapes, ctx):
        super().__init__(lp, shapes, ctx)
        p = lp.mvn_param
        self.normalize, self.across, self.eps = p.normalize_variance, p.across_channels, float(p.eps)
        self.shared_blob = in_place(lp)
        self.shapes(shapes)

    def shapes(self, shapes):
        shape = tuple(shapes[0])
        if len(shape) > LEGACY_AXES:
            raise ValueError(f"bottom has {len(shape)} axes; Caffe's MVN takes at most 4 (N, C, H, W)")
        return [shape + (1,) * (LEGACY_AXES - len(shape))]

    def forward(self, x):
        shape = tuple(x.shape) + (1,) * (LEGACY_AXES - x.dim())
        rows = shape[0] if self.across else shape[0] * shape[1]
        flat = x.reshape(rows, -1)
        if self.normalize:
            y = _MVNVariance.apply(flat, self.eps, self.shared_blob)
        else:
            y = flat - flat.mean(dim=1, keepdim=True)
        return (y.reshape(shape),)


class _EmbedLookup(torch.autograd.Function):
    """Rows of the (input_dim, num_output) weight picked by integer-valued indices; backward adds
    each top diff row into the weight row it came from. Caffe cannot backpropagate to the
    indices: a backward that needs their gradient is an error naming the layer."""

    @staticmethod
    def forward(ctx, x, weight, name):
        index = x.long()
        ctx.name = name
        ctx.save_for_backward(index)
        ctx.weight_shape = weight.shape
        return weight[index]

    @staticmethod
    def backward(ctx, dy):
        if ctx.needs_input_grad[0]:
            raise RuntimeError(f"layer '{ctx.name}' (type Embed): Can't backpropagate to EmbedLayer input "
                               "(as Caffe; stop the gradient with propagate_down: false)")
        (index,) = ctx.saved_tensors
        grad = torch.zeros(ctx.weight_shape, dtype=dy.dtype, device=dy.device)
        grad.index_add_(0, index.reshape(-1), dy.reshape(-1, ctx.weight_shape[1]))
        return None, grad, None


class Embed:
    """Caffe's Embed: each bottom value, an integer index in [0, input_dim) stored as float,
    becomes row `index` of the weight (input_dim, num_output), plus the bias (num_output,) with
    bias_term. Top shape: bottom shape + (num_output,). Indices out of range or not integers
    are an error naming the layer (Caffe checks them only in debug builds; a release build reads
    past the weights)."""

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 1)
        p = lp.embed_param
        if p.num_output <= 0:
            raise ValueError("embed_param.num_output must be set and positive")
        if p.input_dim <= 0:
            raise ValueError("embed_param.input_dim must be set and positive")
        self.name, self.input_dim, self.num_output = lp.name, int(p.input_dim), int(p.num_output)
        self.weight, self.bias, self.params = ctx.weight_and_bias(lp, p, (self.input_dim, self.num_output),
                                                                  self.num_output)

    def shapes(self, shapes):
        return [tuple(shapes[0]) + (self.num_output,)]

    def forward(self, x):
        with torch.no_grad():
            bad = (x != x.trunc()) | (x < 0) | (x >= self.input_dim)
            if bool(bad.any()):
                value = float(x[bad].reshape(-1)[0])
                raise ValueError(f"layer '{self.name}' (type Embed): index {value} is not an integer in "
                                 f"[0, input_dim {self.input_dim})")
        y = _EmbedLookup.apply(x, self.weight, self.name)
        return (y + self.bias if self.bias is not None else y,)
