"""Vision layers (Caffe's vision_layers family): Convolution, Deconvolution, Pooling, LRN,
with Caffe's shape rules.

Blobs are NCHW float32. Weights are stored as Caffe stores them: convolution
(num_output, C/group, kh, kw), deconvolution (C, num_output/group, kh, kw), biases (num_output,).
"""
import math

import torch
import torch.nn.functional as F

from sec.caffe.layers.base import need_4d, need_bottoms, pair

POOL_MAX, POOL_AVE, POOL_STOCHASTIC = 0, 1, 2
LRN_ACROSS_CHANNELS, LRN_WITHIN_CHANNEL = 0, 1


def _has_hw(param, field):
    return param.HasField(f"{field}_h") or param.HasField(f"{field}_w")


def conv_geometry(p):
    """(kernel, pad, stride, dilation) of a ConvolutionParameter, each an (h, w) pair."""
    kernel = pair(p.kernel_size, p.kernel_h, p.kernel_w, _has_hw(p, "kernel"), None, "kernel_size")
    pad = pair(p.pad, p.pad_h, p.pad_w, _has_hw(p, "pad"), 0, "pad")
    stride = pair(p.stride, p.stride_h, p.stride_w, _has_hw(p, "stride"), 1, "stride")
    dilation = pair(p.dilation, 0, 0, False, 1, "dilation")
    if min(kernel) <= 0 or min(stride) <= 0 or min(dilation) <= 0:
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


class Convolution:
    """Caffe's Convolution (2-D; any number of bottoms of one shape, sharing the weights)."""
    transposed = False

    def __init__(self, lp, shapes, ctx):
        if not shapes:
            raise ValueError("needs at least 1 bottom blob")
        p = lp.convolution_param
        if not p.HasField("num_output") or p.num_output <= 0:
            raise ValueError("convolution_param.num_output must be set and positive")
        if p.axis != 1:
            raise ValueError(f"convolution_param.axis {p.axis} is not supported (only 1, NCHW)")
        self.kernel, self.pad, self.stride, self.dilation = conv_geometry(p)
        need_4d(shapes[0])
        self.channels, self.num_output, self.group = shapes[0][1], int(p.num_output), int(p.group)
        if self.group <= 0 or self.channels % self.group or self.num_output % self.group:
            raise ValueError(f"group {self.group} must divide the input channels ({self.channels}) "
                             f"and num_output ({self.num_output})")
        if self.transposed:
            wshape = (self.channels, self.num_output // self.group) + self.kernel
        else:
            wshape = (self.num_output, self.channels // self.group) + self.kernel
        self.weight, self.bias, self.params = ctx.weight_and_bias(lp, p, wshape, self.num_output)
        self.out_size = deconv_out_size if self.transposed else conv_out_size

    def shapes(self, shapes):
        for i, shape in enumerate(shapes[1:], 1):
            if tuple(shape) != tuple(shapes[0]):
                raise ValueError(f"all bottoms must have the same shape (as Caffe): bottom {i} has "
                                 f"{tuple(shape)}, bottom 0 has {tuple(shapes[0])}")
        tops = []
        for shape in shapes:
            need_4d(shape)
            if shape[1] != self.channels:
                raise ValueError(f"input has {shape[1]} channels, the weights were built for {self.channels}")
            out = [self.out_size(shape[2 + i], self.kernel[i], self.pad[i], self.stride[i],
                                 self.dilation[i]) for i in range(2)]
            if min(out) <= 0:
                raise ValueError(f"output size {out} is not positive for input {tuple(shape)}")
            tops.append((shape[0], self.num_output, out[0], out[1]))
        return tops

    def forward(self, *bottoms):
        conv = F.conv_transpose2d if self.transposed else F.conv2d
        if self.transposed:
            return tuple(conv(x, self.weight, self.bias, self.stride, self.pad, 0, self.group,
                              self.dilation) for x in bottoms)
        return tuple(conv(x, self.weight, self.bias, self.stride, self.pad, self.dilation, self.group)
                     for x in bottoms)


class Deconvolution(Convolution):
    """Caffe's Deconvolution: the transpose of Convolution, same parameters."""
    transposed = True


def pool_out_size(size, kernel, pad, stride, padded, ceil=True):
    """Caffe's pooling output size along one axis: ceil((size + 2 pad - kernel) / stride) + 1
    (floor with round_mode FLOOR), minus one when the last window would start at or past the end
    of the image plus its padding. Caffe makes that correction on both axes when either is padded
    (`padded`: pad_h or pad_w)."""
    rounding = math.ceil if ceil else math.floor
    out = int(rounding((size + 2 * pad - kernel) / stride)) + 1
    if padded and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def caffe_ave_divisor(size, kernel, pad, stride, out):
    """Per-output window sizes of Caffe's AVE pooling along one axis: the window clipped to
    [-pad, size + pad), so padding inside the image-plus-pad bounds counts."""
    starts = torch.arange(out, dtype=torch.float32) * stride - pad
    ends = torch.clamp(starts + kernel, max=size + pad)
    return ends - starts


class Pooling:
    """Caffe's MAX/AVE pooling, 2-D, with Caffe's output size (ceil, or floor with round_mode
    FLOOR) and padding-counting AVE. With FLOOR every window lies inside the padded image, so
    torch's floor mode and Caffe agree on sizes and divisors.

    torch's ceil_mode pooling uses the same output-size rule (it clips the last window on every
    axis; Caffe does so when either axis is padded, and an unpadded net whose last window would
    need clipping is refused) and the same AVE divisor whenever pad <= kernel // 2 (torch's own
    limit), so that path is taken then; other paddings, which
    Caffe allows up to kernel - 1, pad explicitly and divide by Caffe's window sizes.
    """

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 1)
        if len(lp.top) != 1:
            raise ValueError(f"has {len(lp.top)} tops; the MAX mask top is not supported (1 top)")
        p = lp.pooling_param
        self.method = p.pool
        if self.method not in (POOL_MAX, POOL_AVE):
            raise ValueError("pooling_param.pool STOCHASTIC is not supported (MAX or AVE)")
        self.ceil = p.round_mode == p.CEIL
        self.global_pooling = p.global_pooling
        self.pad = pair([p.pad] if p.HasField("pad") else [], p.pad_h, p.pad_w, _has_hw(p, "pad"), 0, "pad")
        self.stride = pair([p.stride] if p.HasField("stride") else [], p.stride_h, p.stride_w,
                           _has_hw(p, "stride"), 1, "stride")
        if self.global_pooling:
            if p.HasField("kernel_size") or _has_hw(p, "kernel"):
                raise ValueError("global_pooling takes no kernel_size")
            if self.pad != (0, 0) or self.stride != (1, 1):
                raise ValueError("global_pooling needs pad 0 and stride 1")
            self.kernel = None
        else:
            self.kernel = pair([p.kernel_size] if p.HasField("kernel_size") else [], p.kernel_h,
                               p.kernel_w, _has_hw(p, "kernel"), None, "kernel_size")
            if min(self.kernel) <= 0 or min(self.stride) <= 0:
                raise ValueError(f"kernel {self.kernel} and stride {self.stride} must be positive")
            if self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]:
                raise ValueError(f"pad {self.pad} must be smaller than kernel {self.kernel}")
            self.use_torch = all(self.pad[i] <= self.kernel[i] // 2 for i in range(2))
        self.padded = self.pad != (0, 0)
        self.params = []
        self._divisors = {}

    def shapes(self, shapes):
        shape = shapes[0]
        need_4d(shape)
        if self.global_pooling:
            return [(shape[0], shape[1], 1, 1)]
        out = []
        for i in range(2):
            size, k, pad, s = shape[2 + i], self.kernel[i], self.pad[i], self.stride[i]
            if size + 2 * pad < k:
                raise ValueError(f"kernel {self.kernel} is larger than the padded input {tuple(shape)}")
            n = pool_out_size(size, k, pad, s, self.padded, self.ceil)
            if (n - 1) * s >= size + pad:
                raise ValueError(f"the last pooling window of input {tuple(shape)} would lie wholly "
                                 f"outside the image (stride {self.stride} > kernel {self.kernel} "
                                 "without padding)")
            out.append(n)
        return [(shape[0], shape[1], out[0], out[1])]

    def forward(self, x):
        if self.global_pooling:
            if self.method == POOL_MAX:
                return (x.amax(dim=(2, 3), keepdim=True),)
            return (x.mean(dim=(2, 3), keepdim=True),)
        if self.use_torch:
            if self.method == POOL_MAX:
                return (F.max_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil),)
            return (F.avg_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil,
                                 count_include_pad=True),)
        return (self._explicit(x),)

    def _explicit(self, x):
        height, width = x.shape[2], x.shape[3]
        out_h = pool_out_size(height, self.kernel[0], self.pad[0], self.stride[0], self.padded, self.ceil)
        out_w = pool_out_size(width, self.kernel[1], self.pad[1], self.stride[1], self.padded, self.ceil)
        # Pad left/top by `pad`, right/bottom so that the last window ends inside (a negative
        # amount crops rows no window reaches).
        extra_h = (out_h - 1) * self.stride[0] + self.kernel[0] - height - self.pad[0]
        extra_w = (out_w - 1) * self.stride[1] + self.kernel[1] - width - self.pad[1]
        pads = (self.pad[1], extra_w, self.pad[0], extra_h)
        if self.method == POOL_MAX:
            return F.max_pool2d(F.pad(x, pads, value=float("-inf")), self.kernel, self.stride)
        sums = F.avg_pool2d(F.pad(x, pads), self.kernel, self.stride, divisor_override=1)
        key = (height, width, x.device)
        divisor = self._divisors.get(key)
        if divisor is None:
            rows = caffe_ave_divisor(height, self.kernel[0], self.pad[0], self.stride[0], out_h)
            cols = caffe_ave_divisor(width, self.kernel[1], self.pad[1], self.stride[1], out_w)
            divisor = (rows[:, None] * cols[None, :]).to(device=x.device, dtype=x.dtype)
            self._divisors[key] = divisor
        return sums / divisor


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
