"""pycaffe's `caffe.pycaffe` module: the names it defines, from where this engine defines them.

pycaffe builds `Net`'s Python-side methods (blobs, params, forward, backward, forward_all, ...) in
this module; here they are methods of `sec.caffe.Net` itself (sec/caffe/net_pycaffe.py), so nets made
by a solver have them too. The solver classes come from sec.caffe.solver on first use.
"""
import importlib

from sec.caffe.net import Net
from sec.caffe.runtime import NCCL, Timer

__all__ = ["AdaDeltaSolver", "AdaGradSolver", "AdamSolver", "NCCL", "NesterovSolver", "Net", "RMSPropSolver",
           "SGDSolver", "Timer"]

SOLVER_NAMES = ("SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver", "AdamSolver")


def __getattr__(name):
    if name in SOLVER_NAMES:
        return getattr(importlib.import_module("sec.caffe.solver"), name)
    raise AttributeError(f"module 'sec.caffe.pycaffe' has no attribute '{name}'")
