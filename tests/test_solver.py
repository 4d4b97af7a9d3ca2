"""sec.caffe.solver: Caffe's SGD against hand-computed steps, snapshots, resume, NaN handling.

The solver is driven through a tiny stand-in net (`TinyNet`) implementing the torch side of
the "sec.caffe Net" contract: learnable_params, run, loss_weights, total_loss, outputs,
layer_params, data_layers. Its data source draws from a seeded numpy generator and it uses
dropout, so resume tests exercise both the data state and the torch RNG.
"""
import logging
import math
import os
import re
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sec.caffe import formats
from sec.caffe import solver as solver_mod
from sec.caffe.solver import (NetOverrides, NonFiniteLossError, SGDSolver, apply_net_overrides,
                              learning_rate, snapshot_paths)
from sec.proto import caffe_pb2

REPO_ROOT = Path(__file__).resolve().parents[1]
ParamInfo = namedtuple("ParamInfo", "layer index param lr_mult decay_mult")


class TinySource:
    """Stand-in for sec.data.ImageDataSource: a seeded stream of (N, 4) batches."""

    def __init__(self, seed=0, batch=3):
        self.rng = np.random.default_rng(seed)
        self.batch = batch

    def next_batch(self):
        return self.rng.standard_normal((self.batch, 4)).astype(np.float32)

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]


class TinyNet(torch.nn.Module):
    """Linear layer 'fc' (4 -> 2, lr_mult 1/2, decay_mult 1/0) + dropout + squared loss 'loss'."""

    def __init__(self, prototxt=None, phase=0, nan_at_call=None):
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.weight = torch.nn.Parameter(torch.randn(2, 4, generator=gen))
        self.bias = torch.nn.Parameter(torch.randn(2, generator=gen))
        self.source = TinySource()
        self.loss_weights = {"loss": 1.0}
        self.outputs = ["loss"]
        self.calls = 0
        self.nan_at_call = nan_at_call

    def learnable_params(self):
        return [ParamInfo("fc", 0, self.weight, 1.0, 1.0), ParamInfo("fc", 1, self.bias, 2.0, 0.0)]

    def layer_params(self):
        return [("fc", "InnerProduct", [self.weight, self.bias])]

    def data_layers(self):
        return [self.source]

    def run(self, feed=None):
        x = torch.from_numpy(self.source.next_batch())
        y = torch.nn.functional.dropout(x @ self.weight.t() + self.bias, 0.5, training=True)
        loss = (y - 1.0).pow(2).mean().reshape(1)
        if self.calls == self.nan_at_call:
            loss = loss * float("nan")
        self.calls += 1
        return {"data": x, "fc": y, "loss": loss}

    def total_loss(self, outputs):
        return sum(w * outputs[name].sum() for name, w in self.loss_weights.items())


class LinearNet(TinyNet):
    """Loss = sum(c_k * w) with c_k cycling through `coefs`: the gradient is known exactly."""

    def __init__(self, coefs):
        super().__init__()
        self.coefs = [(torch.tensor(cw, dtype=torch.float32), torch.tensor(cb, dtype=torch.float32))
                      for cw, cb in coefs]

    def run(self, feed=None):
        cw, cb = self.coefs[self.calls % len(self.coefs)]
        self.calls += 1
        return {"loss": ((cw * self.weight).sum() + (cb * self.bias).sum()).reshape(1)}


def write_solver(tmp_path, **fields):
    net = tmp_path / "tiny.prototxt"
    net.write_text('name: "tiny"\n')
    defaults = dict(net=str(net), base_lr=0.1, lr_policy="fixed", momentum=0.9, weight_decay=0.01,
                    max_iter=6, snapshot_prefix=str(tmp_path / "snap" / "tiny"), random_seed=0, display=0)
    defaults.update(fields)
    lines = []
    for key, value in defaults.items():
        for item in (value if isinstance(value, list) else [value]):
            lines.append(f'{key}: "{item}"' if isinstance(item, str) else f"{key}: {item}")
    path = tmp_path / "solver.prototxt"
    path.write_text("\n".join(lines) + "\n")
    return path


def solver_param(**fields):
    param = caffe_pb2.SolverParameter()
    for key, value in fields.items():
        if isinstance(value, list):
            getattr(param, key).extend(value)
        else:
            setattr(param, key, value)
    return param


# ----- learning-rate policies (Caffe's formulas, computed by hand) -----------------------------
@pytest.mark.parametrize("fields, iteration, expected", [
    (dict(lr_policy="fixed", base_lr=0.5), 1234, 0.5),
    (dict(lr_policy="step", base_lr=0.5, gamma=0.1, stepsize=3), 2, 0.5),
    (dict(lr_policy="step", base_lr=0.5, gamma=0.1, stepsize=3), 3, 0.05),
    (dict(lr_policy="step", base_lr=0.5, gamma=0.1, stepsize=3), 7, 0.005),
    (dict(lr_policy="exp", base_lr=0.5, gamma=0.5), 3, 0.0625),
    (dict(lr_policy="inv", base_lr=0.5, gamma=0.25, power=0.5), 12, 0.25),      # 0.5 * 4**-0.5
    (dict(lr_policy="poly", base_lr=0.5, power=2.0, max_iter=10), 5, 0.125),     # 0.5 * 0.5**2
    (dict(lr_policy="poly", base_lr=0.5, power=1.0, max_iter=10), 10, 0.0),
    (dict(lr_policy="sigmoid", base_lr=0.5, gamma=1.0, stepsize=4), 4, 0.25),
])
def test_lr_policies_match_caffe_formulas(fields, iteration, expected):
    rate, step = learning_rate(solver_param(**fields), iteration)
    assert rate == pytest.approx(expected, rel=1e-6)
    assert step == (iteration // fields["stepsize"] if fields["lr_policy"] == "step" else 0)   # Caffe's current_step


def test_multistep_advances_current_step_at_each_stepvalue():
    param = solver_param(lr_policy="multistep", base_lr=0.5, gamma=0.5, stepvalue=[2, 5])
    step, rates = 0, []
    for it in range(7):
        rate, step = learning_rate(param, it, step)
        rates.append(rate)
    assert rates == pytest.approx([0.5, 0.5, 0.25, 0.25, 0.25, 0.125, 0.125])
    assert step == 2


def test_multistep_passes_a_repeated_stepvalue_one_iteration_later():
    """Caffe's GetLearningRate advances current_step by at most one stepvalue per call."""
    param = solver_param(lr_policy="multistep", base_lr=0.5, gamma=0.5, stepvalue=[2, 2, 4])
    step, rates = 0, []
    for it in range(6):
        rate, step = learning_rate(param, it, step)
        rates.append(rate)
    assert rates == pytest.approx([0.5, 0.5, 0.25, 0.125, 0.0625, 0.0625])


def test_unknown_policy_and_missing_stepsize_are_named():
    with pytest.raises(ValueError, match="lr_policy 'cosine'"):
        learning_rate(solver_param(lr_policy="cosine", base_lr=1.0), 0)
    with pytest.raises(ValueError, match="stepsize"):
        learning_rate(solver_param(lr_policy="step", base_lr=1.0, gamma=0.1), 0)


# ----- the SGD update against a hand-computed trajectory ----------------------------------------
def reference_sgd(w0, grads_per_iter, lr_fn, momentum, weight_decay, lr_mult, decay_mult, l1=False):
    """float64 reference: v = m*v + lr*lr_mult*(g + wd*dm*reg(w)); w -= v."""
    w, v = np.array(w0, np.float64), np.zeros_like(np.asarray(w0, np.float64))
    for it, g in enumerate(grads_per_iter):
        reg = np.sign(w) if l1 else w
        v = momentum * v + lr_fn(it) * lr_mult * (g + weight_decay * decay_mult * reg)
        w = w - v
    return w, v


@pytest.mark.parametrize("policy, l1", [("fixed", False), ("step", False), ("fixed", True)])
def test_update_matches_hand_computed_steps(tmp_path, policy, l1):
    cw = np.arange(8, dtype=np.float32).reshape(2, 4) / 8 - 0.3
    cb = np.array([0.7, -0.2], np.float32)
    extra = dict(lr_policy=policy, gamma=0.5, stepsize=2) if policy == "step" else {}
    if l1:
        extra["regularization_type"] = "L1"
    path = write_solver(tmp_path, **extra)
    net = LinearNet([(cw, cb)])
    w0, b0 = net.weight.detach().numpy().copy(), net.bias.detach().numpy().copy()
    solver = SGDSolver(path, net_factory=lambda *_: net)
    solver.step(5)
    lr_fn = (lambda it: 0.1 * 0.5 ** (it // 2)) if policy == "step" else (lambda it: 0.1)
    w_ref, vw_ref = reference_sgd(w0, [cw] * 5, lr_fn, 0.9, 0.01, 1.0, 1.0, l1)
    b_ref, vb_ref = reference_sgd(b0, [cb] * 5, lr_fn, 0.9, 0.01, 2.0, 0.0, l1)
    np.testing.assert_allclose(net.weight.detach().numpy(), w_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.bias.detach().numpy(), b_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(solver.history[0].numpy(), vw_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(solver.history[1].numpy(), vb_ref, rtol=1e-5, atol=1e-6)
    assert solver.iter == 5


def test_iter_size_averages_accumulated_gradients(tmp_path):
    c1 = (np.full((2, 4), 1.0, np.float32), np.array([1.0, -1.0], np.float32))
    c2 = (np.full((2, 4), -3.0, np.float32), np.array([3.0, 2.0], np.float32))
    net = LinearNet([c1, c2])
    w0, b0 = net.weight.detach().numpy().copy(), net.bias.detach().numpy().copy()
    solver = SGDSolver(write_solver(tmp_path, iter_size=2), net_factory=lambda *_: net)
    solver.step(3)
    assert net.calls == 6
    gw, gb = (c1[0] + c2[0]) / 2, (c1[1] + c2[1]) / 2
    w_ref, _ = reference_sgd(w0, [gw] * 3, lambda it: 0.1, 0.9, 0.01, 1.0, 1.0)
    b_ref, _ = reference_sgd(b0, [gb] * 3, lambda it: 0.1, 0.9, 0.01, 2.0, 0.0)
    np.testing.assert_allclose(net.weight.detach().numpy(), w_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.bias.detach().numpy(), b_ref, rtol=1e-5, atol=1e-6)


def test_clip_gradients_scales_the_global_norm_before_decay(tmp_path):
    cw = np.full((2, 4), 3.0, np.float32)
    cb = np.array([4.0, 0.0], np.float32)
    net = LinearNet([(cw, cb)])
    w0, b0 = net.weight.detach().numpy().copy(), net.bias.detach().numpy().copy()
    solver = SGDSolver(write_solver(tmp_path, clip_gradients=2.0), net_factory=lambda *_: net)
    solver.step(1)
    scale = 2.0 / math.sqrt(8 * 9 + 16)
    np.testing.assert_allclose(net.weight.detach().numpy(), w0 - 0.1 * (cw * scale + 0.01 * w0), rtol=1e-5)
    np.testing.assert_allclose(net.bias.detach().numpy(), b0 - 0.1 * 2.0 * cb * scale, rtol=1e-5)


def test_display_logs_caffe_style_lines(tmp_path, caplog):
    solver = SGDSolver(write_solver(tmp_path, display=2, average_loss=2), net_factory=TinyNet)
    with caplog.at_level(logging.INFO, logger="sec.caffe.solver"):
        solver.step(3)
    text = caplog.text
    assert re.search(r"Iteration 0 \(\S+ iter/s, \S+s/2 iters\), loss = ", text)
    assert re.search(r"Iteration 2 \(\S+ iter/s, \S+s/2 iters\), loss = ", text)
    assert "Train net output #0: loss = " in text and "(* 1 = " in text
    assert "Iteration 2, lr = 0.1" in text
    assert "Iteration 1," not in text


# ----- snapshots, resume, crashes, NaN ---------------------------------------------------------
def params_of(net):
    return [p.detach().numpy().copy() for p in (net.weight, net.bias)]


def test_resume_follows_the_uninterrupted_trajectory_bitwise(tmp_path):
    path = write_solver(tmp_path)
    straight = SGDSolver(path, net_factory=TinyNet)
    straight.step(6)

    first = SGDSolver(path, net_factory=TinyNet)
    first.step(3)
    state = first.snapshot()
    torch.manual_seed(123)                  # disturb every RNG the restore must bring back
    np.random.seed(123)
    resumed = SGDSolver(path, net_factory=TinyNet)
    resumed.net.source.rng = np.random.default_rng(99)
    resumed.restore(state)
    assert resumed.iter == 3
    resumed.step(3)
    for a, b in zip(params_of(straight.net), params_of(resumed.net)):
        assert np.array_equal(a, b)
    for a, b in zip(straight.history, resumed.history):
        assert torch.equal(a, b)


def test_resume_without_sidecar_differs_and_warns(tmp_path, caplog):
    path = write_solver(tmp_path)
    straight = SGDSolver(path, net_factory=TinyNet)
    straight.step(6)
    first = SGDSolver(path, net_factory=TinyNet)
    first.step(3)
    state = first.snapshot()
    os.remove(state + solver_mod.SIDECAR_SUFFIX)
    resumed = SGDSolver(path, net_factory=TinyNet)
    with caplog.at_level(logging.WARNING, logger="sec.caffe.solver"):
        resumed.restore(state)
    assert "no sidecar" in caplog.text
    resumed.step(3)
    assert not np.array_equal(params_of(straight.net)[0], params_of(resumed.net)[0])


def test_snapshot_files_are_caffe_formats(tmp_path):
    solver = SGDSolver(write_solver(tmp_path, snapshot=2), net_factory=TinyNet)
    solver.step(2)
    model, state, sidecar = snapshot_paths(tmp_path / "snap" / "tiny", 2)
    assert os.path.isfile(sidecar)
    weights = formats.read_caffemodel(model)
    assert [layer.name for layer in weights.layer] == ["fc"]
    np.testing.assert_array_equal(formats.blob_to_array(weights.layer[0].blobs[0]), params_of(solver.net)[0])
    saved = formats.read_solverstate(state)
    assert saved["iter"] == 2 and saved["learned_net"] == model
    np.testing.assert_array_equal(saved["history"][1], solver.history[1].numpy())


@pytest.mark.parametrize("crash_at", [1, 2, 3])
def test_crash_mid_snapshot_keeps_the_previous_snapshot(tmp_path, monkeypatch, crash_at):
    solver = SGDSolver(write_solver(tmp_path), net_factory=TinyNet)
    solver.step(2)
    solver.snapshot()
    old = snapshot_paths(tmp_path / "snap" / "tiny", 2)
    before = [open(f, "rb").read() for f in old]
    solver.step(2)
    real_replace, calls = os.replace, []

    def crash_on_nth_replace(src, dst):
        calls.append(dst)
        if len(calls) == crash_at:
            raise KeyboardInterrupt("killed mid-write")
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", crash_on_nth_replace)
    with pytest.raises(KeyboardInterrupt):
        solver.snapshot()                   # the iteration-4 snapshot dies part way
    monkeypatch.undo()
    assert [open(f, "rb").read() for f in old] == before
    assert formats.read_solverstate(old[1])["iter"] == 2
    assert not os.path.exists(snapshot_paths(tmp_path / "snap" / "tiny", 4)[1])
    assert [n for n in os.listdir(tmp_path / "snap") if n.endswith(".tmp")] == []
    resumed = SGDSolver(write_solver(tmp_path), net_factory=TinyNet)
    resumed.restore(old[1])
    assert resumed.iter == 2


def test_nan_loss_stops_naming_iteration_and_blob_and_keeps_last_snapshot(tmp_path):
    net = TinyNet(nan_at_call=4)
    solver = SGDSolver(write_solver(tmp_path, snapshot=2), net_factory=lambda *_: net)
    with pytest.raises(NonFiniteLossError, match=r"iteration 4: loss blob 'loss' is nan"):
        solver.step(6)
    model, state, _ = snapshot_paths(tmp_path / "snap" / "tiny", 4)
    assert solver.iter == 4 and solver.last_snapshot == state
    saved = formats.read_caffemodel(model)
    np.testing.assert_array_equal(formats.blob_to_array(saved.layer[0].blobs[0]), params_of(net)[0])
    assert not any("iter_5" in n or "iter_6" in n for n in os.listdir(tmp_path / "snap"))


def test_solve_snapshots_after_training_and_overrides_apply(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_solver(tmp_path, snapshot=4, max_iter=100)
    solver = SGDSolver(path, net_factory=TinyNet, max_iter=5, snapshot_prefix="out/run")
    solver.solve()
    assert solver.iter == 5
    assert sorted(n for n in os.listdir("out") if n.endswith(".solverstate")) == [
        "run_iter_4.solverstate", "run_iter_5.solverstate"]


def test_solver_type_unknown_mismatched_or_missing_net(tmp_path, caplog):
    with pytest.raises(ValueError, match=r"unknown solver type 'Adamax' \(known types: AdaDelta, AdaGrad, Adam, "):
        solver_mod.make_solver(write_solver(tmp_path, type="Adamax"), net_factory=TinyNet)
    with caplog.at_level(logging.WARNING, logger="sec.caffe.solver"):     # pycaffe's SGDSolver(path) ignores the type
        solver = SGDSolver(write_solver(tmp_path, type="Adam"), net_factory=TinyNet)
    assert "type 'Adam' run by SGDSolver" in caplog.text and len(solver.history) == 2
    assert type(solver_mod.make_solver(write_solver(tmp_path, type="Adam"), net_factory=TinyNet)).__name__ == "AdamSolver"
    with pytest.raises(FileNotFoundError, match="nowhere.prototxt"):
        SGDSolver(write_solver(tmp_path, net="nowhere.prototxt"), net_factory=TinyNet)


def test_net_overrides_rewrite_data_layer_and_python_params():
    net = formats.read_net_prototxt(str(REPO_ROOT / "models" / "synthetic" / "train.prototxt"))
    original_batch = [layer for layer in net.layer if layer.type == "ImageData"][0].image_data_param.batch_size
    assert original_batch != 3
    new = apply_net_overrides(net, NetOverrides(batch_size=3, source="/x/list.txt", root_folder="/x/",
                                                python_params={"AnnotationLayer": {"cues": "/x/c.pickle"}}))
    data = [layer for layer in new.layer if layer.type == "ImageData"][0].image_data_param
    assert (data.batch_size, data.source, data.root_folder) == (3, "/x/list.txt", "/x/")
    ann = [layer for layer in new.layer if layer.python_param.layer == "AnnotationLayer"][0]
    assert yaml.safe_load(ann.python_param.param_str) == {"cues": "/x/c.pickle", "num_classes": 7, "cue_size": 21}
    assert [layer for layer in net.layer if layer.type == "ImageData"][0].image_data_param.batch_size == original_batch
    with pytest.raises(ValueError, match="no Python layer"):
        apply_net_overrides(net, NetOverrides(python_params={"NoSuchLayer": {}}))


# ----- data parallel (gloo, 2 CPU processes) ---------------------------------------------------
RANK_COEFS = [(np.full((2, 4), 1.0, np.float32), np.array([2.0, -1.0], np.float32)),
              (np.full((2, 4), -0.5, np.float32), np.array([0.5, 4.0], np.float32))]
RANK_WEIGHTS = [8 / 15, 7 / 15]                 # a global batch of 15 split 8 + 7


def _distributed_worker(rank, tmp_path, results):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=rank, world_size=2)
    try:
        net = LinearNet([RANK_COEFS[rank]])
        if rank == 1:                           # rank 0's initial weights must win (broadcast)
            with torch.no_grad():
                net.weight.add_(5.0)
        solver = SGDSolver(write_solver(tmp_path / f"r{rank}"), net_factory=lambda *_: net,
                           rank_weight=RANK_WEIGHTS[rank])
        solver.step(3)
        results[rank] = [net.weight.detach().numpy().copy(), net.bias.detach().numpy().copy()]
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_data_parallel_update_equals_the_global_batch_gradient(tmp_path):
    import torch.multiprocessing as mp
    for rank in range(2):
        (tmp_path / f"r{rank}").mkdir()
    results = mp.Manager().dict()
    mp.spawn(_distributed_worker, args=(tmp_path, results), nprocs=2, join=True)
    net = LinearNet([(sum(w * c[0] for w, c in zip(RANK_WEIGHTS, RANK_COEFS)),
                      sum(w * c[1] for w, c in zip(RANK_WEIGHTS, RANK_COEFS)))])
    single = SGDSolver(write_solver(tmp_path), net_factory=lambda *_: net)
    single.step(3)
    for rank in range(2):
        np.testing.assert_allclose(results[rank][0], net.weight.detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(results[rank][1], net.bias.detach().numpy(), rtol=1e-5, atol=1e-6)


# ----- resume keeps the smoothed loss; copied folders; damaged snapshots --------------------------
def smoothed_trace(solver, iters):
    trace = []
    solver.on_iteration_end.append(lambda s: trace.append(s.smoothed_loss))
    solver.step(iters)
    return trace


def test_resume_restores_the_smoothed_loss_window(tmp_path):
    """average_loss 4, resumed at iteration 5 (window full, ring not at its start): the smoothed
    loss of the resumed iterations equals the uninterrupted run's, bitwise."""
    path = write_solver(tmp_path, average_loss=4, max_iter=10)
    straight = smoothed_trace(SGDSolver(path, net_factory=TinyNet), 10)
    first = SGDSolver(path, net_factory=TinyNet)
    assert smoothed_trace(first, 5) == straight[:5]
    state = first.snapshot()
    resumed = SGDSolver(path, net_factory=TinyNet)
    resumed.restore(state)
    assert smoothed_trace(resumed, 5) == straight[5:]


def test_step_in_pieces_smooths_as_one_step(tmp_path):
    path = write_solver(tmp_path, average_loss=3)
    whole = smoothed_trace(SGDSolver(path, net_factory=TinyNet), 6)
    pieces = SGDSolver(path, net_factory=TinyNet)
    trace = smoothed_trace(pieces, 2)
    pieces.step(4)
    assert trace == whole


def test_solver_weights_field_loads_its_files_as_caffe_does(tmp_path):
    """SolverParameter.weights (Caffe's Solver::Init): every listed file, comma-separated too, is
    copied into the net before training; before, the field parsed and was silently ignored."""
    first, second = tmp_path / "a.caffemodel", tmp_path / "b.caffemodel"
    formats.write_caffemodel(first, "tiny", [("fc", "InnerProduct", [np.ones((2, 4)), np.ones(2)])])
    formats.write_caffemodel(second, "tiny", [("fc", "InnerProduct", [np.full((2, 4), 3.0), np.zeros(2)])])
    solver = SGDSolver(write_solver(tmp_path, weights=f"{first},{second}"), net_factory=TinyNet)
    np.testing.assert_array_equal(solver.net.weight.detach().numpy(), np.full((2, 4), 3.0))
    assert solver.weight_report is not None
    with pytest.raises(FileNotFoundError, match="missing.caffemodel"):
        SGDSolver(write_solver(tmp_path, weights=str(tmp_path / "missing.caffemodel")), net_factory=TinyNet)


def test_a_copied_run_folder_resumes_from_its_own_weights(tmp_path, caplog):
    import shutil
    solver = SGDSolver(write_solver(tmp_path), net_factory=TinyNet)
    solver.step(2)
    state = solver.snapshot()
    shutil.copytree(tmp_path / "snap", tmp_path / "copy")
    original_model = snapshot_paths(tmp_path / "snap" / "tiny", 2)[0]
    formats.write_caffemodel(original_model, "tiny", [("fc", "InnerProduct", [np.zeros((2, 4)), np.zeros(2)])])
    copied_state = str(tmp_path / "copy" / os.path.basename(state))
    assert formats.read_solverstate(copied_state)["learned_net"] == original_model   # absolute, the original's
    resumed = SGDSolver(write_solver(tmp_path), net_factory=TinyNet)
    with caplog.at_level(logging.INFO, logger="sec.caffe"):
        resumed.restore(copied_state)
    copied_model = str(tmp_path / "copy" / "tiny_iter_2.caffemodel")
    for a, b in zip(params_of(solver.net), params_of(resumed.net)):
        assert np.array_equal(a, b)
    assert resumed.restored_from == (copied_state, copied_model) and copied_model in caplog.text


def test_a_moved_state_without_its_caffemodel_uses_learned_net_and_says_so(tmp_path, caplog):
    solver = SGDSolver(write_solver(tmp_path), net_factory=TinyNet)
    solver.step(2)
    state = Path(solver.snapshot())
    (tmp_path / "moved").mkdir()
    moved = tmp_path / "moved" / state.name
    state.rename(moved)
    resumed = SGDSolver(write_solver(tmp_path), net_factory=TinyNet)
    with caplog.at_level(logging.WARNING, logger="sec.caffe.solver"):
        resumed.restore(moved)
    assert "using its learned_net" in caplog.text and resumed.iter == 2


@pytest.mark.parametrize("damage", [b"garbage", b"", b"\x80\x05K\x01."])
def test_a_damaged_sidecar_is_named_and_changes_nothing(tmp_path, damage):
    solver = SGDSolver(write_solver(tmp_path), net_factory=TinyNet)
    solver.step(2)
    state = solver.snapshot()
    with open(state + solver_mod.SIDECAR_SUFFIX, "wb") as f:
        f.write(damage)
    fresh = SGDSolver(write_solver(tmp_path), net_factory=TinyNet)
    before = params_of(fresh.net)
    with pytest.raises(solver_mod.SnapshotError, match=r"tiny_iter_2\.solverstate\.rng"):
        fresh.restore(state)
    assert fresh.iter == 0
    for a, b in zip(before, params_of(fresh.net)):
        assert np.array_equal(a, b)


def test_a_truncated_solverstate_is_named(tmp_path):
    solver = SGDSolver(write_solver(tmp_path), net_factory=TinyNet)
    solver.step(2)
    state = solver.snapshot()
    data = open(state, "rb").read()
    with open(state, "wb") as f:
        f.write(data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"tiny_iter_2\.solverstate"):
        SGDSolver(write_solver(tmp_path), net_factory=TinyNet).restore(state)


def test_a_format_1_sidecar_is_read_in_ring_order(tmp_path):
    """Sidecars written before format 2 kept the window in Caffe's ring order."""
    import pickle
    path = write_solver(tmp_path, average_loss=4, max_iter=10)
    straight = smoothed_trace(SGDSolver(path, net_factory=TinyNet), 10)
    first = SGDSolver(path, net_factory=TinyNet)
    first.step(5)
    state = first.snapshot()
    sidecar = state + solver_mod.SIDECAR_SUFFIX
    extra = pickle.load(open(sidecar, "rb"))
    window = extra["losses"]                       # oldest first: iterations 1..4
    extra["losses"] = window[3:] + window[:3]      # ring: slot (5 % 4) = 1 holds the oldest
    extra["format"] = 1
    with open(sidecar, "wb") as f:
        pickle.dump(extra, f)
    resumed = SGDSolver(path, net_factory=TinyNet)
    resumed.restore(state)
    assert smoothed_trace(resumed, 5) == straight[5:]


# ----- divergence seen first by a layer, not by a loss ------------------------------------------
CRF_NET = """name: "crfnet"
layer { name: "images" type: "Input" top: "images" input_param { shape { dim: 1 dim: 3 dim: 6 dim: 6 } } }
layer { name: "fc8" type: "Convolution" bottom: "images" top: "fc8"
        convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "constant" value: 1e30 } } }
layer { name: "softmax" type: "Python" bottom: "fc8" top: "probs"
        python_param { module: "pylayers" layer: "SoftmaxLayer" } }
layer { name: "crf" type: "Python" bottom: "fc8" bottom: "images" top: "crf"
        python_param { module: "pylayers" layer: "CRFLayer" param_str: "{scale_factor: 1.0, maxiter: 2}" } }
layer { name: "loss-Constrain" type: "Python" bottom: "probs" bottom: "crf" top: "loss-Constrain"
        python_param { module: "pylayers" layer: "ConstrainLossLayer" } loss_weight: 1 }
"""


def test_divergence_seen_by_the_crf_layer_is_reported_as_divergence(tmp_path):
    """Scores that overflow to Inf make the CRF layer refuse them before any loss is computed:
    that must end as NonFiniteLossError naming the first non-finite blob, not as the CRF's error."""
    pytest.importorskip("krahenbuhl2013")
    net_path = tmp_path / "crf.prototxt"
    net_path.write_text(CRF_NET)
    solver = SGDSolver(write_solver(tmp_path, net=str(net_path)))
    solver.net.blobs["images"].data[...] = np.arange(108, dtype=np.float32).reshape(1, 3, 6, 6) * 1e9
    with pytest.raises(NonFiniteLossError, match=r"iteration 0: blob 'fc8' \(top of layer 'fc8'\) is "
                                                 r"non-finite; layer 'crf' then failed") as info:
        solver.step(1)
    assert "need unary scores" in str(info.value) and "last good snapshot: none written yet" in str(info.value)
    assert solver.iter == 0


def test_a_failure_with_finite_blobs_is_not_called_divergence(tmp_path):
    class Broken(TinyNet):
        def run(self, feed=None):
            raise OSError("image 7 unreadable")
    solver = SGDSolver(write_solver(tmp_path), net_factory=Broken)
    with pytest.raises(OSError, match="image 7 unreadable"):
        solver.step(1)


def test_non_finite_weights_are_named_and_never_snapshotted(tmp_path):
    net = TinyNet()
    solver = SGDSolver(write_solver(tmp_path, snapshot=2), net_factory=lambda *_: net)
    solver.step(2)
    with torch.no_grad():
        net.weight[0, 1] = float("inf")
    with pytest.raises(NonFiniteLossError, match=r"parameter 0 of layer 'fc'.*not written"):
        solver.snapshot()
    assert sorted(os.listdir(tmp_path / "snap")) == ["tiny_iter_2.caffemodel", "tiny_iter_2.solverstate",
                                                     "tiny_iter_2.solverstate.rng"]


def test_pycaffe_lr_is_the_rate_of_the_current_iteration(tmp_path):
    """pycaffe's solver.lr calls GetLearningRate at solver.iter (and, as there, moves current_step);
    last_lr is the rate the last update used."""
    solver = SGDSolver(write_solver(tmp_path, lr_policy="step", gamma=0.5, stepsize=2), net_factory=TinyNet)
    assert solver.lr == pytest.approx(0.1)
    solver.step(2)
    assert solver.last_lr == pytest.approx(0.1) and solver.lr == pytest.approx(0.05)
    assert solver.current_step == 1 and solver.param.base_lr == pytest.approx(0.1)
    solver.param.base_lr = 1.0                    # pycaffe's settable solver.param.base_lr
    solver.step(1)
    assert solver.last_lr == pytest.approx(0.5)
