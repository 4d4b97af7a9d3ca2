"""Counting what a piece of torch code costs a GPU, on any device: host-synchronising operations
and kernel-launching operations, per named part.

On CUDA the host waits for the device at every operation whose result the host must read: a
value (`.item()`, `float(t)`, `bool(t)`), a data-dependent size (`nonzero`, `unique`, boolean
indexing, `bincount`), a copy to host memory (`.cpu()`, `.tolist()`, `.numpy()`). Each such wait
stops the CPU from running ahead of the GPU. Every other operation that computes launches at
least one kernel, whose host-side cost (a few microseconds) bounds small workloads.

`OpCounter` is a TorchDispatchMode that sees every ATen operation (so it works on CPU, where the
code under test takes the same path as on CUDA) and classifies it:

* sync: one of `SYNC_OPS`, indexing with a boolean mask, a copy from a non-CPU device to the
  CPU, the Python-level host reads `Tensor.tolist`/`numpy`/`__array__` (which on CPU dispatch
  no operation at all, so they are hooked while counting) and the explicit waits
  `torch.cuda.synchronize`, `Event.synchronize`, `Stream.synchronize`;
* launch: any other operation that is not a view (`OpOverload.is_view`) or in `NO_KERNEL_OPS`
  (allocation and metadata only).

Counts are approximate in one direction only: an operation may launch more than one kernel
(counted once). Code that branches on ``device.type == "cuda"`` is counted as the CPU branch.

    counter = OpCounter()
    with counter:
        with counter.part("crf"):
            crf_log_probs(scores, images)
    counter.syncs["crf"], counter.launches["crf"], counter.sync_ops["crf"]
"""
import contextlib
from collections import Counter, defaultdict

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = frozenset({
    "_local_scalar_dense", "nonzero", "argwhere", "_unique2", "_unique", "unique_dim", "unique_consecutive",
    "bincount", "masked_select", "is_nonzero", "equal",
})
"""Operations (ATen names) whose output size or value the host needs before it can go on."""

NO_KERNEL_OPS = frozenset({
    "empty", "empty_strided", "empty_like", "detach", "alias", "lift_fresh", "set_", "resize_",
    "_sparse_csr_tensor_unsafe", "sparse_compressed_tensor", "sym_size", "sym_stride", "sym_numel",
    "sym_storage_offset", "is_same_size",
})
"""Operations (ATen names) that allocate or describe memory without running a kernel."""

BOOL_INDEXING = frozenset({"index", "index_put_", "index_put"})
"""Indexing operations that find a boolean mask's true entries first (a nonzero inside)."""

HOST_READS = ("tolist", "numpy", "__array__")
"""Tensor methods that read device memory on the host; hooked while a counter is active."""
HOST_WAITS = ((torch.cuda, "synchronize"), (torch.cuda.Event, "synchronize"), (torch.cuda.Stream, "synchronize"))
"""Explicit waits for the GPU (called on CUDA only); hooked while a counter is active."""


def _is_bool_index(args):
    indices = args[1] if len(args) > 1 else ()
    return any(torch.is_tensor(i) and i.dtype == torch.bool for i in indices or ())


def _device_to_host(name, args, kwargs):
    """A blocking copy whose source is on a device other than the CPU and whose result is on the CPU."""
    if name == "_to_copy" and torch.is_tensor(args[0]):
        target = kwargs.get("device")
        return args[0].device.type != "cpu" and target is not None and torch.device(target).type == "cpu"
    if name == "copy_" and len(args) > 1 and torch.is_tensor(args[1]):
        return args[1].device.type != "cpu" and args[0].device.type == "cpu" and not kwargs.get("non_blocking")
    return False


def classify(func, args, kwargs):
    """'sync', 'launch' or None (no kernel) for one ATen operation (an OpOverload)."""
    name = func.overloadpacket.__name__
    if name in SYNC_OPS or _device_to_host(name, args, kwargs):
        return "sync"
    if name == "repeat_interleave" and func._overloadname == "Tensor" and kwargs.get("output_size") is None:
        return "sync"
    if name in BOOL_INDEXING and _is_bool_index(args):
        return "sync"
    if name in NO_KERNEL_OPS or getattr(func, "is_view", False):
        return None
    return "launch"


class OpCounter(TorchDispatchMode):
    """Counts syncs and launches per part (see the module doc); ``part(name)`` names the code that
    runs inside it ("other" outside every part). ``syncs``/``launches``: Counter part -> count;
    ``sync_ops``: part -> Counter of the synchronising operations' names."""

    def __init__(self):
        super().__init__()
        self.current = "other"
        self.syncs, self.launches = Counter(), Counter()
        self.sync_ops = defaultdict(Counter)
        self._saved = {}

    @contextlib.contextmanager
    def part(self, name):
        previous, self.current = self.current, name
        try:
            yield self
        finally:
            self.current = previous

    def record(self, kind, name):
        if kind == "sync":
            self.syncs[self.current] += 1
            self.sync_ops[self.current][name] += 1
        elif kind == "launch":
            self.launches[self.current] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.record(classify(func, args, kwargs), func.overloadpacket.__name__)
        return func(*args, **kwargs)

    def __enter__(self):
        for owner, name in [(torch.Tensor, name) for name in HOST_READS] + list(HOST_WAITS):
            original = getattr(owner, name)
            self._saved[(owner, name)] = original
            setattr(owner, name, self._host_read(name, original))
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for (owner, name), original in self._saved.items():
                setattr(owner, name, original)
            self._saved.clear()

    def _host_read(self, name, original):
        counter = self

        def read(*args, **kwargs):
            counter.record("sync", name)
            return original(*args, **kwargs)
        return read

    def total(self, kind, parts=None):
        """Sum of ``kind`` ("syncs" or "launches") over ``parts`` (default: all)."""
        counts = getattr(self, kind)
        return sum(v for k, v in counts.items() if parts is None or k in parts)
