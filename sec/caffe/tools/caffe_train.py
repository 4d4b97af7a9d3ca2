"""`caffe train`: caffe.cpp's train() and its signal handling, on sec.caffe's solvers.

As caffe.cpp: `--gpu` (or the solver prototxt's `solver_mode: GPU` and `device_id`) picks the
device, the solver is built from the prototxt (`caffe.get_solver`'s class for its type), with
`--level` and `--stage` in its train net's state (the level replaces the prototxt's train_state
level, the stages are added to its stages, as caffe.cpp sets them into train_state), each
`--weights` file (comma-separated) copied into the train and test nets ("Finetuning from ..."),
`--snapshot` restored ("Resuming from ..."), then Solve.

Signals (Caffe's SignalHandler): SIGINT and SIGHUP only set a flag, which the solver reads as
its action request (Caffe's SetActionFunction: `solver.action_request`) after each update and at
each test iteration: `snapshot` snapshots, `stop` ends training (Solve then snapshots when
snapshot_after_train is set, the default, and logs "Optimization stopped early."), `none` ignores
the signal. Defaults: SIGINT stop, SIGHUP snapshot.

One difference: the solver prototxt's own `weights` field is loaded as the solver is built, also
when `--weights` or `--snapshot` is given (caffe.cpp clears it first); the flags' weights or the
snapshot are copied over it, so only layers that the flags' files lack keep the prototxt's weights.
"""
import signal

import torch

from sec.caffe.tools import glog
from sec.caffe.tools.caffe import get_gpus, stages_of, use_devices

log = glog.log

STOP, SNAPSHOT, NONE = "stop", "snapshot", "none"     # caffe::SolverAction
TRAIN_PHASE = 0


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


def train_state_factory(level, stages):
    """A solver `net_factory` building the TRAIN net with caffe.cpp's train_state: level `level`,
    the stages the solver asks for plus `stages`; other nets as asked."""
    from sec.caffe import Net

    def factory(source, phase, **state):
        if phase == TRAIN_PHASE:
            state = {"level": level, "stages": tuple(state.get("stages", ())) + tuple(stages)}
        return Net(source, phase, **state)

    return factory


def _gpu_flag(flags):
    """(--gpu, or the prototxt's device_id when it asks for solver_mode GPU (caffe.cpp); what asked)."""
    if flags.gpu:
        return flags.gpu, "--gpu"
    from sec.caffe import formats
    param = formats.read_solver_prototxt(flags.solver)
    if param.HasField("solver_mode") and param.solver_mode == param.GPU:
        return str(param.device_id), f"solver_mode: GPU in {flags.solver} (set solver_mode: CPU to train on the CPU)"
    return "", "--gpu"


def train(flags):
    """caffe.cpp's train(); returns the exit status (0)."""
    glog.check(flags.solver, "FLAGS_solver.size() > 0 (0 vs. 0) Need a solver definition to train.")
    glog.check(not flags.snapshot or not flags.weights,
               "!FLAGS_snapshot.size() || !FLAGS_weights.size() Give a snapshot to resume training or "
               "weights to finetune but not both.")
    stages = stages_of(flags.stage)
    gpu_flag, asked_by = _gpu_flag(flags)
    gpus = get_gpus(gpu_flag)
    if not gpus:
        log.info("Use CPU.")
    else:
        log.info("Using GPUs %s", ", ".join(str(g) for g in gpus))
    device = use_devices(gpus, asked_by)
    for gpu in gpus:
        log.info("GPU %d: %s", gpu, torch.cuda.get_device_name(gpu))
    if len(gpus) > 1:       # refused before the nets are built (Caffe without NCCL: after)
        glog.fatal("Multi-GPU execution not available in sec.caffe's `caffe train`: train data-parallel "
                   "with torchrun (training/train.sh --gpus N)")
    handler = SignalHandler(requested_action(flags.sigint_effect), requested_action(flags.sighup_effect))
    try:
        from sec.caffe.solver import make_solver
        solver = make_solver(flags.solver, device=device, net_factory=train_state_factory(flags.level, stages))
        for path in filter(None, (part.strip() for part in flags.weights.split(","))):
            log.info("Finetuning from %s", path)
            for net in [solver.net, *solver.test_nets]:
                net.copy_from(path)
        solver.action_request = handler.check
        if flags.snapshot:
            log.info("Resuming from %s", flags.snapshot)
            solver.restore(flags.snapshot)
        log.info("Starting Optimization")
        solver.solve()
    finally:
        handler.close()
    log.info("Optimization Done.")
    return 0
