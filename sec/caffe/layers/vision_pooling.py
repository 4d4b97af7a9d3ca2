"""Vision layers, pooling (Caffe's vision_layers family): Pooling (MAX with its optional mask top,
AVE, STOCHASTIC) and SPP, with Caffe's shape rules.

Blobs are NCHW float32. The MAX mask top holds, per output, Caffe's flat index h * W + w (within
the channel plane) of the first maximum of the window, as float. STOCHASTIC pooling exists in
Caffe only on the GPU (its Forward_cpu is NOT_IMPLEMENTED): here too it runs on CUDA tensors
only; a forward on the CPU is an error naming the layer.
"""
import math

import torch
import torch.nn.functional as F

from sec.caffe.layers.base import TRAIN, need_4d, need_bottoms, pair

POOL_MAX, POOL_AVE, POOL_STOCHASTIC = 0, 1, 2
POOL_NAMES = {POOL_MAX: "MAX", POOL_AVE: "AVE", POOL_STOCHASTIC: "STOCHASTIC"}


def _has_hw(param, field):
    return param.HasField(f"{field}_h") or param.HasField(f"{field}_w")


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


def stochastic_pool(x, kernel, stride, out, train):
    """Caffe's GPU STOCHASTIC pooling of NCHW `x` (no padding; windows clipped to the image).

    TRAIN: in each window, the first position (row-major) where the running sum reaches u times
    the window's sum, u uniform in (0, 1] (torch's RNG; Caffe's curand cannot be matched), is
    picked and its value output; the gradient goes to the picked position. TEST: the window's
    values weighted by themselves, sum(x^2) / sum(x), or 0 where sum(x) <= 0 (its gradient is
    the exact one; Caffe's GPU backward reuses stale TRAIN picks there)."""
    batch, channels, height, width = x.shape
    # Zeros right and below make the clipped windows whole: they add nothing to a window's sums
    # and can never be the first position to reach the threshold.
    extra = [(o - 1) * s + k - n for o, s, k, n in zip(out, stride, kernel, (height, width))]
    windows = F.unfold(F.pad(x, (0, extra[1], 0, extra[0])), kernel, stride=stride)
    windows = windows.reshape(batch, channels, kernel[0] * kernel[1], out[0] * out[1])
    if train:
        running = windows.cumsum(dim=2)
        threshold = (1.0 - torch.rand_like(running[:, :, -1:])) * running[:, :, -1:]
        pick = (running >= threshold).to(torch.uint8).argmax(dim=2, keepdim=True)
        top = windows.gather(2, pick)
    else:
        total = windows.sum(dim=2, keepdim=True)
        top = torch.where(total > 0, (windows * windows).sum(dim=2, keepdim=True) / total, 0.0)
    return top.reshape(batch, channels, out[0], out[1])


class Window:
    """One 2-D pooling geometry applied as Caffe's PoolingLayer applies it.

    Output size: Caffe's (ceil, or floor with round_mode FLOOR; pool_out_size). With FLOOR every
    window lies inside the padded image, so torch's floor mode and Caffe agree on sizes and
    divisors. torch's ceil_mode pooling uses the same output-size rule (it clips the last window
    on every axis; Caffe does so when either axis is padded, and an unpadded net whose last
    window would lie wholly outside is refused) and the same AVE divisor whenever pad <=
    kernel // 2 (torch's own limit), so that path is taken then; other paddings, which Caffe
    allows up to kernel - 1, pad explicitly and divide by Caffe's window sizes.
    """

    def __init__(self, method, kernel, stride, pad, ceil=True):
        if min(kernel) <= 0 or min(stride) <= 0:
            raise ValueError(f"kernel {kernel} and stride {stride} must be positive")
        if pad != (0, 0):
            if method == POOL_STOCHASTIC:
                raise ValueError("padding is implemented only for MAX and AVE pooling (as Caffe), "
                                 f"not STOCHASTIC: pad {pad}")
            if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
                raise ValueError(f"pad {pad} must be smaller than kernel {kernel}")
        self.method, self.kernel, self.stride, self.pad, self.ceil = method, kernel, stride, pad, ceil
        self.padded = pad != (0, 0)
        self.use_torch = all(pad[i] <= kernel[i] // 2 for i in range(2))
        self._divisors = {}

    def out_size(self, height, width):
        """(out_h, out_w) for an input plane of height x width (checked)."""
        out = []
        for size, k, pad, s in zip((height, width), self.kernel, self.pad, self.stride):
            if size + 2 * pad < k:
                raise ValueError(f"kernel {self.kernel} is larger than the padded input {height}x{width}")
            n = pool_out_size(size, k, pad, s, self.padded, self.ceil)
            if (n - 1) * s >= size + pad:
                raise ValueError(f"the last pooling window of input {height}x{width} would lie wholly "
                                 f"outside the image (stride {self.stride} > kernel {self.kernel} "
                                 "without padding)")
            out.append(n)
        return tuple(out)

    def max(self, x, with_mask=False):
        """(top, mask or None): MAX pooling and Caffe's mask h * W + w of each window's first maximum."""
        if self.use_torch:
            result = F.max_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil,
                                  return_indices=with_mask)
            return (result[0], result[1].to(x.dtype)) if with_mask else (result, None)
        padded, (top_pad, left_pad) = self._explicit_pad(x, float("-inf")), self.pad
        result = F.max_pool2d(padded, self.kernel, self.stride, return_indices=with_mask)
        if not with_mask:
            return result, None
        top, index = result
        padded_width = padded.shape[3]
        rows, cols = index // padded_width - top_pad, index % padded_width - left_pad
        return top, (rows * x.shape[3] + cols).to(x.dtype)

    def ave(self, x):
        if self.use_torch:
            return F.avg_pool2d(x, self.kernel, self.stride, self.pad, ceil_mode=self.ceil, count_include_pad=True)
        height, width = x.shape[2], x.shape[3]
        sums = F.avg_pool2d(self._explicit_pad(x, 0.0), self.kernel, self.stride, divisor_override=1)
        key = (height, width, x.device)
        divisor = self._divisors.get(key)
        if divisor is None:
            out_h, out_w = self.out_size(height, width)
            rows = caffe_ave_divisor(height, self.kernel[0], self.pad[0], self.stride[0], out_h)
            cols = caffe_ave_divisor(width, self.kernel[1], self.pad[1], self.stride[1], out_w)
            divisor = (rows[:, None] * cols[None, :]).to(device=x.device, dtype=x.dtype)
            self._divisors[key] = divisor
        return sums / divisor

    def _explicit_pad(self, x, value):
        """`x` padded left/top by `pad`, right/bottom so that the last window ends inside (a
        negative amount crops rows no window reaches)."""
        height, width = x.shape[2], x.shape[3]
        out_h, out_w = self.out_size(height, width)
        extra_h = (out_h - 1) * self.stride[0] + self.kernel[0] - height - self.pad[0]
        extra_w = (out_w - 1) * self.stride[1] + self.kernel[1] - width - self.pad[1]
        return F.pad(x, (self.pad[1], extra_w, self.pad[0], extra_h), value=value)

    def apply(self, x, train, where, with_mask=False):
        """The pooled top (and the MAX mask when asked) of NCHW `x`; `where` names the layer."""
        if self.method == POOL_MAX:
            top, mask = self.max(x, with_mask)
            return (top, mask) if with_mask else (top,)
        if self.method == POOL_AVE:
            return (self.ave(x),)
        if x.device.type != "cuda":
            raise RuntimeError(f"{where}: pool STOCHASTIC runs only on a GPU, as in Caffe (its Forward_cpu "
                               "is NOT_IMPLEMENTED); call set_mode_gpu() before building the net")
        return (stochastic_pool(x, self.kernel, self.stride, self.out_size(x.shape[2], x.shape[3]), train),)


class Pooling:
    """Caffe's Pooling: MAX, AVE or STOCHASTIC over 2-D windows (global_pooling: the whole
    plane). A second top (MAX only) receives the mask."""

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 1)
        p = lp.pooling_param
        self.method = p.pool
        if self.method not in POOL_NAMES:
            raise ValueError(f"pooling_param.pool {self.method} is not MAX, AVE or STOCHASTIC")
        most = 2 if self.method == POOL_MAX else 1
        if not 1 <= len(lp.top) <= most:
            raise ValueError(f"has {len(lp.top)} tops; pool {POOL_NAMES[self.method]} takes "
                             + ("1 or 2 (the second: the mask)" if most == 2 else "1 (a mask top is MAX only)"))
        self.with_mask = len(lp.top) == 2
        self.where = f"layer '{lp.name}' (type Pooling)"
        self.train = ctx.phase == TRAIN
        ceil = p.round_mode == p.CEIL
        pad = pair([p.pad] if p.HasField("pad") else [], p.pad_h, p.pad_w, _has_hw(p, "pad"), 0, "pad")
        stride = pair([p.stride] if p.HasField("stride") else [], p.stride_h, p.stride_w,
                      _has_hw(p, "stride"), 1, "stride")
        if p.global_pooling:
            if p.HasField("kernel_size") or _has_hw(p, "kernel"):
                raise ValueError("global_pooling takes no kernel_size")
            if pad != (0, 0) or stride != (1, 1):
                raise ValueError("global_pooling needs pad 0 and stride 1")
            self.window = None
            Window(self.method, (1, 1), stride, pad, ceil)   # checks the method's own rules
        else:
            kernel = pair([p.kernel_size] if p.HasField("kernel_size") else [], p.kernel_h, p.kernel_w,
                          _has_hw(p, "kernel"), None, "kernel_size")
            self.window = Window(self.method, kernel, stride, pad, ceil)
        self.ceil = ceil
        self.params = []

    def _window_for(self, height, width):
        if self.window is not None:
            return self.window
        return Window(self.method, (height, width), (1, 1), (0, 0), self.ceil)

    def shapes(self, shapes):
        shape = tuple(shapes[0])
        need_4d(shape)
        out = self._window_for(shape[2], shape[3]).out_size(shape[2], shape[3])
        top = shape[:2] + out
        return [top, top] if self.with_mask else [top]

    def forward(self, x):
        return self._window_for(x.shape[2], x.shape[3]).apply(x, self.train, self.where, self.with_mask)


class SPP:
    """Caffe's spatial pyramid pooling: for each level l < pyramid_height, pooling into 2^l bins
    per axis with Caffe's arithmetic (kernel = ceil(size / bins), stride = kernel, pad =
    (kernel bins - size + 1) // 2, then Pooling's own output size), each flattened to (N, -1)
    and concatenated: top (N, sum of C x bins). With pyramid_height 1 the top is the pooled
    (N, C, h, w) itself, as Caffe's. Caffe builds the inner pooling layers with a default
    LayerParameter, so STOCHASTIC samples (TRAIN) in either phase; a level whose pad reaches its
    kernel is refused (Caffe's CHECK)."""

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 1)
        p = lp.spp_param
        if p.pyramid_height <= 0:
            raise ValueError("spp_param.pyramid_height must be set and positive")
        if p.pool not in POOL_NAMES:
            raise ValueError(f"spp_param.pool {p.pool} is not MAX, AVE or STOCHASTIC")
        self.height, self.method = int(p.pyramid_height), p.pool
        self.where = f"layer '{lp.name}' (type SPP)"
        self.params = []
        self._levels = {}

    def levels(self, height, width):
        """[(Window, (out_h, out_w))] of each pyramid level for an input plane height x width."""
        key = (height, width)
        if key not in self._levels:
            if height <= 0 or width <= 0:
                raise ValueError(f"input plane {height}x{width} is empty")
            levels = []
            for level in range(self.height):
                bins = 2 ** level
                kernel = tuple(math.ceil(n / bins) for n in (height, width))
                pad = tuple((k * bins - n + 1) // 2 for k, n in zip(kernel, (height, width)))
                try:
                    window = Window(self.method, kernel, kernel, pad)
                    levels.append((window, window.out_size(height, width)))
                except ValueError as err:
                    raise ValueError(f"pyramid level {level} ({bins} bins) of a {height}x{width} input: {err}") from err
            self._levels[key] = levels
        return self._levels[key]

    def shapes(self, shapes):
        shape = tuple(shapes[0])
        need_4d(shape)
        levels = self.levels(shape[2], shape[3])
        if self.height == 1:
            return [shape[:2] + levels[0][1]]
        return [(shape[0], sum(shape[1] * out[0] * out[1] for _, out in levels))]

    def forward(self, x):
        pooled = [window.apply(x, True, self.where)[0] for window, _ in self.levels(x.shape[2], x.shape[3])]
        if self.height == 1:
            return (pooled[0],)
        return (torch.cat([top.reshape(x.shape[0], -1) for top in pooled], dim=1),)
