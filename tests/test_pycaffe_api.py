"""pycaffe's Net API on the engine, beyond what BVLC's suite checks: the index views, forward/backward
ranges and callbacks, backward before any forward, batching, weight sharing, HDF5 weights, the
MemoryData entry point, Python layers' learnable blobs (solver, save/load, sharing) and their
exceptions, DummyData, the process-wide functions. Each check compares with a second path (torch
autograd, numpy, a hand count)."""
import logging

import numpy as np
import pytest
import torch

from sec import caffe
from sec.caffe import blob as blob_module
from sec.caffe.layers import LAYER_TYPES

RNG = np.random.default_rng(7)

SMALL = """name: "small" force_backward: true
input: "x" input_shape { dim: 3 dim: 4 }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h" param { name: "w" }
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 } bias_term: false } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "y" param { name: "w" }
        inner_product_param { num_output: 4 bias_term: false } }
layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "y" bottom: "x" top: "loss" loss_weight: 2 }
"""


def build(tmp_path, text, phase=caffe.TRAIN, name="net.prototxt", **kwargs):
    path = tmp_path / name
    path.write_text(text)
    return caffe.Net(str(path), phase, **kwargs)


@pytest.fixture
def small(tmp_path):
    return build(tmp_path, SMALL)


def test_index_views_and_legacy_input_layer(small):
    """Caffe turns `input:` fields into a layer named "input"; the views index _blob_names."""
    assert small._layer_names == ["input", "ip", "relu", "ip2", "loss"]
    assert [layer.type for layer in small.layers] == ["Input", "InnerProduct", "ReLU", "InnerProduct",
                                                      "SigmoidCrossEntropyLoss"]
    assert small._blob_names == ["x", "h", "y", "loss"] and small._inputs == [0] and small._outputs == [3]
    assert small.blob_loss_weights == {"x": 0.0, "h": 0.0, "y": 0.0, "loss": 2.0}
    assert small._bottom_ids(4) == [2, 0] and small._top_ids(2) == [1]
    assert list(small.layer_dict) == small._layer_names and small.layer_dict["ip"] is small.layers[1]
    assert small.params["ip2"][0].param is small.params["ip"][0].param       # shared by name
    assert caffe.layer_type_list() == sorted(LAYER_TYPES)


def test_forward_returns_the_range_loss_and_backward_matches_autograd(small):
    x = RNG.random((3, 4)).astype(np.float32)
    small.blobs["x"].data[...] = x
    loss = small._forward(0, len(small.layers) - 1)
    assert loss == pytest.approx(2 * float(small.blobs["loss"].data), rel=1e-6)
    small.clear_param_diffs()
    small.backward()
    # second path: autograd on the torch side
    out = small.run({"x": torch.from_numpy(x).requires_grad_()})
    w = small.params["ip"][0].param
    grad_w, grad_x = torch.autograd.grad(small.total_loss(out), [w, out["x"]])
    np.testing.assert_allclose(small.params["ip"][0].diff, grad_w.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(small.blobs["x"].diff, grad_x.numpy(), rtol=1e-5, atol=1e-7)


def test_backward_before_any_forward_uses_the_blobs_as_caffe_does(small):
    """Caffe's backward reads the blobs' data and diffs; without a forward here the layers are
    recomputed from them. Same diffs as after a forward on the same data."""
    x = RNG.random((3, 4)).astype(np.float32)
    small.forward(x=x)
    small.clear_param_diffs()
    small.backward()
    after_forward = small.blobs["x"].diff.copy(), small.params["ip"][0].diff.copy()
    small.clear_param_diffs()
    small._record = None        # as a fresh net, or a forward run under torch.no_grad()
    small.backward()
    np.testing.assert_allclose(small.blobs["x"].diff, after_forward[0], rtol=1e-6)
    np.testing.assert_allclose(small.params["ip"][0].diff, after_forward[1], rtol=1e-6)


def test_callbacks_run_around_every_layer_of_the_range(small):
    seen = []
    for kind in ("before_forward", "after_forward", "before_backward", "after_backward"):
        getattr(small, kind)(lambda i, kind=kind: seen.append((kind, i)))
    small.forward(start="ip", end="relu")
    small.backward(start="relu", end="ip")
    assert seen == [("before_forward", 1), ("after_forward", 1), ("before_forward", 2), ("after_forward", 2),
                    ("before_backward", 2), ("after_backward", 2), ("before_backward", 1), ("after_backward", 1)]


def test_forward_all_and_forward_backward_all_batch_and_cut_the_padding(tmp_path):
    net = build(tmp_path, 'input: "x" input_shape { dim: 4 dim: 3 }\n'
                          'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
                          'inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }\n'
                          'force_backward: true\n')
    x = RNG.random((10, 3)).astype(np.float32)
    w = net.params["ip"][0].data.copy()
    b = net.params["ip"][1].data.copy()
    out = net.forward_all(x=x)
    np.testing.assert_allclose(out["y"], x @ w.T + b, rtol=1e-5)
    seed = RNG.random((10, 2)).astype(np.float32)
    outs, diffs = net.forward_backward_all(x=x, y=seed)
    np.testing.assert_allclose(outs["y"], x @ w.T + b, rtol=1e-5)
    np.testing.assert_allclose(diffs["x"], seed @ w, rtol=1e-5)
    assert diffs["x"].shape == (10, 3)
    with pytest.raises(Exception, match="Input is not batch sized"):
        net.forward(x=np.zeros((3, 3), np.float32))


def test_share_with_shares_data_not_diffs(tmp_path, small):
    other = build(tmp_path, SMALL, name="other.prototxt")
    other.share_with(small)
    small.params["ip"][0].data[0, 0] = 5.0
    assert other.params["ip"][0].data[0, 0] == 5.0
    small.params["ip"][0].diff[...] = 1.0
    assert not other.params["ip"][0].diff.any()
    bigger = build(tmp_path, 'input: "x" input_shape { dim: 3 dim: 5 }\n'
                             'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h" '
                             'inner_product_param { num_output: 4 bias_term: false } }\n', name="bigger.prototxt")
    with pytest.raises(ValueError, match="cannot share param 0 of layer 'ip'"):
        bigger.share_with(small)


def test_hdf5_weights_in_caffes_layout_round_trip(tmp_path, small):
    h5py = pytest.importorskip("h5py", reason="HDF5 weights need h5py")
    path = tmp_path / "w.h5"
    small.save_hdf5(str(path))
    with h5py.File(path, "r") as handle:
        assert list(handle) == ["data"]
        assert sorted(handle["data"]) == sorted(small._layer_names)      # a group for every layer
        assert list(handle["data/ip"]) == ["0"] and list(handle["data/ip2"]) == []   # shared: at its owner
        np.testing.assert_array_equal(handle["data/ip/0"][()], small.params["ip"][0].data)
    torch.manual_seed(3)
    other = build(tmp_path, SMALL, name="other.prototxt")
    other.load_hdf5(str(path))
    np.testing.assert_array_equal(other.params["ip"][0].data, small.params["ip"][0].data)
    other.params["ip"][0].data[...] = 0
    assert other.copy_from(str(path)).loaded == ["ip", "ip2"]           # copy_from recognises HDF5
    np.testing.assert_array_equal(other.params["ip2"][0].data, small.params["ip"][0].data)
    small.save(str(tmp_path / "w.caffemodel"))
    with pytest.raises(ValueError, match="not an HDF5 file"):
        other.load_hdf5(str(tmp_path / "w.caffemodel"))


def test_set_input_arrays_checks_as_pycaffe_and_hands_the_arrays_to_memory_data(tmp_path, small, monkeypatch):
    with pytest.raises(RuntimeError, match="first layer is a MemoryDataLayer"):
        small.set_input_arrays(np.zeros((2, 3, 1, 1), np.float32), np.zeros(2, np.float32))

    class StandIn:   # the interface of the data layers' MemoryData (reset(data, labels))
        kind = "data"
        got = []

        def __init__(self, lp, shapes, ctx):
            self.params = []

        def shapes(self, shapes):
            return [(2, 3, 1, 1), (2,)]

        def reset(self, data, labels):
            StandIn.got.append((data, labels))

        def forward(self):
            return torch.zeros(2, 3, 1, 1), torch.zeros(2)

    monkeypatch.setitem(LAYER_TYPES, "MemoryData", StandIn)
    net = build(tmp_path, 'layer { name: "m" type: "MemoryData" top: "d" top: "l" memory_data_param { '
                          'batch_size: 2 channels: 3 height: 1 width: 1 } }\n', name="memory.prototxt")
    data, labels = np.ones((4, 3, 1, 1), np.float32), np.arange(4, dtype=np.float32)
    net.set_input_arrays(data, labels)
    assert StandIn.got[0][0] is data and StandIn.got[0][1].shape == (4, 1, 1, 1)
    for bad, needle in [((np.ones((3, 3, 1, 1), np.float32), np.zeros(3, np.float32)), "multiple of batch size"),
                        ((np.ones((4, 2, 1, 1), np.float32), labels), "wrong number of channels"),
                        ((np.ones((4, 3, 1, 1)), labels), "must be float32"),
                        ((np.ones((4, 3, 1, 1), np.float32), np.zeros(2, np.float32)), "same first dimension")]:
        with pytest.raises(RuntimeError, match=needle):
            net.set_input_arrays(*bad)


def scale_net(extra=""):
    return ('input: "x" input_shape { dim: 2 dim: 3 }\n'
            'layer { name: "s" type: "Python" bottom: "x" top: "y" '
            'python_param { module: "pycaffe_layers" layer: "Scale" param_str: "3" } ' + extra + '}\n'
            'layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "y" bottom: "x" top: "loss" }\n')


def test_python_layer_blobs_are_parameters_saved_loaded_and_updated(tmp_path):
    net = build(tmp_path, scale_net("param { lr_mult: 2 decay_mult: 0 }"))
    infos = [(i.layer, i.index, i.lr_mult, i.decay_mult) for i in net.learnable_params()]
    assert infos == [("s", 0, 2.0, 0.0)]
    assert net.params["s"] is net.layer_dict["s"].blobs and net.params["s"][0].data[0] == 3.0
    x = RNG.random((2, 3)).astype(np.float32)
    net.forward(x=x)
    net.backward()
    # d loss / d w by finite differences of the forward
    grad = float(net.params["s"][0].diff[0])
    eps = 1e-2
    losses = []
    for w in (3 + eps, 3 - eps):
        net.params["s"][0].data[0] = w
        losses.append(float(net.forward(x=x)["loss"]))
    assert grad == pytest.approx((losses[0] - losses[1]) / (2 * eps), rel=1e-3)
    net.params["s"][0].data[0] = 4.5
    net.save(str(tmp_path / "s.caffemodel"))
    again = build(tmp_path, scale_net(), name="again.prototxt", weights=str(tmp_path / "s.caffemodel"))
    assert again.params["s"][0].data[0] == 4.5
    # the solver updates it: one SGD step, lr 0.1 x lr_mult 2, no momentum or decay
    (tmp_path / "solver.prototxt").write_text(f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.1 lr_policy: "fixed" '
                                              'max_iter: 1 snapshot_after_train: false display: 0\n')
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    solver.net.blobs["x"].data[...] = x
    before = float(solver.net.params["s"][0].data[0])
    solver.net.forward()
    solver.net.clear_param_diffs()
    solver.net.backward()
    expected = before - 0.1 * 2 * float(solver.net.params["s"][0].diff[0])
    solver.step(1)
    assert float(solver.net.params["s"][0].data[0]) == pytest.approx(expected, rel=1e-5)


def test_python_layer_blobs_share_by_param_name(tmp_path):
    text = scale_net('param { name: "w" }').replace(
        'layer { name: "loss"',
        'layer { name: "t" type: "Python" bottom: "y" top: "z" param { name: "w" } '
        'python_param { module: "pycaffe_layers" layer: "Scale" param_str: "7" } }\nlayer { name: "loss"')
    net = build(tmp_path, text)
    assert net.params["t"][0].param is net.params["s"][0].param
    # Caffe shares a blob after the layer's setup: the owner's value stands, not what "t" set (7).
    assert net.params["t"][0].data[0] == 3.0


def test_an_exception_in_setup_reaches_the_caller_as_itself_and_located(tmp_path):
    text = scale_net().replace('layer: "Scale"', 'layer: "Broken"')
    with pytest.raises(RuntimeError, match="broken on purpose") as info:
        build(tmp_path, text)
    assert isinstance(info.value, caffe.NetError)      # the project's tools catch it as one
    assert "net.prototxt:2: layer 's' (type Python)" in str(info.value)


def test_dummy_data_keeps_constant_tops_and_refills_the_others(tmp_path):
    text = ('layer { name: "d" type: "DummyData" top: "a" top: "b" top: "c" dummy_data_param { '
            'shape { dim: 2 dim: 3 } data_filler { type: "constant" value: 1.5 } '
            'data_filler { type: "uniform" min: 2 max: 3 } data_filler { type: "gaussian" std: 1 } } }\n')
    net = build(tmp_path, text)
    assert net.blobs["a"].data.tolist() == [[1.5] * 3] * 2               # filled at setup
    assert not net.blobs["b"].data.any() and not net.blobs["c"].data.any()  # zeros until the first forward
    net.blobs["a"].data[0, 0] = -4.0
    first = {n: net.forward(blobs=["a", "b", "c"])[n].copy() for n in "abc"}
    second = {n: net.forward(blobs=["a", "b", "c"])[n].copy() for n in "abc"}
    assert first["a"][0, 0] == -4.0 and second["a"][0, 0] == -4.0          # the user's write is kept
    assert ((first["b"] >= 2) & (first["b"] <= 3)).all() and not np.array_equal(first["b"], second["b"])
    assert not np.array_equal(first["c"], second["c"])


@pytest.mark.parametrize("param, shapes", [
    ("num: 2 channels: 3 height: 4 width: 5", [(2, 3, 4, 5), (2, 3, 4, 5)]),
    ("num: 2 num: 7 channels: 1 height: 1 width: 1", [(2, 1, 1, 1), (7, 1, 1, 1)]),
    ("shape { dim: 3 } shape { dim: 1 dim: 2 }", [(3,), (1, 2)]),
])
def test_dummy_data_shapes(tmp_path, param, shapes):
    net = build(tmp_path, f'layer {{ name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param {{ {param} }} }}\n')
    assert [net.blobs[n].shape for n in "ab"] == shapes


@pytest.mark.parametrize("param, needle", [
    ("shape { dim: 1 } num: 1 channels: 1 height: 1 width: 1", "both shape and legacy"),
    ("shape { dim: 1 } data_filler { } data_filler { } data_filler { }", "3 data_filler given"),
    ("num: 1 num: 1 num: 1 channels: 1 height: 1 width: 1", "num must be given once or once per top"),
])
def test_dummy_data_errors_name_the_field(tmp_path, param, needle):
    with pytest.raises(caffe.NetError, match=needle):
        build(tmp_path, f'layer {{ name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param {{ {param} }} }}\n')


def test_random_seed_repeats_fillers_and_timer_measures(tmp_path):
    caffe.set_random_seed(11)
    a = build(tmp_path, SMALL).params["ip"][0].data.copy()
    caffe.set_random_seed(11)
    b = build(tmp_path, SMALL).params["ip"][0].data.copy()
    np.testing.assert_array_equal(a, b)
    timer = caffe.Timer()
    assert timer.ms == 0.0
    timer.start()
    total = sum(range(100000))
    timer.stop()
    assert total and timer.ms > 0
    caffe.set_solver_count(4)
    caffe.set_solver_rank(2)
    assert (caffe.solver_count(), caffe.solver_rank()) == (4, 2)
    caffe.set_solver_count(1)
    caffe.set_solver_rank(0)


def test_init_log_writes_glog_lines(capsys):
    caffe.init_log(0, True)
    caffe.log("hello from pycaffe")
    err = capsys.readouterr().err
    assert "] hello from pycaffe" in err and err.lstrip().startswith("I")
    logger = logging.getLogger("sec")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    with pytest.raises(ValueError, match="init_log: level must be one of"):
        caffe.init_log(7)


def test_a_diff_written_before_the_gradient_was_cleared_is_dropped():
    """Issue 21: on CUDA, net.params[..][i].diff written between solver steps met a gradient the
    step had set to None (None.copy_). Caffe's step zeroes the diffs first: the write is dropped."""
    param = torch.nn.Parameter(torch.ones(2))
    param.grad = torch.zeros(2)
    array = np.zeros(2, np.float32)
    pending = {(id(param), "diff"): (param, "diff", array, array.copy())}
    array[...] = 5
    param.grad = None                               # the solver's step clears the gradient
    blob_module.write_back(pending)
    assert param.grad is None and pending == {}
    data = np.ones(2, np.float32)
    pending = {(id(param), "data"): (param, "data", data, data.copy())}
    data[0] = 3
    blob_module.write_back(pending)
    assert param.detach().tolist() == [3.0, 1.0]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_param_diffs_written_between_solver_steps_on_cuda(tmp_path):
    (tmp_path / "solver.prototxt").write_text(f'net: "{tmp_path / "net.prototxt"}" base_lr: 0.1 lr_policy: "fixed" '
                                              'max_iter: 3 snapshot_after_train: false display: 0\n')
    build(tmp_path, scale_net())
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"), device="cuda")
    for _ in range(3):
        solver.net.params["s"][0].diff[...] = 1.0     # was: AttributeError on None.copy_
        solver.step(1)
    assert np.isfinite(solver.net.params["s"][0].data).all()
