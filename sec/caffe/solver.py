"""Caffe's six solvers on the PyTorch engine: `caffe.SGDSolver('solver.prototxt')`, ...,
`caffe.get_solver(path)` (the class of the prototxt's `type`).

SGD, Nesterov, AdaGrad, RMSProp, AdaDelta and Adam follow Caffe's update rules step for step
(sec.caffe.solvers.rules), with every lr policy (sec.caffe.solvers.policies), clip_gradients,
L1/L2 regularisation x decay_mult, iter_size, average_loss, test nets (test_iter, test_interval,
test_initialization, test_compute_loss, test_state), and snapshots in both of Caffe's formats
(BINARYPROTO: `<prefix>_iter_<N>.caffemodel` + `.solverstate`; HDF5: `.caffemodel.h5` +
`.solverstate.h5`; snapshot_diff). The loop is sec.caffe.solvers.base.Solver.

Beside Caffe's files each snapshot writes `<solverstate>.rng` (pickle: torch/numpy/python RNG
states, the data sources' `state_dict()`, the loss window; sec.caffe.snapshots reads it). Caffe's
SolverState has no field for these; the sidecar is what lets a resumed run follow the
uninterrupted trajectory exactly (smoothed loss included).

Divergence: a non-finite loss, or a forward/backward that fails while some blob of the net is
non-finite (a Python layer such as the CRF refusing NaN scores), raises NonFiniteLossError before
the update; a snapshot whose weights are non-finite is not written.

Data parallel: when torch.distributed is initialised, each rank accumulates its own gradients and
they are all-reduced as `sum_r rank_weight_r * grad_r` (rank_weight = the rank's share of the
global batch), which equals the gradient of the global batch for the per-image-mean SEC losses.
Only rank 0 logs, tests and snapshots.
"""
from sec.caffe.snapshots import (SIDECAR_FORMAT, SIDECAR_SUFFIX, SnapshotError, first_nonfinite_blob,  # noqa: F401
                                 read_sidecar, resolve_learned_net, snapshot_paths)
from sec.caffe.solvers.base import Solver
from sec.caffe.solvers.divergence import NonFiniteLossError  # noqa: F401
from sec.caffe.solvers.params import solver_params  # noqa: F401
from sec.caffe.solvers.config import (TRAIN_PHASE, NetOverrides, SolverConfigError,  # noqa: F401
                                      apply_net_overrides, read_solver, solver_type)
from sec.caffe.solvers.policies import learning_rate  # noqa: F401
from sec.caffe.solvers.state import seed_everything  # noqa: F401


class SGDSolver(Solver):
    """Caffe's SGDSolver (`type: "SGD"`): h = momentum * h + local_rate * g; w -= h."""
    type = "SGD"


class NesterovSolver(SGDSolver):
    """Caffe's NesterovSolver: h' = momentum * h + local_rate * g; w -= (1 + momentum) h' - momentum h."""
    type = "Nesterov"


class AdaGradSolver(SGDSolver):
    """Caffe's AdaGradSolver (momentum must be 0): h += g^2; w -= local_rate g / (sqrt(h) + delta)."""
    type = "AdaGrad"


class RMSPropSolver(SGDSolver):
    """Caffe's RMSPropSolver (momentum 0, 0 <= rms_decay < 1):
    h = rms_decay h + (1 - rms_decay) g^2; w -= local_rate g / (sqrt(h) + delta)."""
    type = "RMSProp"


class AdaDeltaSolver(SGDSolver):
    """Caffe's AdaDeltaSolver (momentum, delta; its history: the gradient averages, then the update
    averages): u = g sqrt((h_u + delta) / (h_g + delta)); w -= local_rate u."""
    type = "AdaDelta"


class AdamSolver(SGDSolver):
    """Caffe's AdamSolver (momentum, momentum2, delta; history: every m, then every v), with
    t = iter + 1: w -= local_rate sqrt(1 - momentum2^t) / (1 - momentum^t) m / (sqrt(v) + delta)."""
    type = "Adam"


SOLVER_CLASSES = {cls.type: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver,
                                            AdaDeltaSolver, AdamSolver)}


def make_solver(solver_prototxt, **kwargs):
    """The solver of the class the prototxt's `type` names (pycaffe's caffe.get_solver), built with
    the overrides of Solver (net, max_iter, device, ...)."""
    param = read_solver(solver_prototxt)
    kind = solver_type(param)
    if kind not in SOLVER_CLASSES:
        raise SolverConfigError(f"{solver_prototxt}: unknown solver type '{kind}' "
                                f"(known types: {', '.join(sorted(SOLVER_CLASSES))})")
    return SOLVER_CLASSES[kind](solver_prototxt, **kwargs)


def get_solver(solver_prototxt):
    """pycaffe's caffe.get_solver(filename)."""
    return make_solver(solver_prototxt)
