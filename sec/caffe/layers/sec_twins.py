"""`type: "Python"` layers whose python_param names a SEC layer of `pylayers`: the torch twin
(`sec.nn`) where it pays, the numpy layer through the bridge elsewhere.

The prototxt is unchanged: the pylayers class is built and set up as always (so param_str is
parsed and checked by pylayers itself, with its defaults and messages), and the twin reads the
parsed values off that instance. At every forward the layer runs

* the torch twin when the bottoms are on a CUDA (or any non-CPU) device: no host round trip,
  the CRF and the cue lookup on the device;
* the numpy layer when they are on the CPU: measured faster there (the C++ CRF, numpy losses;
  bench/train.py --layers prints both), and the reference that real Caffe runs.

Override with the environment variable SEC_LAYERS (read when a net is built): ``auto`` (the
default, as above), ``numpy`` (always the bridge) or ``torch`` (always the twin).
Only the exact pylayers classes are replaced; a user's subclass runs as written. pylayers and
sec.nn are imported when a net first has a pylayers layer (never by `import sec.caffe`).
"""
import functools
import os

import torch

from sec.caffe.layers.python import PythonLayer

LAYER_IMPL_ENV = "SEC_LAYERS"
LAYER_IMPLS = ("auto", "numpy", "torch")


def layer_impl():
    """The SEC_LAYERS setting; ValueError naming the variable when it is not one of LAYER_IMPLS."""
    value = os.environ.get(LAYER_IMPL_ENV, "auto").strip().lower() or "auto"
    if value not in LAYER_IMPLS:
        raise ValueError(f"environment variable {LAYER_IMPL_ENV}={value!r}: need one of {LAYER_IMPLS}")
    return value


@functools.cache
def twins():
    """pylayers class -> twin forward(layer, *bottom tensors) -> tuple of top tensors (the
    AnnotationLayer maps to None: its twin is a DeviceCues lookup kept by the layer)."""
    import pylayers
    from sec.nn import functional as F
    from sec.nn.crf import crf_log_probs

    def softmax(layer, scores):
        return (F.softmax_with_floor(scores, layer.min_prob),)

    def seed(layer, probs, cues):
        return (F.seed_loss(probs, cues.detach()).reshape(1),)

    def expand(layer, probs, labels):
        return (F.expand_loss(probs, labels.detach(), layer.q_fg, layer.q_bg, layer.pooling).reshape(1),)

    def constrain(layer, probs, log_q):
        return (F.constrain_loss(probs, log_q.detach()).reshape(1),)

    def crf(layer, scores, images):
        return (crf_log_probs(scores.detach(), images.detach(), layer.scale_factor, int(layer.maxiter),
                              layer.min_prob, layer.mean),)

    return {pylayers.SoftmaxLayer: softmax, pylayers.SeedLossLayer: seed, pylayers.ExpandLossLayer: expand,
            pylayers.ConstrainLossLayer: constrain, pylayers.CRFLayer: crf, pylayers.AnnotationLayer: None}


class SECLayer:
    """One SEC Python layer with both implementations; picks one per forward (see module doc)."""

    def __init__(self, runner, impl):
        self.runner, self.impl, self.name = runner, impl, runner.name
        self.layer = runner.layer
        self.params = []
        self._twin = twins()[type(self.layer)]
        self._cues = None   # AnnotationLayer: DeviceCues, built on first use per device

    def shapes(self, shapes):
        return self.runner.shapes(shapes)

    def uses_torch(self, device):
        return self.impl == "torch" or (self.impl == "auto" and torch.device(device).type != "cpu")

    def forward(self, *bottoms):
        device = bottoms[0].device if bottoms else self.runner.net_device()
        if not self.uses_torch(device):
            return self.runner.forward(*bottoms)
        try:
            # pylayers' reshape checks the bottom shapes with its own messages
            self.runner.shapes([tuple(b.shape) for b in bottoms])
            if self._twin is None:
                return self._annotate(bottoms[0], device)
            return self._twin(self.layer, *bottoms)
        except Exception as err:
            err.add_note(f"in Python layer '{self.name}' ({type(self.layer).__name__}, torch twin)")
            raise

    def _annotate(self, ids, device):
        if self._cues is None or self._cues.device != torch.device(device):
            from sec.nn.cues import DeviceCues
            layer = self.layer
            self._cues = DeviceCues(layer.cues, layer.num_classes, layer.cue_size, layer.source, device)
        return self._cues.lookup(ids)


def python_layer(lp, shapes, ctx):
    """The engine's implementation of a `type: "Python"` layer (see the module doc)."""
    runner = PythonLayer(lp, shapes, ctx)
    kind = type(runner.layer)
    if not kind.__module__.startswith("pylayers.") or kind not in twins():
        return runner
    return SECLayer(runner, layer_impl())
