"""A stand-in for Caffe's Blob and a driver that calls a layer exactly as Caffe does.

Caffe's order: ``layer = cls(layer_param)`` -> ``param_str`` and ``phase`` set -> ``setup`` ->
``reshape`` -> ``forward`` -> (top diffs written by the net) -> ``backward``. The other
pylayers test files import `Blob` and `Driver` from here.
"""
from types import SimpleNamespace

import numpy as np
import pytest

import pylayers


class Blob:
    """Caffe Blob stand-in: numpy ``data``/``diff``, ``reshape(*shape)``, shape accessors."""

    def __init__(self, *shape, dtype=np.float32):
        self.dtype = dtype
        self.reshape(*shape)

    @classmethod
    def holding(cls, array, dtype=None):
        array = np.asarray(array)
        blob = cls(*array.shape, dtype=dtype or array.dtype)
        blob.data[...] = array
        return blob

    def reshape(self, *shape):
        shape = tuple(int(s) for s in shape)
        self.data = np.zeros(shape, dtype=self.dtype)
        self.diff = np.zeros(shape, dtype=self.dtype)

    @property
    def shape(self):
        return self.data.shape

    @property
    def count(self):
        return int(self.data.size)

    def _axis(self, index):
        return self.data.shape[index] if self.data.ndim > index else 1

    num = property(lambda self: self._axis(0))
    channels = property(lambda self: self._axis(1))
    height = property(lambda self: self._axis(2))
    width = property(lambda self: self._axis(3))


def layer_param(name="layer", param_str=""):
    """What Caffe hands the constructor: a LayerParameter-like object."""
    return SimpleNamespace(name=name, python_param=SimpleNamespace(param_str=param_str))


class Driver:
    """Builds a layer in Caffe's call order and runs forward / backward on blobs."""

    def __init__(self, cls, bottoms, num_tops=1, param_str="", phase=pylayers.base.TRAIN,
                 dtype=np.float64):
        self.calls = []
        self.layer = cls(layer_param(cls.__name__, param_str))
        self.layer.param_str = param_str
        self.layer.phase = phase
        self.bottom = [Blob.holding(b, dtype) for b in bottoms]
        self.top = [Blob(1, dtype=dtype) for _ in range(num_tops)]
        self.layer.setup(self.bottom, self.top)
        self.layer.reshape(self.bottom, self.top)

    def forward(self, *bottom_data):
        for blob, data in zip(self.bottom, bottom_data):
            blob.data[...] = data
        self.layer.forward(self.bottom, self.top)
        return [t.data.copy() for t in self.top]

    def backward(self, *top_diffs, propagate_down=None):
        for blob, diff in zip(self.top, top_diffs):
            blob.diff[...] = diff
        if propagate_down is None:
            propagate_down = [True] + [False] * (len(self.bottom) - 1)
        self.layer.backward(self.top, propagate_down, self.bottom)
        return self.bottom[0].diff.copy()


def test_blob_accessors_follow_caffe():
    blob = Blob(2, 3, 4, 5)
    assert blob.shape == (2, 3, 4, 5) and blob.count == 120
    assert (blob.num, blob.channels, blob.height, blob.width) == (2, 3, 4, 5)
    blob.reshape(7)
    assert blob.shape == (7,) and blob.diff.shape == (7,) and blob.channels == 1


def test_layers_run_in_caffe_call_order(monkeypatch):
    """Every layer method is entered in Caffe's order, with param_str set before setup."""
    seen = []
    original = {name: getattr(pylayers.SeedLossLayer, name) for name in ("setup", "reshape", "forward", "backward")}

    def recorder(name):
        def method(self, *args):
            seen.append((name, self.param_str, self.phase))
            return original[name](self, *args)
        return method

    for name in original:
        monkeypatch.setattr(pylayers.SeedLossLayer, name, recorder(name))
    probs = np.full((1, 2, 2, 2), 0.5)
    cues = np.zeros_like(probs)
    cues[0, 1, 0, 0] = 1
    driver = Driver(pylayers.SeedLossLayer, [probs, cues], param_str="{}", phase=pylayers.base.TEST)
    (loss,) = driver.forward(probs, cues)
    driver.backward(np.ones(1))
    assert [s[0] for s in seen] == ["setup", "reshape", "forward", "backward"]
    assert all(s[1] == "{}" and s[2] == pylayers.base.TEST for s in seen)
    assert loss.shape == (1,) and loss[0] == pytest.approx(-np.log(0.5))


def test_constructor_takes_param_or_nothing():
    layer = pylayers.SoftmaxLayer(layer_param("prob", "min_prob: 0.01"))
    assert layer.param_str == "min_prob: 0.01" and layer.phase == pylayers.base.TRAIN
    bare = pylayers.SoftmaxLayer()
    assert bare.param_str == ""
    bare.setup([Blob(1, 2, 1, 1)], [Blob(1)])
    assert bare.min_prob == pylayers.MIN_PROB
