"""Divergence, the engine's addition to Caffe's solver: a non-finite loss, or a forward/backward
that fails while some blob of the net is non-finite (a Python layer such as the CRF refusing NaN
scores), raises NonFiniteLossError before the update, naming the iteration, the blob or parameter,
and the last snapshot that still holds good weights."""
import math

import torch

from sec.caffe.snapshots import first_nonfinite_blob


class NonFiniteLossError(RuntimeError):
    """Training diverged: a loss or another blob became NaN or Inf (or the update made the weights
    non-finite); the weights were not updated and nothing was snapshotted."""


def check_finite(solver, values):
    """NonFiniteLossError when one of the iteration's loss values ({name: float}) is NaN or Inf."""
    for name, value in values.items():
        if not math.isfinite(value):
            blob = "total loss" if name == "__total__" else f"loss blob '{name}'"
            raise NonFiniteLossError(f"iteration {solver.iter}: {blob} is {value}; {kept(solver)}")


def kept(solver):
    """The end of a divergence message: what was kept, and whether it holds these weights."""
    text = f"stopped before the update (weights are those of iteration {solver.iter}; "
    last = solver.last_snapshot
    if last and last == solver.snapshot_files(solver.iter)[1]:
        return text + f"the last snapshot, {last}, holds these weights: resume from an earlier one or lower base_lr)"
    return text + f"last good snapshot: {last or 'none written yet'})"


def raise_if_diverged(solver, err):
    """After a failed forward/backward: raise NonFiniteLossError (from err) naming the first
    non-finite parameter, or else the first non-finite blob of a probing forward, layer by layer;
    return (the caller re-raises err) when everything is finite."""
    for info in solver.params:
        if not bool(torch.isfinite(info.param).all()):
            raise NonFiniteLossError(
                f"iteration {solver.iter}: parameter {info.index} of layer '{info.layer}' is non-finite "
                f"({type(err).__name__}: {err}); {kept(solver)}") from err
    found = first_nonfinite_blob(solver.net)
    if found is not None:
        blob, layer, failure = found
        first = f"{type(err).__name__}: {err}"
        then = f"layer '{failure[0]}' then failed: {failure[1]}" if failure else f"then: {first}"
        if failure and failure[1] != first:
            then += f" (first failure: {first})"
        raise NonFiniteLossError(
            f"iteration {solver.iter}: blob '{blob}' (top of layer '{layer}') is non-finite; {then}; "
            f"{kept(solver)}") from err
