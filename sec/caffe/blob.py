"""pycaffe's Blob: an N-D float32 array `data` and its gradient `diff`, as numpy arrays.

Three kinds share the interface (`data`, `diff`, `shape`, `count`, `num`, `channels`,
`height`, `width`, `reshape(*shape)`):

* `Blob`: plain numpy storage; what Python layers receive as bottom/top.
* `NetBlob`: a named blob of a Net. After a forward it holds the torch tensor and turns it into
  numpy only when `data` is read; writes into `data` are what the next forward reads.
* `ParamBlob`: a view of a torch.nn.Parameter. On CPU `data`/`diff` share memory with the
  parameter and its `.grad`; on CUDA they are host copies (one per parameter until written back)
  that the net writes back before its next forward, backward, save or solver update if they were
  changed (`write_back`); a diff written before the gradient was cleared (a solver step starts
  so, as Caffe's ClearParamDiffs) is dropped, as Caffe's clearing would zero it.

`BlobVec` is pycaffe's list of a layer's parameter blobs, with `add_blob(*shape)`.
"""
import numpy as np
import torch

FLOAT = np.float32


def _shape_of(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise ValueError(f"blob dimensions must be >= 0, got {dims}")
    return dims


class _BlobShape:
    """Caffe's shape accessors, from `self.shape`."""

    @property
    def count(self):
        return int(np.prod(self.shape, dtype=np.int64))

    def _axis(self, i):
        shape = self.shape
        return shape[i] if len(shape) > i else 1

    @property
    def num(self):
        return self._axis(0)

    @property
    def channels(self):
        return self._axis(1)

    @property
    def height(self):
        return self._axis(2)

    @property
    def width(self):
        return self._axis(3)


class Blob(_BlobShape):
    """numpy data/diff of one shape; reshape reallocates (zeros) when the shape changes."""

    def __init__(self, *shape):
        dims = _shape_of(shape)
        self.data = np.zeros(dims, FLOAT)
        self.diff = np.zeros(dims, FLOAT)

    @property
    def shape(self):
        return self.data.shape

    def reshape(self, *shape):
        dims = _shape_of(shape)
        if dims != self.data.shape:
            self.data = np.zeros(dims, FLOAT)
            self.diff = np.zeros(dims, FLOAT)


def tensor_to_numpy(tensor):
    """float32 numpy of a tensor; shares memory when it already is a CPU float32 tensor."""
    return tensor.detach().to("cpu", torch.float32).numpy()


class NetBlob(_BlobShape):
    """A named blob of a Net: numpy on demand over the tensor of the last forward."""

    def __init__(self, name, shape):
        self.name = name
        self._shape = _shape_of(shape)
        self._tensor = None
        self._data = None
        self._diff_tensor = None
        self._diff = None

    @property
    def shape(self):
        if self._data is not None:
            return self._data.shape
        if self._tensor is not None:
            return tuple(self._tensor.shape)
        return self._shape

    @property
    def data(self):
        if self._data is None:
            if self._tensor is not None:
                self._data = tensor_to_numpy(self._tensor)
            else:
                self._data = np.zeros(self._shape, FLOAT)
        return self._data

    @data.setter
    def data(self, value):
        self.data[...] = value

    @property
    def diff(self):
        if self._diff is None:
            if self._diff_tensor is not None:
                self._diff = tensor_to_numpy(self._diff_tensor)
            else:
                self._diff = np.zeros(self.shape, FLOAT)
        return self._diff

    @diff.setter
    def diff(self, value):
        self.diff[...] = value

    def reshape(self, *shape):
        """New shape, zero data and diff (as Caffe after a shape change)."""
        self._shape = _shape_of(shape)
        self._tensor = self._data = self._diff_tensor = self._diff = None

    def set_tensor(self, tensor):
        """The tensor a forward produced; `data` will read it (the diff keeps its shape in sync)."""
        self._tensor = tensor
        self._data = None
        self._shape = tuple(tensor.shape)
        if self._diff is not None and self._diff.shape != self._shape:
            self._diff = None
        if self._diff_tensor is not None and tuple(self._diff_tensor.shape) != self._shape:
            self._diff_tensor = None

    def release(self):
        """Drop the tensor of the last forward (the next forward replaces it anyway), so its
        memory is free while the next forward runs; numpy data written by the user stays."""
        if self._data is None:
            self._tensor = None

    def set_diff_tensor(self, tensor):
        self._diff_tensor = tensor
        self._diff = None

    def tensor(self, device):
        """The blob's current content as a tensor on `device` (numpy writes included)."""
        if self._data is not None:
            return torch.from_numpy(self._data).to(device)
        if self._tensor is not None:
            return self._tensor.to(device)
        return torch.zeros(self._shape, dtype=torch.float32, device=device)

    def diff_tensor(self, device):
        if self._diff is not None:
            return torch.from_numpy(self._diff).to(device)
        if self._diff_tensor is not None:
            return self._diff_tensor.to(device)
        return None


class ParamBlob(_BlobShape):
    """Blob view of a Parameter; `pending` is the net's dict of CUDA copies to write back."""

    def __init__(self, param, pending):
        self.param = param
        self._pending = pending

    @property
    def shape(self):
        return tuple(self.param.shape)

    @property
    def data(self):
        if self.param.device.type == "cpu":
            return self.param.detach().numpy()
        return self._copy(self.param.detach(), "data")

    @data.setter
    def data(self, value):
        self.data[...] = value

    @property
    def diff(self):
        if self.param.grad is None:
            self.param.grad = torch.zeros_like(self.param)
        if self.param.device.type == "cpu":
            return self.param.grad.numpy()
        return self._copy(self.param.grad, "diff")

    @diff.setter
    def diff(self, value):
        self.diff[...] = value

    def _copy(self, tensor, which):
        key = (id(self.param), which)
        if key in self._pending:     # one host copy per parameter until it is written back
            return self._pending[key][2]
        array = tensor_to_numpy(tensor)
        self._pending[key] = (self.param, which, array, array.copy())
        return array

    def flush(self):
        """Write this parameter's changed host copies (CUDA) back now."""
        for which in ("data", "diff"):
            entry = self._pending.pop((id(self.param), which), None)
            if entry is not None:
                _write_entry(*entry)

    def reshape(self, *shape):
        if _shape_of(shape) != self.shape:
            raise ValueError(f"parameter blobs cannot change shape ({self.shape} -> {_shape_of(shape)})")


class BlobVec(list):
    """pycaffe's BlobVec: a layer's parameter blobs (`net.params[name]`, `layer.blobs`).

    `add_blob(*shape)` appends a zero-filled blob; in a Python layer's setup the engine makes it a
    learnable parameter of the net (`make_blob(index, shape)` given by the engine), elsewhere it is a
    plain numpy `Blob`."""

    def __init__(self, blobs=(), make_blob=None):
        super().__init__(blobs)
        self.make_blob = make_blob

    def add_blob(self, *shape):
        dims = _shape_of(shape)
        self.append(self.make_blob(len(self), dims) if self.make_blob is not None else Blob(*dims))

    def flush(self):
        """Write changed CUDA host copies of these blobs back (a Python layer's, after its code ran)."""
        for blob in self:
            if isinstance(blob, ParamBlob):
                blob.flush()


def _write_entry(param, which, array, original):
    if np.array_equal(array, original):
        return
    target = param.data if which == "data" else param.grad
    if target is None:
        # The gradient was cleared since the copy was taken (a solver step starts so): the written
        # diff is superseded, as Caffe's ClearParamDiffs at the start of a step zeroes it.
        return
    target.copy_(torch.from_numpy(array))


def write_back(pending):
    """Copy changed CUDA param copies (from ParamBlob.data/diff) into the parameters."""
    for entry in pending.values():
        _write_entry(*entry)
    pending.clear()
