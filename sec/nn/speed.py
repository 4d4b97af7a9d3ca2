"""Speed options of a prototxt net on a GPU: TF32, bf16 autocast, channels_last.

* TF32 (``tf32=True``, the default): float32 convolutions (cuDNN) may use TF32 tensor cores on
  Ampere and newer GPUs (PyTorch's own default for convolutions); ``tf32=False`` forces IEEE
  float32. Matrix products are left in IEEE float32 (the exact CRF's kernels need it). No
  effect on CPU.
* ``precision="bf16"``: the net's forward runs under ``torch.autocast(dtype=torch.bfloat16)``;
  the SEC layers (softmax floor, losses, CRF) upcast to float32 (sec.nn.functional), so only the
  network body runs in bf16. Default ``"fp32"``.
* ``channels_last=True``: 4-D parameters, fed inputs and the data layers' 4-D tops (the ImageData
  images, conv1_1's input) in NHWC memory order (faster cuDNN kernels for bf16 on tensor cores).
  Default off.
* ``cudnn_benchmark=True`` (the default): cuDNN times its algorithms for each new input shape and
  keeps the fastest. The SEC nets have one shape (ImageData resizes every image to new_height x
  new_width), so the dilated convolutions are tuned once; a net whose shapes change every
  iteration would pay a tuning per new shape (pass False). No effect on CPU.

With the defaults on CPU nothing changes: `net_factory` returns None (the plain sec.caffe.Net).
"""
import torch

from sec.caffe.net import Net

PRECISIONS = ("fp32", "bf16")


def set_tf32(enabled):
    """Allow (or forbid) TF32 for float32 cuDNN convolutions, process-wide.

    Through the legacy flag ``torch.backends.cudnn.allow_tf32``, which sets the convolution and
    RNN precisions together: writing only the new per-operator ``cudnn.conv.fp32_precision``
    leaves conv and RNN different, and torch then raises on any later read of ``allow_tf32``
    (torch >= 2.9; tests/test_nn_speed.py)."""
    torch.backends.cudnn.allow_tf32 = bool(enabled)


def tf32_enabled():
    """Whether float32 cuDNN convolutions may use TF32: the per-operator precision where torch has
    one and it is set ("tf32" / "ieee"), else the legacy flag it falls back to ("none")."""
    cudnn_conv = getattr(torch.backends.cudnn, "conv", None)
    precision = getattr(cudnn_conv, "fp32_precision", "none") if cudnn_conv is not None else "none"
    if precision != "none":
        return precision == "tf32"
    return bool(torch.backends.cudnn.allow_tf32)


def check_options(precision="fp32", channels_last=False):
    if precision not in PRECISIONS:
        raise ValueError(f"need precision in {PRECISIONS}, got {precision!r}")
    return precision, bool(channels_last)


class FastNet(Net):
    """sec.caffe.Net whose `run` applies the precision and memory-format options.

    Build with `net_factory(...)`; everything else is Net's (weights, blobs, solver use).
    """

    precision = "fp32"
    channels_last = False

    def data_tops_channels_last(self):
        """Make every data layer's 4-D tops NHWC as they are produced (they feed conv1_1)."""
        for step in self._layers:
            if step.kind == "data":
                step.fn = _channels_last_tops(step.fn)

    def to(self, *args, **kwargs):
        moved = super().to(*args, **kwargs)
        if self.channels_last:
            for param in self.parameters():
                if param.dim() == 4:
                    param.data = param.data.contiguous(memory_format=torch.channels_last)
        return moved

    def run(self, feed=None):
        if self.channels_last and feed:
            feed = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v
                    for k, v in feed.items()}
        if self.precision == "fp32":
            return super().run(feed)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
            return super().run(feed)


def _channels_last_tops(forward):
    def step(*bottoms):
        return tuple(t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t
                     for t in forward(*bottoms))
    return step


def net_factory(precision="fp32", tf32=True, channels_last=False, cudnn_benchmark=True):
    """A `net_factory(prototxt, phase)` for sec.caffe's solvers with these options, or None when
    they are all defaults (the solver then builds a plain Net). Sets TF32 and cuDNN's benchmark
    mode process-wide."""
    precision, channels_last = check_options(precision, channels_last)
    set_tf32(tf32)
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
    if precision == "fp32" and not channels_last:
        return None

    def build(prototxt, phase):
        net = FastNet(prototxt, phase)
        net.precision, net.channels_last = precision, channels_last
        if channels_last:
            net.data_tops_channels_last()
        return net.to(net.device)
    return build
