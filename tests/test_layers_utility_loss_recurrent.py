"""Utility, loss and recurrent layers beyond the one-layer fixtures (tests/test_caffe_reference.py):
what the case tables cannot express, checked against Caffe-written fixtures (clr_extras, written
by bench/caffe_reference_clr.py), and the errors: bad parameters at build time naming file, line,
layer and field; bad inputs at forward naming the layer."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sec import caffe
from sec.caffe import formats

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "caffe"
FORWARD_TOL = 2e-6
BACKWARD_TOL = 1e-5
RNG = np.random.default_rng(0)


def extras():
    manifest = json.loads((FIXTURES / "clr_extras.json").read_text())
    with np.load(FIXTURES / "clr_extras.npz") as data:
        return manifest, {key: data[key] for key in data.files}


def rel_error(got, want):
    got, want = np.asarray(got, np.float64).reshape(-1), np.asarray(want, np.float64).reshape(-1)
    assert got.size == want.size
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def make_net(tmp_path, text, weights=None, phase=caffe.TEST):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    if weights is None:
        return caffe.Net(str(path), phase)
    model = tmp_path / "net.caffemodel"
    model.write_bytes(bytes(weights))
    return caffe.Net(str(path), str(model), phase)


def inputs(**shapes):
    """An Input layer per blob, on a line of its own each."""
    return "".join(f'layer {{ name: "input_{name}" type: "Input" top: "{name}" input_param {{ shape {{ '
                   + " ".join(f"dim: {d}" for d in shape) + " } } }\n" for name, shape in shapes.items())


def layer(type_, bottoms, tops, param=""):
    lines = " ".join([f'bottom: "{b}"' for b in bottoms] + [f'top: "{t}"' for t in tops])
    return f'layer {{ name: "l" type: "{type_}" {lines}\n  {param} }}\n'


# ------------------------------------------------------------------ against Caffe's fixtures

def test_infogain_loss_reads_h_from_a_caffe_written_binaryproto(tmp_path):
    """H from `infogain_loss_param.source` (a BlobProto serialised by Caffe): loss and score
    gradient as Caffe computed them."""
    manifest, arrays = extras()
    case = manifest["infogain_source"]
    h_path = tmp_path / "H.binaryproto"
    h_path.write_bytes(arrays["infogain_source/H.binaryproto"].tobytes())
    net = make_net(tmp_path, "force_backward: true\n" + case["prototxt"].split("\n", 1)[1].replace("@H@", str(h_path)))
    net.forward(x=arrays[case["x"]], label=arrays[case["label"]])
    assert rel_error(net.blobs["loss"].data, arrays[case["loss"]]) <= FORWARD_TOL
    net.backward()
    assert rel_error(net.blobs["x"].diff, arrays[case["x_diff"]]) <= BACKWARD_TOL


def test_infogain_loss_reads_legacy_four_axis_blobs(tmp_path):
    """A BlobProto with the legacy num/channels/height/width fields (Caffe's older writers) gives
    the same loss as H fed as a bottom."""
    h = RNG.uniform(0.1, 1, (3, 3)).astype(np.float32)
    blob = formats.caffe_pb2.BlobProto(num=1, channels=1, height=3, width=3)
    blob.data.extend(h.ravel().tolist())
    (tmp_path / "H.binaryproto").write_bytes(blob.SerializeToString())
    x, label = RNG.standard_normal((5, 3)).astype(np.float32), RNG.integers(0, 3, (5,)).astype(np.float32)
    text = inputs(x=(5, 3), label=(5,))
    from_file = make_net(tmp_path, text + layer("InfogainLoss", ("x", "label"), ("loss",),
                                                f'infogain_loss_param {{ source: "{tmp_path}/H.binaryproto" }}'))
    from_bottom = make_net(tmp_path, text + inputs(H=(3, 3)) + layer("InfogainLoss", ("x", "label", "H"), ("loss",)))
    want = from_bottom.forward(x=x, label=label, H=h)["loss"]
    assert float(from_file.forward(x=x, label=label)["loss"]) == pytest.approx(float(want), rel=1e-6)


@pytest.mark.parametrize("type_", ["RNN", "LSTM"])
def test_recurrent_state_carries_into_the_next_forward_as_caffe(tmp_path, type_):
    """Without expose_hidden, Caffe copies the final state of a forward into the next one's
    initial state: a second batch with cont 1 at t = 0 continues the first."""
    manifest, arrays = extras()
    case = manifest[f"recurrent_state_{type_}"]
    net = make_net(tmp_path, case["prototxt"], arrays[f"recurrent_state_{type_}/caffemodel"])
    for batch in case["batches"]:
        out = net.forward(x=arrays[batch["x"]], cont=arrays[batch["cont"]])
        assert rel_error(out["y"], arrays[batch["y"]]) <= FORWARD_TOL


def test_recurrent_state_restarts_when_the_streams_change(tmp_path):
    """A different number of streams N restarts the carried state at zeros (Caffe reuses memory)."""
    text = inputs(x=(2, 3, 2), cont=(2, 3)) + layer("LSTM", ("x", "cont"), ("y",),
                                                    'recurrent_param { num_output: 2 weight_filler { type: "gaussian" } }')
    net = make_net(tmp_path, text)
    x = RNG.standard_normal((2, 3, 2)).astype(np.float32)
    starts = np.ones((2, 3), np.float32)
    starts[0] = 0
    first = net.forward(x=x, cont=starts)["y"].copy()
    assert not np.allclose(net.forward(x=x, cont=np.ones((2, 3), np.float32))["y"], first)   # carried
    net.blobs["x"].reshape(2, 2, 2)
    net.blobs["cont"].reshape(2, 2)
    net.reshape()
    fresh = net.forward(x=x[:, :2], cont=np.ones((2, 2), np.float32))["y"]
    np.testing.assert_allclose(fresh, first[:, :2], rtol=1e-6)


@pytest.mark.parametrize("type_,states", [("RNN", ("h0",)), ("LSTM", ("h0", "c0"))])
def test_exposed_initial_state_gets_no_gradient(tmp_path, type_, states):
    """Caffe's oddity: the exposed h_0 (c_0) bottoms share only their data with the unrolled net,
    so they get no gradient, even under force_backward; x does."""
    text = "force_backward: true\n" + inputs(x=(3, 2, 2), cont=(3, 2), **{s: (1, 2, 3) for s in states})
    tops = ("y",) + tuple(s.replace("0", "T") for s in states)
    text += layer(type_, ("x", "cont") + states, tops,
                  'recurrent_param { num_output: 3 expose_hidden: true weight_filler { type: "gaussian" } }')
    net = make_net(tmp_path, text)
    feed = {s: RNG.standard_normal((1, 2, 3)).astype(np.float32) for s in states}
    net.forward(x=RNG.standard_normal((3, 2, 2)).astype(np.float32), cont=np.ones((3, 2), np.float32), **feed)
    net.blobs["y"].diff[...] = 1
    net.backward()
    assert np.abs(net.blobs["x"].diff).max() > 0
    for state in states:
        assert not net.blobs[state].diff.any()


# ------------------------------------------------------------------ behaviour beyond the fixtures

def test_filter_with_nothing_selected_gives_empty_tops_and_zero_gradient(tmp_path):
    """Zero selected items: empty tops, as Caffe; the backward gives zeros (Caffe divides by the
    empty top's zero batch there and dies)."""
    text = "force_backward: true\n" + inputs(x=(3, 2), s=(3, 1)) + layer("Filter", ("x", "s"), ("y",))
    net = make_net(tmp_path, text)
    assert net.blobs["y"].shape == (3, 2)   # Caffe's first Reshape: every item
    out = net.forward(x=np.ones((3, 2), np.float32), s=np.zeros((3, 1), np.float32))
    assert out["y"].shape == (0, 2)
    net.backward(y=np.zeros((0, 2), np.float32))
    assert net.blobs["x"].diff.shape == (3, 2) and not net.blobs["x"].diff.any()


def test_argmax_passes_no_gradient(tmp_path):
    """Caffe's ArgMax has no backward; its top is a constant for autograd."""
    net = make_net(tmp_path, inputs(x=(2, 5)) + layer("ArgMax", ("x",), ("y",), "argmax_param { out_max_val: true }"))
    x = torch.randn(2, 5, requires_grad=True)
    assert not net.run({"x": x})["y"].requires_grad


def test_parameter_layer_is_a_learnable_blob_saved_by_name(tmp_path):
    text = layer("Parameter", (), ("p",), "parameter_param { shape { dim: 2 dim: 3 } } param { lr_mult: 0.5 }")
    net = make_net(tmp_path, text)
    [info] = net.learnable_params()
    assert (info.layer, info.index, tuple(info.param.shape), info.lr_mult) == ("l", 0, (2, 3), 0.5)
    net.params["l"][0].data[...] = np.arange(6).reshape(2, 3)
    net.save(str(tmp_path / "p.caffemodel"))
    again = caffe.Net(str(tmp_path / "net.prototxt"), str(tmp_path / "p.caffemodel"), caffe.TEST)
    np.testing.assert_array_equal(again.forward()["p"], np.arange(6).reshape(2, 3))


def test_softmax_with_loss_caps_each_position_at_minus_log_flt_min(tmp_path):
    """-log(max(p, FLT_MIN)) per position (87.34 at most), gradient softmax - onehot (uncapped)."""
    net = make_net(tmp_path, "force_backward: true\n" + inputs(x=(2, 3), label=(2,))
                   + layer("SoftmaxWithLoss", ("x", "label"), ("loss",), "loss_param { normalization: NONE }"))
    x = np.array([[700, -700, 0], [1, 2, 3]], np.float32)
    label = np.array([1, 2], np.float32)
    loss = float(net.forward(x=x, label=label)["loss"])
    e = np.exp(np.float64(x[1]) - x[1].max())
    expected = -np.log(np.float64(np.finfo(np.float32).tiny)) - np.log(e[2] / e.sum())
    assert loss == pytest.approx(expected, rel=1e-6)
    net.backward()
    onehot = np.eye(3)[label.astype(int)]
    probs = np.exp(x - x.max(1, keepdims=True))
    np.testing.assert_allclose(net.blobs["x"].diff, probs / probs.sum(1, keepdims=True) - onehot, atol=1e-6)


# ------------------------------------------------------------------ errors

BAD_PARAMETERS = [
    (inputs(x=(2, 3)), "ArgMax", ("x",), ("y",), "argmax_param { top_k: 4 axis: 1 }", "argmax_param.top_k 4"),
    (inputs(x=(2, 3)), "ArgMax", ("x",), ("y",), "argmax_param { axis: 2 }", "argmax_param.axis 2"),
    (inputs(x=(4, 3), i=(2, 2)), "BatchReindex", ("x", "i"), ("y",), "", "must be 1-D"),
    (inputs(x=(4, 3), s=(4, 2)), "Filter", ("x", "s"), ("y",), "", "selector"),
    (inputs(x=(4, 3), s=(3,)), "Filter", ("x", "s"), ("y",), "", "first axis"),
    (inputs(x=(4, 3), s=(4,)), "Filter", ("x", "s"), ("y", "z"), "", "one top per filtered bottom"),
    (inputs(x=(4, 3)), "Reduction", ("x",), ("y",), "reduction_param { axis: 2 }", "reduction_param.axis 2"),
    (inputs(x=(4, 6)), "Slice", ("x",), ("y", "z"), "slice_param { axis: 1 slice_dim: 1 }", "not both"),
    (inputs(x=(4, 6)), "Slice", ("x",), ("y", "z", "w"), "slice_param { slice_point: 3 slice_point: 2 }",
     "slice_point [3, 2]"),
    (inputs(x=(4, 6)), "Slice", ("x",), ("y", "z"), "slice_param { slice_point: 7 }", "slice_point [7]"),
    (inputs(x=(4, 6)), "Slice", ("x",), ("y", "z", "w"), "slice_param { slice_point: 3 }", "slice_point(s) for 3"),
    (inputs(x=(4, 5)), "Slice", ("x",), ("y", "z"), "", "do not divide"),
    (inputs(x=(4, 6)), "Slice", ("x",), ("y", "z"), "slice_param { slice_dim: 2 }", "slice_param.slice_dim 2"),
    (inputs(x=(4, 6)), "Tile", ("x",), ("y",), "", "tile_param.tiles is required"),
    (inputs(x=(4, 6)), "Tile", ("x",), ("y",), "tile_param { tiles: 0 }", "tile_param.tiles must be positive"),
    (inputs(x=(4, 6)), "Tile", ("x",), ("y",), "tile_param { axis: 3 tiles: 2 }", "tile_param.axis 3"),
    (inputs(x=(4, 3), y=(4, 2)), "EuclideanLoss", ("x", "y"), ("loss",), "", "same number of values"),
    (inputs(x=(4, 3), y=(3, 3)), "EuclideanLoss", ("x", "y"), ("loss",), "", "same first dimension"),
    (inputs(x=(4, 3), y=(4, 2)), "HingeLoss", ("x", "y"), ("loss",), "", "one label per item"),
    (inputs(a=(4, 3, 2), b=(4, 3, 2), s=(4,)), "ContrastiveLoss", ("a", "b", "s"), ("loss",), "", "N x C x 1 x 1"),
    (inputs(a=(4, 3), b=(4, 3), s=(3,)), "ContrastiveLoss", ("a", "b", "s"), ("loss",), "", "similarity"),
    (inputs(p=(4, 3), y=(4, 2)), "MultinomialLogisticLoss", ("p", "y"), ("loss",), "", "N x 1 x 1 x 1"),
    (inputs(x=(4, 3), y=(4,), H=(3, 2)), "InfogainLoss", ("x", "y", "H"), ("loss",), "", "3 x 3 values"),
    (inputs(x=(4, 3), y=(4,)), "InfogainLoss", ("x", "y"), ("loss",), "", "infogain_loss_param.source is required"),
    (inputs(x=(4, 3), y=(4,)), "InfogainLoss", ("x", "y"), ("loss",), 'infogain_loss_param { source: "/no/such/H" }',
     "infogain_loss_param.source: binaryproto not found: /no/such/H"),
    (inputs(x=(4, 3), y=(4,), H=(3, 3)), "InfogainLoss", ("x", "y", "H"), ("loss", "prob"), "",
     "loss_weight must be given for both tops"),
    (inputs(x=(4, 3), y=(4,), H=(3, 3)), "InfogainLoss", ("x", "y", "H"), ("loss",), "loss_param { normalize: true }",
     "loss_param.normalize"),
    (inputs(x=(4, 3), y=(4,), H=(3, 3)), "InfogainLoss", ("x", "y", "H"), ("loss",),
     "infogain_loss_param { axis: 2 }", "infogain_loss_param.axis 2"),
    (inputs(x=(3, 2, 4), c=(3, 2)), "LSTM", ("x", "c"), ("y",), "", "recurrent_param.num_output must be positive"),
    (inputs(x=(3, 2, 4), c=(3, 3)), "RNN", ("x", "c"), ("y",), "recurrent_param { num_output: 2 }", "bottom 1 (cont)"),
    (inputs(x=(3, 2, 4), c=(3, 2), s=(3, 5)), "RNN", ("x", "c", "s"), ("y",), "recurrent_param { num_output: 2 }",
     "x_static"),
    (inputs(x=(3, 2, 4), c=(3, 2), h=(1, 2, 3)), "RNN", ("x", "c", "h"), ("y", "hT"),
     "recurrent_param { num_output: 2 expose_hidden: true }", "h_0 must be (1, 2, 2)"),
    (inputs(x=(3, 2, 4), c=(3, 2)), "LSTM", ("x", "c"), ("y",), "recurrent_param { num_output: 2 expose_hidden: true }",
     "needs 4..5 bottom"),
    (inputs(c=(1, 2, 3), g=(1, 2, 8), k=(1, 2)), "LSTMUnit", ("c", "g", "k"), ("c1", "h1"), "", "4 x 3 values"),
    (inputs(c=(1, 2, 3), g=(1, 2, 12), k=(2, 2)), "LSTMUnit", ("c", "g", "k"), ("c1", "h1"), "", "one timestep"),
]


@pytest.mark.parametrize("prelude,type_,bottoms,tops,param,message", BAD_PARAMETERS,
                         ids=[f"{case[1]}-{case[5][:30]}" for case in BAD_PARAMETERS])
def test_bad_parameters_fail_at_build_naming_file_line_layer_and_field(tmp_path, prelude, type_, bottoms, tops,
                                                                       param, message):
    text = prelude + layer(type_, bottoms, tops, param)
    line = text[:text.index('name: "l"')].count("\n") + 1
    with pytest.raises(caffe.NetError) as err:
        make_net(tmp_path, text)
    assert f"net.prototxt:{line}: layer 'l' (type {type_})" in str(err.value)
    assert message in str(err.value)


BAD_INPUTS = [
    (inputs(x=(3, 4), y=(3,), H=(4, 4)), "InfogainLoss", ("x", "y", "H"), {"y": [0, 4, 1]}, "label 4 out of range [0, 4)"),
    (inputs(x=(3, 4), y=(3,)), "HingeLoss", ("x", "y"), {"y": [0, -1, 1]}, "label -1 out of range [0, 4)"),
    (inputs(x=(3, 4), y=(3,)), "MultinomialLogisticLoss", ("x", "y"), {"y": [7, 1, 1]}, "label 7 out of range [0, 4)"),
    (inputs(x=(3, 4), y=(3,)), "SoftmaxWithLoss", ("x", "y"), {"y": [0, 1, 9]}, "label 9 out of range [0, 4)"),
    (inputs(x=(3, 4), y=(2,)), "BatchReindex", ("x", "y"), {"y": [0, 3]}, "index 3.0 out of range for a batch of 3"),
]


@pytest.mark.parametrize("prelude,type_,bottoms,feed,message", BAD_INPUTS, ids=[case[1] for case in BAD_INPUTS])
def test_bad_inputs_fail_at_forward_naming_the_layer(tmp_path, prelude, type_, bottoms, feed, message):
    net = make_net(tmp_path, prelude + layer(type_, bottoms, ("out",)))
    for name, values in feed.items():   # pycaffe's forward(**inputs) must name every input: set these only
        net.blobs[name].data[...] = np.array(values, np.float32)
    with pytest.raises(ValueError) as err:
        net.forward()
    assert f"layer 'l' (type {type_}): {message}" in str(err.value)
