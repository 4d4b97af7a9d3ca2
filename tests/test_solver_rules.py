"""The six update rules (sec.caffe.solvers.rules, torch._foreach_* over all blobs at once) against a
per-blob numpy float32 transcription of Caffe's CPU code (src/caffe/solvers/*.cpp: ClipGradients,
Normalize, Regularize, ComputeUpdateValue, Net::Update), with lr_mult / decay_mult per blob, L1 and
L2, clip_gradients and iter_size; and the checks Caffe's solver classes make."""
import numpy as np
import pytest
import torch

from sec.caffe import solver as solver_mod
from sec.caffe.solvers.policies import learning_rate
from test_solver import LinearNet, TinyNet, solver_param, write_solver

F = np.float32
HYPER = dict(SGD=dict(momentum=0.9), Nesterov=dict(momentum=0.9), AdaGrad=dict(momentum=0.0, delta=1e-4),
             RMSProp=dict(momentum=0.0, rms_decay=0.95, delta=1e-4), AdaDelta=dict(momentum=0.95, delta=1e-6),
             Adam=dict(momentum=0.9, momentum2=0.999, delta=1e-8))
LR_MULTS, DECAY_MULTS = (1.0, 2.0), (1.0, 0.0)              # LinearNet: weight, bias


def caffe_update(kind, p, w, d, hist, local_rate, t):
    """One blob of Caffe's ComputeUpdateValue (float32 arrays, in place); returns the update (diff)."""
    h = hist[0]
    if kind == "SGD":
        h[...] = F(local_rate) * d + F(p.momentum) * h
        return h.copy()
    if kind == "Nesterov":
        old = h.copy()
        h[...] = F(local_rate) * d + F(p.momentum) * h
        return (F(1) + F(p.momentum)) * h + F(-p.momentum) * old
    if kind == "AdaGrad":
        h += d * d
        return F(local_rate) * (d / (np.sqrt(h) + F(p.delta)))
    if kind == "RMSProp":
        h[...] = (F(1) - F(p.rms_decay)) * (d * d) + F(p.rms_decay) * h
        return F(local_rate) * (d / (np.sqrt(h) + F(p.delta)))
    if kind == "AdaDelta":
        hu = hist[1]
        h[...] = (F(1) - F(p.momentum)) * (d * d) + F(p.momentum) * h
        u = d * np.sqrt((F(p.delta) + hu) / (F(p.delta) + h))
        hu[...] = (F(1) - F(p.momentum)) * (u * u) + F(p.momentum) * hu
        return F(local_rate) * u
    m, v = hist                                         # Adam
    m[...] = (F(1) - F(p.momentum)) * d + F(p.momentum) * m
    v[...] = (F(1) - F(p.momentum2)) * (d * d) + F(p.momentum2) * v
    correction = F(np.sqrt(1 - float(F(p.momentum2)) ** t) / (1 - float(F(p.momentum)) ** t))   # double, as Caffe
    return F(local_rate) * correction * (m / (np.sqrt(v) + F(p.delta)))


def caffe_trajectory(kind, p, weights, gradients, iters):
    """Caffe's ApplyUpdate blob by blob for `iters` iterations; gradients(it) -> accumulated diffs."""
    weights = [w.astype(F).copy() for w in weights]
    sets = 2 if kind in ("AdaDelta", "Adam") else 1
    hist = [[np.zeros_like(w) for _ in range(sets)] for w in weights]
    step = 0
    for it in range(iters):
        rate, step = learning_rate(p, it, step)
        diffs = [g.astype(F).copy() for g in gradients(it)]
        if p.clip_gradients >= 0:
            norm = F(np.sqrt(sum(F(np.dot(d.ravel(), d.ravel())) for d in diffs)))
            if norm > p.clip_gradients:
                diffs = [d * (F(p.clip_gradients) / norm) for d in diffs]
        for i, (w, d) in enumerate(zip(weights, diffs)):
            if p.iter_size > 1:
                d *= F(1) / F(p.iter_size)
            decay = F(p.weight_decay) * F(DECAY_MULTS[i])
            if decay:
                d += decay * (w if p.regularization_type == "L2" else np.sign(w))
            w -= caffe_update(kind, p, w, d, hist[i], F(rate) * F(LR_MULTS[i]), it + 1)
    return weights, hist


COEFS = [(np.linspace(-1, 1, 8, dtype=F).reshape(2, 4), np.array([0.5, -2.0], F)),
         (np.full((2, 4), 0.3, F), np.array([-0.25, 1.5], F)),
         (np.linspace(2, -0.5, 8, dtype=F).reshape(2, 4), np.array([0.0, 0.75], F))]


@pytest.mark.parametrize("kind", list(HYPER))
@pytest.mark.parametrize("extra", [dict(), dict(regularization_type="L1", lr_policy="step", gamma=0.5, stepsize=2),
                                   dict(clip_gradients=0.5, iter_size=2, lr_policy="inv", gamma=0.1, power=0.75)],
                         ids=["L2-fixed", "L1-step", "clip-itersize-inv"])
def test_foreach_rules_equal_caffes_per_blob_update(tmp_path, kind, extra):
    fields = dict(type=kind, base_lr=0.05, weight_decay=0.01, **HYPER[kind], **{"lr_policy": "fixed", **extra})
    net = LinearNet(COEFS)
    w0 = [net.weight.detach().numpy().copy(), net.bias.detach().numpy().copy()]
    solver = solver_mod.make_solver(write_solver(tmp_path, **fields), net_factory=lambda *_: net)
    assert type(solver).__name__ == f"{kind}Solver"
    iters, size = 5, extra.get("iter_size", 1)

    def gradients(it):
        passes = [COEFS[(it * size + k) % len(COEFS)] for k in range(size)]
        return [sum(c[0] for c in passes), sum(c[1] for c in passes)]
    want, hist = caffe_trajectory(kind, solver_param(**{"iter_size": size, **fields}), w0, gradients, iters)
    solver.step(iters)
    got = [net.weight.detach().numpy(), net.bias.detach().numpy()]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-6, atol=1e-7)
    count = len(solver.params)
    for k in range(len(hist[0])):
        for i in range(count):
            np.testing.assert_allclose(solver.history[k * count + i].numpy(), hist[i][k], rtol=2e-6, atol=1e-7)


def test_after_an_update_the_diffs_hold_the_update_and_iter_advances(tmp_path):
    """Caffe's ApplyUpdate leaves the update in the blob diffs and increments iter (pycaffe's
    test_apply_update: weights 0, diff 1, lr 0.01 -> weights -0.01)."""
    net = LinearNet(COEFS)
    solver = solver_mod.SGDSolver(write_solver(tmp_path, base_lr=0.01, weight_decay=0.0005, momentum=0.9),
                                  net_factory=lambda *_: net)
    with torch.no_grad():
        net.weight.zero_()
    net.weight.grad = torch.ones_like(net.weight)
    solver.apply_update()
    assert solver.iter == 1
    np.testing.assert_allclose(net.weight.detach().numpy(), -0.01, rtol=1e-6)
    np.testing.assert_allclose(net.weight.grad.numpy(), 0.01, rtol=1e-6)
    assert net.bias.grad is not None and not net.bias.grad.any()      # no gradient, no decay: zero update


@pytest.mark.parametrize("fields, message", [
    (dict(type="AdaGrad", momentum=0.9), "momentum cannot be used with AdaGrad"),
    (dict(type="RMSProp", momentum=0.0, rms_decay=1.0), "rms_decay should lie between 0 and 1"),
    (dict(type="RMSProp", momentum=0.5), "momentum cannot be used with RMSProp"),
    (dict(lr_policy="sigmoid", gamma=0.1), "needs a positive 'stepsize'"),
    (dict(lr_policy="exp", gamma=-0.1), "needs gamma >= 0"),
    (dict(average_loss=0), "average_loss should be >= 1"),
    (dict(regularization_type="L3"), "regularization_type 'L3'"),
])
def test_out_of_range_fields_are_named_before_the_net_is_built(tmp_path, fields, message):
    built = []
    with pytest.raises(ValueError, match=message) as info:
        solver_mod.make_solver(write_solver(tmp_path, **fields), net_factory=lambda *a: built.append(a) or TinyNet())
    assert str(tmp_path / "solver.prototxt") in str(info.value) and not built
