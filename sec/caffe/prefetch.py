"""Batches made ahead in one background thread, in order, with exact resume (Caffe's prefetching).

A producer is an object with `next_batch() -> tuple of numpy arrays`, `state_dict()` (plain data: its
position and generator states, taken between batches) and `load_state_dict(state)`. `Prefetcher`
runs it in one daemon thread, `depth` batches ahead (Caffe's data_param.prefetch). The producer alone
makes every choice, one batch after another, so the batches never depend on thread timing; each batch
travels with the producer's state after it, so `state_dict()` is the position of the next batch the
consumer will get, not of the prefetcher.

Errors in the thread (a missing file, a corrupt record) come out of the consumer's `next_batch()` as
`DataError` naming the layer; a thread that dies or is stopped never leaves the consumer waiting.
"""
import queue
import threading

# How often a waiting consumer (or a producer waiting for room) checks that the other side lives.
POLL_SECONDS = 0.2


class DataError(RuntimeError):
    """A data layer could not produce a batch (the message names the layer and the file)."""


class Prefetcher:
    """``wrap_errors=False``: the consumer re-raises the producer's own exception (for a layer whose
    errors the callers know by type, such as ImageData's ImageListError), not a DataError."""

    def __init__(self, producer, depth, name, wrap_errors=True):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.producer, self.depth, self.name, self.wrap_errors = producer, int(depth), name, wrap_errors
        self._state = producer.state_dict()
        self._queue = self._thread = self._stop = None
        self._error = None

    def next_batch(self):
        """The next batch (a tuple of numpy arrays), waiting for the thread if needed."""
        if self._error is not None:
            raise self._error
        if self._thread is None:
            self._start()
        while True:
            try:
                kind, payload, state = self._queue.get(timeout=POLL_SECONDS)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._error = DataError(f"{self.name}: the prefetch thread stopped without a batch")
                    raise self._error from None
        if kind == "error":
            self._join()
            if not self.wrap_errors:
                self._error = payload
                raise payload
            self._error = DataError(f"{self.name}: {payload}")
            raise self._error from payload
        self._state = state
        return payload

    def _start(self):
        self._stop = threading.Event()
        self._queue = queue.Queue(self.depth)
        # The thread holds the producer, queue and event, not this object: when the layer that owns
        # this Prefetcher goes away, __del__ stops the thread.
        self._thread = threading.Thread(target=_produce, args=(self.producer, self._queue, self._stop),
                                        name=f"sec-data {self.name}", daemon=True)
        self._thread.start()

    def _join(self):
        """Stop the thread and put the producer back where the consumer is (batches made ahead are
        dropped, to be made again)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.producer.load_state_dict(self._state)

    def __del__(self):
        if getattr(self, "_stop", None) is not None:
            self._stop.set()

    def state_dict(self):
        """The producer's state before the next batch this consumer will receive."""
        return self._state

    def load_state_dict(self, state):
        """Drop the batches made ahead and continue from `state` (a `state_dict()`)."""
        self._join()
        self.producer.load_state_dict(state)
        self._state = self.producer.state_dict()
        self._error = None

    def close(self):
        """Stop the thread and release the producer's files; a later `next_batch` restarts where the
        consumer stopped."""
        self._join()
        getattr(self.producer, "close", lambda: None)()


def _produce(producer, batches, stop):
    """The thread: batches with the producer's state after each, until `stop` (or an error, which
    is queued for the consumer). A stopped producer closes its files."""
    try:
        while not stop.is_set():
            batch = producer.next_batch()
            if not _put(batches, stop, ("batch", batch, producer.state_dict())):
                break
    except Exception as error:  # handed to the consumer, which raises it naming the layer
        _put(batches, stop, ("error", error, None))
    finally:
        if stop.is_set():
            getattr(producer, "close", lambda: None)()


def _put(batches, stop, item):
    """Queue `item`, waiting for room; False when asked to stop meanwhile."""
    while not stop.is_set():
        try:
            batches.put(item, timeout=POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False
