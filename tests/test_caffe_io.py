"""Caffe file formats: prototxt, .caffemodel (current and legacy V1), .solverstate.

The nets are Caffe's LeNet MNIST example (conv1 20x1x5x5, conv2 50x20x5x5, ip1 500x800,
ip2 10x500). Legacy files are built two ways: through the schema's V1 messages and, for
one model, byte by byte, so the reader is checked against an encoding it did not write.
"""
import importlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from sec.proto import caffe_pb2

# sec/caffe/__init__.py belongs to the Net's engineer; importlib works with or without it.
io = importlib.import_module("sec.caffe.formats")

MODELS = Path(__file__).resolve().parents[1] / "models"
LENET_SHAPES = {
    "conv1": [(20, 1, 5, 5), (20,)],
    "conv2": [(50, 20, 5, 5), (50,)],
    "ip1": [(500, 800), (500,)],
    "ip2": [(10, 500), (10,)],
}
LENET_TYPES = {"conv1": "Convolution", "conv2": "Convolution",
               "ip1": "InnerProduct", "ip2": "InnerProduct"}
V1_TYPES = {"conv1": caffe_pb2.V1LayerParameter.CONVOLUTION,
            "conv2": caffe_pb2.V1LayerParameter.CONVOLUTION,
            "ip1": caffe_pb2.V1LayerParameter.INNER_PRODUCT,
            "ip2": caffe_pb2.V1LayerParameter.INNER_PRODUCT}

LENET_V1_PROTOTXT = """name: "LeNet"
input: "data"
input_dim: 64
input_dim: 1
input_dim: 28
input_dim: 28
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2
  convolution_param { num_output: 20 kernel_size: 5 stride: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "conv2" type: CONVOLUTION bottom: "pool1" top: "conv2"
  blobs_lr: 1 blobs_lr: 2
  convolution_param { num_output: 50 kernel_size: 5 stride: 1 } }
layers { name: "pool2" type: POOLING bottom: "conv2" top: "pool2"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "ip1" type: INNER_PRODUCT bottom: "pool2" top: "ip1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  inner_product_param { num_output: 500 } }
layers { name: "relu1" type: RELU bottom: "ip1" top: "ip1" }
layers { name: "ip2" type: INNER_PRODUCT bottom: "ip1" top: "ip2"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  inner_product_param { num_output: 10 } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "ip2" bottom: "label" top: "loss"
  include { phase: TRAIN } }
"""


@pytest.fixture(scope="module")
def lenet_weights():
    rng = np.random.default_rng(0)
    return {name: [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
            for name, shapes in LENET_SHAPES.items()}


def _legacy_blob(array):
    """V1-era BlobProto: shape right-aligned into num x channels x height x width."""
    dims = (1,) * (4 - array.ndim) + array.shape
    blob = caffe_pb2.BlobProto(num=dims[0], channels=dims[1], height=dims[2], width=dims[3])
    blob.data.extend(array.ravel().tolist())
    return blob


def _write_v1_caffemodel(path, weights):
    net = caffe_pb2.NetParameter(name="LeNet")
    for name, arrays in weights.items():
        layer = net.layers.add(name=name, type=V1_TYPES[name])
        layer.blobs.extend(_legacy_blob(array) for array in arrays)
    net.layers.add(name="relu1", type=caffe_pb2.V1LayerParameter.RELU)
    path.write_bytes(net.SerializeToString())


def _assert_same_weights(loaded, weights):
    assert sorted(loaded) == sorted(weights)
    for name, arrays in weights.items():
        assert len(loaded[name]) == len(arrays)
        for got, want in zip(loaded[name], arrays):
            assert got.dtype == np.float32 and got.shape == want.shape
            np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- caffemodel

def test_current_format_round_trip(tmp_path, lenet_weights):
    path = tmp_path / "lenet.caffemodel"
    io.write_caffemodel(path, "LeNet", [(name, LENET_TYPES[name], arrays)
                                        for name, arrays in lenet_weights.items()])
    net = io.read_caffemodel(path)
    assert net.name == "LeNet"
    assert [layer.name for layer in net.layer] == list(lenet_weights)
    assert [layer.type for layer in net.layer] == [LENET_TYPES[n] for n in lenet_weights]
    assert all(layer.blobs[0].HasField("shape") for layer in net.layer)
    _assert_same_weights(io.match_weights(net, LENET_SHAPES, str(path)), lenet_weights)


def test_legacy_v1_caffemodel_is_upgraded_and_reshaped(tmp_path, lenet_weights):
    path = tmp_path / "lenet_v1.caffemodel"
    _write_v1_caffemodel(path, lenet_weights)
    net = io.read_caffemodel(path)
    assert not net.layers
    assert [layer.type for layer in net.layer] == ["Convolution", "Convolution",
                                                   "InnerProduct", "InnerProduct", "ReLU"]
    assert io.blob_shape(net.layer[2].blobs[0]) == (1, 1, 500, 800)
    _assert_same_weights(io.match_weights(net, LENET_SHAPES, str(path)), lenet_weights)


def _varint(value):
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def _field(number, payload):
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number, value):
    return _varint(number << 3) + _varint(value)


def test_hand_encoded_v1_caffemodel(tmp_path):
    weight = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    # BlobProto: num=1 channels=1 height=2 width=3, packed float data in field 5.
    blob = (_int_field(1, 1) + _int_field(2, 1) + _int_field(3, 2) + _int_field(4, 3)
            + _field(5, struct.pack("<6f", *weight.ravel())))
    # V1LayerParameter: name=4, type=5 (INNER_PRODUCT = 14), blobs=6, blobs_lr=7.
    layer = (_field(4, b"fc") + _int_field(5, 14) + _field(6, blob)
             + _varint(7 << 3 | 5) + struct.pack("<f", 10.0))
    path = tmp_path / "hand.caffemodel"
    path.write_bytes(_field(1, b"tiny") + _field(2, layer))  # NetParameter.layers = 2

    net = io.read_caffemodel(path)
    assert (net.layer[0].name, net.layer[0].type) == ("fc", "InnerProduct")
    assert net.layer[0].param[0].lr_mult == 10.0
    got = io.match_weights(net, {"fc": [(2, 3)]}, str(path))["fc"][0]
    np.testing.assert_array_equal(got, weight)


def test_v0_caffemodel_is_upgraded_and_a_misplaced_v0_field_named(tmp_path):
    v0_layer = _field(1, b"conv1") + _field(2, b"conv") + _varint(3 << 3) + _varint(4)  # name, type, num_output
    path = tmp_path / "v0.caffemodel"
    path.write_bytes(_field(2, _field(1, v0_layer)))  # NetParameter.layers[0].layer
    net = io.read_caffemodel(path)
    assert (net.layer[0].name, net.layer[0].type) == ("conv1", "Convolution")
    assert net.layer[0].convolution_param.num_output == 4
    relu = _field(1, b"relu1") + _field(2, b"relu") + _varint(3 << 3) + _varint(4)  # num_output on a ReLU
    path.write_bytes(_field(2, _field(1, relu)))
    with pytest.raises(io.CaffeFormatError, match="layer 'relu1': Unknown parameter num_output for layer type relu"
                       ) as error:
        io.read_caffemodel(path)
    assert str(path) in str(error.value)


def test_double_data_is_used_when_present():
    values = np.array([0.1, 1e-3, -7.25], dtype=np.float64)
    blob = caffe_pb2.BlobProto(double_data=values.tolist())
    blob.shape.dim.append(3)
    np.testing.assert_array_equal(io.blob_to_array(blob), values.astype(np.float32))
    blob.data.extend([9.0, 9.0, 9.0])  # float copy disagrees: double_data wins, as in Caffe
    np.testing.assert_array_equal(io.blob_to_array(blob), values.astype(np.float32))


def test_blob_round_trip_keeps_shapes():
    for array in (np.float32(3.5).reshape(()), np.arange(4, dtype=np.float32),
                  np.ones((2, 3, 4, 5, 6), np.float32)):
        back = io.blob_to_array(io.array_to_blob(array))
        assert back.shape == array.shape
        np.testing.assert_array_equal(back, array)


def test_array_to_blob_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    tensor = torch.arange(6, dtype=torch.float32, requires_grad=True).reshape(2, 3)
    np.testing.assert_array_equal(io.blob_to_array(io.array_to_blob(tensor)),
                                  np.arange(6, dtype=np.float32).reshape(2, 3))


def test_blob_with_wrong_value_count_is_rejected():
    blob = caffe_pb2.BlobProto(data=[1.0, 2.0])
    blob.shape.dim.extend([3])
    with pytest.raises(io.CaffeFormatError, match=r"\(3,\) holds 2 values"):
        io.blob_to_array(blob)


# ---------------------------------------------------------------- match_weights

def _net_with(name, *blobs):
    net = caffe_pb2.NetParameter()
    net.layer.add(name=name, type="InnerProduct").blobs.extend(blobs)
    return net


def test_shape_mismatch_names_layer_expected_and_found():
    net = _net_with("ip1", io.array_to_blob(np.zeros((500, 700), np.float32)),
                    io.array_to_blob(np.zeros(500, np.float32)))
    with pytest.raises(io.WeightShapeError) as error:
        io.match_weights(net, LENET_SHAPES, "old.caffemodel")
    message = str(error.value)
    assert "old.caffemodel" in message and "'ip1'" in message and "blob 0" in message
    assert "(500, 800)" in message and "(500, 700)" in message


def test_blob_count_mismatch_is_an_error():
    net = _net_with("ip2", io.array_to_blob(np.zeros((10, 500), np.float32)))
    with pytest.raises(io.WeightShapeError, match=r"'ip2' stores 1 blobs.*expects 2"):
        io.match_weights(net, LENET_SHAPES, "m.caffemodel")


@pytest.mark.parametrize("legacy_dims, expected, ok", [
    ((1, 1, 500, 800), (500, 800), True),
    ((1, 1, 1, 500), (500,), True),
    ((20, 1, 5, 5), (20, 1, 5, 5), True),
    ((1, 1, 800, 500), (500, 800), False),  # transposed: same count, wrong shape
    ((2, 1, 500, 800), (500, 800), False),  # a leading axis that is not 1
    ((1, 1, 1, 20), (1, 1, 1, 1, 20), False),  # legacy blobs never match 5-D targets
])
def test_legacy_shape_rule_follows_caffe(legacy_dims, expected, ok):
    blob = caffe_pb2.BlobProto(num=legacy_dims[0], channels=legacy_dims[1],
                               height=legacy_dims[2], width=legacy_dims[3])
    assert io.shape_matches(expected, blob) is ok


def test_unknown_and_missing_layers(lenet_weights):
    net = caffe_pb2.NetParameter()
    for name in ("conv1", "extra"):
        arrays = lenet_weights["conv1"]
        net.layer.add(name=name, type="Convolution").blobs.extend(map(io.array_to_blob, arrays))
    loaded = io.match_weights(net, {"conv1": LENET_SHAPES["conv1"],
                                    "conv2": LENET_SHAPES["conv2"]}, "m.caffemodel")
    assert list(loaded) == ["conv1"]  # 'extra' ignored, 'conv2' left to the net's fillers


# ---------------------------------------------------------------- bad binary files

@pytest.mark.parametrize("content, reason", [
    (b"", "no layers"),
    (b'name: "LeNet"\nlayer { name: "a" }\n', "not a binary caffemodel"),
    (io.HDF5_MAGIC + b"\0" * 16, "HDF5"),
])
def test_not_a_caffemodel_names_the_file(tmp_path, content, reason):
    path = tmp_path / "weights.caffemodel"
    path.write_bytes(content)
    with pytest.raises(io.CaffeFormatError, match=reason) as error:
        io.read_caffemodel(path)
    assert str(path) in str(error.value)


# ---------------------------------------------------------------- prototxt

def test_prototxt_parse_error_names_file_line_and_field(tmp_path):
    path = tmp_path / "bad.prototxt"
    path.write_text('name: "x"\nlayer {\n  name: "conv1"\n  botom: "data"\n}\n')
    with pytest.raises(io.PrototxtError) as error:
        io.read_net_prototxt(path)
    message = str(error.value)
    assert str(path) in message and "line 4" in message and "botom" in message


def test_prototxt_bad_value_names_line():
    with pytest.raises(io.PrototxtError, match=r"net.prototxt, line 3, column \d+: .*kernel"):
        io.parse_net_text('layer {\n  name: "c"\n  convolution_param { kernel_size: five }\n}',
                          source="net.prototxt")


def assert_prototxts_parse(paths):
    """Each solver prototxt reads with a learning rate, each net prototxt with layers."""
    for path in paths:
        if "solver" in path.name:
            assert io.read_solver_prototxt(path).base_lr > 0, path
        else:
            assert len(io.read_net_prototxt(path).layer) > 0, path


def test_project_prototxts_parse():
    paths = sorted(MODELS.rglob("*.prototxt"))
    if not paths:
        pytest.skip(f"no prototxt files under {MODELS} yet")
    assert_prototxts_parse(paths)


def test_v1_prototxt_is_upgraded():
    net = io.parse_net_text(LENET_V1_PROTOTXT, source="lenet_v1.prototxt")
    assert not net.layers
    types = [(layer.name, layer.type) for layer in net.layer]
    assert types == [("conv1", "Convolution"), ("pool1", "Pooling"), ("conv2", "Convolution"),
                     ("pool2", "Pooling"), ("ip1", "InnerProduct"), ("relu1", "ReLU"),
                     ("ip2", "InnerProduct"), ("loss", "SoftmaxWithLoss")]
    layers = {layer.name: layer for layer in net.layer}
    conv1, ip1 = layers["conv1"], layers["ip1"]
    assert [(p.lr_mult, p.decay_mult) for p in conv1.param] == [(1, 1), (2, 1)]
    assert [(p.lr_mult, p.decay_mult) for p in ip1.param] == [(1, 1), (2, 0)]
    assert conv1.convolution_param.num_output == 20
    assert list(conv1.convolution_param.kernel_size) == [5]
    assert conv1.convolution_param.weight_filler.type == "xavier"
    assert layers["pool1"].pooling_param.stride == 2
    assert list(layers["loss"].bottom) == ["ip2", "label"]
    assert layers["loss"].include[0].phase == caffe_pb2.TRAIN
    assert io.net_inputs(net) == [("data", (64, 1, 28, 28))]


def test_v1_data_layer_transform_fields_move():
    net = io.parse_net_text('layers { name: "d" type: IMAGE_DATA top: "data"\n'
                            '  image_data_param { source: "l.txt" mirror: true crop_size: 7 } }')
    layer = net.layer[0]
    assert layer.type == "ImageData"
    assert layer.transform_param.mirror and layer.transform_param.crop_size == 7
    assert not layer.image_data_param.HasField("mirror")
    assert layer.image_data_param.source == "l.txt"


def test_mixed_layer_and_layers_is_an_error():
    with pytest.raises(io.PrototxtError, match="mixes"):
        io.parse_net_text('layer { name: "a" }\nlayers { name: "b" }', source="mixed.prototxt")


def test_net_inputs_forms():
    shaped = io.parse_net_text('input: "a" input_shape { dim: 1 dim: 3 }\n'
                               'input: "b" input_shape { dim: 2 }')
    assert io.net_inputs(shaped) == [("a", (1, 3)), ("b", (2,))]
    two = io.parse_net_text('input: "a" input: "b" '
                            + " ".join(f"input_dim: {d}" for d in (1, 3, 5, 7, 2, 4, 6, 8)))
    assert io.net_inputs(two) == [("a", (1, 3, 5, 7)), ("b", (2, 4, 6, 8))]
    with pytest.raises(io.PrototxtError, match="need 8 'input_dim' values, got 3"):
        io.net_inputs(io.parse_net_text('input: "a" input: "b" input_dim: 1 input_dim: 2 '
                                        'input_dim: 3'), source="n.prototxt")


def test_solver_prototxt(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "train.prototxt"\nbase_lr: 0.001\nlr_policy: "step"\ngamma: 0.1\n'
                    'stepsize: 2000\nmomentum: 0.9\nweight_decay: 0.0005\nmax_iter: 8000\n'
                    'snapshot_prefix: "snap/sec"\nsolver_type: NESTEROV\n')
    solver = io.read_solver_prototxt(path)
    assert solver.net == "train.prototxt" and solver.stepsize == 2000
    assert solver.base_lr == pytest.approx(1e-3) and solver.momentum == pytest.approx(0.9)
    assert solver.type == "Nesterov" and not solver.HasField("solver_type")
    path.write_text('base_lr: 0.01\nmomentun: 0.9\n')
    with pytest.raises(io.PrototxtError, match="line 2.*momentun"):
        io.read_solver_prototxt(path)


# ---------------------------------------------------------------- solverstate and atomic writes

def test_solverstate_round_trip(tmp_path, lenet_weights):
    history = [array * 0.5 for arrays in lenet_weights.values() for array in arrays]
    path = tmp_path / "sec_iter_100.solverstate"
    io.write_solverstate(path, 100, "sec_iter_100.caffemodel", history, current_step=3)
    state = io.read_solverstate(path)
    assert (state["iter"], state["learned_net"], state["current_step"]) == (
        100, "sec_iter_100.caffemodel", 3)
    assert len(state["history"]) == len(history)
    for got, want in zip(state["history"], history):
        np.testing.assert_array_equal(got, want)


class _ExplodingArray:
    """An array-like whose conversion fails, as a serialisation error midway would."""

    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("serialisation failed")


def test_failed_serialisation_leaves_old_file(tmp_path):
    path = tmp_path / "model.caffemodel"
    io.write_caffemodel(path, "old", [("ip", "InnerProduct", [np.ones((2, 2), np.float32)])])
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="serialisation failed"):
        io.write_caffemodel(path, "new", [("ip", "InnerProduct",
                                           [np.zeros((2, 2), np.float32), _ExplodingArray()])])
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.caffemodel"]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch, failing):
    path = tmp_path / "state.solverstate"
    path.write_bytes(b"old contents")

    def fail(*args):
        raise OSError(f"simulated {failing} failure")

    monkeypatch.setattr(io.os, failing, fail)
    with pytest.raises(OSError, match=f"simulated {failing}"):
        io.atomic_write_bytes(path, b"new contents" * 1000)
    monkeypatch.undo()
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["state.solverstate"]
    io.atomic_write_bytes(path, b"new contents")
    assert path.read_bytes() == b"new contents"


# ---------------------------------------------------------------- the whole Caffe schema

CAFFE_SOURCE = Path(__file__).resolve().parents[2] / "shared" / "caffe" / "caffe-9b89154-src.tar.gz"
# A BVLC-style net using fields and layer types beyond what the engine runs.
BVLC_EXTRAS_PROTOTXT = """name: "extras"
layer { name: "data" type: "Input" top: "data"
  input_param { shape { dim: 1 dim: 2 dim: 8 dim: 8 } } }
layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR } }
layer { name: "prelu" type: "PReLU" bottom: "pool" top: "prelu"
  prelu_param { channel_shared: false filler { type: "constant" value: 0.25 } } }
layer { name: "clip" type: "Clip" bottom: "prelu" top: "clip" clip_param { min: -1 max: 1 } }
layer { name: "swish" type: "Swish" bottom: "clip" top: "swish" swish_param { beta: 2 } }
"""


def _caffe_source_prototxts(tmp_path):
    import tarfile
    if not CAFFE_SOURCE.is_file():
        pytest.skip(f"Caffe source not found at {CAFFE_SOURCE}")
    paths = []
    with tarfile.open(CAFFE_SOURCE) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/")
            if member.isfile() and member.name.endswith(".prototxt") and parts[1] in ("models", "examples"):
                path = tmp_path / member.name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(tar.extractfile(member).read())
                paths.append(path)
    return paths


def test_caffe_source_prototxts_parse(tmp_path):
    paths = _caffe_source_prototxts(tmp_path)
    assert paths, f"no prototxt under models/ or examples/ in {CAFFE_SOURCE}"
    assert_prototxts_parse(paths)


def test_bvlc_fields_beyond_the_engine_parse():
    net = io.parse_net_text(BVLC_EXTRAS_PROTOTXT, source="extras.prototxt")
    layers = {layer.name: layer for layer in net.layer}
    assert layers["pool"].pooling_param.round_mode == caffe_pb2.PoolingParameter.FLOOR
    assert layers["prelu"].prelu_param.filler.value == 0.25
    assert (layers["clip"].clip_param.min, layers["clip"].clip_param.max) == (-1, 1)
    assert layers["swish"].swish_param.beta == 2


def test_solver_with_weights_field_parses(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "train.prototxt"\nbase_lr: 0.001\nweights: "init.caffemodel"\n')
    assert list(io.read_solver_prototxt(path).weights) == ["init.caffemodel"]


@pytest.mark.parametrize("layer, reason", [
    ('name: "pool" type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 3 pad: 1 }',
     "padding is implemented only for MAX and AVE"),
    ('name: "clip" type: "Clip" clip_param { min: 1 }', "clip_param.max is required"),
    ('name: "what" type: "NoSuchLayer"', "unknown layer type 'NoSuchLayer'"),
])
def test_refused_layers_fail_at_build_naming_the_layer(tmp_path, layer, reason):
    caffe = importlib.import_module("sec.caffe")
    path = tmp_path / "net.prototxt"
    path.write_text('layer { name: "data" type: "Input" top: "data"\n'
                    '  input_param { shape { dim: 1 dim: 2 dim: 8 dim: 8 } } }\n'
                    f'layer {{ {layer} bottom: "data" top: "out" }}\n')
    with pytest.raises(caffe.NetError, match=reason) as error:
        caffe.Net(str(path), caffe.TEST)
    name = layer.split('"')[1]
    assert f"{path}:3: layer '{name}'" in str(error.value)


def test_v1_layer_keeps_every_param_and_window_data_transform():
    net = io.parse_net_text(
        'layers { name: "w" type: WINDOW_DATA top: "data"\n'
        '  window_data_param { source: "w.txt" crop_size: 9 fg_threshold: 0.6 } }\n'
        'layers { name: "n" type: MVN bottom: "data" top: "n" mvn_param { eps: 0.5 } }\n',
        source="v1.prototxt")
    window, mvn = net.layer
    assert window.type == "WindowData" and window.transform_param.crop_size == 9
    assert not window.window_data_param.HasField("crop_size")
    assert window.window_data_param.fg_threshold == pytest.approx(0.6)
    assert mvn.type == "MVN" and mvn.mvn_param.eps == 0.5


def test_v1_transform_fields_move_only_for_data_layers():
    # Caffe moves them for DATA, IMAGE_DATA and WINDOW_DATA layers, not for any layer
    # that happens to carry a data_param.
    net = io.parse_net_text('layers { name: "c" type: CONVOLUTION bottom: "a" top: "c"\n'
                            '  data_param { mirror: true } }')
    assert net.layer[0].data_param.mirror and not net.layer[0].HasField("transform_param")


def test_caffe_written_layer_fields_read(tmp_path):
    """Caffe's Net::ToProto writes the whole LayerParameter (phase, include, propagate_down,
    transform and loss params, the layer's own params) next to the blobs."""
    layer = caffe_pb2.LayerParameter(name="fc", type="InnerProduct", bottom=["data"], top=["fc"],
                                     phase=caffe_pb2.TRAIN, propagate_down=[True])
    layer.include.add(phase=caffe_pb2.TRAIN)
    layer.param.add(lr_mult=1, decay_mult=1)
    layer.inner_product_param.num_output = 2
    layer.inner_product_param.weight_filler.type = "msra"
    layer.loss_param.normalization = caffe_pb2.LossParameter.VALID
    layer.blobs.append(io.array_to_blob(np.full((2, 3), 0.5, np.float32)))
    prelu = caffe_pb2.LayerParameter(name="act", type="PReLU", phase=caffe_pb2.TRAIN)
    prelu.prelu_param.channel_shared = True
    prelu.blobs.append(io.array_to_blob(np.array([0.25], np.float32)))
    net = caffe_pb2.NetParameter(name="written", layer=[layer, prelu])
    net.state.phase = caffe_pb2.TRAIN
    path = tmp_path / "written.caffemodel"
    path.write_bytes(net.SerializeToString())
    read = io.read_caffemodel(path)
    assert read.layer[0].phase == caffe_pb2.TRAIN and read.layer[1].prelu_param.channel_shared
    weights = io.match_weights(read, {"fc": [(2, 3)]}, str(path))
    np.testing.assert_array_equal(weights["fc"][0], np.full((2, 3), 0.5, np.float32))


# ---------------------------------------------------------------- byte-order mark

def test_prototxt_with_utf8_bom_reads_with_a_warning(tmp_path):
    path = tmp_path / "bom.prototxt"
    path.write_bytes(b"\xef\xbb\xbf" + b'name: "bom"\nlayer { name: "a" type: "ReLU" }\n')
    with pytest.warns(io.PrototxtWarning, match="byte-order mark") as record:
        net = io.read_net_prototxt(path)
    assert net.name == "bom" and net.layer[0].name == "a"
    assert str(path) in str(record[0].message)


def test_solver_with_utf8_bom_reads_with_a_warning(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text('\ufeffbase_lr: 0.5\n', encoding="utf-8")
    with pytest.warns(io.PrototxtWarning, match=str(path).replace("\\", "\\\\")):
        assert io.read_solver_prototxt(path).base_lr == 0.5
