"""Tracing for sec.export: a torch module to ONNX bytes (TorchScript-based exporter) or a frozen
TorchScript module, running them, comparing with the engine, and finding the layer at fault.

Tensors are float32 NCHW as the engine's blobs; comparisons are relative to the engine's values
(relative_difference). The layer search exports each layer of a net alone (its bottoms dynamic in
every axis) and runs it on the bottoms the engine computed, so that the first layer the exporter
cannot express, or whose exported form disagrees with the engine, is named.
"""
import contextlib
import importlib
import io
import os
import sys
import warnings

import numpy as np
import torch

from sec.caffe.layers.vision_pooling import POOL_AVE, POOL_MAX

ONNX_OPSET = 17
CHECK_TOL = 1e-5
SPATIAL_AXES = (2, 3)       # of 4-D (NCHW) blobs


class ExportError(ValueError):
    """A net or a flag the exporter cannot use; the message names the file, layer or flag."""


def need_module(name, purpose, package=None):
    """Import optional module `name`, or an ExportError saying which pip package brings it."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ExportError(f"{purpose} needs the '{package or name}' package: pip install {package or name} "
                          f"({err})") from err


def global_pool(method):
    """Caffe's global pooling (one window over the whole plane, pad 0, stride 1) written with
    reductions, which the graph keeps dynamic; the engine's pooling takes the plane's size as its
    kernel, which the tracer would fix to the traced size."""
    def forward(x):
        if method == POOL_MAX:
            return (x.amax(dim=SPATIAL_AXES, keepdim=True),)
        return (x.mean(dim=SPATIAL_AXES, keepdim=True),)
    return forward


def export_forward(step):
    """The forward a layer is exported with: the engine's own, except global pooling."""
    impl = step.impl
    if step.type == "Pooling" and impl.window is None and impl.method in (POOL_MAX, POOL_AVE):
        return global_pool(impl.method)
    return step.fn


class LayerGraph(torch.nn.Module):
    """One layer of a net as forward(*bottoms) -> tuple of tops (its parameters registered, so
    that tracing keeps them as weights)."""

    def __init__(self, step):
        super().__init__()
        self.forward_of = export_forward(step)
        self.weights = torch.nn.ParameterList(step.impl.params)

    def forward(self, *bottoms):
        return tuple(self.forward_of(*bottoms))


def relative_difference(got, want):
    """max |got - want| / max |want| over the finite values; inf when shapes or NaN/Inf places differ."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return float("inf")
    finite = np.isfinite(want)
    if not np.array_equal(finite, np.isfinite(got)) or not np.array_equal(got[~finite], want[~finite],
                                                                          equal_nan=True):
        return float("inf")
    if not finite.any():
        return 0.0
    scale = max(float(np.abs(want[finite]).max()), np.finfo(np.float32).tiny)
    return float(np.abs(got[finite] - want[finite]).max() / scale)


def run_module(module, inputs):
    with torch.no_grad():
        return [t.detach().cpu().numpy() for t in module(*inputs)]


def worst_difference(got, want):
    return max((relative_difference(g, w) for g, w in zip(got, want)), default=0.0)


class OnnxRunner:
    """Runs an ONNX model (bytes or path) in ONNX Runtime on CPU: run(inputs) -> [numpy]."""

    def __init__(self, model, input_names):
        ort = need_module("onnxruntime", "checking the ONNX graph against the engine (--no-check skips it)")
        options = ort.SessionOptions()
        options.log_severity_level = 4   # fatal only: a failure comes back as the exception we report
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.input_names = list(input_names)

    def __call__(self, inputs):
        feed = {name: np.ascontiguousarray(x.cpu().numpy(), dtype=np.float32)
                for name, x in zip(self.input_names, inputs)}
        return self.session.run(None, feed)


@contextlib.contextmanager
def _quiet_native_output():
    """Hide what native code writes to stdout and stderr meanwhile: torch's TorchScript exporter
    dumps the whole graph to stdout when a node fails (its logging switch is always on in torch
    2.13); the exception that follows carries the reason, and the caller reports it."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in (1, 2)]
    try:
        with open(os.devnull, "w") as devnull:
            for fd in (1, 2):
                os.dup2(devnull.fileno(), fd)
            yield
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


def onnx_bytes(module, inputs, input_names, output_names, dynamic):
    """The ONNX model of `module` traced on `inputs`, as bytes. dynamic: {name: [axes]}."""
    need_module("onnx", "the ONNX export")
    axes = {name: {a: f"{name}_{a}" for a in dims} for name, dims in dynamic.items() if dims}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), _quiet_native_output():
        # The TorchScript-based exporter is chosen on purpose (see the module docstring); its
        # deprecation notice and tracer remarks are not the user's to act on.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(inputs), buffer, dynamo=False, input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=axes, opset_version=ONNX_OPSET,
                          do_constant_folding=True)
    return buffer.getvalue()


def torchscript_module(module, inputs):
    """`module` traced by torch.jit.trace on `inputs` and frozen: the weights become constants,
    so that its outputs need no autograd (eval mode, as the TEST phase)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")   # tracer remarks; the check decides
        return torch.jit.freeze(torch.jit.trace(module.eval(), tuple(inputs), check_trace=False))


def save_torchscript(module, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch.jit.save's deprecation notice: TorchScript is what was asked for
        torch.jit.save(module, path)


def layer_fault(step, bottoms, probe_bottoms, tops, fmt):
    """Why `step` exported alone on `bottoms` (dynamic in every axis) does not reproduce the
    engine's `tops` at `probe_bottoms`, or None."""
    layer = LayerGraph(step).eval()
    names = [f"bottom{i}" for i in range(len(bottoms))]
    try:
        if fmt == "onnx":
            dynamic = {name: list(range(b.dim())) for name, b in zip(names, bottoms)}
            model = onnx_bytes(layer, bottoms, names, [f"top{i}" for i in range(len(tops))], dynamic)
            got = OnnxRunner(model, names)(probe_bottoms)
        else:
            got = run_module(torchscript_module(layer, bottoms), probe_bottoms)
    except ExportError:
        raise
    except Exception as err:  # the exporter's or the runtime's own failure, for this layer
        return f"{type(err).__name__}: {first_line(err)}"
    worst = worst_difference(got, tops)
    if worst > CHECK_TOL:
        return (f"its exported form differs from the engine by {worst:.3g} (relative) at bottom shapes "
                f"{[tuple(b.shape) for b in probe_bottoms]} (traced at {[tuple(b.shape) for b in bottoms]})")
    return None


def _step_values(net, inputs):
    """{blob: tensor} after each step, as [(step, bottoms, tops)] of the engine on `inputs`."""
    values = dict(zip(net.inputs, inputs))
    record = []
    with torch.no_grad():
        for step in net._run_steps:
            bottoms = [values[b] for b in step.bottoms]
            tops = list(step.fn(*bottoms))
            record.append((step, bottoms, tops))
            values.update(zip(step.tops, tops))
    return record


def find_layer_at_fault(net, base_inputs, probe_inputs, fmt):
    """(step, reason) of the first layer that, exported alone at its base-shape bottoms, fails or
    disagrees with the engine at its probe-shape bottoms; None when every layer passes."""
    base = _step_values(net, base_inputs)
    probe = _step_values(net, probe_inputs)
    for (step, bottoms, _), (_, probe_bottoms, probe_tops) in zip(base, probe):
        tops = [t.numpy() for t in probe_tops]
        reason = layer_fault(step, bottoms, probe_bottoms, tops, fmt)
        if reason is not None:
            return step, reason
    return None


def first_line(err):
    text = str(err).strip()
    return text.splitlines()[0] if text else ""
