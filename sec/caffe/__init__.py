"""pycaffe's API on a PyTorch engine: ``from sec import caffe`` (or ``import caffe``, see caffe/).

    net = caffe.Net("models/sec/deploy.prototxt", caffe.TEST, weights="weights.caffemodel")
    net.blobs["images"].data[0] = image          # 3 x 321 x 321, BGR, mean-subtracted
    net.forward()
    scores = net.blobs["fc8-SEC-Softmax"].data[0]

Every name of pycaffe's `caffe` package is here, with one exception: `sec.caffe.layers` is the
engine's package of layer implementations, so net_spec's `layers` is `sec.caffe.net_spec.layers`
(`import caffe` gives it as `caffe.layers`, as pycaffe does). The solvers, `caffe.io`, net_spec,
draw, coord_map, Classifier and Detector are imported on first use. See README.md here.
"""
import importlib

from sec.caffe.blob import Blob
from sec.caffe.layers.base import TEST, TRAIN, NetError
from sec.caffe.layers.python import Layer
from sec.caffe.net import Net, ParamInfo
from sec.caffe.runtime import (NCCL, Timer, __version__, has_nccl, init_log, layer_type_list, log, set_device,
                               set_mode_cpu, set_mode_gpu, set_multiprocess, set_random_seed, set_solver_count,
                               set_solver_rank, solver_count, solver_rank)

__all__ = ["AdaDeltaSolver", "AdaGradSolver", "AdamSolver", "Blob", "Classifier", "Detector", "Layer", "NCCL",
           "NesterovSolver", "Net", "NetError", "NetSpec", "ParamInfo", "RMSPropSolver", "SGDSolver", "TEST",
           "TRAIN", "Timer", "__version__", "get_solver", "has_nccl", "init_log", "layer_type_list", "log",
           "params", "set_device", "set_mode_cpu", "set_mode_gpu", "set_multiprocess", "set_random_seed",
           "set_solver_count", "set_solver_rank", "solver_count", "solver_rank", "to_proto"]

_SOLVERS = "sec.caffe.solver"
_LAZY = {
    "SGDSolver": _SOLVERS, "NesterovSolver": _SOLVERS, "AdaGradSolver": _SOLVERS, "RMSPropSolver": _SOLVERS,
    "AdaDeltaSolver": _SOLVERS, "AdamSolver": _SOLVERS, "get_solver": _SOLVERS,
    "Classifier": "sec.caffe.classifier", "Detector": "sec.caffe.detector",
    "NetSpec": "sec.caffe.net_spec", "to_proto": "sec.caffe.net_spec", "params": "sec.caffe.net_spec",
}
"""Names imported from their module on first use (so `import sec.caffe` needs no solver, scipy, ...)."""
LAZY_MODULES = {
    "io": "sec.caffe.io", "net_spec": "sec.caffe.net_spec", "draw": "sec.caffe.draw",
    "coord_map": "sec.caffe.coord_map", "classifier": "sec.caffe.classifier", "detector": "sec.caffe.detector",
    "pycaffe": "sec.caffe.pycaffe", "proto": "sec.proto",
}
"""pycaffe's submodules by name -> this engine's module (`caffe.proto` is sec.proto)."""


def __getattr__(name):
    """The lazily imported names and submodules (see _LAZY and LAZY_MODULES)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in LAZY_MODULES:
        if name == "proto":
            importlib.import_module("sec.proto.caffe_pb2")   # pycaffe's caffe.proto has caffe_pb2 loaded
        return importlib.import_module(LAZY_MODULES[name])
    raise AttributeError(f"module 'sec.caffe' has no attribute '{name}'")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(LAZY_MODULES))
