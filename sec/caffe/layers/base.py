"""What every layer implementation shares: the build context, parameters, Caffe's fillers.

A layer implementation is a class built once per prototxt layer from
``(lp, bottom_shapes, ctx)`` (``lp`` the LayerParameter, shapes as tuples of ints, NCHW for
images). It offers

* ``params``: list of torch.nn.Parameter in Caffe's blob order (what .caffemodel stores),
* ``shapes(bottom_shapes) -> list of top shapes``: Caffe's Reshape; raises ValueError with a
  plain message when the bottoms do not fit (the net adds file, line and layer name),
* ``forward(*bottoms) -> tuple of top tensors``: float32 tensors, autograd-friendly, never
  in place (in-place layers are an aliasing of blob names handled by the net).

Everything a forward needs is computed in ``__init__`` so the per-call Python work stays small.
"""
import math

import torch

TRAIN, TEST = 0, 1
FLOAT = torch.float32

# Caffe's FillerParameter.VarianceNorm values.
FAN_IN, FAN_OUT, AVERAGE = 0, 1, 2


class NetError(ValueError):
    """A prototxt the engine cannot build: the message names file, line, layer and field."""


class BuildContext:
    """What a layer needs from the net while it is built.

    phase: TRAIN (0) or TEST (1); device: where new parameters are created; net_device:
    callable giving the net's current device (the net may be moved after building);
    shared: ParamSpec name -> (Parameter, lr_mult, decay_mult) for `param { name: ... }`;
    infos: (layer, index, Parameter, lr_mult, decay_mult) of each learnable parameter, in
    build order, shared ones once (at their first layer);
    data_seeds: Caffe's global generator as the data layers draw their seeds from it while the
    net is built (sec.caffe.caffe_rng.DataLayerSeeds; made by the first data layer that draws).
    """

    def __init__(self, phase, device, net_device):
        self.phase = phase
        self.device = device
        self.net_device = net_device
        self.shared = {}
        self.infos = []
        self.layer_name = ""
        self.data_seeds = None

    def weight_and_bias(self, lp, p, weight_shape, num_output):
        """Blob 0 (weight, `p.weight_filler`) and, when `p.bias_term`, blob 1 (bias of
        `num_output`, `p.bias_filler`) of a Convolution-like or InnerProduct layer whose
        parameter message is `p`; returns (weight, bias or None, params list)."""
        weight = self.param(lp, 0, weight_shape, p.weight_filler if p.HasField("weight_filler") else None)
        bias = None
        if p.bias_term:
            bias = self.param(lp, 1, (num_output,), p.bias_filler if p.HasField("bias_filler") else None)
        return weight, bias, [weight] + ([bias] if bias is not None else [])

    def param(self, lp, index, shape, filler, learnable=True):
        """The Parameter of blob `index` of layer `lp`: new and filled, or a shared one.

        `filler` is a FillerParameter (or None for Caffe's default: constant 0).
        Non-learnable blobs (BatchNorm statistics) get requires_grad=False and no ParamSpec.
        """
        shape = tuple(int(d) for d in shape)
        spec = lp.param[index] if index < len(lp.param) else None
        share_name = spec.name if spec is not None and spec.name else ""
        lr_mult = float(spec.lr_mult) if spec is not None else 1.0
        decay_mult = float(spec.decay_mult) if spec is not None else 1.0
        if share_name and share_name in self.shared:
            owner, owner_lr, owner_decay = self.shared[share_name]
            if tuple(owner.shape) != shape:
                raise ValueError(f"shared param '{share_name}' has shape {tuple(owner.shape)} in its "
                                 f"first layer but {shape} here (param index {index})")
            if (owner_lr, owner_decay) != (lr_mult, decay_mult):
                raise ValueError(f"shared param '{share_name}' has lr_mult/decay_mult {owner_lr}/{owner_decay} "
                                 f"in its first layer but {lr_mult}/{decay_mult} here")
            return owner
        data = fill(filler, shape).to(self.device)
        param = torch.nn.Parameter(data, requires_grad=learnable)
        if share_name:
            self.shared[share_name] = (param, lr_mult, decay_mult)
        if learnable:
            self.infos.append((lp.name, index, param, lr_mult, decay_mult))
        return param


def fan_in_out(shape):
    """Caffe's fan_in = count / shape[0], fan_out = count / shape[1] (count for 1-D blobs)."""
    count = math.prod(shape)
    fan_in = count / shape[0]
    fan_out = count / shape[1] if len(shape) > 1 else count
    return fan_in, fan_out


def _variance_n(filler, shape):
    fan_in, fan_out = fan_in_out(shape)
    norm = filler.variance_norm
    if norm == FAN_OUT:
        return fan_out
    if norm == AVERAGE:
        return (fan_in + fan_out) / 2.0
    return fan_in


def _bilinear(shape):
    """Caffe's BilinearFiller: the same bilinear-upsampling kernel in every (out, in) slice."""
    if len(shape) != 4 or shape[2] != shape[3]:
        raise ValueError(f"bilinear filler needs a 4-D blob with square kernels, got {shape}")
    size = shape[3]
    factor = math.ceil(size / 2.0)
    center = (2 * factor - 1 - factor % 2) / (2.0 * factor)
    pos = torch.arange(size, dtype=torch.float64)
    profile = 1 - (pos / factor - center).abs()
    kernel = (profile[:, None] * profile[None, :]).to(FLOAT)
    return kernel.expand(shape).clone()


def fill(filler, shape):
    """A float32 CPU tensor of `shape` filled as Caffe's filler `filler` would (torch's RNG)."""
    kind = filler.type if filler is not None else "constant"
    if kind == "constant":
        return torch.full(shape, filler.value if filler is not None else 0.0, dtype=FLOAT)
    if kind == "uniform":
        return torch.empty(shape, dtype=FLOAT).uniform_(filler.min, filler.max)
    if kind == "gaussian":
        data = torch.empty(shape, dtype=FLOAT).normal_(filler.mean, filler.std)
        if filler.sparse >= 0:
            keep = torch.rand(shape) < filler.sparse / shape[0]
            data = data * keep
        return data
    if kind == "xavier":
        scale = math.sqrt(3.0 / _variance_n(filler, shape))
        return torch.empty(shape, dtype=FLOAT).uniform_(-scale, scale)
    if kind == "msra":
        std = math.sqrt(2.0 / _variance_n(filler, shape))
        return torch.empty(shape, dtype=FLOAT).normal_(0.0, std)
    if kind == "positive_unitball":
        data = torch.rand(shape, dtype=FLOAT)
        return data / data.reshape(shape[0], -1).sum(1).reshape((shape[0],) + (1,) * (len(shape) - 1))
    if kind == "bilinear":
        return _bilinear(shape)
    raise ValueError(f"unknown filler type '{kind}' (known: constant, uniform, gaussian, xavier, "
                     "msra, positive_unitball, bilinear)")


def canonical_axis(axis, num_axes, field="axis"):
    """Caffe's CanonicalAxisIndex: negative axes count from the end; out of range is an error."""
    if not -num_axes <= axis < num_axes:
        raise ValueError(f"{field} {axis} out of range for a {num_axes}-axis blob")
    return axis % num_axes


def need_bottoms(lp, shapes, low, high=None):
    """Check the number of bottoms (and tops) of a layer against [low, high]."""
    high = low if high is None else high
    if not low <= len(shapes) <= high:
        want = str(low) if low == high else f"{low}..{high}"
        raise ValueError(f"needs {want} bottom blob(s), got {len(shapes)}")


def need_4d(shape, what="bottom"):
    if len(shape) != 4:
        raise ValueError(f"{what} must be 4-D (N, C, H, W), got shape {tuple(shape)}")


def pair(repeated, single_h, single_w, has_h, default, field):
    """Caffe's spatial parameter rule: `x_h`/`x_w` when set, else the repeated `x` (one value for
    both axes, or one per axis), else `default`."""
    if has_h:
        if len(repeated):
            raise ValueError(f"either {field} or {field}_h/{field}_w may be set, not both")
        return int(single_h), int(single_w)
    if len(repeated) == 0:
        if default is None:
            raise ValueError(f"{field} (or {field}_h and {field}_w) is required")
        return default, default
    if len(repeated) == 1:
        return int(repeated[0]), int(repeated[0])
    if len(repeated) == 2:
        return int(repeated[0]), int(repeated[1])
    raise ValueError(f"{field} has {len(repeated)} values; 2-D layers take 1 or 2")


class UnaryLayer:
    """A layer with one bottom and one top of the same shape, and no parameters of its own."""

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 1)
        self.params = []

    def shapes(self, shapes):
        return [tuple(shapes[0])]


def constant_filler(value):
    """A FillerParameter of type constant: the default filler of a layer whose Caffe default is
    not 0 (Scale's 1, PReLU's 0.25)."""
    from sec.proto import caffe_pb2
    return caffe_pb2.FillerParameter(type="constant", value=value)


def in_place(lp):
    """Whether a one-bottom, one-top layer names its top as its bottom (Caffe's in-place use)."""
    return len(lp.top) == 1 and len(lp.bottom) == 1 and lp.top[0] == lp.bottom[0]
