"""pycaffe's Net API (python/caffe/pycaffe.py and _caffe.cpp) as methods of `sec.caffe.Net`.

Layout of what a net offers, as pycaffe: `blobs` (OrderedDict name -> blob, creation order),
`params` (layer name -> BlobVec of its parameter blobs), `layers` (a Python layer's own instance,
else a `LayerView` with `type`, `blobs`, `setup`, `reshape`), `layer_dict`, `inputs`, `outputs`,
`blob_loss_weights`, `top_names`, `bottom_names`, the index views `_layer_names`, `_blob_names`,
`_blobs`, `_inputs`, `_outputs`, `_blob_loss_weights`, `_top_ids(i)`, `_bottom_ids(i)`.

Forward and backward run layer by layer over a range, as Caffe's ForwardFromTo/BackwardFromTo, with
the before/after callbacks. Backward is Caffe's too: each layer (last to first) reads its tops'
diffs from the blobs and writes its bottoms' diffs (overwriting, except that a blob feeding several
layers receives the sum, as Caffe's Split layers give it) and adds to its parameters' diffs; loss
tops hold their loss_weight as diff from the start. It differentiates the graph of the last forward
when there is one (autograd, per layer), else recomputes each layer from its blobs' current data
(`backward()` before any `forward()`, or after one run under torch.no_grad(), as pycaffe allows).
"""
from collections import OrderedDict

import torch

from sec.caffe.net_batches import BatchedNet

CALLBACK_KINDS = ("before_forward", "after_forward", "before_backward", "after_backward")


class LayerView:
    """`net.layers[i]` of a built-in layer: pycaffe's Layer (`type`, `blobs`, `setup`, `reshape`)."""

    def __init__(self, net, step, blobs):
        self.name = step.name
        self.type = step.type
        self.blobs = blobs
        self._impl = step.impl

    def reshape(self, bottom, top):
        """Caffe's Layer::Reshape: top blobs take the shapes the layer computes from the bottoms'."""
        for blob, shape in zip(top, self._impl.shapes([tuple(b.shape) for b in bottom])):
            blob.reshape(*shape)

    def setup(self, bottom, top):
        """Caffe's Layer::SetUp on a built net: the layer keeps its parameters, so this is reshape."""
        self.reshape(bottom, top)


class PycaffeNet(BatchedNet):
    """The pycaffe side of sec.caffe.Net (a mixin: the torch side and the building are in net.py;
    batches and MemoryData input in net_batches.py)."""

    # ---- views ----------------------------------------------------------------------------

    @property
    def _layer_names(self):
        return list(self.layer_names)

    @property
    def _blob_names(self):
        return list(self.blobs)

    @property
    def _blobs(self):
        return list(self.blobs.values())

    @property
    def _inputs(self):
        names = self._blob_names
        return [names.index(n) for n in self.inputs]

    @property
    def _outputs(self):
        names = self._blob_names
        return [names.index(n) for n in self.outputs]

    @property
    def _blob_loss_weights(self):
        return [float(self.loss_weights.get(n, 0.0)) for n in self.blobs]

    @property
    def blob_loss_weights(self):
        """OrderedDict blob name -> loss weight (0 for blobs that are not losses)."""
        return OrderedDict(zip(self._blob_names, self._blob_loss_weights))

    @property
    def layer_dict(self):
        """OrderedDict layer name -> net.layers entry."""
        return OrderedDict(zip(self.layer_names, self.layers))

    def _top_ids(self, index):
        names = self._blob_names
        return [names.index(n) for n in self._layers[index].tops]

    def _bottom_ids(self, index):
        names = self._blob_names
        return [names.index(n) for n in self._layers[index].bottoms]

    def _layer_index(self, name):
        if name not in self.layer_names:
            raise ValueError(f"{self.source}: no layer named {name!r} in this "
                             f"{('TRAIN', 'TEST')[self.phase]} net")
        return self.layer_names.index(name)

    # ---- callbacks --------------------------------------------------------------------------

    def before_forward(self, fn):
        """Call fn(layer index) before each layer's forward (Caffe's Net callbacks)."""
        self._callbacks.setdefault("before_forward", []).append(fn)

    def after_forward(self, fn):
        self._callbacks.setdefault("after_forward", []).append(fn)

    def before_backward(self, fn):
        self._callbacks.setdefault("before_backward", []).append(fn)

    def after_backward(self, fn):
        self._callbacks.setdefault("after_backward", []).append(fn)

    def _run_callbacks(self, kind, index):
        for fn in self._callbacks.get(kind, ()):
            fn(index)

    # ---- forward ----------------------------------------------------------------------------

    def forward(self, blobs=None, start=None, end=None, **kwargs):
        """pycaffe's forward: kwargs set every input blob (their first axis must be the batch);
        runs layers start..end (names, inclusive); returns {name: data} of the outputs (or of layer
        `end`'s tops) plus `blobs`."""
        blobs = list(blobs or [])
        first = self._layer_index(start) if start is not None else 0
        last = self._layer_index(end) if end is not None else len(self._layers) - 1
        names = (self.top_names[end] if end is not None else self.outputs) + blobs
        self._set_arrays(kwargs, self.inputs, "data", ("Input blob arguments do not match net inputs.",
                                                       "Input is not batch sized"))
        self._forward(first, last)
        return {name: self.blobs[name].data for name in dict.fromkeys(names)}

    def _set_arrays(self, arrays, names, which, messages):
        """pycaffe's feeding of forward inputs / backward output diffs: `arrays` must name exactly
        `names` (else messages[0]), each batch-sized (else messages[1]); written into `which`."""
        if not arrays:
            return
        if set(arrays) != set(names):
            raise Exception(f"{messages[0]} (expected: {names}, given: {sorted(arrays)})")
        for name, value in arrays.items():
            if value.shape[0] != self.blobs[name].shape[0]:
                raise Exception(f"{messages[1]} ('{name}': {value.shape[0]} vs {self.blobs[name].shape[0]})")
            getattr(self.blobs[name], which)[...] = value

    def _forward(self, start, end):
        """Caffe's ForwardFromTo(start, end) (layer indices, inclusive); returns the loss of the range."""
        self.sync_param_blobs()
        device, grad = self.device, torch.is_grad_enabled()
        values, record, loss = {}, [], 0.0
        for step in self._layers[start:end + 1]:
            self._run_callbacks("before_forward", step.index)
            if step.kind != "input":
                bottoms, tops = self._forward_step(step, values, device, grad)
                record.append((step, bottoms, tops))
                for name, top in zip(step.tops, tops):
                    values[name] = top
                    self.blobs[name].set_tensor(top)
                    if name in self.loss_weights:
                        loss += self.loss_weights[name] * float(top.detach().sum())
            self._run_callbacks("after_forward", step.index)
        self._record = record if grad else None
        return loss

    def _forward_step(self, step, values, device, grad):
        """One layer's (bottoms, tops), bottoms from `values` or, first, from the blobs. Each layer's
        bottoms are leaves of their own (the graph is cut between layers), so that backward can
        differentiate one layer at a time, as Caffe's layers compute their own diffs."""
        leaves = {}
        for name in dict.fromkeys(step.bottoms):
            if name not in values:
                values[name] = self._blob_tensor(name, device, grad)
            value = values[name]
            leaves[name] = value.detach().requires_grad_(value.requires_grad) if grad else value
        bottoms = [leaves[b] for b in step.bottoms]
        if step.detach is not None:
            bottoms = [b.detach() if d else b for b, d in zip(bottoms, step.detach)]
        tops = []
        held = getattr(step.impl, "held_tops", ())
        for index, (name, top) in enumerate(zip(step.tops, step.fn(*bottoms))):
            if index in held:                        # DummyData's constant tops: the blob's content
                top = self._blob_tensor(name, device, grad)
            elif grad and self.force_backward and not step.bottoms and not top.requires_grad:
                top = top.detach().requires_grad_()  # force_backward: data tops get diffs too, as in Caffe
            tops.append(top)
        return bottoms, _distinct_tops(tops, bottoms)

    def _blob_tensor(self, name, device, grad):
        tensor = self.blobs[name].tensor(device)
        if grad and self.force_backward and name in self._needs_backward:
            tensor = tensor.detach().requires_grad_()
        return tensor

    # ---- backward ---------------------------------------------------------------------------

    def backward(self, diffs=None, start=None, end=None, **kwargs):
        """pycaffe's backward from layer `start` (default last) down to `end` (default first);
        kwargs set the diffs of every output. Returns {name: diff} of the inputs (or of layer `end`'s
        bottoms) plus `diffs`."""
        diffs = list(diffs or [])
        last = self._layer_index(start) if start is not None else len(self._layers) - 1
        first = self._layer_index(end) if end is not None else 0
        names = (self.bottom_names[end] if end is not None else self.inputs) + diffs
        self._set_arrays(kwargs, self.outputs, "diff", ("Top diff arguments do not match net outputs.",
                                                        "Diff is not batch sized"))
        self._backward(last, first)
        return {name: self.blobs[name].diff for name in dict.fromkeys(names)}

    def _backward(self, start, end):
        """Caffe's BackwardFromTo(start, end): layers start down to end (indices, inclusive)."""
        self.sync_param_blobs()
        recorded = {entry[0].index: entry for entry in (self._record or [])}
        written = set()
        for step in reversed(self._layers[end:start + 1]):
            self._run_callbacks("before_backward", step.index)
            if step.kind != "input":
                if step.index in recorded:
                    _, bottoms, tops = recorded[step.index]
                    self._backward_tensors(step, bottoms, tops, written)
                else:
                    self._backward_from_blobs(step, written)
            self._run_callbacks("after_backward", step.index)

    def _top_diff(self, name, top):
        diff = self.blobs[name].diff_tensor(top.device)
        return torch.zeros_like(top) if diff is None else diff.reshape(top.shape).to(top.dtype)

    def _backward_tensors(self, step, bottoms, tops, written):
        """Autograd through one layer's graph: top diffs from the blobs in, bottom and param diffs out."""
        seeds = [(top, self._top_diff(name, top)) for name, top in zip(step.tops, tops) if top.requires_grad]
        # one entry per tensor: a blob given twice as a bottom gets its whole gradient once (Caffe's split sum)
        wrt = list({id(b): (index, b) for index, b in reversed(list(enumerate(bottoms))) if b.requires_grad}.values())
        params = [p for p in dict.fromkeys(step.impl.params) if p.requires_grad]
        if not seeds or not (wrt or params):
            return
        grads = torch.autograd.grad([t for t, _ in seeds], [b for _, b in wrt] + params, [d for _, d in seeds],
                                    retain_graph=True, allow_unused=True)
        for (index, _), grad in zip(wrt, grads):
            if grad is not None:
                self._store_bottom_diff(step, index, grad, written)
        with torch.no_grad():
            for param, grad in zip(params, grads[len(wrt):]):
                if grad is None:
                    continue
                if param.grad is None:
                    param.grad = grad.detach().clone()
                else:
                    param.grad.add_(grad)

    def _backward_from_blobs(self, step, written):
        """A layer not in the last forward's graph: recompute it from its bottoms' current data
        (a Python layer's backward is called on the blobs directly, as Caffe calls it)."""
        from sec.caffe.net import _python_runner
        device = self.device
        needs = [name in self._needs_backward and not (step.detach and step.detach[i])
                 for i, name in enumerate(step.bottoms)]
        runner = _python_runner(step.impl)
        if runner is not None:
            propagate = [need and spec for need, spec in zip(needs, runner.propagate)]
            if not runner.needs_backward(propagate):
                return
            arrays = [self.blobs[b].data for b in step.bottoms]
            tops = [self.blobs[t].data for t in step.tops]
            diffs = [self.blobs[t].diff for t in step.tops]
            for index, diff in enumerate(runner.run_backward(arrays, tops, diffs, propagate)):
                if propagate[index]:
                    self._store_bottom_diff(step, index, torch.from_numpy(diff).to(device), written)
            return
        bottoms = [self.blobs[b].tensor(device).detach().requires_grad_(need) for b, need in zip(step.bottoms, needs)]
        with torch.enable_grad():
            tops = _distinct_tops(step.fn(*bottoms), bottoms)
        self._backward_tensors(step, bottoms, tops, written)

    def _store_bottom_diff(self, step, index, grad, written):
        """Caffe's diff of a bottom: overwritten, except that a blob already written in this backward
        by another consumer (a Split in Caffe's net) accumulates; an in-place layer's bottom is its
        top, so it is overwritten."""
        name = step.bottoms[index]
        blob = self.blobs[name]
        if name in written and name not in step.tops:
            current = blob.diff_tensor(grad.device)
            grad = grad + current.reshape(grad.shape) if current is not None else grad
        blob.set_diff_tensor(grad.detach())
        written.add(name)

    def reshape(self):
        """Caffe's Net::Reshape: propagate the blobs' (possibly new) shapes through every layer,
        checking them; blobs whose shape changes are zeroed."""
        from sec.caffe.layers.base import NetError
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

    def _weight_targets(self):
        return {s.name: list(s.impl.params) for s in self._layers}

    def copy_from(self, path):
        """Copy weights by layer name from a .caffemodel (current or V1) or Caffe's HDF5 layout, as
        Caffe's CopyTrainedLayersFrom: blob counts and shapes are checked before anything changes,
        NaN/Inf values load with a warning naming the layer. Returns the WeightReport (loaded /
        untouched / ignored / nonfinite), also kept as `net.weight_report`."""
        from sec.caffe.weights import copy_weights
        self.sync_param_blobs()
        self.weight_report = copy_weights(path, self._weight_targets(), allow_nonfinite=True)
        return self.weight_report

    def load_hdf5(self, path):
        """Copy weights from Caffe's HDF5 layout (save_hdf5's), as copy_from does."""
        from sec.caffe import formats, hdf5
        if not hdf5.is_hdf5(str(path)):
            raise formats.CaffeFormatError(f"{path}: not an HDF5 file")
        return self.copy_from(path)

    def save(self, path):
        """Write every layer's parameters as a .caffemodel (current format)."""
        from sec.caffe import formats
        self.sync_param_blobs()
        layers = [(n, t, [p.detach().cpu().numpy() for p in ps]) for n, t, ps in self.layer_params()]
        formats.write_caffemodel(str(path), self.name, layers)

    def save_hdf5(self, path):
        """Write the parameters in Caffe's HDF5 layout (/data/<layer>/<blob index>)."""
        from sec.caffe import hdf5
        self.sync_param_blobs()
        hdf5.write_model(path, [(s.name, [(p, None) for p in s.impl.params]) for s in self._layers])

    def share_with(self, other):
        """Caffe's ShareTrainedLayersWith: each layer of `other` whose name this net has lends it its
        parameter data (the same memory from now on; diffs stay separate)."""
        import logging
        self.sync_param_blobs()
        other.sync_param_blobs()
        mine = self._weight_targets()
        plan = []
        for name, _, theirs in other.layer_params():
            if name not in mine:
                logging.getLogger(__name__).info("Ignoring source layer %s", name)
                continue
            if len(mine[name]) != len(theirs):
                raise ValueError(f"share_with: incompatible number of blobs for layer '{name}' "
                                 f"({len(theirs)} in the source net, {len(mine[name])} here)")
            for index, (target, source) in enumerate(zip(mine[name], theirs)):
                if target.shape != source.shape or target.device != source.device:
                    raise ValueError(f"share_with: cannot share param {index} of layer '{name}': source "
                                     f"{tuple(source.shape)} on {source.device}, target {tuple(target.shape)} "
                                     f"on {target.device}")
                plan.append((target, source))
        for target, source in plan:
            target.data = source.data

    def clear_param_diffs(self):
        """Zero every parameter's diff in place (arrays read from `.diff` before see the zeros)."""
        self.sync_param_blobs()
        with torch.no_grad():
            for param in self._param_list:
                if param.grad is not None:
                    param.grad.zero_()


def _distinct_tops(tops, bottoms):
    """The tops, each a tensor object of its own: a layer that hands back a bottom unchanged
    (TEST Dropout, a one-axis Flatten) gets a view instead, so that backward differentiates the
    top with respect to the bottom (the diff copied through, as Caffe does)."""
    inputs = {id(b) for b in bottoms}
    return [t.view_as(t) if id(t) in inputs else t for t in tops]
