"""Speed options (sec/nn/speed.py): the defaults leave the plain engine (identical results on CPU);
channels_last gives the same numbers; bf16 autocast keeps the SEC losses in float32; the run config
hands the options to the solver."""
import numpy as np
import pytest
import torch

from sec import caffe
from sec import train as sec_train
from sec.caffe.layers.data import to_device
from sec.caffe.layers.sec_twins import LAYER_IMPL_ENV
from sec.nn import speed

from test_nn_engine import feed, sec_net  # noqa: F401  (fixture)


def build(factory, path):
    torch.manual_seed(0)
    return factory(str(path), caffe.TRAIN) if factory else caffe.Net(str(path), caffe.TRAIN)


def losses_and_grad(net):
    out = net.run(feed())
    net.total_loss(out).backward()
    names = [n for n in net.loss_weights]
    return {n: out[n].detach().float().numpy() for n in names}, net.params["fc8"][0].param.grad.float().numpy()


def test_defaults_build_the_plain_net():
    assert speed.net_factory() is None
    assert speed.net_factory(precision="fp32", tf32=True, channels_last=False) is None
    with pytest.raises(ValueError, match="precision"):
        speed.net_factory(precision="fp16")


def test_run_config_hands_the_options_to_the_solver(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(sec_train, "make_solver", lambda *a, **k: seen.update(k))
    cfg = sec_train.RunConfig(name="x", solver=tmp_path / "s", net=tmp_path / "n", deploy=tmp_path / "d",
                              runs_root=tmp_path, classes="synthetic", num_classes=2, dataset=tmp_path, batch=2)
    sec_train.build_solver(cfg)
    assert seen["net_factory"] is None
    cfg.channels_last = True
    sec_train.build_solver(cfg)
    assert callable(seen["net_factory"])


def test_channels_last_gives_the_same_losses_and_gradients(sec_net):  # noqa: F811
    want, want_grad = losses_and_grad(build(None, sec_net))
    got, got_grad = losses_and_grad(build(speed.net_factory(channels_last=True), sec_net))
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5)
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_keeps_losses_in_float32(sec_net, monkeypatch):  # noqa: F811
    monkeypatch.setenv(LAYER_IMPL_ENV, "torch")
    want, _ = losses_and_grad(build(None, sec_net))
    net = build(speed.net_factory(precision="bf16"), sec_net)
    out = net.run(feed())
    assert out["fc8"].dtype == torch.bfloat16
    for name in want:
        assert out[name].dtype == torch.float32
        np.testing.assert_allclose(out[name].detach().numpy(), want[name], rtol=5e-2)


def test_image_batches_reach_the_cpu_unchanged():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = to_device(array, torch.device("cpu"))
    np.testing.assert_array_equal(tensor.numpy(), array)


@pytest.mark.parametrize("enabled", [False, True, False])
def test_set_tf32_leaves_every_torch_flag_readable_and_consistent(enabled):
    """--no-tf32 used to write only cudnn.conv.fp32_precision: conv and RNN then differed and
    reading the legacy torch.backends.cudnn.allow_tf32 raised RuntimeError (torch >= 2.9)."""
    saved = torch.backends.cudnn.allow_tf32
    try:
        speed.set_tf32(enabled)
        assert torch.backends.cudnn.allow_tf32 is enabled     # raised before
        assert speed.tf32_enabled() is enabled
        conv = getattr(torch.backends.cudnn, "conv", None)
        if conv is not None and hasattr(conv, "fp32_precision"):
            assert conv.fp32_precision in (("tf32",) if enabled else ("ieee", "none"))
            assert torch.backends.cudnn.rnn.fp32_precision == conv.fp32_precision
    finally:
        speed.set_tf32(saved)


# --- TF32: the tolerance a CUDA-vs-CPU comparison needs when TF32 is on (torch's default) ---------
TF32_MANTISSA_BITS = 10
FLOAT32_MANTISSA_BITS = 23
TF32_INPUT_ERROR = 2.0 ** -TF32_MANTISSA_BITS
"""Relative error of one operand rounded to TF32, by truncation (the worst case; round to nearest
halves it)."""
FLOAT32_UNIT = 2.0 ** -(FLOAT32_MANTISSA_BITS + 1)
ALGORITHM_MARGIN = 4.0
"""cuDNN may pick Winograd or FFT kernels, whose transforms add a few roundings to the direct
sum's; the bound is widened by this factor for the kernel on the device, not for the emulation."""


def to_tf32(x):
    """float32 -> float32 with the 13 low mantissa bits cleared (TF32 by truncation)."""
    return (x.view(torch.int32) & ~((1 << (FLOAT32_MANTISSA_BITS - TF32_MANTISSA_BITS)) - 1)).view(torch.float32)


def tf32_conv_bound(x, w, padding):
    """|conv_tf32(x, w) - conv_exact(x, w)| <= this, elementwise: each product x w carries
    (1 + e1)(1 + e2) - 1 <= 2 u + u^2 from its two TF32 operands (u = 2^-10), and the float32 sum
    of K products at most K 2^-24 more, both relative to conv(|x|, |w|)."""
    terms = w[0].numel()
    magnitude = torch.nn.functional.conv2d(x.abs().double(), w.abs().double(), padding=padding)
    return (2 * TF32_INPUT_ERROR + TF32_INPUT_ERROR ** 2 + terms * FLOAT32_UNIT) * magnitude


def conv_case(seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 16, 12, 12, generator=gen) * 50,      # mean-subtracted pixel scale
            torch.randn(8, 16, 3, 3, generator=gen) * 0.05)


@pytest.mark.parametrize("seed", range(3))
def test_tf32_emulation_stays_within_the_derived_bound_and_outside_rtol_1e4(seed):
    """On CPU: convolution of TF32-rounded operands is within tf32_conv_bound of the exact one, and
    (why the CUDA tests compare in IEEE float32) not within the rtol 1e-4 they once used."""
    x, w = conv_case(seed)
    exact = torch.nn.functional.conv2d(x.double(), w.double(), padding=1)
    emulated = torch.nn.functional.conv2d(to_tf32(x).double(), to_tf32(w).double(), padding=1).float()
    assert bool(((emulated.double() - exact).abs() <= tf32_conv_bound(x, w, 1)).all())
    fp32 = torch.nn.functional.conv2d(x, w, padding=1)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(emulated.numpy(), fp32.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("enabled", [True, False])
def test_cuda_convolution_is_within_the_tf32_bound(enabled):
    """The default (TF32 on) on the device: cuDNN's convolution within the derived bound (times
    ALGORITHM_MARGIN); with TF32 off, within the float32 part of it alone (same margin)."""
    x, w = conv_case(0)
    exact = torch.nn.functional.conv2d(x.double(), w.double(), padding=1)
    saved = speed.tf32_enabled()
    try:
        speed.set_tf32(enabled)
        got = torch.nn.functional.conv2d(x.cuda(), w.cuda(), padding=1).cpu().double()
    finally:
        speed.set_tf32(saved)
    bound = tf32_conv_bound(x, w, 1)
    if not enabled:
        bound = bound * (w[0].numel() * FLOAT32_UNIT) / (2 * TF32_INPUT_ERROR + TF32_INPUT_ERROR ** 2
                                                        + w[0].numel() * FLOAT32_UNIT)
    assert bool(((got - exact).abs() <= ALGORITHM_MARGIN * bound).all())
