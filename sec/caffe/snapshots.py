"""Snapshot files of the solver (sec.caffe.solver): names, the .rng sidecar, which .caffemodel a
.solverstate's weights are, and the probe that finds the first non-finite blob of a net.

`<prefix>_iter_<N>.caffemodel` + `.solverstate` are Caffe's; `.solverstate.rng` is a pickle (a
dict, SIDECAR_KEYS) of the torch/numpy/python RNG states, the data sources' `state_dict()`s and the
smoothed-loss window (`losses`, oldest first; format 1 kept Caffe's ring order).
"""
import logging
import os
import pickle

import numpy as np
import torch

log = logging.getLogger("sec.caffe.solver")

SIDECAR_SUFFIX = ".rng"
SIDECAR_FORMAT = 2          # 2: "losses" oldest first (1: Caffe's ring order)
SIDECAR_KEYS = ("format", "iter", "torch", "cuda", "numpy", "python", "data_sources", "losses",
                "smoothed_loss")


class SnapshotError(ValueError):
    """A snapshot file (.solverstate, its .caffemodel or .rng sidecar) that cannot be used."""


def snapshot_paths(prefix, iteration):
    """(caffemodel, solverstate, sidecar) paths of the snapshot at `iteration`, Caffe's naming."""
    stem = f"{prefix}_iter_{iteration}"
    state = stem + ".solverstate"
    return stem + ".caffemodel", state, state + SIDECAR_SUFFIX


def read_sidecar(path, num_sources, average_loss):
    """The .rng sidecar's dict (format 2; a format-1 window is put oldest first), checked against a
    net with `num_sources` ImageData layers; SnapshotError naming the file otherwise."""
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
                            f"the net has {num_sources} ImageData layers")
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
