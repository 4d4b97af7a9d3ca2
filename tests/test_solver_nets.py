"""The solver with real sec.caffe nets: Caffe's parameter list (BatchNorm's blobs at lr_mult 0), test
nets (test_iter, test_interval, test_initialization, test_compute_loss, test_state, inline nets,
ShareTrainedLayersWith), pycaffe's callbacks, action requests and Solve's last display and test."""
import logging
import re
import sys

import numpy as np
import pytest
import torch

from sec import caffe

BATCH, FEATURES, CLASSES = 4, 3, 2

DATA_LAYER = '''
import numpy as np
from sec.caffe import Layer


class Batches(Layer):
    """Batch k of a fixed sequence at the k-th forward: x (4 x 3) ~ N(0, 1), labels in {0, 1}."""

    def setup(self, bottom, top):
        self.k = 0

    def reshape(self, bottom, top):
        top[0].reshape(4, 3)
        top[1].reshape(4)

    def forward(self, bottom, top):
        rng = np.random.default_rng(self.k)
        top[0].data[...] = rng.standard_normal((4, 3))
        top[1].data[...] = rng.integers(0, 2, 4)
        self.k += 1

    def backward(self, top, propagate_down, bottom):
        pass
'''

NET = '''name: "tiny"
layer { name: "data" type: "Python" top: "x" top: "label" python_param { module: "solver_batches" layer: "Batches" } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "score"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "score" bottom: "label" top: "accuracy" include { phase: TEST } }
layer { name: "staged" type: "Accuracy" bottom: "score" bottom: "label" top: "staged" include { stage: "val" } }
'''


@pytest.fixture
def batches_module(tmp_path, monkeypatch):
    (tmp_path / "solver_batches.py").write_text(DATA_LAYER)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("solver_batches", None)


def write(tmp_path, net_text=NET, **fields):
    (tmp_path / "net.prototxt").write_text(net_text)
    defaults = dict(net=f'"{tmp_path / "net.prototxt"}"', base_lr=0.1, lr_policy='"fixed"', momentum=0.9,
                    max_iter=4, snapshot_prefix=f'"{tmp_path / "snap"}"', random_seed=0)
    defaults.update(fields)
    lines = [f"{key}: {item}" for key, value in defaults.items() for item in (value if isinstance(value, list) else [value])]
    path = tmp_path / "solver.prototxt"
    path.write_text("\n".join(lines) + "\n")
    return path


def caffe_scores(weight, bias, batches):
    """Softmax loss and accuracy of each batch index by numpy, averaged (Caffe's Solver::Test)."""
    losses, accuracies = [], []
    for k in batches:
        rng = np.random.default_rng(k)
        x, label = rng.standard_normal((4, 3)), rng.integers(0, 2, 4)
        scores = x @ weight.T + bias
        log_probs = scores - np.log(np.exp(scores).sum(1, keepdims=True))
        losses.append(-log_probs[np.arange(4), label].mean())
        accuracies.append((scores.argmax(1) == label).mean())
    return float(np.mean(accuracies)), float(np.mean(losses))


def test_test_nets_score_with_the_train_nets_weights_as_caffe_logs_them(tmp_path, batches_module, caplog):
    path = write(tmp_path, base_lr=0.0, test_iter=3, test_interval=2, test_compute_loss="true")
    solver = caffe.get_solver(str(path))
    assert len(solver.test_nets) == 1 and solver.test_nets[0].phase == caffe.TEST
    ip = [solver.net.params["ip"][i].data.copy() for i in range(2)]
    assert not np.array_equal(solver.test_nets[0].params["ip"][0].data, ip[0])     # its own filler values
    with caplog.at_level(logging.INFO, logger="sec.caffe.solver"):
        solver.solve()
    text = caplog.text
    tests = [int(m) for m in re.findall(r"Iteration (\d+), Testing net \(#0\)", text)]
    assert tests == [0, 2, 4]                      # test_initialization, every test_interval, after Solve
    accuracy, loss = caffe_scores(*ip, range(6, 9))  # the third test: the test net's batches 6, 7, 8
    assert solver.test_results[0]["accuracy"] == pytest.approx([accuracy], rel=1e-6)
    assert solver.test_results[0]["loss"] == pytest.approx([loss], rel=1e-5)
    assert f"    Test net output #0: accuracy = {accuracy:.6g}" in text
    logged = re.findall(r"    Test net output #1: loss = (\S+) \(\* 1 = (\S+) loss\)", text)[-1]
    assert [float(v) for v in logged] == pytest.approx([loss, loss], rel=1e-5)
    assert float(re.findall(r"Test loss: (\S+)", text)[-1]) == pytest.approx(loss, rel=1e-5)
    np.testing.assert_array_equal(solver.test_nets[0].params["ip"][0].data, ip[0])


def test_test_nets_share_the_train_blobs_and_follow_each_update(tmp_path, batches_module):
    solver = caffe.get_solver(str(write(tmp_path, test_iter=1, test_interval=1)))
    solver.step(2)
    train, test = solver.net.params["ip"][0], solver.test_nets[0].params["ip"][0]
    assert test.param.data_ptr() == train.param.data_ptr()
    np.testing.assert_array_equal(test.data, train.data)
    other = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST)
    solver.share_weights(other)                    # pycaffe's solver.share_weights(net)
    assert other.params["ip"][1].param.data_ptr() == solver.net.params["ip"][1].param.data_ptr()


def test_test_initialization_false_and_several_test_nets_with_states(tmp_path, batches_module, caplog):
    path = write(tmp_path, test_iter=[1, 2], test_interval=2, test_initialization="false",
                 test_state=["{ stage: 'val' }", "{ }"])
    solver = caffe.get_solver(str(path))
    assert len(solver.test_nets) == 2
    assert "staged" in solver.test_nets[0].outputs and "staged" not in solver.test_nets[1].outputs
    with caplog.at_level(logging.INFO, logger="sec.caffe.solver"):
        solver.step(3)
    assert re.findall(r"Iteration (\d+), Testing net \(#(\d)\)", caplog.text) == [("2", "0"), ("2", "1")]


def test_inline_net_param_is_the_train_and_the_test_net(tmp_path, batches_module):
    inline = "{ " + NET.replace("\n", " ") + " }"
    path = write(tmp_path, test_iter=1, test_interval=5, net_param=inline)
    text = path.read_text().replace(f'net: "{tmp_path / "net.prototxt"}"\n', "")
    path.write_text(text)
    solver = caffe.get_solver(str(path))
    assert solver.net.name == "tiny" and len(solver.test_nets) == 1
    solver.step(1)
    assert solver.iter == 1


@pytest.mark.parametrize("fields, message", [
    (dict(test_iter=[1, 2], test_net='"elsewhere.prototxt"'), "not found"),
    (dict(test_iter=1, test_interval=0), "test_interval must be positive"),
    (dict(test_iter=1, test_interval=1, test_state=["{ }", "{ }"]), "test_state must be unspecified or specified once"),
    (dict(train_net='"x.prototxt"'), "must not contain more than one"),
])
def test_test_and_train_net_fields_are_checked(tmp_path, batches_module, fields, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        caffe.get_solver(str(write(tmp_path, **fields)))


BN_NET = '''name: "bn"
layer { name: "data" type: "Python" top: "x" top: "label" python_param { module: "solver_batches" layer: "Batches" } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h" inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "bn" type: "BatchNorm" bottom: "h" top: "h" }
layer { name: "scale" type: "Scale" bottom: "h" top: "h" scale_param { bias_term: true } }
layer { name: "ip2" type: "InnerProduct" bottom: "h" top: "score" param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
'''


@pytest.mark.parametrize("kind", ["SGD", "Adam"])
def test_batchnorm_blobs_are_solver_blobs_that_the_update_leaves_alone(tmp_path, batches_module, kind):
    """Caffe's learnable_params lists BatchNorm's three blobs (lr_mult forced to 0, decay_mult 1):
    the history has Caffe's length, the statistics change only in the forward."""
    solver = caffe.get_solver(str(write(tmp_path, BN_NET, type=f'"{kind}"', weight_decay=0.01)))
    layout = [(i.layer, i.index, i.lr_mult, i.decay_mult) for i in solver.params]
    assert layout == [("ip1", 0, 1, 1), ("ip1", 1, 1, 1), ("bn", 0, 0, 1), ("bn", 1, 0, 1), ("bn", 2, 0, 1),
                      ("scale", 0, 1, 1), ("scale", 1, 1, 1), ("ip2", 0, 1, 1), ("ip2", 1, 2, 0)]
    assert len(solver.history) == (2 if kind == "Adam" else 1) * 9
    before_update = []
    solver.add_callback(lambda: None,
                        lambda: before_update.append([b.data.copy() for b in solver.net.params["bn"]]))
    solver.step(3)
    for blob, value in zip(solver.net.params["bn"], before_update[-1]):
        np.testing.assert_array_equal(blob.data, value)
    assert solver.net.params["bn"][2].data[0] == pytest.approx(1 + 0.999 + 0.999 ** 2)
    first_moment = solver.history[2]
    if kind == "SGD":
        assert not first_moment.any()              # momentum x 0 + lr_mult 0 x (decay x w)
    else:
        assert first_moment.abs().sum() > 0        # Adam's m takes the decayed diff, as in Caffe


def test_batchnorm_lr_mult_is_checked_and_three_old_specs_upgraded_as_caffe(tmp_path, batches_module):
    """Caffe's BatchNormLayer::LayerSetUp refuses a spec with lr_mult != 0 (default 1); three specs
    (the old definition) are upgraded to lr_mult and decay_mult 0 when the prototxt is read, so with
    Adam even the decayed diff stays out of the history (tests/fixtures/caffe/edge_nets.json holds
    Caffe's verdicts on such nets)."""
    net = BN_NET.replace('name: "bn"\n', 'name: "bn_net"\n')     # the line of layer "bn", not of the net's name
    for specs, field in (("param { lr_mult: 0 } param { lr_mult: 0.5 }", "param[1].lr_mult is 0.5"),
                         ("param { decay_mult: 0 }", "param[0].lr_mult is 1 (not given")):
        with pytest.raises(caffe.NetError, match=re.escape(field)) as err:
            caffe.get_solver(str(write(tmp_path, net.replace('top: "h" }', f'top: "h" {specs} }}', 1))))
        assert "net.prototxt:4: layer 'bn' (type BatchNorm)" in str(err.value)
    old = BN_NET.replace('top: "h" }', 'top: "h" param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 1 } }', 1)
    solver = caffe.get_solver(str(write(tmp_path, old, type='"Adam"', weight_decay=0.01)))
    assert [(i.lr_mult, i.decay_mult) for i in solver.params if i.layer == "bn"] == [(0, 0)] * 3
    solver.step(2)
    assert not solver.history[2].any()


def test_callbacks_run_in_caffes_order_and_a_stop_request_ends_with_a_snapshot(tmp_path, batches_module):
    solver = caffe.get_solver(str(write(tmp_path)))
    calls = []
    solver.add_callback(lambda: calls.append(("start", solver.iter)), lambda: calls.append(("ready", solver.iter)))
    requests = iter(["none", "snapshot", "stop"])
    solver.action_request = lambda: next(requests)
    solver.solve()
    assert calls == [("start", 0), ("ready", 0), ("start", 1), ("ready", 1), ("start", 2), ("ready", 2)]
    assert solver.iter == 3 and solver.requested_early_exit
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".solverstate") == ["snap_iter_2.solverstate",
                                                                                       "snap_iter_3.solverstate"]


def test_solve_ends_with_caffes_forward_only_display(tmp_path, batches_module, caplog):
    solver = caffe.get_solver(str(write(tmp_path, display=2, average_loss=1, max_iter=2)))
    with caplog.at_level(logging.INFO, logger="sec.caffe.solver"):
        solver.solve()
    lines = [line for line in caplog.text.splitlines() if "loss = " in line and "output" not in line]
    assert re.search(r"Iteration 2, loss = \S+$", lines[-1])
    assert solver.net.layers[0].type == "Python" and solver.iter == 2
    with torch.no_grad():
        assert solver.smoothed_loss == pytest.approx(solver.net.blobs["loss"].data.item(), rel=1e-6)
