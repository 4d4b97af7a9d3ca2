"""Snapshot files of the solver (sec.caffe.solver): names, both of Caffe's formats, the .rng
sidecar, which .caffemodel a .solverstate's weights are, and the probe that finds the first
non-finite blob of a net.

`<prefix>_iter_<N>.caffemodel` + `.solverstate` (BINARYPROTO) or `.caffemodel.h5` +
`.solverstate.h5` (HDF5, sec.caffe.hdf5) are Caffe's; `<solverstate>.rng` is a pickle (a
dict, SIDECAR_KEYS) of the torch/numpy/python RNG states, the data sources' `state_dict()`s (train
net; `test_data_sources` for the test nets) and the smoothed-loss window (`losses`, oldest first;
format 1 kept Caffe's ring order).
"""
import logging
import os
import pickle

import numpy as np
import torch

from sec.caffe import formats
from sec.caffe import hdf5 as hdf5_io
from sec.proto import caffe_pb2

log = logging.getLogger("sec.caffe.solver")

SIDECAR_SUFFIX = ".rng"
SIDECAR_FORMAT = 2          # 2: "losses" oldest first (1: Caffe's ring order)
SIDECAR_KEYS = ("format", "iter", "torch", "cuda", "numpy", "python", "data_sources", "losses",
                "smoothed_loss")   # and, optional: "test_data_sources"


class SnapshotError(ValueError):
    """A snapshot file (.solverstate, its .caffemodel or .rng sidecar) that cannot be used."""


def snapshot_paths(prefix, iteration, hdf5=False):
    """(caffemodel, solverstate, sidecar) paths of the snapshot at `iteration`, Caffe's naming
    (`hdf5`: Caffe's .caffemodel.h5 / .solverstate.h5)."""
    stem = f"{prefix}_iter_{iteration}"
    suffix = hdf5_io.HDF5_SUFFIX if hdf5 else ""
    state = stem + ".solverstate" + suffix
    return stem + ".caffemodel" + suffix, state, state + SIDECAR_SUFFIX


def write_model(path, net_name, layers, hdf5=False, with_diff=False):
    """Write the weights of a snapshot (Caffe's SnapshotToBinaryProto / SnapshotToHDF5).
    layers: [(layer name, layer type, [(data, diff)])], float32 arrays in net order; a blob
    object met twice is a shared one (HDF5 stores its data at the first layer only, as Caffe)."""
    if hdf5:
        hdf5_io.write_model(path, [(name, blobs) for name, _, blobs in layers], with_diff)
        return
    net = caffe_pb2.NetParameter(name=net_name)
    for name, kind, blobs in layers:
        layer = net.layer.add(name=name, type=kind)
        for data, diff in blobs:
            blob = layer.blobs.add()
            blob.CopyFrom(formats.array_to_blob(data))
            if with_diff:
                blob.diff.extend(np.asarray(diff, dtype=np.float32).ravel().tolist())
    formats.atomic_write_bytes(path, net.SerializeToString())


def write_state(path, iteration, learned_net, current_step, history, hdf5=False):
    """Write a .solverstate (or .solverstate.h5): Caffe's SolverState."""
    if hdf5:
        hdf5_io.write_state(path, iteration, learned_net, current_step, history)
    else:
        formats.write_solverstate(path, iteration, learned_net, history, current_step)


def read_state(path):
    """dict(iter, learned_net, history, current_step) of a solver state; HDF5 when the name ends
    in .h5 (Caffe's Solver::Restore decides by the name, not the content)."""
    path = str(path)
    return hdf5_io.read_state(path) if path.endswith(hdf5_io.HDF5_SUFFIX) else formats.read_solverstate(path)


def copy_model(path, targets):
    """Copy weights by layer name into `targets` ({layer: [tensors]}) from a .caffemodel or an HDF5
    one (Caffe's CopyTrainedLayersFrom tells them apart by content); returns the WeightReport."""
    from sec.caffe.weights import copy_weights
    return copy_weights(path, targets)


def read_sidecar(path, num_sources, average_loss):
    """The .rng sidecar's dict (format 2; a format-1 window is put oldest first), checked against a
    net with `num_sources` data layers (Net.data_layers(): every layer that makes its own batches,
    Data, ImageData, HDF5Data, WindowData, MemoryData); SnapshotError naming the file otherwise."""
    try:
        with open(path, "rb") as f:
            extra = pickle.load(f)
    except Exception as err:  # unpickling a damaged file can raise almost any exception type
        raise SnapshotError(f"{path}: unreadable solver sidecar ({type(err).__name__}: {err}); delete it "
                            "to resume without the exact RNG and data order") from None
    if not isinstance(extra, dict) or extra.get("format") not in (1, SIDECAR_FORMAT):
        found = extra.get("format") if isinstance(extra, dict) else type(extra).__name__
        raise SnapshotError(f"{path}: solver sidecar format {found!r}, expected {SIDECAR_FORMAT}")
    missing = [key for key in SIDECAR_KEYS if key not in extra]
    if missing:
        raise SnapshotError(f"{path}: solver sidecar lacks {missing}")
    if num_sources != len(extra["data_sources"]):
        raise SnapshotError(f"{path}: {len(extra['data_sources'])} data source states, "
                            f"the net has {num_sources} data layers (layers that make their own batches)")
    if extra["format"] == 1:    # ring order, next slot (iter - start) % window; the start was 0
        losses = list(extra["losses"])
        slot = extra["iter"] % len(losses) if len(losses) >= max(1, average_loss) else 0
        extra["losses"] = losses[slot:] + losses[:slot]
    return extra


def resolve_learned_net(learned_net, state_path):
    """The weights of a .solverstate: the file of learned_net's name beside it (what a copied or
    moved run folder holds), else learned_net as stored (Caffe: relative to the current folder)."""
    beside = os.path.join(os.path.dirname(state_path), os.path.basename(learned_net))
    if os.path.isfile(beside):
        return beside
    if learned_net and os.path.isfile(learned_net):
        log.warning("%s: no %s beside it; using its learned_net %s", state_path, beside, learned_net)
        return learned_net
    raise FileNotFoundError(f"{state_path}: its weights {beside} are missing (learned_net '{learned_net}' "
                            "not found either)")


def first_nonfinite_blob(net):
    """Probe a failed forward: run the net's layers one at a time (pycaffe's forward(start, end),
    no autograd) and return (blob, layer, failure) for the first top holding NaN or Inf, where
    failure is (layer, 'Type: message') of a later layer that raised, or None. None when every
    blob stays finite, or when the net has no pycaffe side (a stand-in net)."""
    names = getattr(net, "layer_names", None)
    if names is None or not hasattr(net, "forward") or not hasattr(net, "top_names"):
        return None
    found = None
    with torch.no_grad():
        for name in names:
            try:
                net.forward(start=name, end=name)
            except Exception as err:  # the layer that fails on the non-finite blob found before it
                return (*found, (name, f"{type(err).__name__}: {err}")) if found else None
            if found is None:
                for top in net.top_names[name]:
                    if not np.isfinite(net.blobs[top].data).all():
                        found = (top, name)
                        break
    return (*found, None) if found else None
