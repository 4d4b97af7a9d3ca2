"""Caffe's random streams for the data layers: boost::mt19937 and its uses, reproduced exactly.

BVLC Caffe draws every random choice of its data layers from `boost::mt19937` generators (the
32-bit Mersenne twister, seeded with `init_genrand(seed)`):

* `Caffe::set_random_seed(s)` (the solver's `random_seed`, pycaffe's `caffe.set_random_seed`)
  resets the global generator to mt19937(s);
* while a net is built, each data layer seeds its own generators with successive raw outputs of
  the global one (`caffe_rng_rand()`): the DataTransformer at `InitRand()` (twice for prefetching
  layers; only when it needs randomness), ImageData's shuffling generator, WindowData's sampling
  generator, one draw for `rand_skip`, one for the prefetch thread's seed;
* the DataTransformer's `Rand(n)` is `raw() % n`; WindowData's sampling is `raw() % size`;
  `caffe::shuffle` is Fisher-Yates with `boost::uniform_int(0, i)`.

`CaffeRNG` is that generator (numpy's legacy MT19937, which seeds and steps exactly as boost's),
with plain-data `state_dict()` for exact resume. `DataLayerSeeds` replays the global generator's
draws during a net build, so that a data layer built before any layer with random fillers (the
usual place: first) makes the same random choices as BVLC Caffe with the same seed
(tests/test_caffe_data_reference.py checks crops, mirrors, shuffles and windows against it).
"""
import numpy as np

UINT32_RANGE = 2 ** 32
MT19937_WORDS = 624
UINT32_MAX = UINT32_RANGE - 1


class CaffeRNG:
    """boost::mt19937(seed): `raw()` is the next 32-bit output, `rand(n)` Caffe's `raw() % n`."""

    def __init__(self, seed):
        self._state = np.random.RandomState(int(seed) % UINT32_RANGE)

    def raw(self):
        """The next raw 32-bit output (an int in 0 .. 2**32 - 1)."""
        # For the full 32-bit range numpy's legacy generator returns the raw output unmasked.
        return int(self._state.randint(0, UINT32_RANGE, dtype=np.uint64))

    def rand(self, n):
        """Caffe's DataTransformer::Rand(n): raw() % n, for n > 0."""
        if n <= 0:
            raise ValueError(f"Rand needs n > 0, got {n}")
        return self.raw() % n

    def uniform_int(self, low, high):
        """boost::uniform_int<long>(low, high) on this generator (inclusive bounds, range < 2**32):
        the raw output divided into equal buckets, draws past the last whole bucket rejected."""
        span = high - low
        if span == 0:
            return low
        if span == UINT32_MAX:
            return low + self.raw()
        bucket = UINT32_MAX // (span + 1)
        if UINT32_MAX % (span + 1) == span:
            bucket += 1
        while True:
            value = self.raw() // bucket
            if value <= span:
                return low + value

    def shuffle(self, items):
        """caffe::shuffle (util/rng.hpp): Fisher-Yates from the back, in place on a list."""
        for i in range(len(items) - 1, 0, -1):
            j = self.uniform_int(0, i)
            items[i], items[j] = items[j], items[i]

    def state_dict(self):
        """Plain data: the 624 state words and the position in them."""
        _, key, pos, _, _ = self._state.get_state()
        return {"mt19937": [int(k) for k in key], "pos": int(pos)}

    def load_state_dict(self, state):
        key = np.asarray(state["mt19937"], dtype=np.uint32)
        if key.shape != (MT19937_WORDS,) or not 0 <= int(state["pos"]) <= MT19937_WORDS:
            raise ValueError("not a CaffeRNG state (needs 624 words and a position 0..624)")
        self._state.set_state(("MT19937", key, int(state["pos"]), 0, 0.0))


class DataLayerSeeds:
    """The raw outputs of Caffe's global generator mt19937(seed) in the order a net build draws
    them. `draw()` returns the next one; `consumed` counts them (a net keeps one instance, so each
    data layer continues where the previous one stopped, as in Caffe's Net::Init)."""

    def __init__(self, seed):
        self.seed = int(seed) % UINT32_RANGE
        self._rng = CaffeRNG(self.seed)
        self.consumed = 0

    def draw(self):
        self.consumed += 1
        return self._rng.raw()
