"""Copying weights into a net by layer name (.caffemodel, or Caffe's HDF5 layout), with a report.

Caffe's Net::CopyTrainedLayersFrom copies every source layer whose name the net has (blob counts
and shapes checked: a mismatch is an error) and logs "Ignoring source layer X" for each one it
lacks; a layer of the net that the file does not name silently keeps its filler values, and NaN or
Inf values load as they are. `copy_weights` does the same copy and returns a `WeightReport`, so that
callers can make the last two cases errors (`report.require_complete()`, as deploy, evaluation and
cue making do). NaN/Inf are refused before anything is copied unless `allow_nonfinite` (what
pycaffe's `Net(..., weights=)` and `net.copy_from` pass: they load, with a warning naming the layer).

HDF5 files (recognised by their signature, as Caffe's H5Fis_hdf5) are read in Net::ToHDF5's layout
by sec.caffe.hdf5.
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
    ignored: layers of the file that the net has no layer of that name for (file order);
    nonfinite: (layer, blob index, count) of loaded blobs holding NaN or Inf (allow_nonfinite)."""
    source: str
    loaded: list = field(default_factory=list)
    untouched: list = field(default_factory=list)
    ignored: list = field(default_factory=list)
    nonfinite: list = field(default_factory=list)

    def require_complete(self, allow=()):
        """The project's check that the net got usable weights: raise NonFiniteWeightsError when a
        loaded blob holds NaN or Inf, MissingWeightsError when a parameter layer not named in `allow`
        got no weights."""
        if self.nonfinite:
            name, index, bad = self.nonfinite[0]
            raise NonFiniteWeightsError(_nonfinite_message(self.source, name, index, bad) + "; refusing these weights")
        missing = [name for name in self.untouched if name not in set(allow)]
        if missing:
            names = ", ".join(f"'{name}'" for name in missing)
            raise MissingWeightsError(
                f"{self.source}: parameter layer(s) {names} of the net got no weights from this file "
                "(they would keep their filler values)")
        return self


def _nonfinite_message(source, name, index, bad):
    return f"{source}: layer '{name}' blob {index} holds {bad} non-finite (NaN or Inf) value(s)"


def nonfinite_blobs(name, arrays):
    """[(layer name, blob index, count of NaN/Inf values)] of the arrays that hold any (None skipped)."""
    found = []
    for index, array in enumerate(arrays):
        if array is not None:
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            if bad:
                found.append((name, index, bad))
    return found


def check_finite(source, name, arrays):
    """Raise NonFiniteWeightsError naming file, layer and blob when an array holds NaN or Inf."""
    for _, index, bad in nonfinite_blobs(name, arrays):
        raise NonFiniteWeightsError(_nonfinite_message(source, name, index, bad) + "; refusing to load these weights")


def copy_weights(path, targets, allow_nonfinite=False):
    """Copy a .caffemodel or an HDF5 weights file into `targets` ({layer name: [parameter tensors]}
    in net order; layers without parameters may be listed with []; a tensor listed again under a
    later layer is shared, owned by its first layer) in place; returns a WeightReport.

    Raises FileNotFoundError, CaffeFormatError, WeightShapeError (blob count or shape) or, unless
    `allow_nonfinite`, NonFiniteWeightsError, all before any tensor is changed. With
    `allow_nonfinite` NaN/Inf values load (as Caffe loads them) with a warning naming the layer.
    """
    from sec.caffe import hdf5
    path = str(path)
    if hdf5.is_hdf5(path):
        arrays, file_layers = hdf5.match_model(path, targets)
    else:
        netparam = formats.read_caffemodel(path)
        expected = {name: [tuple(t.shape) for t in tensors] for name, tensors in targets.items()}
        arrays = formats.match_weights(netparam, expected, path)
        file_layers = [layer.name for layer in netparam.layer]
    report = WeightReport(source=path)
    for name, values in arrays.items():
        if allow_nonfinite:
            report.nonfinite.extend(nonfinite_blobs(name, values))
        else:
            check_finite(path, name, values)
    report.ignored = [name for name in file_layers if name not in targets]
    for name, tensors in targets.items():
        if tensors:
            (report.loaded if name in arrays else report.untouched).append(name)
    with torch.no_grad():
        for name, values in arrays.items():
            for tensor, value in zip(targets[name], values):
                if value is not None:
                    # not np.ascontiguousarray: it turns a 0-d array (Scale num_axes: 0) into shape (1,)
                    tensor.copy_(torch.as_tensor(np.asarray(value, dtype=np.float32)).to(tensor.device))
    return log_report(report)


def log_report(report):
    """Log a copy as Caffe does ("Ignoring source layer X"), plus the non-finite blobs loaded and the
    layers that kept their filler values; returns the report."""
    for name in report.ignored:
        log.info("Ignoring source layer %s", name)
    log.info("Copied weights of %d layers from %s", len(report.loaded), report.source)
    for name, index, bad in report.nonfinite:
        log.warning("%s (loaded as Caffe loads it)", _nonfinite_message(report.source, name, index, bad))
    if report.untouched:
        log.warning("%s has no weights for parameter layer(s) %s: they keep their filler values",
                    report.source, ", ".join(report.untouched))
    return report
