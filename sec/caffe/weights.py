"""Copying a .caffemodel into a net by layer name, with a report of what was copied.

Caffe's Net::CopyTrainedLayersFrom copies every source layer whose name the net has (blob
counts and shapes checked) and logs "Ignoring source layer X" for each one it lacks; a layer
of the net that the file does not name silently keeps its filler values. Here the same copy
returns a `WeightReport` so that callers can make the last case an error
(`report.require_complete()`, as deploy and evaluation do), and NaN/Inf weights are refused
before anything is copied.
"""
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from sec.caffe import formats

log = logging.getLogger(__name__)


class NonFiniteWeightsError(formats.CaffeFormatError):
    """A weight file holds NaN or Inf values (the net was left unchanged)."""


class MissingWeightsError(ValueError):
    """A parameter layer of the net got no weights from the file."""


@dataclass
class WeightReport:
    """What one copy did. Lists of layer names:
    loaded: parameter layers of the net that got weights (net order);
    untouched: parameter layers of the net the file has no weights for (they keep filler values);
    ignored: layers of the file that the net has no layer of that name for (file order)."""
    source: str
    loaded: list = field(default_factory=list)
    untouched: list = field(default_factory=list)
    ignored: list = field(default_factory=list)

    def require_complete(self, allow=()):
        """Raise MissingWeightsError when a parameter layer not named in `allow` got no weights."""
        missing = [name for name in self.untouched if name not in set(allow)]
        if missing:
            names = ", ".join(f"'{name}'" for name in missing)
            raise MissingWeightsError(
                f"{self.source}: parameter layer(s) {names} of the net got no weights from this file "
                "(they would keep their filler values)")
        return self


def check_finite(source, name, arrays):
    """Raise NonFiniteWeightsError naming file, layer and blob when an array holds NaN or Inf."""
    for index, array in enumerate(arrays):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise NonFiniteWeightsError(
                f"{source}: layer '{name}' blob {index} holds {bad} non-finite (NaN or Inf) "
                f"value(s) of {array.size}; refusing to load these weights")


def copy_weights(path, targets):
    """Copy a .caffemodel into `targets` ({layer name: [parameter tensors]} in net order; layers
    without parameters may be listed with []) in place; returns a WeightReport.

    Raises FileNotFoundError, CaffeFormatError, WeightShapeError (blob count or shape) or
    NonFiniteWeightsError before any tensor is changed.
    """
    path = str(path)
    netparam = formats.read_caffemodel(path)
    expected = {name: [tuple(t.shape) for t in tensors] for name, tensors in targets.items()}
    arrays = formats.match_weights(netparam, expected, path)
    for name, values in arrays.items():
        check_finite(path, name, values)
    report = WeightReport(source=path)
    report.ignored = [layer.name for layer in netparam.layer if layer.name not in targets]
    for name, tensors in targets.items():
        if tensors:
            (report.loaded if name in arrays else report.untouched).append(name)
    with torch.no_grad():
        for name, values in arrays.items():
            for tensor, value in zip(targets[name], values):
                # not np.ascontiguousarray: it turns a 0-d array (Scale num_axes: 0) into shape (1,)
                tensor.copy_(torch.as_tensor(np.asarray(value, dtype=np.float32)).to(tensor.device))
    return log_report(report)


def log_report(report):
    """Log a copy as Caffe does ("Ignoring source layer X") plus what kept its filler values; returns it."""
    for name in report.ignored:
        log.info("Ignoring source layer %s", name)
    log.info("Copied weights of %d layers from %s", len(report.loaded), report.source)
    if report.untouched:
        log.warning("%s has no weights for parameter layer(s) %s: they keep their filler values",
                    report.source, ", ".join(report.untouched))
    return report
