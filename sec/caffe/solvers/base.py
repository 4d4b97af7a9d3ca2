"""The solver loop of Caffe (Solver::Step, Solve, ApplyUpdate) on the PyTorch engine.

One iteration, as Caffe's Step: the test nets every test_interval (test_initialization at 0),
the `on_start` callbacks, iter_size forward/backward passes accumulating the gradients, the
smoothed loss over average_loss iterations and the display lines, the `on_gradients_ready`
callbacks, then ApplyUpdate: the learning rate of the policy, clip_gradients on the global L2 norm,
division by iter_size, L2 or L1 weight decay x decay_mult, the update rule of the solver type
(sec.caffe.solvers.rules), `w -= update`, iter += 1; then the snapshot every `snapshot`.

The parameter list is Caffe's learnable_params: every blob of the net in layer order, a shared
blob once, blobs that only their layer changes (BatchNorm's statistics) included with lr_mult 0,
so that the history (one set per blob, two for AdaDelta and Adam: all first, then all second)
has Caffe's length and order and snapshots cross engines. After an update each blob's `.grad`
holds the update value, as Caffe's diffs do.

On a GPU the loop reads the device once per iteration: the loss values (iter_size passes summed on
the device, then all-reduced) come back as one vector, which the divergence check reads before
the update. clip_gradients reads the norm too (Caffe logs it). Timings in `last_timings` are the
device's: on CUDA, events recorded on the stream and read after that one device read, so timing
costs no host wait; the update's events are read after the next iteration's read, so on CUDA
`last_timings["update"]` is the previous iteration's (NaN at the first).
"""
import logging
import time

import numpy as np
import torch

from sec.caffe.solvers import config, parallel, testing
from sec.caffe.net import mode_device
from sec.caffe.snapshots import snapshot_paths
from sec.caffe.solvers.divergence import check_finite, raise_if_diverged
from sec.caffe.solvers.params import local_multipliers, solver_params
from sec.caffe.solvers.policies import learning_rate
from sec.caffe.solvers.rules import RULES
from sec.caffe.solvers.state import SnapshotMixin, seed_everything

log = logging.getLogger("sec.caffe.solver")
F32 = np.float32
ACTION_NONE, ACTION_STOP, ACTION_SNAPSHOT = "none", "stop", "snapshot"   # Caffe's SolverAction


class Callback:
    """pycaffe's solver callback: `on_start()` before each iteration's forward passes,
    `on_gradients_ready()` before its update."""

    def __init__(self, on_start, on_gradients_ready):
        self.on_start, self.on_gradients_ready = on_start, on_gradients_ready


class Solver(SnapshotMixin):
    """A Caffe solver of type `type` (set by the subclasses in sec.caffe.solver), with pycaffe's
    API: `net`, `test_nets`, `iter`, `param`, `step(n)`, `solve()`, `restore(path)`, `snapshot()`,
    `apply_update()`, `add_callback(on_start, on_gradients_ready)`, `share_weights(net)`, `lr`.

    Overrides (each None keeps the solver prototxt's value): `net` (train prototxt path, also the
    generic net of the test nets), `max_iter`, `snapshot_prefix`, `random_seed`, `net_overrides`
    (NetOverrides: batch size, list, root, Python layer params of the train net), `device` (torch
    device; default that of caffe.set_mode_cpu / set_mode_gpu, as pycaffe), `rank_weight` (this rank's share of the global batch under
    torch.distributed; default 1/world_size). `net_factory(source, phase[, level=, stages=])` builds
    the nets (default `sec.caffe.Net`). Callables in `on_iteration_end` are called with the solver
    after every iteration (after its update and snapshot); `last_outputs` then holds the
    iteration's loss values (mean over iter_size), `last_timings` its forward/backward/update
    seconds and `last_lr` its learning rate.
    """

    type = None

    def __init__(self, solver_prototxt, *, net=None, max_iter=None, snapshot_prefix=None,
                 net_overrides=None, device=None, random_seed=None, rank_weight=None, net_factory=None):
        self.source = str(solver_prototxt)
        self.param = config.read_solver(solver_prototxt)
        declared = config.solver_type(self.param)
        if declared != self.type:
            log.warning("%s: type '%s' run by %s (as pycaffe's %s(path), which ignores the type; "
                        "caffe.get_solver picks the class by the type)", self.source, declared,
                        type(self).__name__, type(self).__name__)
        config.check_solver(self.param, self.source, self.type)
        for field, value in (("max_iter", max_iter), ("snapshot_prefix", snapshot_prefix),
                             ("random_seed", random_seed)):
            if value is not None:
                setattr(self.param, field, str(value) if field == "snapshot_prefix" else value)
        self.rank, self.world_size = parallel.rank_and_world()
        self.rank_weight = (1.0 / self.world_size) if rank_weight is None else float(rank_weight)
        self.device = torch.device(device) if device is not None else mode_device()
        if self.param.random_seed >= 0:
            seed_everything(self.param.random_seed + self.rank)
        if net_factory is None:
            from sec.caffe import Net as net_factory  # the engine package imports this module
        self._factory = net_factory
        self.net = self._init_train_net(net, net_overrides)
        self.test_nets = self._init_test_nets(net)
        self.weight_report = None
        for listed in self.param.weights:  # Caffe's Solver::Init: each entry, comma-separated files
            for path in filter(None, (part.strip() for part in listed.split(","))):
                log.info("Finetuning from %s", path)
                self.load_weights(path, test_nets=True)
        self.params = solver_params(self.net, self._netparam)
        if self.world_size > 1:
            parallel.broadcast_parameters([info.param for info in self.params])
        self._rule, sets = RULES[self.type]
        self.history = [torch.zeros_like(info.param) for _ in range(sets) for info in self.params]
        self._local = local_multipliers(self.param, self.params)
        self.iter = 0
        self.current_step = 0
        self.last_lr = learning_rate(self.param, 0)[0]
        self.losses = []
        self.smoothed_loss = 0.0
        self.last_outputs, self.last_timings, self.test_results = {}, {}, []
        self._update_marks, self._last_update_s = None, float("nan")   # the last update's clock marks
        self.last_snapshot = self.restored_from = None
        self.on_iteration_end = []
        self.requested_early_exit = False
        self.action_request = None      # callable -> "none" | "stop" | "snapshot" (Caffe's SetActionFunction)
        self._callbacks = []
        self._output_names = None

    # ----- nets ------------------------------------------------------------------------------
    def _init_train_net(self, override, overrides):
        source, description = config.train_net_source(self.param, self.source, override)
        netparam = config.netparam_of(source)
        state = config.net_state(config.TRAIN_PHASE, netparam,
                                 self.param.train_state if self.param.HasField("train_state") else None)
        if overrides is not None and overrides.any():
            netparam = config.apply_net_overrides(netparam, overrides)
            source = self._write_derived_net(netparam)
        self._netparam, self.net_name = netparam, netparam.name
        self.net_path = source if isinstance(source, str) else None
        log.info("Creating training net from %s", description)
        return self._build(source, state)

    def _init_test_nets(self, override):
        nets = []
        for index, (source, description) in enumerate(config.test_net_sources(self.param, self.source, override)):
            extra = self.param.test_state[index] if self.param.test_state else None
            state = config.net_state(config.TEST_PHASE, config.netparam_of(source), extra)
            log.info("Creating test net (#%d) specified by %s", index, description)
            nets.append(self._build(source, state))
        return nets

    def _build(self, source, state):
        extra = dict(level=state.level, stages=tuple(state.stage)) if state.level or state.stage else {}
        net = self._factory(source, state.phase, **extra)
        net.to(self.device)
        return net

    def share_weights(self, net):
        """pycaffe's solver.share_weights(net): `net` shares this solver's train net blobs by layer name."""
        testing.share_trained_layers(net, self.net)

    def add_callback(self, on_start, on_gradients_ready):
        """pycaffe's add_callback: two callables without arguments, called every iteration."""
        self._callbacks.append(Callback(on_start, on_gradients_ready))

    @property
    def lr(self):
        """pycaffe's solver.lr: the rate at the current iteration. As Caffe's GetLearningRate it
        moves current_step (step; multistep by at most one stepvalue)."""
        rate, self.current_step = learning_rate(self.param, self.iter, self.current_step)
        return rate

    # ----- training --------------------------------------------------------------------------
    def solve(self, resume_file=None):
        """Caffe's Solver::Solve: optionally restore, step to max_iter, snapshot after training
        (snapshot_after_train), then one more forward to display the loss and the test nets."""
        log.info("Solving %s", self.net_name)
        log.info("Learning Rate Policy: %s", self.param.lr_policy)
        self.requested_early_exit = False
        if resume_file is not None:
            log.info("Restoring previous solver status from %s", resume_file)
            self.restore(resume_file)
        self.step(self.param.max_iter - self.iter)
        p = self.param
        if p.snapshot_after_train and (p.snapshot == 0 or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            log.info("Optimization stopped early.")
            return
        if p.display and self.iter % p.display == 0:
            with torch.no_grad():
                loss = float(self.net.total_loss(self.net.run()))
            self._update_smoothed_loss(loss)
            log.info("Iteration %d, loss = %.6g", self.iter, self.smoothed_loss)
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        log.info("Optimization Done.")

    def step(self, iters):
        """Run `iters` iterations (Caffe's Solver::Step)."""
        stop = self.iter + iters
        tick, tick_iter = time.perf_counter(), self.iter
        while self.iter < stop:
            for info in self.params:
                info.param.grad = None                  # Caffe's ClearParamDiffs
            p = self.param
            if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                if self.rank == 0:
                    self.test_all()
                if self.requested_early_exit:
                    break
            for callback in self._callbacks:
                callback.on_start()
            display = bool(p.display) and self.iter % p.display == 0
            values, shown = self._forward_backward(display)
            loss = values.pop("__total__")
            self._update_smoothed_loss(loss)
            if display and self.rank == 0:
                lapse = time.perf_counter() - tick
                log.info("Iteration %d (%.6g iter/s, %.6gs/%d iters), loss = %.6g", self.iter,
                         (self.iter - tick_iter) / (lapse or 1), lapse, p.display, self.smoothed_loss)
                tick, tick_iter = time.perf_counter(), self.iter
                self._log_outputs(shown)
            for callback in self._callbacks:
                callback.on_gradients_ready()
            started = self._clock()
            self.apply_update()
            self._update_marks = (started, self._clock())
            self.last_timings["update"] = self._update_seconds(resolve=isinstance(started, float))
            self.last_outputs = dict(values, loss=loss)
            request = self._requested_action()
            if (p.snapshot and self.iter % p.snapshot == 0 and self.rank == 0) or request == ACTION_SNAPSHOT:
                self.snapshot()
            for callback in self.on_iteration_end:
                callback(self)
            if request == ACTION_STOP:
                self.requested_early_exit = True
                break

    def test_all(self):
        """Caffe's TestAll: every test net in turn; their scores also go to `test_results`."""
        self.test_results = []
        for index in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test_results.append(testing.test_net(self, index))
        return self.test_results

    def _requested_action(self):
        return self.action_request() if self.action_request is not None else ACTION_NONE

    def handle_requests_while_testing(self):
        """Caffe's loop at each test iteration: snapshot or stop as requested; True to stop."""
        request = self._requested_action()
        while request != ACTION_NONE:
            if request == ACTION_SNAPSHOT:
                self.snapshot()
            elif request == ACTION_STOP:
                self.requested_early_exit = True
            request = self._requested_action()
        return self.requested_early_exit

    def _clock(self):
        """A time mark: on CUDA an event recorded on the current stream (no host wait; its time is
        read once the iteration's device read has passed it), else time.perf_counter()."""
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    @staticmethod
    def _elapsed(start, end):
        """Seconds between two `_clock` marks (CUDA events that the device has passed)."""
        return end - start if isinstance(start, float) else start.elapsed_time(end) / 1000.0

    def _update_seconds(self, resolve):
        """The last update's seconds when ``resolve`` (its marks have passed), else the one before."""
        if resolve and self._update_marks is not None:
            self._last_update_s = self._elapsed(*self._update_marks)
        return self._last_update_s

    def _forward_backward(self, display):
        """iter_size forward/backward passes. Returns ({name: mean over the passes} of the scalar
        outputs plus '__total__', the loss; [(name, values)] of every output of the last pass when
        `display`), read from the device in one transfer."""
        iter_size = self.param.iter_size
        sums, outputs = None, None
        marks = []
        for _ in range(iter_size):
            t0 = self._clock()
            try:
                outputs = self.net.run()
                total = self.net.total_loss(outputs)
                t1 = self._clock()
                if total.requires_grad:
                    total.backward()
            except Exception as err:  # a layer refusing NaN/Inf input is divergence, anything else is not
                raise_if_diverged(self, err)
                raise
            marks.append((t0, t1, self._clock()))
            names = self._scalar_outputs(outputs)
            vector = torch.stack([outputs[n].detach().reshape(-1)[0].float() for n in names]
                                 + [total.detach().reshape(()).float()])
            sums = vector if sums is None else sums + vector
        if self.world_size > 1:
            sums = parallel.allreduce_values(sums, self.rank_weight)
        shown = [(n, outputs[n].detach().reshape(-1).float()) for n in self._shown_outputs(outputs)] if display else []
        host = torch.cat([sums] + [values for _, values in shown]).tolist()       # the one device read
        keys = list(self._output_names) + ["__total__"]
        values = {name: host[i] / iter_size for i, name in enumerate(keys)}
        position, shown_values = len(keys), []
        for name, tensor in shown:
            shown_values.append((name, host[position:position + tensor.numel()]))
            position += tensor.numel()
        # the read above has passed every mark of this iteration and the previous update's
        self.last_timings = {"forward": sum(self._elapsed(t0, t1) for t0, t1, _ in marks),
                             "backward": sum(self._elapsed(t1, t2) for _, t1, t2 in marks),
                             "update": self._update_seconds(resolve=True)}
        check_finite(self, values)
        return values, shown_values

    def _scalar_outputs(self, outputs):
        if self._output_names is None:
            names = list(getattr(self.net, "outputs", [])) or list(self.net.loss_weights)
            self._output_names = [n for n in names if n in outputs and outputs[n].numel() == 1]
        return self._output_names

    def _shown_outputs(self, outputs):
        names = list(getattr(self.net, "outputs", [])) or list(self.net.loss_weights)
        return [n for n in names if n in outputs]

    def _log_outputs(self, shown):
        """Caffe's "Train net output #k: name = value (* weight = weighted loss)" for every element."""
        index = 0
        for name, values in shown:
            weight = self.net.loss_weights.get(name, 0.0)
            for value in values:
                extra = f" (* {weight:g} = {float(F32(weight) * F32(value)):.6g} loss)" if weight else ""
                log.info("    Train net output #%d: %s = %.6g%s", index, name, value, extra)
                index += 1

    def _update_smoothed_loss(self, loss):
        """Caffe's Solver::UpdateSmoothedLoss: running mean over the last average_loss iterations,
        with the same arithmetic. `losses` holds them oldest first (Caffe: a ring indexed by
        iter - start_iter), so the window carries through step() calls, snapshot and resume."""
        window = max(1, self.param.average_loss)
        if len(self.losses) > window:            # average_loss made smaller for a resumed run
            self.losses = self.losses[-window:]
            self.smoothed_loss = sum(self.losses) / window
        if len(self.losses) < window:
            self.losses.append(loss)
            n = len(self.losses)
            self.smoothed_loss = (self.smoothed_loss * (n - 1) + loss) / n
        else:
            self.smoothed_loss += (loss - self.losses.pop(0)) / window
            self.losses.append(loss)

    # ----- the update ------------------------------------------------------------------------
    @torch.no_grad()
    def apply_update(self):
        """Caffe's SGDSolver::ApplyUpdate on the diffs in `param.grad` (the gradients of step(), or
        what pycaffe wrote into `net.params[...][i].diff`); iter += 1, as in Caffe."""
        pending = getattr(self.net, "_pending", None)
        if pending:                              # pycaffe's host copies of CUDA diffs, written back
            from sec.caffe.blob import write_back
            write_back(pending)
        p = self.param
        rate, self.current_step = learning_rate(p, self.iter, self.current_step)
        self.last_lr = rate
        if p.display and self.iter % p.display == 0 and self.rank == 0:
            log.info("Iteration %d, lr = %.6g", self.iter, rate)
        diffs = [info.param.grad if info.param.grad is not None else torch.zeros_like(info.param)
                 for info in self.params]
        if self.world_size > 1:
            parallel.allreduce_gradients(diffs, self.rank_weight)
        self._clip(diffs)
        if p.iter_size > 1:
            torch._foreach_mul_(diffs, float(F32(1) / F32(p.iter_size)))
        for indices, local_decay in self._local.decay_groups:
            group = [diffs[i] for i in indices]
            weights = [self.params[i].param for i in indices]
            torch._foreach_add_(group, weights if p.regularization_type == "L2" else torch._foreach_sign(weights),
                                alpha=local_decay)
        rates = [float(F32(rate) * multiplier) for multiplier in self._local.lr_mults]
        count = len(self.params)
        sets = [self.history[k:k + count] for k in range(0, len(self.history), count)]
        self._rule(diffs, sets, rates, p, self.iter + 1)
        weights = [info.param for info in self.params]
        torch._foreach_sub_(weights, diffs)                     # Caffe's Net::Update
        for weight, diff in zip(weights, diffs):
            weight.grad = diff                                  # the diff holds the update, as in Caffe
        self.iter += 1

    def _clip(self, diffs):
        """Caffe's ClipGradients: scale every diff when the global L2 norm exceeds clip_gradients."""
        limit = self.param.clip_gradients
        if limit < 0 or not diffs:
            return
        norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(diffs))))
        if norm > limit:
            scale = float(F32(limit) / F32(norm))
            if self.rank == 0:
                log.info("Gradient clipping: scaling down gradients (L2 norm %.6g > %.6g) by scale factor %.6g",
                         norm, limit, scale)
            torch._foreach_mul_(diffs, scale)

    def snapshot_files(self, iteration):
        """(weights, solver state, sidecar) paths of the snapshot at `iteration` in this solver's format."""
        return snapshot_paths(self.param.snapshot_prefix, iteration, self.hdf5)
