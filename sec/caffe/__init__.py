"""pycaffe's API on a PyTorch engine: ``from sec import caffe``.

    net = caffe.Net("models/sec/deploy.prototxt", "weights.caffemodel", caffe.TEST)
    net.blobs["images"].data[0] = image          # 3 x 321 x 321, BGR, mean-subtracted
    net.forward()
    scores = net.blobs["fc8-SEC-Softmax"].data[0]

`caffe.SGDSolver` comes from sec.caffe.solver, imported on first use. See README.md here.
"""
from sec.caffe.blob import Blob
from sec.caffe.layers.base import TEST, TRAIN, NetError
from sec.caffe.net import Net, ParamInfo, set_device, set_mode_cpu, set_mode_gpu
from sec.caffe.layers.python import Layer

__all__ = ["Blob", "Layer", "Net", "NetError", "ParamInfo", "SGDSolver", "TEST", "TRAIN",
           "set_device", "set_mode_cpu", "set_mode_gpu"]

_LAZY = {"SGDSolver": "sec.caffe.solver", "NesterovSolver": "sec.caffe.solver", "AdaGradSolver": "sec.caffe.solver",
         "RMSPropSolver": "sec.caffe.solver", "AdaDeltaSolver": "sec.caffe.solver", "AdamSolver": "sec.caffe.solver",
         "get_solver": "sec.caffe.solver"}


def __getattr__(name):
    """Import the solver only when asked for, so `import sec.caffe` never needs it."""
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sec.caffe' has no attribute '{name}'")
