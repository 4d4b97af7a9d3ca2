"""Export a deploy net that sec.caffe runs to ONNX and TorchScript, checked against the engine.

    python -m sec.export --prototxt models/sec/deploy.prototxt --weights SEC.caffemodel \\
        --onnx sec.onnx [--torchscript sec.pt]

The graph is the net's TEST-phase forward: each layer's own engine code (so Caffe's semantics,
ceil-mode pooling with Caffe's clipping, dilation, the Softmax axis, come along; global pooling
alone is written as a reduction, see sec.export_trace.export_forward), traced by torch's
TorchScript-based ONNX exporter (`torch.onnx.export(dynamo=False)`, opset
sec.export_trace.ONNX_OPSET; it needs the `onnx` package) and by `torch.jit.trace` for
TorchScript. The dynamo exporter gave equal outputs on the synthetic deploy net but took 27 s
against 3 s, and needs onnxscript besides.

Inputs and outputs keep the blob names (SEC: `images` -> `fc8-SEC-Softmax`), float32 NCHW in the
net's own convention (SEC: BGR, mean 104/117/123 subtracted, not scaled). The batch axis, and
the spatial axes of 4-D inputs, are dynamic where the net allows it: where the engine itself
reshapes the net to a probe shape (batch + PROBE_GROW[0], height and width + PROBE_GROW[1:]); an
InnerProduct, e.g., fixes the spatial size. `static=True` (--static) keeps the prototxt's shapes.

Before anything is written, the ONNX graph (run in ONNX Runtime) and the TorchScript module are
compared with the engine on random inputs (normal, std INPUT_STD, seeded) at the prototxt's
shape and, where dynamic, at the probe shape: every output within CHECK_TOL, as
max |exported - engine| / max |engine| (NaN where the engine has NaN). A net that cannot be
expressed is an ExportError naming the prototxt file, line and layer: a layer refused up front
(REFUSED_TYPES, STOCHASTIC pooling, the MAX pooling mask), or one found by exporting each layer
on its own when the exporter fails or the whole graph disagrees with the engine (e.g. a layer
that bakes the traced size into the graph). Files are written under a temporary name beside the
target and renamed once the check passed, so a failed export leaves nothing behind.
"""
import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sec.caffe.layers.base import TEST
from sec.caffe.layers.vision_pooling import POOL_STOCHASTIC
from sec.deploy_files import atomic_save
from sec.export_trace import (CHECK_TOL, SPATIAL_AXES, ExportError, OnnxRunner, export_forward,
                              find_layer_at_fault, first_line, onnx_bytes, run_module, save_torchscript,
                              torchscript_module, worst_difference)

PROBE_GROW = (1, 13, 6)     # batch, height, width added for the probe shape: odd and even sizes
INPUT_STD = 64.0            # random inputs at the scale of mean-subtracted pixels
CHECK_SEED = 0
EXIT_BAD_INPUT = 2          # a flag, file or net the export cannot use; nothing written
EXIT_INTERRUPTED = 130      # Ctrl-C; nothing written

REFUSED_TYPES = {
    "Python": "runs Python (numpy) code on the host, outside the traced graph",
    "ImageData": "reads image files; export the deploy net, whose Input layer takes the images",
}


@dataclass
class ExportReport:
    """What `export` wrote and how it was checked: output paths, the dynamic axes per input,
    the shapes checked and the worst relative difference from the engine per format."""
    onnx: Path = None
    torchscript: Path = None
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    output_names: list = field(default_factory=list)
    dynamic: dict = field(default_factory=dict)
    checked_shapes: list = field(default_factory=list)
    worst: dict = field(default_factory=dict)


class NetGraph(torch.nn.Module):
    """The net's layers as forward(*inputs) -> tuple of output tensors (in `outputs` order),
    each layer run by export_forward (the engine's own forward, but for global pooling)."""

    def __init__(self, net, outputs):
        super().__init__()
        self.net, self.outputs = net, list(outputs)
        self.steps = [(step, export_forward(step)) for step in net._run_steps]   # the engine's layers

    def forward(self, *inputs):
        values = dict(zip(self.net.inputs, inputs))
        for step, forward in self.steps:
            values.update(zip(step.tops, forward(*[values[b] for b in step.bottoms])))
        return tuple(values[name] for name in self.outputs)


class EngineGraph(torch.nn.Module):
    """The engine's own forward (`Net.run`) of the same outputs: what the export is checked against."""

    def __init__(self, net, outputs):
        super().__init__()
        self.net, self.outputs = net, list(outputs)

    def forward(self, *inputs):
        values = self.net.run(dict(zip(self.net.inputs, inputs)))
        return tuple(values[name] for name in self.outputs)


# ---- what cannot be exported ----------------------------------------------------------------

def refusal(step):
    """Why layer `step` (a Net step) cannot be exported, or None."""
    if step.type in REFUSED_TYPES:
        return REFUSED_TYPES[step.type]
    if step.kind == "data":
        return "reads its own data; export a net whose Input layer takes the data"
    if step.type == "Pooling" and getattr(step.impl, "method", None) == POOL_STOCHASTIC:
        return "STOCHASTIC pooling samples at random (and runs only on CUDA)"
    if step.type == "Pooling" and getattr(step.impl, "with_mask", False):
        return "the MAX pooling mask top has no ONNX equivalent (ONNX's indices count over N x C x H x W)"
    return None


def check_exportable(net):
    """ExportError naming the first layer of `net` that refusal() refuses."""
    for step in net._run_steps:   # the engine's build steps: layer name, type, implementation
        reason = refusal(step)
        if reason is not None:
            raise ExportError(f"{net._where(step)}: cannot be exported: {reason}")


# ---- shapes ---------------------------------------------------------------------------------

def _input_shapes(net):
    return [tuple(int(d) for d in net.blobs[name].shape) for name in net.inputs]


def _grown(shape, axes):
    grow = dict(zip((0,) + SPATIAL_AXES, PROBE_GROW))
    return tuple(d + grow[a] if a in axes else d for a, d in enumerate(shape))


def _reshapes(net, shapes):
    """Whether the engine builds `net` for input `shapes` (Caffe's Reshape checks)."""
    from sec.caffe.layers.base import NetError
    for name, shape in zip(net.inputs, shapes):
        net.blobs[name].reshape(*shape)
    try:
        net.reshape()
        return True
    except NetError:
        return False


def dynamic_axes(net, static=False):
    """{input: [axes]} that may vary: batch and spatial axes (4-D inputs) where the engine reshapes
    the net to a probe shape there, else the batch axis alone where it does, else none."""
    base = _input_shapes(net)
    found = {name: [] for name in net.inputs}
    if not static:
        every = [[0] + (list(SPATIAL_AXES) if len(shape) == 4 else []) for shape in base]
        for choice in (every, [[0] for _ in base]):
            if _reshapes(net, [_grown(shape, axes) for shape, axes in zip(base, choice)]):
                found = dict(zip(net.inputs, choice))
                break
        if not _reshapes(net, base):
            raise ExportError(f"{net.source}: the net no longer reshapes to its own input shapes {base}")
    return found


def random_inputs(shapes, seed=CHECK_SEED):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) * INPUT_STD for shape in shapes]


# ---- exporting ------------------------------------------------------------------------------

FORMAT_NAMES = {"onnx": "ONNX", "torchscript": "TorchScript"}


def _fail(net, fmt, base_inputs, probe_inputs, what):
    """Raise the ExportError of a failed or disagreeing export: naming the layer at fault when
    one fails alone (find_layer_at_fault), else the net and `what` happened."""
    found = find_layer_at_fault(net, base_inputs, probe_inputs, fmt)
    if found is not None:
        step, reason = found
        raise ExportError(f"{net._where(step)}: cannot be expressed in {FORMAT_NAMES[fmt]}: {reason}")
    raise ExportError(f"{net.source}: {FORMAT_NAMES[fmt]} export failed ({what}), and no single layer "
                      "fails alone")


def _check(runner, cases, fmt, net, report):
    """Run `runner` on each (inputs, engine outputs) case, the prototxt's shape first; raise
    naming the layer at fault. Records the worst difference in report.worst[fmt]."""
    worst = 0.0
    for index, (inputs, want) in enumerate(cases):
        diff = worst_difference(runner(inputs), want)
        if diff > CHECK_TOL:
            shapes = [tuple(x.shape) for x in inputs]
            hint = "; it holds at the prototxt's shape: --static exports that shape only" if index else ""
            try:
                _fail(net, fmt, cases[0][0], inputs, f"differs from the engine by {diff:.3g} at input shapes {shapes}")
            except ExportError as err:
                raise ExportError(f"{err}{hint}") from None
        worst = max(worst, diff)
    report.worst[fmt] = worst


def _engine_outputs(net, graph, inputs, what):
    """The engine's outputs on `inputs`; ExportError when the engine itself refuses them."""
    try:
        return run_module(graph, inputs)
    except (ValueError, RuntimeError) as err:   # e.g. a label layer fed random values
        raise ExportError(f"{net.source}: cannot check the export: the engine refuses {what} "
                          f"({err}); pass --no-check to export unchecked") from err


def export(net, onnx=None, torchscript=None, outputs=None, static=False, check=True, examples=None):
    """Export `net` (a sec.caffe.Net built in the TEST phase) to ONNX file `onnx` and/or
    TorchScript file `torchscript`; returns an ExportReport.

    outputs: blob names (default: the net's outputs). examples: input tensors to trace on
    (default: random at the prototxt's shapes). check=False skips the comparison with the engine
    (and ONNX Runtime). ExportError names the layer or file at fault; nothing is written then.
    """
    if onnx is None and torchscript is None:
        raise ExportError("nothing to export: give an ONNX and/or a TorchScript output path")
    if net.phase != TEST:
        raise ExportError(f"{net.source}: export needs the net built in the TEST phase")
    if not net.inputs:
        raise ExportError(f"{net.source}: the net declares no input blob (a deploy net has an Input layer)")
    outputs = list(outputs or net.outputs)
    if not outputs:
        raise ExportError(f"{net.source}: the net has no output blob (every top is consumed or silenced)")
    missing = [name for name in outputs if name not in net.blobs]
    if missing:
        raise ExportError(f"{net.source}: no blob named {missing} (blobs: {list(net.blobs)})")
    check_exportable(net)
    for path in (onnx, torchscript):
        if path is not None and not Path(path).parent.is_dir():
            raise ExportError(f"cannot write {path}: the folder {Path(path).parent} does not exist")
    net = net.to("cpu").eval()
    report = ExportReport(inputs=list(net.inputs), outputs=outputs, dynamic=dynamic_axes(net, static))
    # ONNX names each value once: an output that is an input blob rewritten in place is renamed.
    names = [f"{name}_top" if name in net.inputs else name for name in outputs]
    report.output_names = names
    base = [torch.as_tensor(x, dtype=torch.float32) for x in examples] if examples is not None \
        else random_inputs(_input_shapes(net))
    shapes = [tuple(x.shape) for x in base]
    probe_shapes = [_grown(s, report.dynamic[n]) for n, s in zip(net.inputs, shapes)]
    graph, engine = NetGraph(net, outputs).eval(), EngineGraph(net, outputs).eval()
    probe = random_inputs(probe_shapes, CHECK_SEED + 1) if probe_shapes != shapes else base
    cases = []
    if check:
        cases.append((base, _engine_outputs(net, engine, base, "the example inputs")))
        if probe is not base:
            cases.append((probe, _engine_outputs(net, engine, probe, f"random inputs of shapes {probe_shapes}")))
        report.checked_shapes = [[tuple(x.shape) for x in inputs] for inputs, _ in cases]
    writes = []
    if onnx is not None:
        try:
            model = onnx_bytes(graph, base, net.inputs, names, report.dynamic)
        except ExportError:
            raise
        except Exception as err:  # the exporter's own failure: find the layer behind it
            _fail(net, "onnx", base, probe, f"{type(err).__name__}: {first_line(err)}")
        if check:
            _check(OnnxRunner(model, net.inputs), cases, "onnx", net, report)
        writes.append((onnx, lambda tmp: Path(tmp).write_bytes(model)))
        report.onnx = Path(onnx)
    if torchscript is not None:
        try:
            traced = torchscript_module(graph, base)
        except Exception as err:  # the tracer's own failure: find the layer behind it
            _fail(net, "torchscript", base, probe, f"{type(err).__name__}: {first_line(err)}")
        if check:
            _check(lambda inputs: run_module(traced, inputs), cases, "torchscript", net, report)
        writes.append((torchscript, lambda tmp: save_torchscript(traced, tmp)))
        report.torchscript = Path(torchscript)
    for path, write in writes:
        atomic_save(path, write)
    return report


# ---- command line ---------------------------------------------------------------------------

def load_net(prototxt, weights, allow_missing_weights=False):
    """The TEST-phase sec.caffe.Net of `prototxt` with `weights`; ExportError naming the file
    (or the layer that got no weights) when they cannot be used."""
    from sec import caffe
    from sec.caffe.weights import MissingWeightsError
    for flag, path in (("--prototxt", prototxt), ("--weights", weights)):
        if not Path(path).is_file():
            raise ExportError(f"{flag}: file not found: {path}")
    caffe.set_mode_cpu()
    try:
        net = caffe.Net(str(prototxt), caffe.TEST, weights=str(weights))
        if not allow_missing_weights:
            net.weight_report.require_complete()
    except ValueError as err:   # prototxt, format, shape, non-finite and missing-weight errors
        hint = "; pass --allow-missing-weights to export filler values there" \
            if isinstance(err, MissingWeightsError) else ""
        raise ExportError(f"cannot load {weights} into {prototxt}: {err}{hint}") from err
    return net


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m sec.export",
        description="Export a deploy net (prototxt + .caffemodel) to ONNX and/or TorchScript, checked "
                    "against the sec.caffe engine before anything is written.")
    parser.add_argument("--prototxt", required=True, help="deploy prototxt (an Input layer takes the images)")
    parser.add_argument("--weights", required=True, help=".caffemodel weights for it")
    parser.add_argument("--onnx", help="write the ONNX model here (needs the 'onnx' package)")
    parser.add_argument("--torchscript", help="write the TorchScript module here (torch.jit.load reads it)")
    parser.add_argument("--outputs", help="comma-separated blob names to output (default: the net's outputs)")
    parser.add_argument("--static", action="store_true",
                        help="keep the prototxt's input shape (default: batch and image size dynamic "
                             "where the net allows)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip comparing the exported model with the engine (ONNX Runtime not needed)")
    parser.add_argument("--allow-missing-weights", action="store_true",
                        help="export even when the weights leave a parameter layer at its filler values")
    args = parser.parse_args(argv)
    if args.onnx is None and args.torchscript is None:
        parser.error("give --onnx and/or --torchscript")
    return args


def main(args):
    """Export as the flags say; prints what was written. Returns the exit status: 0, or
    EXIT_BAD_INPUT / EXIT_INTERRUPTED with one line on stderr (nothing written then)."""
    try:
        net = load_net(args.prototxt, args.weights, args.allow_missing_weights)
        outputs = [name.strip() for name in args.outputs.split(",")] if args.outputs else None
        report = export(net, onnx=args.onnx, torchscript=args.torchscript, outputs=outputs,
                        static=args.static, check=not args.no_check)
    except ExportError as err:
        print(f"export: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as err:   # an output that cannot be written (read-only folder, full disk)
        print(f"export: error: cannot write the export: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("export: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    axes = ", ".join(f"{name}: {axes or 'static'}" for name, axes in report.dynamic.items())
    print(f"inputs {report.inputs} -> outputs {report.output_names}; dynamic axes {axes}")
    for fmt in ("onnx", "torchscript"):
        path = getattr(report, fmt)
        if path is not None:
            checked = (f"equal to the engine within {report.worst[fmt]:.2g} (relative) at input shapes "
                       f"{report.checked_shapes}" if fmt in report.worst else "not checked")
            print(f"wrote {path} ({FORMAT_NAMES[fmt]}): {checked}")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
