"""Caffe's SGD solver on the PyTorch engine: `caffe.SGDSolver('solver.prototxt')`.

The update is Caffe's `SGDSolver::ApplyUpdate`, step for step, in float32 on the parameters'
device: clip the accumulated gradients (`clip_gradients`), normalise by `iter_size`,
regularise (`diff += weight_decay * decay_mult * w`, L2 or L1), then
`history = momentum * history + lr * lr_mult * diff` and `w -= history`.
Learning-rate policies and the smoothed display loss follow `caffe/solver.cpp`.
`AdamSolver` (`type: "Adam"`) is Caffe's AdamSolver on the same machinery; `make_solver` picks
the class after the solver prototxt's type, as pycaffe's `caffe.get_solver` does.

Snapshots are Caffe's pair `<prefix>_iter_<N>.caffemodel` + `<prefix>_iter_<N>.solverstate`
(history = momentum buffers in `net.learnable_params()` order), plus a sidecar
`<prefix>_iter_<N>.solverstate.rng` (pickle: torch/numpy/python RNG states, the data
sources' `state_dict()`, the loss window; sec.caffe.snapshots reads it). Caffe's SolverState
has no field for these; the sidecar is what lets a resumed run follow the uninterrupted
trajectory exactly (smoothed loss included). Every file is written atomically, sidecar and weights first and the .solverstate
last, so an existing .solverstate always has its partners. `restore` reads and checks all three
before it changes anything, and takes the .caffemodel beside the .solverstate over the path
stored in it (a copied run folder resumes from its own weights).

Divergence: a non-finite loss, or a forward/backward that fails while some blob of the net is
non-finite (a Python layer such as the CRF refusing NaN scores), raises NonFiniteLossError before
the update; a snapshot whose weights are non-finite is not written.

Data parallel: when torch.distributed is initialised, each rank accumulates its own
gradients and they are all-reduced as `sum_r rank_weight_r * grad_r` (rank_weight = the
rank's share of the global batch), which equals the gradient of the global batch for the
per-image-mean SEC losses. Only rank 0 logs and snapshots.
"""
import logging
import math
import os
import pickle
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from google.protobuf import text_format

from sec.caffe import formats
from sec.caffe.snapshots import (SIDECAR_FORMAT, SIDECAR_SUFFIX, SnapshotError, first_nonfinite_blob,  # noqa: F401
                                 read_sidecar, resolve_learned_net, snapshot_paths)

log = logging.getLogger(__name__)

TRAIN_PHASE = 0


class NonFiniteLossError(RuntimeError):
    """Training diverged: a loss or another blob became NaN or Inf (or the update made the weights
    non-finite); the weights were not updated and nothing was snapshotted."""


class SolverConfigError(ValueError):
    """A solver field that this solver does not support or that is missing."""


@dataclass
class NetOverrides:
    """Explicit changes to the train net's prototxt, applied before the net is built.

    batch_size/source/root_folder/image_size (new_height = new_width) go to every ImageData
    layer; python_params maps a Python layer class name (e.g. 'AnnotationLayer') to keys merged
    into its YAML/JSON param_str.
    """
    batch_size: int | None = None
    source: str | None = None
    root_folder: str | None = None
    image_size: int | None = None
    python_params: dict | None = None

    def any(self):
        return any(v is not None for v in (self.batch_size, self.source, self.root_folder, self.image_size,
                                           self.python_params))


def apply_net_overrides(netparam, overrides):
    """Return a copy of `netparam` (NetParameter) with `overrides` applied."""
    netparam = type(netparam).FromString(netparam.SerializeToString())
    python_params = dict(overrides.python_params or {})
    for layer in netparam.layer:
        if layer.type == "ImageData":
            if overrides.batch_size is not None:
                layer.image_data_param.batch_size = overrides.batch_size
            if overrides.source is not None:
                layer.image_data_param.source = overrides.source
            if overrides.root_folder is not None:
                layer.image_data_param.root_folder = overrides.root_folder
            if overrides.image_size is not None:
                layer.image_data_param.new_height = overrides.image_size
                layer.image_data_param.new_width = overrides.image_size
        elif layer.type == "Python" and layer.python_param.layer in python_params:
            current = yaml.safe_load(layer.python_param.param_str) if layer.python_param.param_str else {}
            if not isinstance(current, dict):
                raise SolverConfigError(f"layer '{layer.name}': param_str is not a mapping: "
                                        f"{layer.python_param.param_str!r}")
            current.update(python_params.pop(layer.python_param.layer))
            layer.python_param.param_str = yaml.safe_dump(current, default_flow_style=True).strip()
    if python_params:
        raise SolverConfigError(f"net '{netparam.name}' has no Python layer {sorted(python_params)} to override")
    return netparam


def learning_rate(param, iteration, current_step=0):
    """Caffe's SGDSolver::GetLearningRate. Returns (rate, current_step); current_step only moves for multistep."""
    policy = param.lr_policy
    base = param.base_lr
    if policy == "fixed":
        return base, current_step
    if policy == "step":
        _require_positive(param, "stepsize")
        return base * param.gamma ** (iteration // param.stepsize), current_step
    if policy == "exp":
        return base * param.gamma ** iteration, current_step
    if policy == "inv":
        return base * (1.0 + param.gamma * iteration) ** (-param.power), current_step
    if policy == "multistep":
        while current_step < len(param.stepvalue) and iteration >= param.stepvalue[current_step]:
            current_step += 1
            log.info("MultiStep Status: Iteration %d, step = %d", iteration, current_step)
        return base * param.gamma ** current_step, current_step
    if policy == "poly":
        _require_positive(param, "max_iter")
        return base * (1.0 - iteration / param.max_iter) ** param.power, current_step
    if policy == "sigmoid":
        return base / (1.0 + math.exp(-param.gamma * (iteration - param.stepsize))), current_step
    raise SolverConfigError(f"lr_policy '{policy}' is not one of fixed, step, exp, inv, multistep, poly, sigmoid")


def _require_positive(param, field):
    if getattr(param, field) <= 0:
        raise SolverConfigError(f"lr_policy '{param.lr_policy}' needs a positive '{field}', got {getattr(param, field)}")


class SGDSolver:
    """pycaffe's SGDSolver: `.net`, `.iter`, `.step(n)`, `.solve()`, `.restore(path)`, `.snapshot()`.

    Overrides (each None keeps the solver prototxt's value): `net` (train prototxt path),
    `max_iter`, `snapshot_prefix`, `random_seed`, `net_overrides` (NetOverrides: batch size, list, root,
    Python layer params), `device` (torch device; default CPU), `rank_weight` (this rank's
    share of the global batch under torch.distributed; default 1/world_size).
    `net_factory(prototxt_path, phase)` builds the net; default `sec.caffe.Net`.
    Callables in `on_iteration_end` are called with the solver after every iteration
    (after its update and snapshot); `last_outputs` then holds the iteration's loss values
    and `last_timings` its forward/backward/update seconds.
    """

    def __init__(self, solver_prototxt, *, net=None, max_iter=None, snapshot_prefix=None,
                 net_overrides=None, device=None, random_seed=None, rank_weight=None, net_factory=None):
        self.param = formats.read_solver_prototxt(str(solver_prototxt))
        self.source = str(solver_prototxt)
        self._check_param()
        if max_iter is not None:
            self.param.max_iter = max_iter
        if snapshot_prefix is not None:
            self.param.snapshot_prefix = str(snapshot_prefix)
        if random_seed is not None:
            self.param.random_seed = random_seed
        self.rank, self.world_size = _distributed_rank()
        self.rank_weight = (1.0 / self.world_size) if rank_weight is None else float(rank_weight)
        self.device = torch.device(device or "cpu")

        net_path = str(net or self.param.net or self.param.train_net)
        if not net_path:
            raise SolverConfigError(f"{self.source}: no 'net' (or 'train_net') and no net given")
        if not Path(net_path).is_file():
            raise FileNotFoundError(f"{self.source}: train net '{net_path}' not found (relative to {os.getcwd()})")
        netparam = formats.read_net_prototxt(net_path)
        if net_overrides is not None and net_overrides.any():
            netparam = apply_net_overrides(netparam, net_overrides)
            net_path = self._write_derived_net(netparam)
        self.net_name = netparam.name
        self.net_path = net_path

        if self.param.random_seed >= 0:
            seed_everything(self.param.random_seed + self.rank)
        if net_factory is None:
            from sec.caffe import Net as net_factory  # the engine package imports this module
        self.net = net_factory(net_path, TRAIN_PHASE)
        self.net.to(self.device)
        self.weight_report = None
        for listed in self.param.weights:  # Caffe's Solver::Init: each entry, comma-separated files
            for path in filter(None, (part.strip() for part in listed.split(","))):
                self.load_weights(path)
        self.params = list(self.net.learnable_params())
        if self.world_size > 1:
            with torch.no_grad():
                for info in self.params:
                    dist.broadcast(info.param.data, src=0)
        self.history = [torch.zeros_like(info.param) for info in self.params]
        self.iter = 0
        self.current_step = 0
        self.lr = learning_rate(self.param, 0)[0]
        self.losses = []
        self.smoothed_loss = 0.0
        self.last_outputs = {}
        self.last_timings = {}
        self.last_snapshot = None
        self.restored_from = None
        self.test_nets = []
        self._output_names = None
        self.on_iteration_end = []
        self.requested_early_exit = False
        self.action_request = None      # callable -> "none" | "stop" | "snapshot" (Caffe's SetActionFunction)

    # ----- configuration -------------------------------------------------------------------
    def _check_param(self):
        p = self.param
        kind = p.type if p.HasField("type") else "SGD"
        if kind != "SGD" or (p.HasField("solver_type") and p.solver_type != 0):
            raise SolverConfigError(f"{self.source}: solver type '{kind}' (solver_type {p.solver_type}) "
                                    "is not supported; only SGD")
        if p.HasField("net_param") or p.HasField("train_net_param"):
            raise SolverConfigError(f"{self.source}: inline net_param is not supported; use 'net: <path>'")
        if p.regularization_type not in ("L1", "L2"):
            raise SolverConfigError(f"{self.source}: regularization_type '{p.regularization_type}' is not L1 or L2")
        if p.iter_size < 1:
            raise SolverConfigError(f"{self.source}: iter_size must be >= 1, got {p.iter_size}")
        learning_rate(p, 0)  # fails early on an unknown policy or a missing stepsize

    def _write_derived_net(self, netparam):
        suffix = f"_rank{self.rank}" if self.world_size > 1 else ""
        path = Path(f"{self.param.snapshot_prefix}_train{suffix}.prototxt")
        path.parent.mkdir(parents=True, exist_ok=True)
        formats.atomic_write_bytes(str(path), text_format.MessageToString(netparam).encode())
        return str(path)

    # ----- training --------------------------------------------------------------------------
    def solve(self, resume_file=None):
        """Caffe's Solver::Solve: optionally restore, step to max_iter, snapshot after training."""
        self.requested_early_exit = False
        if resume_file is not None:
            self.restore(resume_file)
        log.info("Solving %s", self.net_name)
        self.step(self.param.max_iter - self.iter)
        p = self.param
        if p.snapshot_after_train and (p.snapshot == 0 or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            log.info("Optimization stopped early.")
            return
        log.info("Optimization Done.")

    def step(self, iters):
        """Run `iters` iterations (forward/backward x iter_size, update, display, snapshot)."""
        stop = self.iter + iters
        tick, tick_iter = time.perf_counter(), self.iter
        while self.iter < stop:
            values = self._forward_backward()
            loss = values.pop("__total__")
            self._update_smoothed_loss(loss)
            display = self.param.display and self.iter % self.param.display == 0
            if display and self.rank == 0:
                now = time.perf_counter()
                done = self.iter - tick_iter
                rate = f"{done / (now - tick):.3g} iter/s, {now - tick:.3g}s/{done} iters" if done else ""
                log.info("Iteration %d%s, loss = %.6g", self.iter, f" ({rate})" if rate else "", self.smoothed_loss)
                tick, tick_iter = now, self.iter
                for k, (name, value) in enumerate(values.items()):
                    weight = self.net.loss_weights.get(name, 0.0)
                    extra = f" (* {weight:g} = {weight * value:.6g} loss)" if weight else ""
                    log.info("    Train net output #%d: %s = %.6g%s", k, name, value, extra)
            started = time.perf_counter()
            self.apply_update(display)
            self.last_timings["update"] = time.perf_counter() - started
            self.last_outputs = dict(values, loss=loss)
            self.iter += 1
            request = self.action_request() if self.action_request is not None else "none"
            if (self.param.snapshot and self.iter % self.param.snapshot == 0) or request == "snapshot":
                self.snapshot()
            for callback in self.on_iteration_end:
                callback(self)
            if request == "stop":
                self.requested_early_exit = True
                break

    def _forward_backward(self):
        """Zero the diffs, run iter_size forward/backward passes; returns mean output values."""
        for info in self.params:
            info.param.grad = None
        iter_size = self.param.iter_size
        sums = {}
        forward = backward = 0.0
        for _ in range(iter_size):
            t0 = time.perf_counter()
            try:
                outputs = self.net.run()
                total = self.net.total_loss(outputs)
                t1 = time.perf_counter()
                total.backward()
            except Exception as err:  # a layer refusing NaN/Inf input is divergence, anything else is not
                self._raise_if_diverged(err)
                raise
            t2 = time.perf_counter()
            forward, backward = forward + t1 - t0, backward + t2 - t1
            names = self._scalar_outputs(outputs)
            for name in names:
                sums[name] = sums.get(name, 0.0) + float(outputs[name].detach().reshape(-1)[0])
            sums["__total__"] = sums.get("__total__", 0.0) + float(total.detach())
        values = {name: value / iter_size for name, value in sums.items()}
        if self.world_size > 1:
            values = self._allreduce_values(values)
        self.last_timings = {"forward": forward, "backward": backward}
        self._check_finite(values)
        return values

    def _scalar_outputs(self, outputs):
        if self._output_names is None:
            names = list(getattr(self.net, "outputs", [])) or list(self.net.loss_weights)
            self._output_names = [n for n in names if n in outputs and outputs[n].numel() == 1]
        return self._output_names

    def _check_finite(self, values):
        for name, value in values.items():
            if not math.isfinite(value):
                blob = "total loss" if name == "__total__" else f"loss blob '{name}'"
                raise NonFiniteLossError(f"iteration {self.iter}: {blob} is {value}; {self._kept()}")

    def _kept(self):
        """The end of a divergence message: what was kept, and whether it holds these weights."""
        text = f"stopped before the update (weights are those of iteration {self.iter}; "
        if self.last_snapshot and self.last_snapshot == snapshot_paths(self.param.snapshot_prefix, self.iter)[1]:
            return text + (f"the last snapshot, {self.last_snapshot}, holds these weights: resume from an "
                           "earlier one or lower base_lr)")
        return text + f"last good snapshot: {self.last_snapshot or 'none written yet'})"

    def _raise_if_diverged(self, err):
        """After a failed forward/backward: raise NonFiniteLossError (from err) naming the first
        non-finite parameter, or else the first non-finite blob of a probing forward, layer by
        layer; return (the caller re-raises err) when everything is finite."""
        for info in self.params:
            if not bool(torch.isfinite(info.param).all()):
                raise NonFiniteLossError(
                    f"iteration {self.iter}: parameter {info.index} of layer '{info.layer}' is non-finite "
                    f"({type(err).__name__}: {err}); {self._kept()}") from err
        found = first_nonfinite_blob(self.net)
        if found is not None:
            blob, layer, failure = found
            first = f"{type(err).__name__}: {err}"
            then = f"layer '{failure[0]}' then failed: {failure[1]}" if failure else f"then: {first}"
            if failure and failure[1] != first:
                then += f" (first failure: {first})"
            raise NonFiniteLossError(
                f"iteration {self.iter}: blob '{blob}' (top of layer '{layer}') is non-finite; {then}; "
                f"{self._kept()}") from err

    def _allreduce_values(self, values):
        names = list(values)
        vec = torch.tensor([values[n] * self.rank_weight for n in names], dtype=torch.float64)
        dist.all_reduce(vec)
        return dict(zip(names, vec.tolist()))

    def _update_smoothed_loss(self, loss):
        """Caffe's Solver::UpdateSmoothedLoss: running mean over the last average_loss iterations,
        with the same arithmetic. `losses` holds them oldest first (Caffe: a ring indexed by
        iter - start_iter), so the window carries through a snapshot and resume unchanged."""
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

    @torch.no_grad()
    def apply_update(self, display=False):
        """Caffe's SGDSolver::ApplyUpdate on the gradients in `param.grad`."""
        rate, diffs = self._regularized_gradients(display)
        momentum = self.param.momentum
        for info, diff, history in zip(self.params, diffs, self.history):
            history.mul_(momentum).add_(diff, alpha=rate * info.lr_mult)
            info.param.data.sub_(history)

    def _regularized_gradients(self, display):
        """(learning rate, gradients) after the steps every Caffe solver takes before its own
        update rule: the rate of this iteration, the all-reduce across ranks, clipping, division
        by iter_size and weight decay (L2 or L1) scaled by decay_mult."""
        p = self.param
        rate, self.current_step = learning_rate(p, self.iter, self.current_step)
        self.lr = rate
        if display and self.rank == 0:
            log.info("Iteration %d, lr = %.6g", self.iter, rate)
        diffs = [info.param.grad if info.param.grad is not None else torch.zeros_like(info.param)
                 for info in self.params]
        if self.world_size > 1:
            for d in diffs:
                d.mul_(self.rank_weight)
                dist.all_reduce(d)
        self._clip(diffs)
        for info, diff in zip(self.params, diffs):
            w = info.param.data
            if p.iter_size > 1:
                diff.mul_(1.0 / p.iter_size)
            local_decay = p.weight_decay * info.decay_mult
            if local_decay:
                diff.add_(w if p.regularization_type == "L2" else torch.sign(w), alpha=local_decay)
        return rate, diffs

    def _clip(self, diffs):
        limit = self.param.clip_gradients
        if limit < 0:
            return
        norm = math.sqrt(sum(float(torch.sum(d.double() * d.double())) for d in diffs))
        if norm > limit:
            scale = limit / norm
            if self.rank == 0:
                log.info("Gradient clipping: scaling down gradients (L2 norm %g > %g) by scale factor %g",
                         norm, limit, scale)
            for d in diffs:
                d.mul_(scale)

    # ----- snapshots -------------------------------------------------------------------------
    def snapshot(self):
        """Write `<prefix>_iter_<N>` .caffemodel, .solverstate and the .rng sidecar (rank 0 only)."""
        if self.rank != 0:
            return None
        model, state, sidecar = snapshot_paths(self.param.snapshot_prefix, self.iter)
        for info in self.params:
            if not bool(torch.isfinite(info.param).all()):
                raise NonFiniteLossError(
                    f"iteration {self.iter}: the update made parameter {info.index} of layer '{info.layer}' "
                    f"non-finite; snapshot {state} not written (last good snapshot: "
                    f"{self.last_snapshot or 'none written yet'})")
        Path(model).parent.mkdir(parents=True, exist_ok=True)
        formats.atomic_write_bytes(sidecar, pickle.dumps(self._rng_state(), protocol=pickle.HIGHEST_PROTOCOL))
        layers = [(name, kind, [t.detach().cpu().numpy() for t in blobs])
                  for name, kind, blobs in self.net.layer_params()]
        log.info("Snapshotting to binary proto file %s", model)
        formats.write_caffemodel(model, self.net_name, layers)
        log.info("Snapshotting solver state to binary proto file %s", state)
        formats.write_solverstate(state, self.iter, model, [h.cpu().numpy() for h in self.history],
                                   self.current_step)
        self.last_snapshot = state
        return state

    def _rng_state(self):
        return {
            "format": SIDECAR_FORMAT,
            "iter": self.iter,
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "data_sources": [src.state_dict() for src in self.net.data_layers()],
            "losses": list(self.losses),
            "smoothed_loss": self.smoothed_loss,
        }

    def restore(self, state_path):
        """Caffe's Solver::Restore from a .solverstate (+ the .rng sidecar when present).

        Everything is read and checked first (SnapshotError, CaffeFormatError, WeightShapeError
        or FileNotFoundError naming the file); only then are weights, history, iteration, RNG and
        data positions set, so a failed restore leaves the solver as it was. The weights come from
        the .caffemodel beside the .solverstate when there is one, else from its learned_net;
        `restored_from` records (solverstate, caffemodel) used.
        """
        state_path = str(state_path)
        state = formats.read_solverstate(state_path)
        model = resolve_learned_net(state["learned_net"], state_path)
        history = state["history"]
        if len(history) != len(self.history):
            raise SnapshotError(f"{state_path}: {len(history)} history blobs, the net has {len(self.history)} "
                                "learnable parameters")
        infos = self.params * (len(self.history) // max(1, len(self.params)))  # Adam: m then v
        for info, saved, buf in zip(infos, history, self.history):
            if tuple(np.shape(saved)) != tuple(buf.shape):
                raise SnapshotError(f"{state_path}: history of layer '{info.layer}' param {info.index} has shape "
                                    f"{tuple(np.shape(saved))}, expected {tuple(buf.shape)}")
            if not np.isfinite(saved).all():
                raise SnapshotError(f"{state_path}: history of layer '{info.layer}' param {info.index} "
                                    "holds NaN or Inf")
        sidecar = state_path + SIDECAR_SUFFIX
        extra = (read_sidecar(sidecar, len(self.net.data_layers()), self.param.average_loss)
                 if os.path.isfile(sidecar) else None)
        self.load_weights(model)                  # checks everything before it copies
        for saved, buf in zip(history, self.history):
            buf.copy_(torch.as_tensor(np.asarray(saved, dtype=np.float32)).to(buf.device))
        self.iter = state["iter"]
        self.current_step = state.get("current_step", 0)
        if extra is not None:
            self._apply_rng_state(extra)
        else:
            log.warning("%s: no sidecar %s; RNG and data order restart, so the resumed run will not "
                        "match an uninterrupted one bitwise", state_path, sidecar)
        self.restored_from = (state_path, model)
        log.info("Restored %s at iteration %d (weights %s)", state_path, self.iter, model)

    def _apply_rng_state(self, extra):
        torch.set_rng_state(extra["torch"])
        if extra["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(extra["cuda"])
        np.random.set_state(extra["numpy"])
        random.setstate(extra["python"])
        for src, sd in zip(self.net.data_layers(), extra["data_sources"]):
            src.load_state_dict(sd)
        self.losses = list(extra["losses"])
        self.smoothed_loss = extra["smoothed_loss"]

    def load_weights(self, path):
        """Copy layer weights by name from a .caffemodel into the net (shapes checked, NaN/Inf
        refused, in place); returns the sec.caffe.weights.WeightReport, also `weight_report`
        (layers that kept their filler values are logged as a warning)."""
        from sec.caffe.weights import copy_weights
        path = str(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file '{path}' not found")
        self.weight_report = copy_weights(path, {name: list(blobs) for name, _, blobs in self.net.layer_params()})
        return self.weight_report


class AdamSolver(SGDSolver):
    """Caffe's AdamSolver (`type: "Adam"`; pycaffe's caffe.AdamSolver): the SGD solver's clipping,
    iter_size normalisation and regularisation, then with t = iter + 1,
    `m = momentum * m + (1 - momentum) * diff`, `v = momentum2 * v + (1 - momentum2) * diff^2`,
    `w -= lr * lr_mult * sqrt(1 - momentum2^t) / (1 - momentum^t) * m / (sqrt(v) + delta)`.
    The solverstate's history holds every m, then every v (Caffe's order)."""

    def __init__(self, solver_prototxt, **kwargs):
        super().__init__(solver_prototxt, **kwargs)
        self.history = self.history + [torch.zeros_like(info.param) for info in self.params]

    def _check_param(self):
        p = self.param
        kind = p.type if p.HasField("type") else "SGD"
        if kind != "Adam":
            raise SolverConfigError(f"{self.source}: AdamSolver needs type \"Adam\", got '{kind}'")
        p.type = "SGD"      # the shared checks, then back
        try:
            super()._check_param()
        finally:
            p.type = "Adam"

    @torch.no_grad()
    def apply_update(self, display=False):
        """Caffe's AdamSolver::ComputeUpdateValue (bias-corrected step) after the shared steps."""
        rate, diffs = self._regularized_gradients(display)
        p = self.param
        t = self.iter + 1
        correction = math.sqrt(1.0 - p.momentum2 ** t) / (1.0 - p.momentum ** t)
        count = len(self.params)
        for info, diff, m, v in zip(self.params, diffs, self.history[:count], self.history[count:]):
            m.mul_(p.momentum).add_(diff, alpha=1.0 - p.momentum)
            v.mul_(p.momentum2).addcmul_(diff, diff, value=1.0 - p.momentum2)
            info.param.data.addcdiv_(m, v.sqrt().add_(p.delta), value=-rate * info.lr_mult * correction)


def make_solver(solver_prototxt, **kwargs):
    """SGDSolver or AdamSolver after the solver prototxt's `type` (pycaffe's caffe.get_solver)."""
    param = formats.read_solver_prototxt(str(solver_prototxt))
    kind = param.type if param.HasField("type") else "SGD"
    return (AdamSolver if kind == "Adam" else SGDSolver)(solver_prototxt, **kwargs)


def _distributed_rank():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def seed_everything(seed):
    """Seed torch, numpy and python RNGs (Caffe's random_seed; + rank under torch.distributed)."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    random.seed(seed)
