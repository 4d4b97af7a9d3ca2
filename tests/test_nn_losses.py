"""sec.nn's torch losses against the numpy pylayers (the source of truth): values and gradients
at SEC's training shape, odd shapes and degenerate images; the modules; half-precision inputs."""
import re

import numpy as np
import pytest
import torch

from pylayers import functions as P
from sec import nn as secnn
from sec.nn import functional as F

SEC_SHAPE = (15, 21, 41, 41)
SHAPES = [SEC_SHAPE, (3, 5, 7, 9), (2, 2, 1, 1), (1, 4, 1, 13)]
RTOL = 1e-5


def relative_error(got, want):
    """max |got - want| / max |want| (norm-wise: the per-element error is also bounded below)."""
    scale = max(float(np.abs(want).max()), 1e-30)
    return float(np.abs(np.asarray(got, np.float64) - want).max()) / scale


def assert_close(got, want):
    assert relative_error(got, want) <= RTOL
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * float(np.abs(want).max()))


def make_inputs(shape, seed=0):
    num, classes = shape[:2]
    rng = np.random.default_rng(seed)
    scores = (rng.standard_normal(shape) * 3).astype(np.float32)
    probs = P.softmax_with_floor(scores.copy())
    cues = (rng.random(shape) < 0.1).astype(np.float32)
    cues[0] = 0.0                                       # an image without cues
    labels = (rng.random((num, 1, 1, classes)) < 0.3).astype(np.float32)
    labels[..., 0] = rng.random()                       # background column is ignored
    labels[0, ..., 1:] = 0.0                            # no present foreground class
    if num > 1:
        labels[1, ..., 1:] = 1.0                        # no absent foreground class
    log_q = np.log(P.clamp_and_normalise(P.softmax_with_floor(rng.standard_normal(shape).astype(np.float32))))
    return scores, probs, cues, labels, log_q


def torch_loss_and_grad(fn, probs, other, **kwargs):
    tensor = torch.from_numpy(probs).requires_grad_()
    loss = fn(tensor, torch.from_numpy(other), **kwargs)
    loss.backward()
    return float(loss.detach()), tensor.grad.numpy()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_softmax_forward_and_backward(shape):
    scores, _, _, _, _ = make_inputs(shape)
    top_diff = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    want = P.softmax_with_floor(scores.copy())
    want_grad = P.softmax_with_floor_backward(want, top_diff)
    tensor = torch.from_numpy(scores).requires_grad_()
    probs = F.softmax_with_floor(tensor)
    probs.backward(torch.from_numpy(top_diff))
    assert_close(probs.detach().numpy(), want)
    assert_close(tensor.grad.numpy(), want_grad)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", ["seed", "expand-gwrp", "expand-gmp", "expand-gap", "constrain"])
def test_loss_and_gradient_equal_pylayers(shape, name):
    _, probs, cues, labels, log_q = make_inputs(shape)
    if name == "seed":
        want = P.seed_loss(probs, cues)
        got = torch_loss_and_grad(F.seed_loss, probs, cues)
    elif name == "constrain":
        want = P.constrain_loss(probs, log_q)
        got = torch_loss_and_grad(F.constrain_loss, probs, log_q)
    else:
        pooling = name.split("-")[1]
        want = P.expand_loss(probs, labels, pooling=pooling)
        got = torch_loss_and_grad(F.expand_loss, probs, labels, pooling=pooling)
    assert got[0] == pytest.approx(want[0], rel=RTOL, abs=1e-12)
    assert_close(got[1], want[1])


def test_expand_loss_custom_decays_and_flat_labels():
    _, probs, _, labels, _ = make_inputs((4, 6, 5, 5), seed=3)
    want = P.expand_loss(probs, labels, q_fg=0.9, q_bg=0.5)
    got = torch_loss_and_grad(F.expand_loss, probs, labels.reshape(4, 6), q_fg=0.9, q_bg=0.5)
    assert got[0] == pytest.approx(want[0], rel=RTOL)
    assert_close(got[1], want[1])


@pytest.mark.parametrize("pooling", ["gwrp", "gmp"])
def test_expand_gradient_at_ties_goes_where_pylayers_sends_it(pooling):
    probs = np.full((2, 3, 4, 5), 0.25, np.float32)       # every class map flat: all values tied
    probs[1, :, 1, 2] = 0.5                                 # and a tied pair of maxima
    probs[1, :, 3, 0] = 0.5
    labels = np.ones((2, 1, 1, 3), np.float32)
    labels[1, ..., 2] = 0.0
    want = P.expand_loss(probs, labels, pooling=pooling)
    got = torch_loss_and_grad(F.expand_loss, probs, labels, pooling=pooling)
    assert got[0] == pytest.approx(want[0], rel=RTOL)
    np.testing.assert_allclose(got[1], want[1], rtol=RTOL, atol=1e-7)


def test_degenerate_images_give_zero_terms_not_nan():
    probs = torch.full((2, 3, 2, 2), 1.0 / 3, requires_grad=True)
    cues = torch.zeros(2, 3, 2, 2)
    assert float(F.seed_loss(probs, cues).detach()) == 0.0
    # probabilities of exactly 1 and 0 where their logs are never taken
    hard = torch.zeros(1, 2, 1, 2)
    hard[0, 0] = 1.0
    labels = torch.tensor([[1.0, 0.0]])
    loss = F.expand_loss(hard.requires_grad_(), labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(hard.grad).all()


def test_modules_and_sec_loss_match_the_functions():
    scores, probs, cues, labels, log_q = make_inputs((3, 5, 7, 9))
    s = torch.from_numpy(scores)
    p = secnn.SoftmaxWithFloor()(s)
    assert_close(p.numpy(), probs)
    assert float(secnn.SeedLoss()(p, torch.from_numpy(cues))) == pytest.approx(P.seed_loss(probs, cues)[0], rel=RTOL)
    expand = secnn.ExpandLoss(q_fg=0.99, pooling="gap")
    assert float(expand(p, torch.from_numpy(labels))) == pytest.approx(
        P.expand_loss(probs, labels, q_fg=0.99, pooling="gap")[0], rel=RTOL)
    assert float(secnn.ConstrainLoss()(p, torch.from_numpy(log_q))) == pytest.approx(
        P.constrain_loss(probs, log_q)[0], rel=RTOL)
    with pytest.raises(ValueError, match="pooling"):
        secnn.ExpandLoss(pooling="median")


def test_half_precision_inputs_are_computed_in_float32():
    _, probs, cues, _, _ = make_inputs((2, 4, 6, 6))
    half = torch.from_numpy(probs).to(torch.bfloat16)
    loss = F.seed_loss(half, torch.from_numpy(cues))
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(P.seed_loss(half.float().numpy(), cues)[0], rel=RTOL)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("name", ["seed", "expand-gwrp", "expand-gmp", "expand-gap", "constrain"])
def test_cuda_losses_and_gradients_equal_pylayers(name):
    _, probs, cues, labels, log_q = make_inputs(SEC_SHAPE)
    fn, other, kwargs = {"seed": (F.seed_loss, cues, {}), "constrain": (F.constrain_loss, log_q, {})}.get(
        name, (F.expand_loss, labels, {"pooling": name.split("-")[-1]}))
    want = {"seed": lambda: P.seed_loss(probs, cues), "constrain": lambda: P.constrain_loss(probs, log_q)}.get(
        name, lambda: P.expand_loss(probs, labels, **kwargs))()
    tensor = torch.from_numpy(probs).cuda().requires_grad_()
    loss = fn(tensor, torch.from_numpy(other).cuda(), **kwargs)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(want[0], rel=RTOL)
    assert_close(tensor.grad.cpu().numpy(), want[1])


def test_sec_loss_is_the_sum_of_the_three_layers():
    from pylayers import crf as pycrf
    import krahenbuhl2013
    scores, probs, cues, labels, _ = make_inputs((2, 4, 6, 6), seed=4)
    images = np.random.default_rng(5).uniform(-100, 100, (2, 3, 41, 41)).astype(np.float32)
    log_q = pycrf.crf_log_probs(scores, images, krahenbuhl2013.CRF_batch, scale_factor=12.0)
    want = P.seed_loss(probs, cues)[0] + P.expand_loss(probs, labels)[0] + P.constrain_loss(probs, log_q)[0]
    logits = torch.from_numpy(scores).requires_grad_()
    total, parts = secnn.SECLoss()(logits, torch.from_numpy(images), torch.from_numpy(labels.reshape(2, 4)),
                                   torch.from_numpy(cues))
    total.backward()
    assert set(parts) == {"seed", "expand", "constrain"}
    assert float(total.detach()) == pytest.approx(want, rel=1e-4)
    assert torch.isfinite(logits.grad).all() and float(logits.grad.abs().sum()) > 0


# --- what pylayers refuses, sec.nn refuses too (issue 19), in one line naming the argument -------
def _careless_calls():
    p = torch.full((2, 3, 4, 4), 1.0 / 3)
    cues = torch.zeros(2, 3, 4, 4)
    images = torch.zeros(2, 3, 8, 8)
    inf_images = images.clone()
    inf_images[0, 0, 0, 0] = float("inf")
    return {
        "broadcast cues": (lambda: secnn.SeedLoss()(p, cues[:, :1]), "cues need the shape of the probabilities"),
        "q_fg 1.5": (lambda: secnn.ExpandLoss(q_fg=1.5), "q_fg must be in [0, 1]"),
        "q_fg nan": (lambda: secnn.ExpandLoss(q_fg=float("nan")), "q_fg must be in [0, 1]"),
        "min_prob -0.5": (lambda: secnn.SoftmaxWithFloor(min_prob=-0.5), "min_prob must be in [0, 1)"),
        "1-channel images": (lambda: secnn.DenseCRF()(torch.zeros(2, 3, 4, 4), images[:, :1]),
                             "images N x 3 x H x W"),
        "inf in images": (lambda: secnn.DenseCRF()(torch.zeros(2, 3, 4, 4), inf_images), "images need finite"),
        "maxiter 10**9 (a hang)": (lambda: secnn.DenseCRF(maxiter=10 ** 9), "maxiter must be an integer in 0..1000"),
        "3-D probabilities": (lambda: secnn.ConstrainLoss()(p[0], p[0]), "probs need N x C x H x W"),
        "empty batch": (lambda: secnn.SeedLoss()(p[:0], cues[:0]), "probs need N x C x H x W with no empty"),
        "labels of another shape": (lambda: secnn.ExpandLoss()(p, torch.ones(2, 4)), "labels need shape"),
        "integer probabilities": (lambda: secnn.SeedLoss()(p.long(), cues), "probs must be a floating-point"),
        "a list": (lambda: secnn.SeedLoss()(p, cues.tolist()), "cues must be a torch.Tensor"),
        "NaN probabilities": (lambda: secnn.SeedLoss()(p * float("nan"), cues), "probs need finite"),
        "probabilities above 1": (lambda: secnn.ConstrainLoss()(p * 4, p.log()), "probs need values in [0, 1]"),
        "a log of 0": (lambda: secnn.SeedLoss()(torch.zeros(2, 3, 4, 4), cues + 1), "probs give a loss that is not"),
    }


@pytest.mark.parametrize("case", list(_careless_calls()))
def test_sec_nn_refuses_what_pylayers_refuses(case):
    call, message = _careless_calls()[case]
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        call()


def test_value_checks_can_be_left_out_and_then_cost_no_host_read():
    from sec.nn.opcount import OpCounter
    p = torch.full((2, 3, 4, 4), 1.0 / 3)
    for check_values, reads in ((True, 1), (False, 0)):
        counter = OpCounter()
        with counter:
            secnn.SeedLoss(check_values=check_values)(p, torch.ones(2, 3, 4, 4))
        assert counter.total("syncs") == reads


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_mixed_devices_are_one_value_error():
    p = torch.full((2, 3, 4, 4), 1.0 / 3)
    with pytest.raises(ValueError, match="SeedLoss: need every tensor on one device, got probs on cpu, cues on cuda"):
        secnn.SeedLoss()(p, torch.zeros(2, 3, 4, 4, device="cuda"))
