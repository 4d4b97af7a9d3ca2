"""The engine's choice between the numpy pylayers and their torch twins (sec/caffe/layers/sec_twins.py):
a SEC-shaped net gives the same tops and gradients either way; SEC_LAYERS overrides; the device
cue lookup equals pylayers'; CUDA runs the twins (skipped without CUDA)."""
import pickle

import numpy as np
import pytest
import torch

from pylayers import cues as pycues
from sec import caffe
from sec.caffe.layers.sec_twins import LAYER_IMPL_ENV, SECLayer
from sec.nn import DeviceCues

NUM, CLASSES, SIDE, CUE = 4, 5, 33, 5
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")


def sec_net_text(cue_path):
    def python(name, layer, bottoms, tops, extra="", param_str=""):
        b = " ".join(f'bottom: "{x}"' for x in bottoms)
        t = " ".join(f'top: "{x}"' for x in tops)
        return (f'layer {{ name: "{name}" type: "Python" {b} {t} {extra} python_param {{ module: "pylayers" '
                f"layer: \"{layer}\" param_str: '{param_str}' }} }}\n")
    return (
        f'layer {{ name: "images" type: "Input" top: "images" input_param {{ shape {{ dim: {NUM} dim: 3 '
        f'dim: {SIDE} dim: {SIDE} }} }} }}\n'
        f'layer {{ name: "ids" type: "Input" top: "ids" input_param {{ shape {{ dim: {NUM} }} }} }}\n'
        + python("annotation", "AnnotationLayer", ["ids"], ["labels", "cues"],
                 param_str=f'{{"cues": "{cue_path}", "num_classes": {CLASSES}, "cue_size": {CUE}}}')
        + 'layer { name: "pool" type: "Pooling" bottom: "images" top: "pool" pooling_param { pool: AVE '
          'kernel_size: 8 stride: 8 } }\n'
        + f'layer {{ name: "fc8" type: "Convolution" bottom: "pool" top: "fc8" convolution_param {{ '
          f'num_output: {CLASSES} kernel_size: 1 weight_filler {{ type: "gaussian" std: 0.05 }} }} }}\n'
        + python("softmax", "SoftmaxLayer", ["fc8"], ["probs"])
        + python("crf", "CRFLayer", ["fc8", "images"], ["crf"], param_str='{"scale_factor": 6}')
        + python("seed", "SeedLossLayer", ["probs", "cues"], ["loss-seed"], extra="loss_weight: 1")
        + python("expand", "ExpandLossLayer", ["probs", "labels"], ["loss-expand"], extra="loss_weight: 0.5",
                 param_str='{"q_fg": 0.99}')
        + python("constrain", "ConstrainLossLayer", ["probs", "crf"], ["loss-constrain"], extra="loss_weight: 2"))


def write_cues(path, ids, seed=0):
    rng = np.random.default_rng(seed)
    cues = {}
    for image in ids:
        cues[f"{image}_labels"] = rng.choice(np.arange(1, CLASSES), size=rng.integers(0, 3), replace=False)
        count = int(rng.integers(0, 8))
        cues[f"{image}_cues"] = np.stack([rng.integers(0, CLASSES, count), rng.integers(0, CUE, count),
                                          rng.integers(0, CUE, count)])
    with open(path, "wb") as handle:
        pickle.dump(cues, handle)
    return cues


@pytest.fixture()
def sec_net(tmp_path):
    cue_path = tmp_path / "cues.pickle"
    write_cues(cue_path, range(10, 20))
    net_path = tmp_path / "sec.prototxt"
    net_path.write_text(sec_net_text(cue_path))
    return net_path


def feed(device="cpu"):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(NUM, 3, SIDE, SIDE, generator=g) * 255 - 120
    return {"images": images.to(device), "ids": torch.tensor([12.0, 15.0, 12.0, 19.0], device=device)}


def run(net_path, monkeypatch, impl, device="cpu"):
    monkeypatch.setenv(LAYER_IMPL_ENV, impl)
    torch.manual_seed(0)
    net = caffe.Net(str(net_path), caffe.TRAIN).to(device)
    out = net.run(feed(device))
    net.total_loss(out).backward()
    tops = {k: v.detach().cpu().numpy() for k, v in out.items()}
    return net, tops, net.params["fc8"][0].param.grad.cpu().numpy()


def test_torch_twins_give_the_numpy_layers_tops_and_gradients(sec_net, monkeypatch):
    _, want, want_grad = run(sec_net, monkeypatch, "numpy")
    net, got, got_grad = run(sec_net, monkeypatch, "torch")
    assert all(isinstance(s.impl, SECLayer) and s.impl.uses_torch("cpu") for s in net._layers if s.type == "Python")
    for name in ("labels", "cues", "probs", "loss-seed", "loss-expand", "loss-constrain"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(np.exp(got["crf"]), np.exp(want["crf"]), atol=1e-4)
    # the layers agree to ~1e-7 (test_nn_losses); the weight gradient sums them over pixels of
    # inputs ~100 in float32, which leaves ~3e-5 of the largest entry
    assert float(np.abs(got_grad - want_grad).max()) <= 1e-4 * float(np.abs(want_grad).max())


def test_auto_runs_numpy_on_cpu_and_a_bad_setting_names_the_variable(sec_net, monkeypatch):
    monkeypatch.setenv(LAYER_IMPL_ENV, "auto")
    net = caffe.Net(str(sec_net), caffe.TRAIN)
    steps = [s for s in net._layers if s.type == "Python"]
    assert steps and all(not s.impl.uses_torch("cpu") and s.impl.uses_torch("cuda") for s in steps)
    monkeypatch.setenv(LAYER_IMPL_ENV, "gpu")
    with pytest.raises(caffe.NetError, match=LAYER_IMPL_ENV):
        caffe.Net(str(sec_net), caffe.TRAIN)


def test_device_cues_equal_pylayers_and_name_a_missing_id(tmp_path):
    cues = write_cues(tmp_path / "c.pickle", [3, 7, 8, 40], seed=5)
    ids = [7, 3, 40, 7, 8]
    want_labels, want_cues = pycues.batch_labels_and_cues(cues, ids, CLASSES, CUE)
    lookup = DeviceCues(cues, CLASSES, CUE, source="c.pickle")
    labels, dense = lookup.lookup(torch.tensor(ids, dtype=torch.float32))
    np.testing.assert_array_equal(labels.numpy(), want_labels)
    np.testing.assert_array_equal(dense.numpy(), want_cues)
    with pytest.raises(KeyError, match="image id 5.*c.pickle"):
        lookup.lookup([5])
    with pytest.raises(ValueError, match="integer"):
        lookup.lookup(torch.tensor([3.5]))


def test_torch_twin_errors_name_the_layer(sec_net, monkeypatch):
    monkeypatch.setenv(LAYER_IMPL_ENV, "torch")
    net = caffe.Net(str(sec_net), caffe.TRAIN)
    data = feed()
    data["ids"] = torch.tensor([12.0, 15.0, 99.0, 19.0])
    with pytest.raises(KeyError, match="image id 99") as info:
        net.run(data)
    assert any("annotation" in note for note in getattr(info.value, "__notes__", []))


@pytest.mark.cuda
@CUDA
def test_cuda_net_runs_the_twins_and_matches_the_cpu_numpy_net(sec_net, monkeypatch, ieee_float32):
    """The twins against the numpy layers, so fc8 (the only convolution) in IEEE float32: under TF32
    its logits alone would differ by up to 2^-9 of sum |w x| (tests/test_nn_speed.py)."""
    _, want, want_grad = run(sec_net, monkeypatch, "numpy")
    net, got, got_grad = run(sec_net, monkeypatch, "auto", device="cuda")
    assert all(s.impl.uses_torch(net.device) for s in net._layers if s.type == "Python")
    for name in ("labels", "cues", "probs", "loss-seed", "loss-expand", "loss-constrain"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(np.exp(got["crf"]), np.exp(want["crf"]), atol=1e-3)
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-3, atol=1e-5 * float(np.abs(want_grad).max()))


def test_deploy_crf_in_torch_gives_the_cpp_masks(monkeypatch):
    from sec import deploy
    from test_nn_crf import network_like_unary, photo_like

    class Scores:
        """Just enough of a net for deploy.Segmenter (its CRF step only is used)."""
        inputs, outputs = ["data"], ["prob"]
        layers, top_names = [type("L", (), {"type": "Softmax"})()], {"prob": ["prob"]}
        blobs = {"data": np.zeros((1, 3, 8, 8), np.float32), "prob": np.zeros((1, 4, 2, 2), np.float32)}
        blobs = {k: type("B", (), {"data": v})() for k, v in blobs.items()}

    images = list(photo_like(60, 80, seed=11, num=2))
    probs = torch.softmax(torch.from_numpy(network_like_unary(2, 16, 24, 4, seed=12)).permute(0, 3, 1, 2), dim=1)
    monkeypatch.setenv(LAYER_IMPL_ENV, "numpy")
    want = deploy.Segmenter(Scores(), crf=True).masks(images, probs)
    monkeypatch.setenv(LAYER_IMPL_ENV, "torch")
    got = deploy.Segmenter(Scores(), crf=True).masks(images, probs)
    for a, b in zip(got, want):
        assert a.shape == b.shape == (60, 80) and (a == b).mean() >= 0.999


def test_device_cues_refuse_a_bad_image_only_when_a_batch_asks_for_it(tmp_path):
    cues = write_cues(tmp_path / "c.pickle", [1, 2], seed=6)
    cues["2_cues"] = np.array([[0], [CUE], [0]])           # row outside the grid
    cues["2007_000032_labels"] = np.array([1])              # a key no integer id can ask for
    lookup = DeviceCues(cues, CLASSES, CUE, source="c.pickle")
    np.testing.assert_array_equal(lookup.lookup([1])[1].numpy(), pycues.batch_labels_and_cues(cues, [1], CLASSES, CUE)[1])
    with pytest.raises(ValueError, match="image id 2 in c.pickle: cue coordinates"):
        lookup.lookup([1, 2])


def test_cpu_default_is_bitwise_the_engine_before_the_twins(sec_net, monkeypatch):
    from sec.caffe import layers as caffe_layers
    from sec.caffe.layers.python import PythonLayer
    _, now, now_grad = run(sec_net, monkeypatch, "auto")
    monkeypatch.setitem(caffe_layers.LAYER_TYPES, "Python", PythonLayer)   # the mapping before issue 14
    _, before, before_grad = run(sec_net, monkeypatch, "auto")
    for name in before:
        np.testing.assert_array_equal(now[name], before[name], err_msg=name)
    np.testing.assert_array_equal(now_grad, before_grad)
