"""`caffe train`: caffe.cpp's train() and its signal handling, on sec.caffe's solvers.

As caffe.cpp: the solver prototxt is read, `--level`/`--stage` go into its train_state, `--gpu`
(or the prototxt's solver_mode GPU and device_id) picks the device, `--weights` replaces the
prototxt's `weights` (comma-separated files, loaded by the solver), `--snapshot` clears them and
restores the .solverstate, then the solver solves.

Signals (Caffe's SignalHandler): SIGINT and SIGHUP only set a flag; the request is acted on
between iterations: `snapshot` writes a snapshot (unless the periodic one just wrote this
iteration), `stop` ends training there, after the snapshot Caffe's Solve writes when
snapshot_after_train is set (the default) and the iteration is not a multiple of `snapshot`, and
logs "Optimization stopped early.". Defaults: SIGINT stop, SIGHUP snapshot; `none` ignores the
signal. sec.caffe's solvers are told through pycaffe's `add_callback`: a request is seen at the
start of the next iteration (Caffe: right after the update of the current one, the same
iteration number), not during a test pass; one that arrives in the last iteration is acted on
after training (a snapshot) or dropped (stop: training has ended anyway).
"""
import signal

import torch

from sec.caffe import formats
from sec.caffe.tools import glog
from sec.caffe.tools.caffe import get_gpus, stages_of, use_devices

log = glog.log

STOP, SNAPSHOT, NONE = "stop", "snapshot", "none"     # caffe::SolverAction
SOLVER_MODE_GPU = 1


class StopRequested(Exception):
    """A `stop` signal request, raised out of the solver's loop at the start of an iteration."""


def requested_action(flag_value):
    """caffe.cpp's GetRequestedAction."""
    if flag_value in (STOP, SNAPSHOT, NONE):
        return flag_value
    glog.fatal(f'Invalid signal effect "{flag_value}" was specified')


class SignalHandler:
    """caffe::SignalHandler: flags set by SIGINT/SIGHUP; `check()` returns the action of one
    pending signal (SIGHUP first) and clears it. `close()` puts the previous handlers back."""

    def __init__(self, sigint_action, sighup_action):
        self.actions = {signal.SIGINT: sigint_action, signal.SIGHUP: sighup_action}
        self.pending = {signal.SIGINT: False, signal.SIGHUP: False}
        self.previous = {sig: signal.signal(sig, self._handle) for sig in self.actions}

    def _handle(self, signum, frame):
        self.pending[signum] = True

    def check(self):
        for sig in (signal.SIGHUP, signal.SIGINT):
            if self.pending[sig]:
                self.pending[sig] = False
                return self.actions[sig]
        return NONE

    def close(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def train(flags):
    """caffe.cpp's train(); returns the exit status (0)."""
    glog.check(flags.solver, "FLAGS_solver.size() > 0 (0 vs. 0) Need a solver definition to train.")
    glog.check(not flags.snapshot or not flags.weights,
               "!FLAGS_snapshot.size() || !FLAGS_weights.size() Give a snapshot to resume training or "
               "weights to finetune but not both.")
    stages = stages_of(flags.stage)
    param = formats.read_solver_prototxt(flags.solver)
    param.train_state.level = flags.level
    param.train_state.stage.extend(stages)
    gpu_flag = flags.gpu
    if not gpu_flag and param.HasField("solver_mode") and param.solver_mode == SOLVER_MODE_GPU:
        gpu_flag = str(param.device_id)    # the prototxt's device_id, 0 by default
    gpus = get_gpus(gpu_flag)
    if not gpus:
        log.info("Use CPU.")
    else:
        log.info("Using GPUs %s", ", ".join(str(g) for g in gpus))
    device = use_devices(gpus)
    for gpu in gpus:
        log.info("GPU %d: %s", gpu, torch.cuda.get_device_name(gpu))
    if gpus:
        param.device_id = gpus[0]
    handler = SignalHandler(requested_action(flags.sigint_effect), requested_action(flags.sighup_effect))
    try:
        if flags.snapshot:
            param.ClearField("weights")
        elif flags.weights:
            param.ClearField("weights")
            param.weights.append(flags.weights)
        from sec.caffe.solver import make_solver
        solver = make_solver(param, source=flags.solver, device=device)
        if flags.snapshot:
            log.info("Resuming from %s", flags.snapshot)
            solver.restore(flags.snapshot)
        log.info("Starting Optimization")
        if len(gpus) > 1:
            glog.fatal("Multi-GPU execution not available in sec.caffe's `caffe train`: train data-parallel "
                       "with torchrun (training/train.sh --gpus N)")
        solve(solver, handler)
    finally:
        handler.close()
    log.info("Optimization Done.")
    return 0


def solve(solver, handler):
    """solver.solve() with the handler's requests acted on between iterations (module docstring)."""
    start = solver.iter

    def on_start():
        if solver.iter > start:     # requests are looked at after an update, as Caffe's Step does
            act(handler.check())

    def act(request):
        period = solver.param.snapshot
        if request == SNAPSHOT and not (period and solver.iter % period == 0):
            solver.snapshot()
        if request == STOP:
            raise StopRequested

    solver.add_callback(on_start, lambda: None)
    try:
        solver.solve()
    except StopRequested:
        param = solver.param
        if param.snapshot_after_train and (not param.snapshot or solver.iter % param.snapshot != 0):
            solver.snapshot()
        log.info("Optimization stopped early.")
        return
    if handler.check() == SNAPSHOT:
        solver.snapshot()
