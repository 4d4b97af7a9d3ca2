"""pycaffe's batch helpers of Net (forward_all, forward_backward_all, _batch) and the MemoryData entry
point set_input_arrays, as a mixin of sec.caffe.Net (see net_pycaffe.py for the rest).

Arrays are numpy, N items along the first axis; the net's batch size is its first blob's first axis.
"""
import numpy as np


class BatchedNet:
    """Batching over the net's forward/backward (a mixin: needs forward, backward, blobs, inputs,
    outputs and the layer steps of sec.caffe.Net)."""

    def _batch(self, blobs):
        """Split {name: array of N items} into the net's batch size (the first blob's first axis);
        the last batch is padded with zeros."""
        num = len(next(iter(blobs.values())))
        batch_size = next(iter(self.blobs.values())).shape[0]
        for start in range(0, num - num % batch_size, batch_size):
            yield {name: value[start:start + batch_size] for name, value in blobs.items()}
        remainder = num % batch_size
        if remainder:
            yield {name: np.concatenate([value[-remainder:],
                                         np.zeros((batch_size - remainder,) + value.shape[1:])])
                   for name, value in blobs.items()}

    def forward_all(self, blobs=None, **kwargs):
        """forward over inputs of any length in batches; {output: array of all items} (padding cut)."""
        if not kwargs:
            raise TypeError("forward_all needs the input arrays as keyword arguments")
        outs = {name: [] for name in dict.fromkeys(self.outputs + list(blobs or []))}
        for batch in self._batch(kwargs):
            for name, value in self.forward(blobs=blobs, **batch).items():
                outs[name].extend(value.copy())
        return _stack_and_cut(outs, len(next(iter(kwargs.values()))))

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs):
        """forward + backward in batches: kwargs hold inputs (for forward) and/or output diffs (for
        backward); returns ({output: array}, {input: diff array}), padding cut. (pycaffe packs only as
        many of each as the shorter dict holds into arrays; here every entry is an array.)"""
        if not kwargs:
            raise TypeError("forward_backward_all needs input or output arrays as keyword arguments")
        outs = {name: [] for name in dict.fromkeys(self.outputs + list(blobs or []))}
        grads = {name: [] for name in dict.fromkeys(self.inputs + list(diffs or []))}
        forward_batches = list(self._batch({n: kwargs[n] for n in self.inputs if n in kwargs})) \
            if any(n in kwargs for n in self.inputs) else []
        backward_batches = list(self._batch({n: kwargs[n] for n in self.outputs if n in kwargs})) \
            if any(n in kwargs for n in self.outputs) else []
        for index in range(max(len(forward_batches), len(backward_batches))):
            fb = forward_batches[index] if index < len(forward_batches) else {}
            bb = backward_batches[index] if index < len(backward_batches) else {}
            for name, value in self.forward(blobs=blobs, **fb).items():
                outs[name].extend(value.copy())
            for name, value in self.backward(diffs=diffs, **bb).items():
                grads[name].extend(value.copy())
        count = len(next(iter(kwargs.values())))
        return _stack_and_cut(outs, count), _stack_and_cut(grads, count)

    def set_input_arrays(self, data, labels):
        """MemoryData input (the net's first layer must be MemoryData): float32 C-contiguous
        N x C x H x W data and N labels (or N x 1 x 1 x 1), N a multiple of the batch size."""
        if labels.ndim == 1:
            labels = np.ascontiguousarray(labels[:, np.newaxis, np.newaxis, np.newaxis])
        return self._set_input_arrays(data, labels)

    def _set_input_arrays(self, data, labels):
        step = self._layers[0] if self._layers else None
        if step is None or step.type != "MemoryData":
            raise RuntimeError("set_input_arrays may only be called if the first layer is a MemoryDataLayer")
        p = step.lp.memory_data_param
        _check_memory_array(data, "data array", p.channels, p.height, p.width)
        _check_memory_array(labels, "labels array", 1, 1, 1)
        if data.shape[0] != labels.shape[0]:
            raise RuntimeError("data and labels must have the same first dimension")
        if p.batch_size and data.shape[0] % p.batch_size:
            raise RuntimeError("first dimensions of input arrays must be a multiple of batch size")
        step.impl.reset(data, labels)


def _stack_and_cut(lists, count):
    """{name: list of items} -> {name: array of the first `count` items} (the padding cut)."""
    return {name: np.asarray(items)[:count] for name, items in lists.items()}


def _check_memory_array(array, name, channels, height, width):
    """pycaffe's CheckContiguousArray for set_input_arrays."""
    if not isinstance(array, np.ndarray) or not array.flags["C_CONTIGUOUS"]:
        raise RuntimeError(f"{name} must be C contiguous")
    if array.ndim != 4:
        raise RuntimeError(f"{name} must be 4-d")
    if array.dtype != np.float32:
        raise RuntimeError(f"{name} must be float32")
    for axis, (want, what) in enumerate(((channels, "channels"), (height, "height"), (width, "width")), start=1):
        if array.shape[axis] != want:
            raise RuntimeError(f"{name} has wrong {'number of channels' if what == 'channels' else what}")
