"""Python layers written for pycaffe (`import caffe`, subclasses of caffe.Layer), used unchanged by
BVLC's pycaffe and by the engine: tests/pycaffe_live_script.py (both) and tests/test_pycaffe_api.py."""
import numpy as np

import caffe

RAMP_SHAPES = ((4, 3), (4, 2))   # data layer tops: x, target
SCALE_START = 1.5


class Ramp(caffe.Layer):
    """Data: a fixed batch per call (x, target of RAMP_SHAPES) from RandomState(number of the call)."""

    def setup(self, bottom, top):
        self.calls = 0

    # by index: pycaffe's RawBlobVec of tops cannot be iterated (no converter for Blob*)
    def reshape(self, bottom, top):
        for index, shape in enumerate(RAMP_SHAPES):
            top[index].reshape(*shape)

    def forward(self, bottom, top):
        rng = np.random.RandomState(self.calls)
        self.calls += 1
        for index, shape in enumerate(RAMP_SHAPES):
            top[index].data[...] = rng.rand(*shape)

    def backward(self, top, propagate_down, bottom):
        pass


class Scale(caffe.Layer):
    """top = w * bottom with one learnable blob w, starting at param_str (default SCALE_START)."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[0] = float(self.param_str or SCALE_START)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] += np.sum(top[0].diff * bottom[0].data)
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff


class HalfSquared(caffe.Layer):
    """Caffe's EuclideanLoss in Python: 0.5 * |a - b|^2 / N (N the first axis); no gradient to b."""

    def setup(self, bottom, top):
        if len(bottom) != 2:
            raise ValueError(f"HalfSquared needs 2 bottoms, got {len(bottom)}")

    def reshape(self, bottom, top):
        top[0].reshape(1)
        self.delta = np.zeros_like(bottom[0].data)

    def forward(self, bottom, top):
        np.subtract(bottom[0].data, bottom[1].data, out=self.delta)
        top[0].data[0] = 0.5 * np.vdot(self.delta, self.delta) / len(self.delta)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = self.delta * (top[0].diff[0] / len(self.delta))


class Broken(caffe.Layer):
    """Fails in setup, as a layer with a bad configuration does."""

    def setup(self, bottom, top):
        raise RuntimeError("broken on purpose")
