"""`Net`: a Caffe prototxt as a torch.nn.Module, with pycaffe's API on top.

Building follows Caffe's Net::Init: layers are filtered by the NetState (phase, level,
stages) against their include/exclude NetStateRules, bottoms must name earlier tops, a top
may reuse a name only in place (top == one of its bottoms), shapes are propagated and checked
layer by layer, outputs are the blobs nobody consumes (sorted by name, as Caffe's std::set).

Torch side (what training code uses): `run(feed)` -> dict of every blob tensor, `loss_weights`,
`total_loss(outputs)`, `learnable_params()`, `layer_params()`, `data_layers()`.
pycaffe side: `blobs`, `params`, `inputs`, `outputs`, `forward`, `backward`, `reshape`,
`copy_from`, `save` (see the methods).
"""
import re
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import torch

from sec.caffe.blob import NetBlob, ParamBlob, write_back
from sec.caffe.layers import LAYER_TYPES
from sec.caffe.layers.base import TEST, TRAIN, BuildContext, NetError

_MODE = {"device": "cpu", "index": 0}


def set_mode_cpu():
    """Nets built from now on live on the CPU."""
    _MODE["device"] = "cpu"


def set_mode_gpu():
    """Nets built from now on live on CUDA device `set_device(i)` (default 0)."""
    if not torch.cuda.is_available():
        raise RuntimeError("set_mode_gpu: CUDA is not available (torch.cuda.is_available() is False)")
    _MODE["device"] = "cuda"


def set_device(index):
    """The CUDA device used by set_mode_gpu."""
    _MODE["index"] = int(index)
    if torch.cuda.is_available():
        torch.cuda.set_device(_MODE["index"])


def mode_device():
    if _MODE["device"] == "cuda":
        return torch.device("cuda", _MODE["index"])
    return torch.device("cpu")


class ParamInfo(NamedTuple):
    layer: str
    index: int
    param: torch.nn.Parameter
    lr_mult: float
    decay_mult: float


class LayerView(NamedTuple):
    """pycaffe's net.layers entry: name, type and its parameter blobs."""
    name: str
    type: str
    blobs: list


class _Step:
    __slots__ = ("index", "name", "type", "bottoms", "tops", "impl", "fn", "detach", "kind")


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
    """pycaffe's signatures: (phase), (weights, phase), keywords weights= / phase=."""
    args = list(args)
    if len(args) == 2:
        weights, phase = args
    elif len(args) == 1:
        if isinstance(args[0], (str, Path)):
            weights = args[0]
        else:
            phase = args[0]
    elif args:
        raise TypeError(f"Net(prototxt, [weights,] phase): too many arguments {args}")
    if phase not in (TRAIN, TEST):
        raise TypeError(f"Net needs phase caffe.TRAIN ({TRAIN}) or caffe.TEST ({TEST}), got {phase!r}")
    return weights, int(phase)


class Net(torch.nn.Module):
    """A Caffe net on PyTorch: `Net(prototxt, phase)`, `Net(prototxt, weights, phase)`,
    `Net(prototxt, phase, weights=path)`. `prototxt` may be a path or a NetParameter.

    Blobs are float32, images NCHW. Parameters live on the device of the current mode
    (set_mode_gpu / set_mode_cpu) and move with `net.to(device)`.
    """

    weight_report = None    # sec.caffe.weights.WeightReport of the last copy_from

    def __init__(self, prototxt, *args, weights=None, phase=None, level=0, stages=()):
        super().__init__()
        weights, phase = _parse_args(args, weights, phase)
        netparam, self.source, self._text = _load(prototxt)
        self.name, self.phase = netparam.name, phase
        self.force_backward = netparam.force_backward
        self.register_buffer("_anchor", torch.empty(0, device=mode_device()), persistent=False)
        ctx = BuildContext(phase, mode_device(), lambda: self._anchor.device)
        self.blobs = OrderedDict()
        self.inputs, self._layers, self.loss_weights = [], [], {}
        self._pending, self._record = {}, None
        self._add_legacy_inputs(netparam)
        stage_set = set(netparam.state.stage) | set(stages)
        available = list(self.inputs)
        for lp in netparam.layer:
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

    def _add_legacy_inputs(self, netparam):
        from sec.caffe import formats
        try:
            inputs = formats.net_inputs(netparam, self.source)
        except ValueError as err:
            raise NetError(str(err)) from err
        for name, shape in inputs:
            self.blobs[name] = NetBlob(name, shape)
            self.inputs.append(name)

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
        except Exception as err:  # a layer's (or a Python layer's) own error, located for the user
            raise NetError(f"{where}: {type(err).__name__}: {err}") from err
        step = _Step()
        step.index, step.name, step.type = len(self._layers), lp.name, lp.type
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
        self.params = OrderedDict((s.name, [ParamBlob(p, self._pending) for p in s.impl.params])
                                  for s in self._layers if s.impl.params)
        self.layers = [LayerView(s.name, s.type, self.params.get(s.name, [])) for s in self._layers]
        self.layer_names = [s.name for s in self._layers]
        self._layer_names = self.layer_names
        self.top_names = OrderedDict((s.name, list(s.tops)) for s in self._layers)
        self.bottom_names = OrderedDict((s.name, list(s.bottoms)) for s in self._layers)
        self._run_steps = [s for s in self._layers if s.kind != "input"]

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
        """The ImageDataSource of every ImageData layer (created now if not yet)."""
        return [s.impl.data_source() for s in self._layers if s.kind == "data"]

    def total_loss(self, outputs):
        """sum over loss tops of loss_weight x sum(top) (Caffe's objective)."""
        total = None
        for name, weight in self.loss_weights.items():
            term = outputs[name].sum() * weight
            total = term if total is None else total + term
        return total if total is not None else torch.zeros((), device=self.device)

    def run(self, feed=None):
        """Forward of every layer; returns {blob name: tensor} (in-place blobs: last value).

        `feed` maps blob names to tensors (made float32 on the net's device): net inputs, or the tops
        of ImageData layers (which then read nothing). Unfed inputs use the blob's content.
        Autograd follows torch's grad mode.
        """
        if self._pending:
            write_back(self._pending)
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
            for name, top in zip(step.tops, step.fn(*bottoms)):
                values[name] = top
        for name, tensor in values.items():
            self.blobs[name].set_tensor(tensor)
        return values

    # ---- pycaffe side ----------------------------------------------------------------------

    def _layer_index(self, name, default):
        if name is None:
            return default
        if name not in self.layer_names:
            raise KeyError(f"{self.source}: no layer named '{name}' in this {('TRAIN', 'TEST')[self.phase]} net")
        return self.layer_names.index(name)

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """pycaffe's forward: kwargs set input blobs; runs layers start..end (names, inclusive);
        returns {name: numpy data} of the outputs (or of layer `end`'s tops) plus `blobs`."""
        for name, value in kwargs.items():
            if name not in self.inputs:
                raise KeyError(f"forward: '{name}' is not a net input (inputs: {self.inputs})")
            self.blobs[name].data[...] = value
        first = self._layer_index(start, 0)
        last = self._layer_index(end, len(self._layers) - 1)
        self._forward_range(first, last)
        names = list(self._layers[last].tops) if end is not None else list(self.outputs)
        return {n: self.blobs[n].data for n in names + list(blobs or [])}

    def _forward_range(self, first, last):
        if self._pending:
            write_back(self._pending)
        device, grad = self.device, torch.is_grad_enabled()
        values, record = {}, []
        for step in self._layers[first:last + 1]:
            if step.kind == "input":
                continue
            for name in step.bottoms:
                if name not in values:
                    tensor = self.blobs[name].tensor(device)
                    if grad and self.force_backward and name in self.inputs:
                        tensor.requires_grad_()
                    values[name] = tensor
            bottoms = [values[b] for b in step.bottoms]
            if step.detach is not None:
                bottoms = [b.detach() if d else b for b, d in zip(bottoms, step.detach)]
            tops = _distinct_tops(step.fn(*bottoms), bottoms)
            record.append((step, bottoms, tops))
            for name, top in zip(step.tops, tops):
                values[name] = top
                self.blobs[name].set_tensor(top)
        self._record = record if grad else None

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """pycaffe's backward from layer `start` (default last) down to `end` (default first).

        kwargs set top diffs. Seeds are the diffs stored in the blobs that no layer of the range
        consumes (loss tops hold their loss_weight, as in Caffe). Fills blob diffs (for in-place
        blobs: the gradient at the first layer writing them) and adds to parameter diffs.
        Returns {name: numpy diff} of the inputs plus `diffs`.
        """
        if self._record is None:
            raise RuntimeError("backward() needs a forward() run with autograd enabled first")
        for name, value in kwargs.items():
            self.blobs[name].diff[...] = value
        last = self._layer_index(start, len(self._layers) - 1)
        first = self._layer_index(end, 0)
        entries = [e for e in self._record if first <= e[0].index <= last]
        consumed = {id(t) for _, bottoms, _ in entries for t in bottoms}
        device = self.device
        seeds, seed_grads = [], []
        for step, _, tops in entries:
            for name, top in zip(step.tops, tops):
                if id(top) in consumed or not top.requires_grad:
                    continue
                diff = self.blobs[name].diff_tensor(device)
                if diff is not None and bool(diff.ne(0).any()):
                    seeds.append(top)
                    seed_grads.append(diff.reshape(top.shape))
        first_seen = OrderedDict()
        params = OrderedDict()
        for step, bottoms, tops in entries:
            for name, t in list(zip(step.bottoms, bottoms)) + list(zip(step.tops, tops)):
                if name not in first_seen and t.requires_grad:
                    first_seen[name] = t
            for p in step.impl.params:
                if p.requires_grad:
                    params[id(p)] = p
        targets = list(first_seen.values()) + list(params.values())
        if seeds and targets:
            grads = torch.autograd.grad(seeds, targets, seed_grads, retain_graph=True, allow_unused=True)
        else:
            grads = [None] * len(targets)
        for name, grad in zip(first_seen, grads):
            self.blobs[name].set_diff_tensor(grad if grad is not None else torch.zeros_like(first_seen[name]))
        for p, grad in zip(params.values(), grads[len(first_seen):]):
            if grad is None:
                continue
            if p.grad is None:
                p.grad = grad.detach().clone()
            else:
                p.grad.add_(grad)
        return {n: self.blobs[n].diff for n in list(self.inputs) + list(diffs or [])}

    def reshape(self):
        """Caffe's Net::Reshape: propagate the input blobs' (possibly new) shapes through every
        layer, checking them; blobs whose shape changes are zeroed."""
        for step in self._layers:
            if step.kind == "input":
                continue
            shapes = [self.blobs[b].shape for b in step.bottoms]
            try:
                top_shapes = step.impl.shapes(shapes)
            except Exception as err:  # located for the user, as at build time
                raise NetError(f"{self._where(step)}: {type(err).__name__}: {err}") from err
            for name, shape in zip(step.tops, top_shapes):
                if tuple(self.blobs[name].shape) != tuple(shape):
                    self.blobs[name].reshape(*shape)

    def copy_from(self, path):
        """Copy weights by layer name from a .caffemodel (current or V1); shapes are checked and
        NaN/Inf refused before anything changes. Returns the sec.caffe.weights.WeightReport
        (loaded / untouched / ignored layers), also kept as `net.weight_report`."""
        from sec.caffe.weights import copy_weights
        self.weight_report = copy_weights(path, {s.name: list(s.impl.params) for s in self._layers})
        return self.weight_report

    def save(self, path):
        """Write every layer's parameters as a .caffemodel (current format)."""
        from sec.caffe import formats
        if self._pending:
            write_back(self._pending)
        layers = [(n, t, [p.detach().cpu().numpy() for p in ps]) for n, t, ps in self.layer_params()]
        formats.write_caffemodel(str(path), self.name, layers)


def _distinct_tops(tops, bottoms):
    """The tops, each a tensor object of its own: a layer that hands back a bottom unchanged
    (TEST Dropout, a one-axis Flatten) gets a view instead, so that backward can tell the top
    (a seed of the range) from the bottom (consumed), and copies the diff through as Caffe does."""
    inputs = {id(b) for b in bottoms}
    if not any(id(t) in inputs for t in tops):
        return tops
    return tuple(t.view_as(t) if id(t) in inputs else t for t in tops)


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
    """1-based line of `name: "layer_name"` in the prototxt text, or 0 if not found."""
    if not text:
        return 0
    match = re.search(r"\bname\s*:\s*[\"']" + re.escape(layer_name) + r"[\"']", text)
    return text.count("\n", 0, match.start()) + 1 if match else 0
