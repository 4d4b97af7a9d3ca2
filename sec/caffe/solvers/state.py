"""Snapshot and restore of a solver (Caffe's Solver::Snapshot / Restore), in either of Caffe's
formats, with the .rng sidecar that makes a resumed run follow the uninterrupted one exactly.

Files are written atomically, sidecar and weights first and the solver state last, so an existing
solver state always has its partners. `restore` reads and checks all of them before it changes
anything, and takes the weights beside the solver state over the path stored in it (a copied run
folder resumes from its own weights).
"""
import logging
import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format

from sec.caffe import formats, snapshots
from sec.caffe.snapshots import SIDECAR_FORMAT, SIDECAR_SUFFIX, SnapshotError, read_sidecar, resolve_learned_net
from sec.caffe.solvers.divergence import NonFiniteLossError
from sec.proto import caffe_pb2

log = logging.getLogger("sec.caffe.solver")


def seed_everything(seed):
    """Seed torch, numpy and python RNGs (Caffe's random_seed; + rank under torch.distributed)."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    random.seed(seed)


class SnapshotMixin:
    """snapshot / restore / load_weights of sec.caffe.solvers.base.Solver."""

    @property
    def hdf5(self):
        """snapshot_format: HDF5 (Caffe's default is BINARYPROTO)."""
        return self.param.snapshot_format == caffe_pb2.SolverParameter.HDF5

    def snapshot(self):
        """Write the weights, the solver state and the .rng sidecar of this iteration (rank 0 only);
        returns the solver state's path. snapshot_diff stores the diffs (the last update) too."""
        if self.rank != 0:
            return None
        model, state, sidecar = self.snapshot_files(self.iter)
        for info in self.params:
            if not bool(torch.isfinite(info.param).all()):
                raise NonFiniteLossError(
                    f"iteration {self.iter}: the update made parameter {info.index} of layer '{info.layer}' "
                    f"non-finite; snapshot {state} not written (last good snapshot: "
                    f"{self.last_snapshot or 'none written yet'})")
        Path(model).parent.mkdir(parents=True, exist_ok=True)
        formats.atomic_write_bytes(sidecar, pickle.dumps(self._rng_state(), protocol=pickle.HIGHEST_PROTOCOL))
        arrays = {}

        def host(tensor):       # one host copy per blob object, so shared blobs stay recognisable
            if id(tensor) not in arrays:
                arrays[id(tensor)] = tensor.detach().cpu().numpy()
            return arrays[id(tensor)]

        with_diff = self.param.snapshot_diff
        layers = [(name, kind, [(host(t), _diff(t) if with_diff else None) for t in tensors])
                  for name, kind, tensors in self.net.layer_params()]
        kind = "HDF5 file" if self.hdf5 else "binary proto file"
        log.info("Snapshotting to %s %s", kind, model)
        snapshots.write_model(model, self.net_name, layers, self.hdf5, with_diff)
        log.info("Snapshotting solver state to %s %s", kind, state)
        snapshots.write_state(state, self.iter, model, self.current_step,
                              [h.cpu().numpy() for h in self.history], self.hdf5)
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
            "test_data_sources": [[src.state_dict() for src in net.data_layers()] for net in self.test_nets],
            "losses": list(self.losses),
            "smoothed_loss": self.smoothed_loss,
        }

    def restore(self, state_path):
        """Caffe's Solver::Restore from a .solverstate or .solverstate.h5 (+ the .rng sidecar).

        Everything is read and checked first (SnapshotError, CaffeFormatError, WeightShapeError
        or FileNotFoundError naming the file); only then are weights, history, iteration, RNG and
        data positions set, so a failed restore leaves the solver as it was. The weights come from
        the file beside the solver state when there is one, else from its learned_net;
        `restored_from` records (solverstate, caffemodel) used. A solverstate written by this
        engine before BatchNorm's blobs were solver blobs (their history left out) still loads:
        those histories start at zero.
        """
        state_path = str(state_path)
        state = snapshots.read_state(state_path)
        model = resolve_learned_net(state["learned_net"], state_path) if state["learned_net"] else None
        history = self._matched_history(state["history"], state_path)
        for buffer, saved, info in zip(self.history, history, self.params * len(self.history)):
            if tuple(np.shape(saved)) != tuple(buffer.shape):
                raise SnapshotError(f"{state_path}: history of layer '{info.layer}' param {info.index} has shape "
                                    f"{tuple(np.shape(saved))}, expected {tuple(buffer.shape)}")
            if not np.isfinite(saved).all():
                raise SnapshotError(f"{state_path}: history of layer '{info.layer}' param {info.index} "
                                    "holds NaN or Inf")
        sidecar = state_path + SIDECAR_SUFFIX
        extra = (read_sidecar(sidecar, len(self.net.data_layers()), self.param.average_loss)
                 if os.path.isfile(sidecar) else None)
        if model is not None:
            self.load_weights(model)              # checks everything before it copies
        for saved, buffer in zip(history, self.history):
            buffer.copy_(torch.as_tensor(np.asarray(saved, dtype=np.float32)).to(buffer.device))
        self.iter = state["iter"]
        self.current_step = state.get("current_step", 0)
        if extra is not None:
            self._apply_rng_state(extra)
        else:
            log.warning("%s: no sidecar %s; RNG and data order restart, so the resumed run will not "
                        "match an uninterrupted one bitwise", state_path, sidecar)
        self.restored_from = (state_path, model)
        log.info("Restored %s at iteration %d (weights %s)", state_path, self.iter, model)

    def _matched_history(self, history, state_path):
        """The saved history in this solver's order, checked for length (Caffe: "Incorrect length of
        history blobs"); an older sec.caffe state without the lr_mult-0 statistics is widened."""
        count, sets = len(self.params), len(self.history) // max(1, len(self.params))
        if len(history) == len(self.history):
            return history
        learnable = [i for i, info in enumerate(self.params) if info.param.requires_grad]
        if len(learnable) < count and len(history) == sets * len(learnable):
            log.warning("%s: %d history blobs, the solver keeps %d (BatchNorm's statistics included, as "
                        "Caffe); their history starts at zero", state_path, len(history), len(self.history))
            widened = [np.zeros(tuple(h.shape), np.float32) for h in self.history]
            for k in range(sets):
                for j, i in enumerate(learnable):
                    widened[k * count + i] = history[k * len(learnable) + j]
            return widened
        raise SnapshotError(f"{state_path}: {len(history)} history blobs, the {self.type} solver of this net "
                            f"keeps {len(self.history)} ({sets} per learnable blob, lr_mult 0 included); "
                            "Caffe: incorrect length of history blobs")

    def _apply_rng_state(self, extra):
        torch.set_rng_state(extra["torch"])
        if extra["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(extra["cuda"])
        np.random.set_state(extra["numpy"])
        random.setstate(extra["python"])
        for src, sd in zip(self.net.data_layers(), extra["data_sources"]):
            src.load_state_dict(sd)
        for net, states in zip(self.test_nets, extra.get("test_data_sources", [])):
            for src, sd in zip(net.data_layers(), states):
                src.load_state_dict(sd)
        self.losses = list(extra["losses"])
        self.smoothed_loss = extra["smoothed_loss"]

    def load_weights(self, path, test_nets=False):
        """Copy layer weights by name from a .caffemodel or .caffemodel.h5 into the train net (and
        the test nets), shapes checked, NaN/Inf refused, in place; returns the train net's
        sec.caffe.weights.WeightReport, also `weight_report` (layers that kept their filler values
        are logged as a warning)."""
        path = str(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file '{path}' not found")
        self.weight_report = snapshots.copy_model(path, _targets(self.net))
        for net in self.test_nets if test_nets else []:
            snapshots.copy_model(path, _targets(net))
        return self.weight_report

    def _write_derived_net(self, netparam):
        suffix = f"_rank{self.rank}" if self.world_size > 1 else ""
        path = Path(f"{self.param.snapshot_prefix}_train{suffix}.prototxt")
        path.parent.mkdir(parents=True, exist_ok=True)
        formats.atomic_write_bytes(str(path), text_format.MessageToString(netparam).encode())
        return str(path)


def _targets(net):
    return {name: list(blobs) for name, _, blobs in net.layer_params()}


def _diff(tensor):
    return tensor.grad.detach().cpu().numpy() if tensor.grad is not None else np.zeros(tuple(tensor.shape), np.float32)
