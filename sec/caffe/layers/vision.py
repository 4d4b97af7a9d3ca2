"""Vision layers (Caffe's vision_layers family): Convolution, Deconvolution, Im2col, Crop and LRN,
with Caffe's shape rules (Pooling and SPP: vision_pooling.py).

Blobs are float32. Convolution, Deconvolution and Im2col work on any number of spatial axes as
Caffe's N-D code does: the channel axis is `convolution_param.axis` (default 1), every axis
before it is a batch axis, every axis after it is spatial, and kernel_size / stride / pad /
dilation are given once for all spatial axes or once per axis (kernel_h/_w, stride_h/_w,
pad_h/_w only for 2 spatial axes). Weights are stored as Caffe stores them: convolution
(num_output, C/group, *kernel), deconvolution (C, num_output/group, *kernel), biases
(num_output,). 1 to 3 spatial axes run on torch's convolutions; 0 or more than 3 on Caffe's
column buffer (im2col) and a matrix product.
"""
import itertools
import math

import torch
import torch.nn.functional as F

from sec.caffe.layers.base import canonical_axis, need_4d, need_bottoms

LRN_ACROSS_CHANNELS, LRN_WITHIN_CHANNEL = 0, 1
TORCH_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
TORCH_DECONV = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _spatial_values(p, field, short, num_spatial, default):
    """One of kernel_size/stride/pad per spatial axis by Caffe's rule: `<short>_h`/`<short>_w`
    (2 spatial axes only), else the repeated field once for all axes or once per axis, else
    `default` (None: required)."""
    name = f"convolution_param.{field}"
    if short and (p.HasField(f"{short}_h") or p.HasField(f"{short}_w")):
        if num_spatial != 2:
            raise ValueError(f"convolution_param.{short}_h/{short}_w can only be used with 2 spatial axes, "
                             f"the input has {num_spatial}")
        if len(getattr(p, field)):
            raise ValueError(f"either {name} or {short}_h/{short}_w may be set, not both")
        return int(getattr(p, f"{short}_h")), int(getattr(p, f"{short}_w"))
    values = [int(v) for v in getattr(p, field)]
    if not values and default is not None:
        return (default,) * num_spatial
    if len(values) != 1 and len(values) != num_spatial:
        raise ValueError(f"{name} must be given once, or once per spatial axis ({num_spatial}); "
                         f"got {len(values)} value(s)")
    return tuple(values[0 if len(values) == 1 else i] for i in range(num_spatial))


def conv_geometry(p, num_spatial):
    """(kernel, pad, stride, dilation) of a ConvolutionParameter for `num_spatial` spatial axes,
    each a tuple with one value per axis."""
    kernel = _spatial_values(p, "kernel_size", "kernel", num_spatial, None)
    pad = _spatial_values(p, "pad", "pad", num_spatial, 0)
    stride = _spatial_values(p, "stride", "stride", num_spatial, 1)
    dilation = _spatial_values(p, "dilation", "", num_spatial, 1)
    if min(kernel, default=1) <= 0 or min(stride, default=1) <= 0 or min(dilation, default=1) <= 0:
        raise ValueError(f"kernel {kernel}, stride {stride} and dilation {dilation} must be positive")
    return kernel, pad, stride, dilation


def conv_out_size(size, kernel, pad, stride, dilation):
    """Caffe's convolution output size: floor((size + 2 pad - extent) / stride) + 1."""
    extent = dilation * (kernel - 1) + 1
    return (size + 2 * pad - extent) // stride + 1


def deconv_out_size(size, kernel, pad, stride, dilation):
    """Caffe's deconvolution output size: stride (size - 1) + extent - 2 pad."""
    extent = dilation * (kernel - 1) + 1
    return stride * (size - 1) + extent - 2 * pad


def _window_slices(offset, dilation, stride, out):
    """Index of the input (padded) values that kernel offset `offset` meets, per output position."""
    return (slice(None), slice(None)) + tuple(slice(o * d, o * d + s * (m - 1) + 1, s)
                                              for o, d, s, m in zip(offset, dilation, stride, out))


def im2col(x, kernel, pad, stride, dilation, out):
    """Caffe's column buffer: (B, C, *size) -> (B, C, prod(kernel), *out), kernel offsets in
    row-major order, so that flattening axes 1 and 2 gives Caffe's row c * prod(kernel) + k;
    padding reads 0."""
    if any(pad):
        x = F.pad(x, [q for p in reversed(pad) for q in (p, p)])
    offsets = itertools.product(*(range(k) for k in kernel))
    return torch.stack([x[_window_slices(o, dilation, stride, out)] for o in offsets], dim=2)


def col2im(cols, size, kernel, pad, stride, dilation):
    """The adjoint of im2col: (B, C, prod(kernel), *out) -> (B, C, *size), each column value
    added back where it was read (padding dropped)."""
    out = tuple(cols.shape[3:])
    padded = cols.new_zeros(tuple(cols.shape[:2]) + tuple(s + 2 * p for s, p in zip(size, pad)))
    for k, offset in enumerate(itertools.product(*(range(k) for k in kernel))):
        padded[_window_slices(offset, dilation, stride, out)] += cols[:, :, k]
    return padded[(slice(None), slice(None)) + tuple(slice(p, p + s) for p, s in zip(pad, size))]


class Convolution:
    """Caffe's Convolution (any number of bottoms of one shape, sharing the weights)."""
    transposed = False

    def __init__(self, lp, shapes, ctx):
        if not shapes:
            raise ValueError("needs at least 1 bottom blob")
        p = lp.convolution_param
        if not p.HasField("num_output") or p.num_output <= 0:
            raise ValueError("convolution_param.num_output must be set and positive")
        shape = tuple(shapes[0])
        self.axis = canonical_axis(p.axis, len(shape), "convolution_param.axis")
        self.num_spatial = len(shape) - self.axis - 1
        self.kernel, self.pad, self.stride, self.dilation = conv_geometry(p, self.num_spatial)
        self.channels, self.num_output, self.group = shape[self.axis], int(p.num_output), int(p.group)
        if self.group <= 0 or self.channels % self.group or self.num_output % self.group:
            raise ValueError(f"group {self.group} must divide the input channels ({self.channels}) "
                             f"and num_output ({self.num_output})")
        if self.transposed:
            wshape = (self.channels, self.num_output // self.group) + self.kernel
        else:
            wshape = (self.num_output, self.channels // self.group) + self.kernel
        self.weight, self.bias, self.params = ctx.weight_and_bias(lp, p, wshape, self.num_output)
        self.out_size = deconv_out_size if self.transposed else conv_out_size

    def spatial_out(self, size):
        """Output sizes of the spatial axes for input spatial sizes `size` (checked positive)."""
        out = tuple(self.out_size(n, *geometry) for n, *geometry in
                    zip(size, self.kernel, self.pad, self.stride, self.dilation))
        if min(out, default=1) <= 0:
            raise ValueError(f"output size {out} is not positive for spatial input {tuple(size)}")
        return out

    def top_shape(self, shape):
        shape = tuple(shape)
        if len(shape) != self.axis + 1 + self.num_spatial:
            raise ValueError(f"bottom has {len(shape)} axes, the layer was built for "
                             f"{self.axis + 1 + self.num_spatial} (Caffe: bottom num_axes may not change)")
        if shape[self.axis] != self.channels:
            raise ValueError(f"input has {shape[self.axis]} channels, the weights were built for {self.channels}")
        return shape[:self.axis] + (self.num_output,) + self.spatial_out(shape[self.axis + 1:])

    def shapes(self, shapes):
        for i, shape in enumerate(shapes[1:], 1):
            if tuple(shape) != tuple(shapes[0]):
                raise ValueError(f"all bottoms must have the same shape (as Caffe): bottom {i} has "
                                 f"{tuple(shape)}, bottom 0 has {tuple(shapes[0])}")
        return [self.top_shape(s) for s in shapes]

    def forward(self, *bottoms):
        return tuple(self._one(x) for x in bottoms)

    def _one(self, x):
        lead = tuple(x.shape[:self.axis])
        batch = x.reshape((-1,) + tuple(x.shape[self.axis:]))
        if self.num_spatial in TORCH_CONV:
            if self.transposed:
                y = TORCH_DECONV[self.num_spatial](batch, self.weight, self.bias, self.stride, self.pad, 0,
                                                   self.group, self.dilation)
            else:
                y = TORCH_CONV[self.num_spatial](batch, self.weight, self.bias, self.stride, self.pad,
                                                 self.dilation, self.group)
        else:
            y = self._columns(batch)
        return y.reshape(lead + tuple(y.shape[1:]))

    def _columns(self, x):
        """Convolution through Caffe's column buffer (0 or more than 3 spatial axes)."""
        size, groups, batch = tuple(x.shape[2:]), self.group, x.shape[0]
        out = self.spatial_out(size)
        kernel_count = math.prod(self.kernel)
        weight = self.weight.reshape(groups, self.weight.shape[0] // groups, -1)
        if self.transposed:
            rows = x.reshape(batch, groups, self.channels // groups, -1)
            cols = torch.einsum("gck,bgcl->bgkl", weight, rows)
            cols = cols.reshape((batch, self.num_output, kernel_count) + size)
            y = col2im(cols, out, self.kernel, self.pad, self.stride, self.dilation)
        else:
            cols = im2col(x, self.kernel, self.pad, self.stride, self.dilation, out)
            cols = cols.reshape(batch, groups, -1, math.prod(out))
            y = torch.einsum("gok,bgkl->bgol", weight, cols).reshape((batch, self.num_output) + out)
        if self.bias is not None:
            y = y + self.bias.reshape((1, -1) + (1,) * len(out))
        return y


class Deconvolution(Convolution):
    """Caffe's Deconvolution: the transpose of Convolution, same parameters."""
    transposed = True


class Im2col:
    """Caffe's Im2col: the column buffer of a convolution as a blob. Top: the bottom's batch axes
    (before convolution_param.axis), then C * prod(kernel) channels in Caffe's order (channel
    major, kernel offsets row-major), then the convolution's output sizes."""

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 1)
        p = lp.convolution_param
        shape = tuple(shapes[0])
        self.axis = canonical_axis(p.axis, len(shape), "convolution_param.axis")
        self.num_spatial = len(shape) - self.axis - 1
        if self.num_spatial < 1:
            raise ValueError(f"needs at least 1 spatial axis after convolution_param.axis {self.axis}, "
                             f"input {shape} has none")
        self.kernel, self.pad, self.stride, self.dilation = conv_geometry(p, self.num_spatial)
        self.params = []

    def _out(self, shape):
        out = tuple(conv_out_size(size, *g) for size, *g in
                    zip(shape[self.axis + 1:], self.kernel, self.pad, self.stride, self.dilation))
        if min(out) <= 0:
            raise ValueError(f"output size {out} is not positive for input {shape}")
        return out

    def shapes(self, shapes):
        shape = tuple(shapes[0])
        if len(shape) != self.axis + 1 + self.num_spatial:
            raise ValueError(f"bottom has {len(shape)} axes, the layer was built for "
                             f"{self.axis + 1 + self.num_spatial}")
        return [shape[:self.axis] + (shape[self.axis] * math.prod(self.kernel),) + self._out(shape)]

    def forward(self, x):
        shape = tuple(x.shape)
        out = self._out(shape)
        cols = im2col(x.reshape((-1,) + shape[self.axis:]), self.kernel, self.pad, self.stride, self.dilation, out)
        return (cols.reshape(shape[:self.axis] + (-1,) + out),)


class Crop:
    """Caffe's Crop: bottom[0] cut to bottom[1]'s size on every axis from crop_param.axis
    (default 2) on, starting at crop_param.offset (none: 0; one: for every cropped axis; else one
    per cropped axis). bottom[1] gives only its shape and receives no gradient."""

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 2)
        p = lp.crop_param
        num_axes = len(shapes[0])
        self.axis = canonical_axis(p.axis, num_axes, "crop_param.axis")
        self.offsets = [int(v) for v in p.offset]
        if len(self.offsets) > 1 and self.axis + len(self.offsets) != num_axes:
            raise ValueError(f"crop_param.offset has {len(self.offsets)} values; with axis {self.axis} of a "
                             f"{num_axes}-axis bottom it needs 1 or {num_axes - self.axis}")
        self.params = []

    def _window(self, data, like):
        """(top shape, start per axis) of cropping a `data`-shaped bottom to `like`."""
        if len(like) < len(data):
            raise ValueError(f"bottom[1] {tuple(like)} has fewer axes than bottom[0] {tuple(data)}")
        out, starts = list(data), [0] * len(data)
        for i in range(self.axis, len(data)):
            offset = self.offsets[0] if len(self.offsets) == 1 else (self.offsets[i - self.axis] if self.offsets else 0)
            if data[i] - offset < like[i]:
                raise ValueError(f"the crop of axis {i} is out of bounds: bottom[0] has {data[i]}, the crop "
                                 f"takes {like[i]} from offset {offset}")
            out[i], starts[i] = like[i], offset
        return tuple(out), starts

    def shapes(self, shapes):
        return [self._window(tuple(shapes[0]), tuple(shapes[1]))[0]]

    def forward(self, x, like):
        out, starts = self._window(tuple(x.shape), tuple(like.shape))
        return (x[tuple(slice(a, a + n) for a, n in zip(starts, out))].contiguous(),)


class LRN:
    """Caffe's local response normalization.

    ACROSS_CHANNELS: y = x (k + alpha/n sum_{n channels} x^2)^-beta;
    WITHIN_CHANNEL: y = x (1 + alpha mean_{n x n window} x^2)^-beta (Caffe ignores k there).
    """

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 1)
        need_4d(shapes[0])
        p = lp.lrn_param
        if p.local_size % 2 == 0:
            raise ValueError(f"lrn_param.local_size must be odd, got {p.local_size}")
        self.size, self.alpha, self.beta, self.k = int(p.local_size), p.alpha, p.beta, p.k
        self.region = p.norm_region
        self.params = []

    def shapes(self, shapes):
        need_4d(shapes[0])
        return [tuple(shapes[0])]

    def forward(self, x):
        if self.region == LRN_ACROSS_CHANNELS:
            return (F.local_response_norm(x, self.size, self.alpha, self.beta, self.k),)
        mean_sq = F.avg_pool2d(x * x, self.size, 1, (self.size - 1) // 2, count_include_pad=True)
        return (x * (1.0 + self.alpha * mean_sq).pow(-self.beta),)
