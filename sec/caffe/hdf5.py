"""Caffe's HDF5 files of weights and solver states: pycaffe's `net.save_hdf5` / `load_hdf5`, any
HDF5 file `Net(..., weights=)` / `copy_from` is given, and the solver's `snapshot_format: HDF5`
(`<prefix>_iter_<N>.caffemodel.h5` and `.solverstate.h5`), in the layouts of Caffe's Net::ToHDF5 /
CopyTrainedLayersFromHDF5 and SGDSolver::SnapshotSolverStateToHDF5 / RestoreSolverStateFromHDF5
(src/caffe/util/hdf5.cpp). Copying weights into a net, with its report, is sec.caffe.weights'.

Weights: group `data`, one subgroup per layer of the net (layers without blobs included, empty),
holding float32 datasets `0`, `1`, ... in the blob's own shape; a blob shared with an earlier
layer is written only at its owner. With snapshot_diff a group `diff` holds every blob's diff.
Solver state: int32 datasets `iter` and `current_step` of shape (1,), the fixed-length,
NUL-terminated string `learned_net`, and group `history` with datasets `0` ... `N-1`.

Files are built in memory and written atomically (sec.caffe.formats.atomic_write_bytes).
Reading errors name the file and the dataset; nothing is copied before everything is checked.
"""
import io

import numpy as np
import torch

from sec.caffe import formats

HDF5_SUFFIX = ".h5"


def _h5py():
    """h5py, imported when an HDF5 file is written or read: the BINARYPROTO snapshots every SEC run
    writes need it not, and a machine without it (the GPU machine) still trains."""
    try:
        import h5py
    except ImportError as err:
        raise ImportError(f"HDF5 snapshots (snapshot_format: HDF5, *.h5) need h5py: pip install h5py ({err})") from err
    return h5py


def is_hdf5(path):
    """Caffe's H5Fis_hdf5: the file starts with HDF5's signature."""
    try:
        with open(path, "rb") as handle:
            return handle.read(len(formats.HDF5_MAGIC)) == formats.HDF5_MAGIC
    except OSError:
        return False


def write_model(path, layers, with_diff=False):
    """Write a .caffemodel.h5. `layers`: [(layer name, [(data, diff)])] in net order, data and diff
    float32 arrays or tensors (diff used only `with_diff`); a data object met again at a later layer
    is a shared blob (Caffe writes its data only at its first layer, its diff everywhere)."""
    h5py = _h5py()
    buffer = io.BytesIO()
    seen = set()
    with h5py.File(buffer, "w") as handle:
        data = handle.create_group("data")
        diff = handle.create_group("diff") if with_diff else None
        for name, blobs in layers:
            data_group = data.create_group(name)
            diff_group = diff.create_group(name) if with_diff else None
            for index, (value, gradient) in enumerate(blobs):
                if id(value) not in seen:
                    data_group.create_dataset(str(index), data=_float32(value))
                if with_diff:
                    diff_group.create_dataset(str(index), data=_float32(gradient))
            seen.update(id(value) for value, _ in blobs)
    formats.atomic_write_bytes(str(path), buffer.getvalue())


def _float32(value):
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float32).numpy()
    return np.asarray(value, dtype=np.float32)


def write_state(path, iteration, learned_net, current_step, history):
    """Write a .solverstate.h5 (history: float32 arrays in the solver's order)."""
    h5py = _h5py()
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        handle.create_dataset("iter", data=np.array([iteration], dtype=np.int32))
        _write_c_string(handle, "learned_net", str(learned_net))
        handle.create_dataset("current_step", data=np.array([current_step], dtype=np.int32))
        group = handle.create_group("history")
        for index, value in enumerate(history):
            group.create_dataset(str(index), data=np.asarray(value, dtype=np.float32))
    formats.atomic_write_bytes(path, buffer.getvalue())


def _write_c_string(handle, name, text):
    """H5LTmake_dataset_string: a scalar fixed-length string of len + 1 bytes, NUL-terminated."""
    h5py = _h5py()
    raw = text.encode()
    kind = h5py.h5t.C_S1.copy()
    kind.set_size(len(raw) + 1)
    kind.set_strpad(h5py.h5t.STR_NULLTERM)
    dataset = h5py.h5d.create(handle.id, name.encode(), kind, h5py.h5s.create(h5py.h5s.SCALAR))
    dataset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(raw + b"\0", dtype=f"S{len(raw) + 1}"), mtype=kind)


def read_state(path):
    """dict(iter, learned_net, history=[float32 arrays], current_step) of a .solverstate.h5
    (learned_net '' when the file has none, as Caffe then loads no weights)."""
    h5py = _h5py()
    with _open(path) as handle:
        iteration = _read_int(handle, "iter", path)
        learned_net = ""
        if "learned_net" in handle:
            raw = handle["learned_net"][()]
            learned_net = (raw if isinstance(raw, bytes) else bytes(raw)).split(b"\0")[0].decode()
        current_step = _read_int(handle, "current_step", path)
        if not isinstance(handle.get("history"), h5py.Group):
            raise formats.CaffeFormatError(f"{path}: no group 'history'")
        group = handle["history"]
        history = [_read_array(group, str(index), path, "history/") for index in range(len(group))]
    return dict(iter=iteration, learned_net=learned_net, history=history, current_step=current_step)


def read_model(path):
    """[(layer name, {blob index: float32 array})] of a .caffemodel.h5's `data` group, in the
    file's (name) order, as Caffe's CopyTrainedLayersFromHDF5 visits them."""
    h5py = _h5py()
    with _open(path) as handle:
        if not isinstance(handle.get("data"), h5py.Group):
            raise formats.CaffeFormatError(f"{path}: not a Caffe HDF5 model (no group 'data')")
        layers = []
        for name, group in handle["data"].items():
            if not isinstance(group, h5py.Group):
                raise formats.CaffeFormatError(f"{path}: data/{name} is not a layer group")
            prefix = f"data/{name}/"
            layers.append((name, {int(key): _read_array(group, key, path, prefix) for key in group
                                  if _blob_key(key, path, prefix)}))
    return layers


def _blob_key(key, path, prefix):
    if not key.isdigit():
        raise formats.CaffeFormatError(f"{path}: {prefix}{key} is not a blob index")
    return True


def _open(path):
    h5py = _h5py()
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise FileNotFoundError(f"HDF5 snapshot not found: {path}") from None
    except OSError as err:
        raise formats.CaffeFormatError(f"{path}: not a readable HDF5 file ({err})") from None


def _read_int(handle, name, path):
    if name not in handle:
        raise formats.CaffeFormatError(f"{path}: no dataset '{name}'")
    value = np.asarray(handle[name][()])
    if value.dtype.kind not in "iu" or value.size != 1:
        raise formats.CaffeFormatError(f"{path}: '{name}' is not one integer ({value.dtype}, shape {value.shape})")
    return int(value.reshape(-1)[0])


def _read_array(group, name, path, prefix=""):
    """A float32 array of a float or integer dataset (Caffe's hdf5_load_nd_dataset accepts both)."""
    h5py = _h5py()
    dataset = group.get(name)
    if not isinstance(dataset, h5py.Dataset):
        raise formats.CaffeFormatError(f"{path}: no dataset {prefix}{name}")
    if dataset.dtype.kind not in "fiu":
        raise formats.CaffeFormatError(f"{path}: dataset {prefix}{name} holds {dataset.dtype}, not numbers")
    return np.asarray(dataset[()], dtype=np.float32)


def match_model(path, targets):
    """({layer: [float32 array, or None for a blob shared with an earlier layer, stored there]},
    [layers of the file]) of a .caffemodel.h5 against `targets` ({layer name: [parameter tensors]}
    in net order; a tensor listed again under a later layer is shared, owned by the first), checked
    as Caffe's CopyTrainedLayersFromHDF5 checks it: a layer of the file with more blobs than the
    net's, a missing blob that is not shared, or a shape that differs raise WeightShapeError."""
    owners = {}
    for name, tensors in targets.items():
        for tensor in tensors:
            owners.setdefault(id(tensor), name)
    arrays, file_layers = {}, []
    for name, blobs in read_model(path):
        file_layers.append(name)
        if name not in targets:
            continue
        tensors = targets[name]
        if len(blobs) > len(tensors) or any(index >= len(tensors) for index in blobs):
            raise formats.WeightShapeError(f"{path}: layer '{name}' stores {len(blobs)} blobs, the net has "
                                           f"{len(tensors)} (Caffe: incompatible number of blobs)")
        values = []
        for index, tensor in enumerate(tensors):
            if index not in blobs:
                if owners[id(tensor)] == name:
                    raise formats.WeightShapeError(f"{path}: layer '{name}' has no blob {index} (data/{name}/"
                                                   f"{index}), and the net's blob is not shared")
                values.append(None)
                continue
            if tuple(blobs[index].shape) != tuple(tensor.shape):
                raise formats.WeightShapeError(f"{path}: layer '{name}' blob {index}: expected shape "
                                               f"{tuple(tensor.shape)}, found {tuple(blobs[index].shape)}")
            values.append(blobs[index])
        arrays[name] = values
    return arrays, file_layers
