"""`Net`: a Caffe prototxt as a torch.nn.Module, with pycaffe's API on top.

Building follows Caffe's Net::Init: legacy `input`/`input_shape`/`input_dim` fields become an Input
layer named "input" first (Caffe's UpgradeNetInput), layers are filtered by the NetState (phase,
level, stages) against their include/exclude NetStateRules, bottoms must name earlier tops, a top
may reuse a name only in place (top == one of its bottoms), shapes are propagated and checked
layer by layer, outputs are the blobs nobody consumes (sorted by name, as Caffe's std::set).
An exception raised by a Python layer's own code while building reaches the caller as that
exception (pycaffe's behaviour), also an instance of NetError whose message names the file, line
and layer (`located_error`); everything else the engine refuses is a NetError.

Torch side (what training code uses): `run(feed)` -> dict of every blob tensor, `loss_weights`,
`total_loss(outputs)`, `learnable_params()`, `layer_params()`, `data_layers()`.
pycaffe side (sec/caffe/net_pycaffe.py): `blobs`, `params`, `layers`, `forward`, `backward`, ...
"""
import re
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import torch

from sec.caffe.blob import BlobVec, NetBlob, ParamBlob, write_back
from sec.caffe.layers import LAYER_TYPES
from sec.caffe.layers.base import TEST, TRAIN, BuildContext, NetError
from sec.caffe.layers.python import LayerCodeError, PythonLayer
from sec.caffe.net_pycaffe import LayerView, PycaffeNet
from sec.caffe.runtime import mode_device, set_device, set_mode_cpu, set_mode_gpu  # noqa: F401 (importable here)

LEGACY_INPUT_LAYER = "input"   # the name Caffe's UpgradeNetInput gives the layer it makes of `input:` fields


class ParamInfo(NamedTuple):
    layer: str
    index: int
    param: torch.nn.Parameter
    lr_mult: float
    decay_mult: float


class _Step:
    __slots__ = ("index", "name", "type", "lp", "bottoms", "tops", "impl", "fn", "detach", "kind")


def _state_meets_rule(rule, phase, level, stages):
    """Caffe's Net::StateMeetsRule."""
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def _parse_args(args, weights, phase):
    """pycaffe's signatures: (phase), (weights, phase) (legacy: a deprecation warning, as Caffe
    logs), keywords weights= / phase=. Returns (weights, phase, legacy)."""
    args = list(args)
    legacy = False
    if len(args) == 2:
        (weights, phase), legacy = args, True
    elif len(args) == 1:
        if isinstance(args[0], (str, Path)):
            weights, legacy = args[0], True
        else:
            phase = args[0]
    elif args:
        raise TypeError(f"Net(prototxt, [weights,] phase): too many arguments {args}")
    if phase not in (TRAIN, TEST):
        raise TypeError(f"Net needs phase caffe.TRAIN ({TRAIN}) or caffe.TEST ({TEST}), got {phase!r}")
    return weights, int(phase), legacy


def located_error(err, where):
    """`err` re-made as an instance of a subclass of both its own class and NetError, whose message
    leads with `where`: `except RuntimeError` (pycaffe's behaviour) and `except NetError` (the
    project's tools) both catch it. An exception class that cannot be combined is returned
    unchanged with `where` as a note."""
    cls = type(err)
    message = f"{where}: {cls.__name__}: {err}"
    if issubclass(cls, NetError):
        bases = (cls,)
    elif issubclass(NetError, cls):   # ValueError, Exception: NetError is one already
        bases = (NetError,)
    else:
        bases = (cls, NetError)
    try:
        located_cls = type(cls.__name__, bases, {"__module__": cls.__module__, "__str__": lambda self: message})
        located = located_cls.__new__(located_cls, *err.args)
        located.args = err.args
        located.__dict__.update(getattr(err, "__dict__", {}))
    except TypeError:   # e.g. an instance layout conflict between the two bases
        err.add_note(where)
        return err
    located.__traceback__ = err.__traceback__
    return located


class Net(PycaffeNet, torch.nn.Module):
    """A Caffe net on PyTorch: `Net(prototxt, phase)`, `Net(prototxt, phase, level=, stages=,
    weights=)`, legacy `Net(prototxt, weights, phase)`. `prototxt` may be a path or a NetParameter.

    Blobs are float32, images NCHW. Parameters live on the device of the current mode
    (set_mode_gpu / set_mode_cpu) and move with `net.to(device)`.
    """

    weight_report = None    # sec.caffe.weights.WeightReport of the last copy_from

    def __init__(self, prototxt, *args, weights=None, phase=None, level=0, stages=()):
        super().__init__()
        weights, phase, legacy = _parse_args(args, weights, phase)
        netparam, self.source, self._text = _load(prototxt)
        if legacy:
            _log_legacy_constructor(self.source, weights, phase)
        self.name, self.phase = netparam.name, phase
        self.force_backward = netparam.force_backward
        self.register_buffer("_anchor", torch.empty(0, device=mode_device()), persistent=False)
        ctx = BuildContext(phase, mode_device(), lambda: self._anchor.device)
        self.blobs = OrderedDict()
        self.inputs, self._layers, self.loss_weights = [], [], {}
        self._pending, self._record, self._callbacks = {}, None, {}
        stage_set = set(netparam.state.stage) | set(stages or ())
        available = []
        for lp in self._legacy_inputs(netparam) + list(netparam.layer):
            if self._included(lp, phase, level, stage_set):
                self._add_layer(lp, ctx, available)
        self.outputs = sorted(available)
        self._finish(ctx)
        if weights is not None:
            self.copy_from(weights)

    # ---- building -------------------------------------------------------------------------

    def _where(self, lp):
        """'file:line: layer 'name' (type T)' for messages; `lp` a LayerParameter or a _Step."""
        line = _find_line(self._text, lp.name)
        place = f"{self.source}:{line}" if line else self.source
        return f"{place}: layer '{lp.name}' (type {lp.type})"

    def _included(self, lp, phase, level, stages):
        if lp.include and lp.exclude:
            raise NetError(f"{self._where(lp)}: specify include or exclude rules, not both")
        if lp.include:
            return any(_state_meets_rule(r, phase, level, stages) for r in lp.include)
        return not any(_state_meets_rule(r, phase, level, stages) for r in lp.exclude)

    def _legacy_inputs(self, netparam):
        """[the Input layer Caffe makes of the net's `input` fields] or []."""
        from sec.caffe import formats
        from sec.proto import caffe_pb2
        try:
            inputs = formats.net_inputs(netparam, self.source)
        except ValueError as err:
            raise NetError(str(err)) from err
        if not inputs:
            return []
        lp = caffe_pb2.LayerParameter(name=LEGACY_INPUT_LAYER, type="Input")
        for name, shape in inputs:
            lp.top.append(name)
            lp.input_param.shape.add().dim.extend(shape)
        return [lp]

    def _add_layer(self, lp, ctx, available):
        where = self._where(lp)
        cls = LAYER_TYPES.get(lp.type)
        if cls is None:
            raise NetError(f"{where}: unknown layer type '{lp.type}' (known: {', '.join(sorted(LAYER_TYPES))})")
        if lp.name and any(s.name == lp.name for s in self._layers):
            raise NetError(f"{where}: a second layer named '{lp.name}' in this net (weights and "
                           "net.params go by layer name)")
        for name in lp.bottom:
            if name not in self.blobs:
                raise NetError(f"{where}: bottom blob '{name}' is not produced by any earlier layer")
        for name in lp.top:
            if name in self.blobs and name not in lp.bottom:
                raise NetError(f"{where}: top blob '{name}' is already produced by an earlier layer "
                               "(a name may be reused only in place, as a bottom of the same layer)")
        shapes = [self.blobs[b].shape for b in lp.bottom]
        try:
            impl = cls(lp, shapes, ctx)
            top_shapes = impl.shapes(shapes)
            if len(top_shapes) != len(lp.top):
                raise ValueError(f"produces {len(top_shapes)} top(s), the prototxt names {len(lp.top)}")
            if len(lp.param) > len(impl.params):
                raise ValueError(f"{len(lp.param)} param specs for {len(impl.params)} parameter blobs")
            weights = self._loss_weights_of(lp)
            detach = self._detach_flags(lp)
        except NetError:
            raise
        except LayerCodeError as err:
            raise located_error(err.error, f"{where}{err.context}") from None
        except Exception as err:  # a layer's own error, located for the user
            raise NetError(f"{where}: {type(err).__name__}: {err}") from err
        step = _Step()
        step.index, step.name, step.type, step.lp = len(self._layers), lp.name, lp.type, lp
        step.bottoms, step.tops, step.impl, step.fn = list(lp.bottom), list(lp.top), impl, impl.forward
        step.detach = detach
        step.kind = getattr(impl, "kind", "layer")   # "input", "data" (sec.caffe.layers.data) or "layer"
        self._layers.append(step)
        for name in lp.bottom:
            if name in available:
                available.remove(name)
        for name, shape, weight in zip(lp.top, top_shapes, weights):
            if name in self.blobs:
                self.blobs[name].reshape(*shape)
            else:
                self.blobs[name] = NetBlob(name, shape)
            available.append(name)
            if weight:
                self.loss_weights[name] = weight
                self.blobs[name].diff[...] = weight  # Caffe seeds backward from the loss tops
        # Tops a layer fills once when it is set up (DummyData's constant ones), as Caffe's LayerSetUp.
        for index, tensor in getattr(impl, "initial_tops", dict)().items():
            self.blobs[lp.top[index]].data[...] = tensor.cpu().numpy()
        if step.kind == "input":
            self.inputs.extend(lp.top)

    @staticmethod
    def _loss_weights_of(lp):
        weights = [float(w) for w in lp.loss_weight]
        if not weights:
            # Caffe's default: 1 for the first top of *Loss layers, else 0 (Python layers too).
            first = 1.0 if lp.type.endswith("Loss") else 0.0
            return [first] + [0.0] * (len(lp.top) - 1)
        if len(weights) != len(lp.top):
            raise ValueError(f"loss_weight has {len(weights)} values for {len(lp.top)} tops")
        return weights

    @staticmethod
    def _detach_flags(lp):
        given = list(lp.propagate_down)
        if not given:
            return None
        if len(given) != len(lp.bottom):
            raise ValueError(f"propagate_down has {len(given)} values for {len(lp.bottom)} bottoms")
        return None if all(given) else [not g for g in given]

    def _finish(self, ctx):
        unique = OrderedDict()
        for step in self._layers:
            for p in step.impl.params:
                unique[id(p)] = p
        self._param_list = torch.nn.ParameterList(list(unique.values()))
        self._infos = [ParamInfo(*info) for info in ctx.infos]
        self.layers = [self._layer_object(s) for s in self._layers]
        self.params = OrderedDict((s.name, layer.blobs) for s, layer in zip(self._layers, self.layers)
                                  if len(layer.blobs))
        self.layer_names = [s.name for s in self._layers]
        self.top_names = OrderedDict((s.name, list(s.tops)) for s in self._layers)
        self.bottom_names = OrderedDict((s.name, list(s.bottoms)) for s in self._layers)
        self._run_steps = [s for s in self._layers if s.kind != "input"]
        self._needs_backward = self._blobs_needing_backward()

    def _layer_object(self, step):
        """net.layers[i]: a Python layer's own instance (as pycaffe gives it), else a LayerView."""
        runner = _python_runner(step.impl)
        if runner is None:
            return LayerView(self, step, BlobVec(ParamBlob(p, self._pending) for p in step.impl.params))
        for blob in runner.blobs:
            if isinstance(blob, ParamBlob):
                blob._pending = self._pending
        return runner.layer

    def _blobs_needing_backward(self):
        """Caffe's blob_need_backward_: the inputs when force_backward, and the tops of every layer
        that has a learnable parameter, a bottom needing backward, or force_backward."""
        needs = set(self.inputs) if self.force_backward else set()
        for step in self._run_steps:
            wants = (self.force_backward or any(p.requires_grad for p in step.impl.params)
                     or any(b in needs for b in step.bottoms))
            if wants:
                needs.update(step.tops)
        return needs

    # ---- torch side -----------------------------------------------------------------------

    @property
    def device(self):
        return self._anchor.device

    def learnable_params(self):
        """[ParamInfo(layer, index, param, lr_mult, decay_mult)], shared params listed once."""
        return list(self._infos)

    def layer_params(self):
        """[(layer name, layer type, [tensors])] of every layer, in prototxt order."""
        return [(s.name, s.type, list(s.impl.params)) for s in self._layers]

    def data_layers(self):
        """The data source of every data layer (`kind = "data"`; created now if not yet)."""
        return [s.impl.data_source() for s in self._layers if s.kind == "data"]

    def total_loss(self, outputs):
        """sum over loss tops of loss_weight x sum(top) (Caffe's objective)."""
        total = None
        for name, weight in self.loss_weights.items():
            term = outputs[name].sum() * weight
            total = term if total is None else total + term
        return total if total is not None else torch.zeros((), device=self.device)

    def sync_param_blobs(self):
        """Write host copies of CUDA parameters changed through `net.params[..][i].data/diff`
        into the parameters now (forward, run, backward and save do it themselves)."""
        if self._pending:
            write_back(self._pending)

    def run(self, feed=None):
        """Forward of every layer; returns {blob name: tensor} (in-place blobs: last value).

        `feed` maps blob names to tensors (made float32 on the net's device): net inputs, or the tops
        of data layers (which then read nothing). Unfed inputs use the blob's content, and so do the
        tops a layer names in `held_tops` (DummyData's constant ones, which Caffe fills only once).
        Autograd follows torch's grad mode.
        """
        self.sync_param_blobs()
        device = self.device
        feed = {k: v.to(device=device, dtype=torch.float32) for k, v in feed.items()} if feed else {}
        values = {n: feed[n] if n in feed else self.blobs[n].tensor(device) for n in self.inputs}
        values.update(feed)
        self._record = None
        for blob in self.blobs.values():
            blob.release()
        steps = self._run_steps
        if feed:
            steps = [s for s in steps if not (s.kind == "data" and all(t in feed for t in s.tops))]
        for step in steps:
            bottoms = [values[b] for b in step.bottoms]
            if step.detach is not None:
                bottoms = [b.detach() if d else b for b, d in zip(bottoms, step.detach)]
            held = getattr(step.impl, "held_tops", ())
            for index, (name, top) in enumerate(zip(step.tops, step.fn(*bottoms))):
                values[name] = self.blobs[name].tensor(device) if index in held else top
        for name, tensor in values.items():
            self.blobs[name].set_tensor(tensor)
        return values


def _python_runner(impl):
    """The PythonLayer behind a layer implementation (itself, or a SEC twin's runner), or None."""
    if isinstance(impl, PythonLayer):
        return impl
    runner = getattr(impl, "runner", None)
    return runner if isinstance(runner, PythonLayer) else None


def _log_legacy_constructor(source, weights, phase):
    """The deprecation warning Caffe's Net_Init_Load logs for Net(prototxt, weights, phase)."""
    import logging
    log = logging.getLogger(__name__)
    log.warning("DEPRECATION WARNING - deprecated use of Python interface")
    log.warning('Use this instead (with the named "weights" parameter):')
    log.warning("Net('%s', %d, weights='%s')", source, phase, weights)


def _load(prototxt):
    """(NetParameter, source name for messages, prototxt text or '')."""
    from sec.proto import caffe_pb2
    if isinstance(prototxt, caffe_pb2.NetParameter):
        return prototxt, f"<NetParameter {prototxt.name or 'unnamed'}>", ""
    from sec.caffe import formats
    path = Path(prototxt)
    netparam = formats.read_net_prototxt(str(path))
    return netparam, str(path), path.read_text(encoding="utf-8", errors="replace")


def _find_line(text, layer_name):
    """1-based line of the layer's `name: "layer_name"` in the prototxt text (inside a block, so
    not the net's own top-level `name:` when the two are equal), or 0 if not found."""
    if not text:
        return 0
    for match in re.finditer(r"\bname\s*:\s*[\"']" + re.escape(layer_name) + r"[\"']", text):
        before = re.sub(r"#[^\n]*", "", text[:match.start()])     # comments hold no braces
        if before.count("{") > before.count("}"):
            return text.count("\n", 0, match.start()) + 1
    return 0
