"""Stand-ins for Caffe's Blob and pycaffe's blob vectors, and a driver that calls a layer exactly as Caffe does.

Caffe's order: ``layer = cls(layer_param)`` -> ``param_str`` and ``phase`` set -> ``setup`` ->
``reshape`` -> ``forward`` -> (top diffs written by the net) -> ``backward``. The driver hands
the layer `BlobVector`s, which, like pycaffe's, can be indexed and len()'d but not iterated.
The other pylayers test files import `Blob`, `BlobVector` and `Driver` from here.
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
        """New zeroed arrays, except that the same shape keeps them (Caffe keeps the memory)."""
        shape = tuple(int(s) for s in shape)
        if getattr(self, "data", None) is not None and self.data.shape == shape:
            return
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


class BlobVector:
    """pycaffe's RawBlobVec / BoolVec as a Python layer sees them (boost::python's
    vector_indexing_suite): integer indexing (negative too) and len() work; iteration, and so
    zip, unpacking and list(), raise TypeError (pycaffe: "No to_python (by-value) converter
    found for C++ type: caffe::Blob<float>*"); slices are refused too."""

    def __init__(self, items):
        self._items = list(items)

    def __len__(self):
        return len(self._items)

    def __getitem__(self, index):
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"BlobVector index must be an integer, got {type(index).__name__}")
        return self._items[index]

    def __iter__(self):
        raise TypeError("No to_python (by-value) converter found for C++ type: caffe::Blob<float>*")


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
        self.bottom = BlobVector(Blob.holding(b, dtype) for b in bottoms)
        self.top = BlobVector(Blob(1, dtype=dtype) for _ in range(num_tops))
        self.layer.setup(self.bottom, self.top)
        self.layer.reshape(self.bottom, self.top)

    def forward(self, *bottom_data):
        for index, data in enumerate(bottom_data):
            self.bottom[index].data[...] = data
        self.layer.reshape(self.bottom, self.top)  # Caffe reshapes every layer before each forward
        self.layer.forward(self.bottom, self.top)
        return [self.top[index].data.copy() for index in range(len(self.top))]

    def backward(self, *top_diffs, propagate_down=None):
        for index, diff in enumerate(top_diffs):
            self.top[index].diff[...] = diff
        if propagate_down is None:
            propagate_down = [True] + [False] * (len(self.bottom) - 1)
        self.layer.backward(self.top, BlobVector(propagate_down), self.bottom)
        return self.bottom[0].diff.copy()


def test_blob_vector_is_indexable_but_not_iterable():
    first, second = Blob(1), Blob(2)
    vector = BlobVector([first, second])
    assert len(vector) == 2 and vector[0] is first and vector[-1] is second
    for attempt in (lambda: list(vector), lambda: zip(vector, [1, 2]), lambda: [b for b in vector],
                    lambda: vector[0:1]):
        with pytest.raises(TypeError):
            attempt()
    with pytest.raises(TypeError):
        first_blob, second_blob = vector
    with pytest.raises(IndexError):
        vector[2]


def _every_layer_case(tmp_path, rng):
    """(class, bottoms, number of tops, param_str) for each of the six layers, small shapes."""
    import pickle
    probs = rng.dirichlet(np.ones(3), size=(2, 4, 5)).transpose(0, 3, 1, 2)
    cues = np.zeros_like(probs)
    cues[:, 0, 0, 0] = cues[:, 2, 1, 1] = 1
    labels = np.zeros((2, 1, 1, 3))
    labels[:, 0, 0, 2] = 1
    path = tmp_path / "cues.pickle"
    path.write_bytes(pickle.dumps({"0_labels": np.array([2]), "0_cues": np.array([[0, 2], [0, 1], [0, 1]]),
                                   "1_labels": np.array([1]), "1_cues": np.array([[1], [3], [4]])}))
    images = rng.normal(0, 50, size=(2, 3, 9, 11))
    return {
        "SoftmaxLayer": ([rng.normal(size=probs.shape)], 1, ""),
        "SeedLossLayer": ([probs, cues], 1, ""),
        "ExpandLossLayer": ([probs, labels], 1, ""),
        "ConstrainLossLayer": ([probs, np.log(probs[:, ::-1])], 1, ""),
        "CRFLayer": ([rng.normal(size=probs.shape), images], 1, "maxiter: 2"),
        "AnnotationLayer": ([np.array([0.0, 1.0])], 2, f"cues: {path}\nnum_classes: 3\ncue_size: 5"),
    }


@pytest.mark.parametrize("name", ["SoftmaxLayer", "SeedLossLayer", "ExpandLossLayer", "ConstrainLossLayer",
                                  "CRFLayer", "AnnotationLayer"])
def test_every_layer_runs_on_pycaffe_blob_vectors(tmp_path, monkeypatch, name):
    """setup / reshape / forward / backward (propagate_down all True) on BlobVectors, twice,
    as pycaffe calls them: the layers only index and len() their blob vectors."""
    import sys
    import types
    crf_module = types.ModuleType("krahenbuhl2013")
    crf_module.CRF_batch = lambda images, unaries, maxiter=10, scale_factor=1.0: np.full(
        unaries.shape, 1.0 / unaries.shape[-1], dtype=np.float32)
    monkeypatch.setitem(sys.modules, "krahenbuhl2013", crf_module)
    bottoms, num_tops, param_str = _every_layer_case(tmp_path, np.random.default_rng(0))[name]
    driver = Driver(getattr(pylayers, name), bottoms, num_tops=num_tops, param_str=param_str)
    for _ in range(2):
        tops = driver.forward(*bottoms)
        assert all(np.isfinite(top).all() for top in tops)
        driver.backward(*[np.ones_like(top) for top in tops], propagate_down=[True] * len(bottoms))
        assert np.isfinite(driver.bottom[0].diff).all()


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
    # Layer::SetUp ends with a Reshape, and Layer::Forward starts with one
    assert [s[0] for s in seen] == ["setup", "reshape", "reshape", "forward", "backward"]
    assert all(s[1] == "{}" and s[2] == pylayers.base.TEST for s in seen)
    assert loss.shape == (1,) and loss[0] == pytest.approx(-np.log(0.5))


def test_constructor_takes_param_or_nothing():
    layer = pylayers.SoftmaxLayer(layer_param("prob", "min_prob: 0.01"))
    assert layer.param_str == "min_prob: 0.01" and layer.phase == pylayers.base.TRAIN
    bare = pylayers.SoftmaxLayer()
    assert bare.param_str == ""
    bare.setup([Blob(1, 2, 1, 1)], [Blob(1)])
    assert bare.min_prob == pylayers.MIN_PROB
