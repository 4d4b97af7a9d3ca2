"""The host-to-GPU path of a data layer's batches on CUDA: made ahead, pinned, uploaded on the side.

Without it, the main thread stacks the next batch, copies it into pinned memory and starts the
upload on the compute stream while the GPU waits for it. With it:

* `PinnedProducer` wraps a batch source (`next_batch()`, `state_dict()`, `load_state_dict()`,
  `close()`); run by sec.caffe.prefetch.Prefetcher in its background thread, it copies every batch
  into pinned host buffers reused in turn (`slots_for(depth)` per top), waiting, in that thread, for
  a buffer's last upload to finish before filling it again. With depth d the queue holds at most d
  batches, so when a buffer comes round again (d + 3 batches later) the consumer has taken and
  uploaded the batch that last used it, and that upload's event is set;
* `Uploader.upload(staged)` (main thread) starts the copies on a side stream, makes the compute
  stream wait for them on the GPU (an event, no host wait) and marks the buffers in use until then.

Batches, their order and the exact-resume state are the source's (the Prefetcher keeps the
consumer's position). Pinned memory needs a CUDA device: on the CPU the layers keep their plain path.
"""
import threading

import numpy as np
import torch


def slots_for(depth):
    """Pinned buffers per top for a Prefetcher of ``depth`` (see the module doc)."""
    return int(depth) + 3


class _Slot:
    """One pinned host buffer and the event of its last upload (None: never uploaded)."""

    def __init__(self, shape, dtype):
        self.host = torch.from_numpy(np.empty(shape, dtype=dtype)).pin_memory()
        self.array = self.host.numpy()
        self.uploaded = None

    def wait(self):
        """Block the calling (producer) thread until the buffer's last upload is done."""
        if self.uploaded is not None and not self.uploaded.query():
            self.uploaded.synchronize()


class Staged:
    """A batch in pinned buffers: ``slots`` (one per top) and the source's arrays' host values."""

    def __init__(self, slots):
        self.slots = slots

    @property
    def arrays(self):
        return tuple(slot.array for slot in self.slots)


class PinnedProducer:
    """A producer for Prefetcher whose batches land in pinned buffers (see the module doc)."""

    def __init__(self, source, num_tops, slots):
        self.source, self.num_tops, self.num_slots = source, int(num_tops), int(slots)
        self._rings = {}           # (top, shape, dtype) -> list of _Slot, used in turn
        self._turn = {}
        self._lock = threading.Lock()

    def _slot(self, top, array):
        key = (top, array.shape, array.dtype.str)
        with self._lock:
            ring = self._rings.setdefault(key, [])
            turn = self._turn.get(key, 0)
            if len(ring) < self.num_slots:
                ring.append(_Slot(array.shape, array.dtype))
            slot = ring[turn % len(ring)]
            self._turn[key] = turn + 1
        slot.wait()
        return slot

    def next_batch(self):
        arrays = self.source.next_batch()[:self.num_tops]
        slots = []
        for top, array in enumerate(arrays):
            slot = self._slot(top, np.ascontiguousarray(array))
            np.copyto(slot.array, array)
            slots.append(slot)
        return Staged(slots)

    def state_dict(self):
        return self.source.state_dict()

    def load_state_dict(self, state):
        self.source.load_state_dict(state)

    def close(self):
        getattr(self.source, "close", lambda: None)()


class Uploader:
    """Uploads staged batches to one CUDA device on a side stream (see the module doc)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device)

    def upload(self, staged, keep_host):
        """Device tensors of ``staged``'s tops, ready for the compute stream's next kernels;
        ``keep_host(array, tensor)`` records a top's host values (sec.caffe.layers.data)."""
        compute = torch.cuda.current_stream(self.device)
        tensors = []
        with torch.cuda.stream(self.stream):
            for slot in staged.slots:
                tensor = slot.host.to(self.device, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self.stream)
                slot.uploaded = event
                tensors.append(tensor)
        compute.wait_event(event)
        for slot, tensor in zip(staged.slots, tensors):
            tensor.record_stream(compute)    # its memory is reused only after the compute stream is done
            keep_host(slot.array, tensor)
        return tuple(tensors)
