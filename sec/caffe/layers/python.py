"""Python layers (`type: "Python"`) inside the torch engine, through one autograd Function.

The layer class is loaded from `python_param { module layer }` and driven exactly as Caffe
drives it: ``cls(layer_param)``, then ``param_str`` and ``phase`` are set, ``setup(bottom, top)``
and ``reshape(bottom, top)`` at build time, ``reshape`` + ``forward`` at every forward,
``backward(top, propagate_down, bottom)`` when autograd reaches it (or pycaffe's backward runs it
from the blobs). Blobs are `sec.caffe.Blob` objects holding float32 numpy arrays; tensors on any
device are moved to the CPU for the layer and its tops moved back. The gradient arriving at a top
(loss_weight x upstream for a loss top) is what the layer finds in ``top[i].diff``.

Learnable blobs: ``self.blobs`` is pycaffe's BlobVec; each ``self.blobs.add_blob(*shape)`` in
setup creates a zero-filled parameter of the net (ParamSpec ``param {}`` i of the layer applies:
lr_mult, decay_mult, sharing by name), listed by ``net.learnable_params()``, saved and loaded by
layer name and updated by the solver. The layer reads ``self.blobs[i].data`` and writes
``self.blobs[i].diff`` in backward as in Caffe (the diff the solver uses; Caffe's layers add to it
or overwrite it as they choose). Exceptions raised by the layer's own code reach the caller as
that exception (what pycaffe does), located by the net (see sec.caffe.net).
"""
import importlib

import numpy as np
import torch

from sec.caffe.blob import Blob, BlobVec, ParamBlob, tensor_to_numpy

PYTHON_TYPE = "Python"


class Layer:
    """pycaffe's `caffe.Layer` base for users' own Python layers (`class L(caffe.Layer)`).
    The engine constructs it with the LayerParameter and sets `param_str` and `phase`; `blobs`
    is the layer's BlobVec (`self.blobs.add_blob(*shape)` in setup), `type` is "Python".
    Constructed by hand (a test driving a layer), it takes param_str and phase from `param`."""

    def __init__(self, param=None):
        self.param = param
        self.param_str = getattr(getattr(param, "python_param", None), "param_str", "") or ""
        self.phase = getattr(param, "phase", 0) if param is not None else 0
        self.blobs = BlobVec()

    @property
    def type(self):
        return PYTHON_TYPE

    def setup(self, bottom, top):
        """Caffe's default LayerSetUp: nothing."""

    def reshape(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__}.reshape")

    def forward(self, bottom, top):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, top, propagate_down, bottom):
        raise NotImplementedError(f"{type(self).__name__}.backward")


class LayerCodeError(Exception):
    """An exception raised by a Python layer's own code (its module, class, setup or reshape)
    while the net is built; the net re-raises `error` itself, located (Caffe passes it through)."""

    def __init__(self, error, context=""):
        super().__init__(str(error))
        self.error = error
        self.context = context


def load_layer_class(lp):
    """The class named by lp.python_param (the module's import error, or AttributeError for a
    missing class, as LayerCodeError); ValueError when the names are not given."""
    p = lp.python_param
    if not p.module or not p.layer:
        raise ValueError("python_param.module and python_param.layer are required")
    try:
        module = importlib.import_module(p.module)
    except Exception as err:  # whatever the module raises is the layer's own error, as in pycaffe
        raise LayerCodeError(err, f": importing python_param.module '{p.module}'") from err
    cls = getattr(module, p.layer, None)
    if cls is None:
        err = AttributeError(f"module '{p.module}' ({getattr(module, '__file__', '?')}) has no layer "
                             f"class '{p.layer}' (python_param.layer)")
        raise LayerCodeError(err)
    return cls


class PythonLayer:
    """The engine side of one Python layer: its instance, its numpy blobs, its bridge."""

    def __init__(self, lp, shapes, ctx):
        cls = load_layer_class(lp)
        self.name = lp.name
        given = list(lp.propagate_down)
        if given and len(given) != len(shapes):
            raise ValueError(f"propagate_down has {len(given)} values for {len(shapes)} bottoms")
        self.propagate = given or [True] * len(shapes)
        self.net_device = ctx.net_device
        self.bottom = [Blob(s) for s in shapes]
        self.top = [Blob() for _ in lp.top]
        self.params = []

        shared_later = {}

        def make_blob(index, shape):
            spec = lp.param[index] if index < len(lp.param) else None
            is_shared = spec is not None and spec.name in ctx.shared
            param = ctx.param(lp, index, shape, None)   # zeros, as Caffe's new blob; shared by param name
            self.params.append(param)
            if is_shared:   # Caffe shares after setup: the owner's values stand, what setup writes is lost
                shared_later[index] = param
                return ParamBlob(torch.nn.Parameter(torch.zeros(shape)), {})
            return ParamBlob(param, {})                 # the net gives it its pending dict (Net._finish)

        self.layer = self._call(cls, lp)
        blobs = getattr(self.layer, "blobs", None)
        if not isinstance(blobs, BlobVec):
            blobs = BlobVec()
            self.layer.blobs = blobs
        blobs.make_blob = make_blob
        self.layer.param_str = lp.python_param.param_str
        self.layer.phase = ctx.phase
        self._call(self.layer.setup, self.bottom, self.top)
        for index, param in shared_later.items():
            blobs[index] = ParamBlob(param, {})
        blobs.make_blob = None   # blobs added later are plain numpy blobs, not net parameters (see README)

    @staticmethod
    def _call(method, *args):
        try:
            return method(*args)
        except Exception as err:  # the layer's own code: passed through to the caller as itself
            raise LayerCodeError(err) from err

    @property
    def blobs(self):
        return self.layer.blobs

    def shapes(self, shapes):
        for blob, shape in zip(self.bottom, shapes):
            blob.reshape(*shape)
        self._call(self.layer.reshape, self.bottom, self.top)
        return [tuple(t.data.shape) for t in self.top]

    def forward(self, *bottoms):
        return _Bridge.apply(self, *bottoms, *self.params)

    def run_forward(self, arrays):
        """Layer reshape + forward on numpy bottoms; returns float32 copies of the tops."""
        for blob, array in zip(self.bottom, arrays):
            blob.data = array
            if blob.diff.shape != array.shape:
                blob.diff = np.zeros(array.shape, np.float32)
        self.layer.reshape(self.bottom, self.top)
        self.layer.forward(self.bottom, self.top)
        self.blobs.flush()
        return [np.array(t.data, dtype=np.float32, copy=True) for t in self.top]

    def run_backward(self, arrays, tops, grads, propagate):
        """Layer backward with top diffs = grads; returns bottom diffs (copies). Parameter diffs
        are what the layer writes into self.blobs[i].diff (written back to the device)."""
        for blob, array in zip(self.bottom, arrays):
            blob.data = array
            blob.diff = np.zeros(array.shape, np.float32)
        for blob, data, grad in zip(self.top, tops, grads):
            blob.data = data
            blob.diff = grad if grad is not None else np.zeros(data.shape, np.float32)
        self.layer.backward(self.top, propagate, self.bottom)
        self.blobs.flush()
        return [np.array(b.diff, dtype=np.float32, copy=True) for b in self.bottom]

    def needs_backward(self, propagate):
        """Caffe runs a layer's backward when a bottom needs a gradient or it has learnable blobs."""
        return any(propagate) or any(p.requires_grad for p in self.params)


def _with_layer_note(err, runner, stage):
    err.add_note(f"in Python layer '{runner.name}' ({type(runner.layer).__name__}.{stage})")
    return err


class _Bridge(torch.autograd.Function):
    """numpy blobs in, numpy blobs out; gradients through the layer's own backward. The layer's
    parameters are inputs too (unused in the math), so autograd calls backward whenever they
    need a gradient; the layer writes their diffs itself, so None is returned for them."""

    @staticmethod
    def forward(ctx, runner, *inputs):
        bottoms = inputs[:len(runner.bottom)]
        arrays = [tensor_to_numpy(t) for t in bottoms]
        try:
            tops = runner.run_forward(arrays)
        except Exception as err:
            raise _with_layer_note(err, runner, "forward")
        device = bottoms[0].device if bottoms else runner.net_device()
        ctx.runner, ctx.arrays, ctx.tops, ctx.device = runner, arrays, tops, device
        ctx.extra = len(inputs) - len(bottoms)
        return tuple(torch.from_numpy(t).to(device) for t in tops)

    @staticmethod
    def backward(ctx, *grads):
        runner = ctx.runner
        needs = ctx.needs_input_grad[1:1 + len(ctx.arrays)]
        propagate = [bool(need) and spec for need, spec in zip(needs, runner.propagate)]
        none = (None,) * (1 + len(ctx.arrays) + ctx.extra)
        if not runner.needs_backward(propagate):
            return none
        diffs = [tensor_to_numpy(g.contiguous()) if g is not None else None for g in grads]
        try:
            bottom_diffs = runner.run_backward(ctx.arrays, ctx.tops, diffs, propagate)
        except Exception as err:
            raise _with_layer_note(err, runner, "backward")
        out = [torch.from_numpy(d).to(ctx.device) if p else None for d, p in zip(bottom_diffs, propagate)]
        return (None, *out) + (None,) * ctx.extra
