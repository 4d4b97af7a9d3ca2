"""Speed options (sec/nn/speed.py): the defaults leave the plain engine (identical results on CPU);
channels_last gives the same numbers; bf16 autocast keeps the SEC losses in float32; the run config
hands the options to the solver."""
import numpy as np
import pytest
import torch

from sec import caffe
from sec import train as sec_train
from sec.caffe.layers.data import _to_device
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
    tensor = _to_device(array, torch.device("cpu"))
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
