"""Python layers (`type: "Python"`) inside the torch engine, through one autograd Function.

The layer class is loaded from `python_param { module layer }` and driven exactly as Caffe
drives it: ``cls(layer_param)``, then ``param_str`` and ``phase`` are set, ``setup(bottom, top)``
and ``reshape(bottom, top)`` at build time, ``reshape`` + ``forward`` at every forward,
``backward(top, propagate_down, bottom)`` when autograd reaches it. Blobs are `sec.caffe.Blob`
objects holding float32 numpy arrays; tensors on any device are moved to the CPU for the layer
and its tops moved back. The gradient arriving at a top (loss_weight x upstream for a loss top)
is what the layer finds in ``top[i].diff``.
"""
import importlib

import numpy as np
import torch

from sec.caffe.blob import Blob, tensor_to_numpy


class Layer:
    """pycaffe's `caffe.Layer` base for users' own Python layers (`class L(caffe.Layer)`).
    The engine constructs it with the LayerParameter and sets `param_str` and `phase`."""

    def __init__(self, param=None):
        self.param = param
        self.param_str = ""
        self.phase = 0

    def setup(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__}.setup")

    def reshape(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__}.reshape")

    def forward(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, top, propagate_down, bottom):
        raise NotImplementedError(f"{type(self).__name__}.backward")


def load_layer_class(lp):
    """The class named by lp.python_param; errors name the layer, the module and the cause."""
    p = lp.python_param
    if not p.module or not p.layer:
        raise ValueError("python_param.module and python_param.layer are required")
    try:
        module = importlib.import_module(p.module)
    except ImportError as err:
        raise ValueError(f"cannot import python_param.module '{p.module}': "
                         f"{type(err).__name__}: {err}") from err
    cls = getattr(module, p.layer, None)
    if cls is None:
        raise ValueError(f"module '{p.module}' ({getattr(module, '__file__', '?')}) has no layer "
                         f"class '{p.layer}'")
    return cls


class PythonLayer:
    """The engine side of one Python layer: its instance, its numpy blobs, its bridge."""

    def __init__(self, lp, shapes, ctx):
        cls = load_layer_class(lp)
        self.name = lp.name
        self.layer = cls(lp)
        self.layer.param_str = lp.python_param.param_str
        self.layer.phase = ctx.phase
        self.bottom = [Blob(s) for s in shapes]
        self.top = [Blob() for _ in lp.top]
        given = list(lp.propagate_down)
        if given and len(given) != len(shapes):
            raise ValueError(f"propagate_down has {len(given)} values for {len(shapes)} bottoms")
        self.propagate = given or [True] * len(shapes)
        self.net_device = ctx.net_device
        self.params = []
        self.layer.setup(self.bottom, self.top)

    def shapes(self, shapes):
        for blob, shape in zip(self.bottom, shapes):
            blob.reshape(*shape)
        self.layer.reshape(self.bottom, self.top)
        return [tuple(t.data.shape) for t in self.top]

    def forward(self, *bottoms):
        return _Bridge.apply(self, *bottoms)

    def run_forward(self, arrays):
        """Layer reshape + forward on numpy bottoms; returns float32 copies of the tops."""
        for blob, array in zip(self.bottom, arrays):
            blob.data = array
            if blob.diff.shape != array.shape:
                blob.diff = np.zeros(array.shape, np.float32)
        self.layer.reshape(self.bottom, self.top)
        self.layer.forward(self.bottom, self.top)
        return [np.array(t.data, dtype=np.float32, copy=True) for t in self.top]

    def run_backward(self, arrays, tops, grads, propagate):
        """Layer backward with top diffs = grads; returns bottom diffs (copies)."""
        for blob, array in zip(self.bottom, arrays):
            blob.data = array
            blob.diff = np.zeros(array.shape, np.float32)
        for blob, data, grad in zip(self.top, tops, grads):
            blob.data = data
            blob.diff = grad if grad is not None else np.zeros(data.shape, np.float32)
        self.layer.backward(self.top, propagate, self.bottom)
        return [np.array(b.diff, dtype=np.float32, copy=True) for b in self.bottom]


def _with_layer_note(err, runner, stage):
    err.add_note(f"in Python layer '{runner.name}' ({type(runner.layer).__name__}.{stage})")
    return err


class _Bridge(torch.autograd.Function):
    """numpy blobs in, numpy blobs out; gradients through the layer's own backward."""

    @staticmethod
    def forward(ctx, runner, *bottoms):
        arrays = [tensor_to_numpy(t) for t in bottoms]
        try:
            tops = runner.run_forward(arrays)
        except Exception as err:
            raise _with_layer_note(err, runner, "forward")
        device = bottoms[0].device if bottoms else runner.net_device()
        ctx.runner, ctx.arrays, ctx.tops, ctx.device = runner, arrays, tops, device
        return tuple(torch.from_numpy(t).to(device) for t in tops)

    @staticmethod
    def backward(ctx, *grads):
        runner = ctx.runner
        propagate = [bool(need) and spec for need, spec in zip(ctx.needs_input_grad[1:], runner.propagate)]
        if not any(propagate):
            return (None,) * (1 + len(ctx.arrays))
        diffs = [tensor_to_numpy(g.contiguous()) if g is not None else None for g in grads]
        try:
            bottom_diffs = runner.run_backward(ctx.arrays, ctx.tops, diffs, propagate)
        except Exception as err:
            raise _with_layer_note(err, runner, "backward")
        out = [torch.from_numpy(d).to(ctx.device) if p else None for d, p in zip(bottom_diffs, propagate)]
        return (None, *out)
