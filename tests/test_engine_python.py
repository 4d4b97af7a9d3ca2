"""Python layers inside sec.caffe: Caffe's protocol, gradients against finite differences,
loss weights reaching top[0].diff, propagate_down, import errors, CUDA."""
import textwrap

import numpy as np
import pytest
import torch

from sec import caffe

LAYER_MODULE = textwrap.dedent('''
    """Tiny Caffe-protocol Python layers for the engine tests (numpy only)."""
    import numpy as np

    EVENTS = []


    class Square:
        """top = scale * a**2 * b (elementwise); scale from param_str."""

        def __init__(self, param):
            self.param = param

        def setup(self, bottom, top):
            EVENTS.append(("setup", self.param.name, self.param_str, self.phase))
            self.scale = float(self.param_str or 1)

        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].data.shape)

        def forward(self, bottom, top):
            top[0].data[...] = self.scale * bottom[0].data ** 2 * bottom[1].data

        def backward(self, top, propagate_down, bottom):
            EVENTS.append(("backward", self.param.name, list(propagate_down)))
            a, b = bottom[0].data, bottom[1].data
            if propagate_down[0]:
                bottom[0].diff[...] = top[0].diff * 2 * self.scale * a * b
            if propagate_down[1]:
                bottom[1].diff[...] = top[0].diff * self.scale * a ** 2


    class HalfSquaredError:
        """Loss-like: top (1,) = 0.5 * sum((a - b)**2) / N; gradient scaled by top[0].diff[0]."""

        def __init__(self, param):
            self.param = param

        def setup(self, bottom, top):
            pass

        def reshape(self, bottom, top):
            top[0].reshape(1)

        def forward(self, bottom, top):
            self.delta = bottom[0].data - bottom[1].data
            top[0].data[0] = 0.5 * np.sum(self.delta ** 2) / bottom[0].data.shape[0]

        def backward(self, top, propagate_down, bottom):
            EVENTS.append(("loss_diff", self.param.name, float(top[0].diff[0])))
            scale = top[0].diff[0] / bottom[0].data.shape[0]
            if propagate_down[0]:
                bottom[0].diff[...] = scale * self.delta
            if propagate_down[1]:
                bottom[1].diff[...] = -scale * self.delta
''')


@pytest.fixture()
def layers(tmp_path, monkeypatch):
    """The layer module above, importable as `engine_test_layers` (fresh for each test)."""
    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / "engine_test_layers.py").write_text(LAYER_MODULE)
    (folder / "engine_broken_layers.py").write_text("import a_module_that_is_not_installed_anywhere\n")
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(__import__("sys").modules, "engine_test_layers", raising=False)
    import engine_test_layers
    return engine_test_layers


def input_layer(name, shape):
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


def python_layer(name, cls, bottoms, top, extra="", param_str=""):
    bottom_text = " ".join(f'bottom: "{b}"' for b in bottoms)
    return (f'layer {{ name: "{name}" type: "Python" {bottom_text} top: "{top}" {extra} python_param {{ '
            f'module: "engine_test_layers" layer: "{cls}" param_str: "{param_str}" }} }}\n')


NET = (input_layer("x", (3, 4)) + input_layer("b", (3, 2)) + input_layer("target", (3, 2))
       + 'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h" inner_product_param { num_output: 2 '
         'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } } }\n'
       + python_layer("square", "Square", ["h", "b"], "sq", param_str="1.5")
       + python_layer("loss", "HalfSquaredError", ["sq", "target"], "loss", extra="loss_weight: 2"))


def build(tmp_path, text, phase=caffe.TRAIN):
    path = tmp_path / "py.prototxt"
    path.write_text(text)
    return caffe.Net(str(path), phase)


def feed():
    g = torch.Generator().manual_seed(0)
    return {"x": torch.randn(3, 4, generator=g), "b": torch.randn(3, 2, generator=g),
            "target": torch.randn(3, 2, generator=g)}


def test_protocol_param_str_phase_and_loss_weight(tmp_path, layers):
    net = build(tmp_path, NET, caffe.TEST)
    assert ("setup", "square", "1.5", caffe.TEST) in layers.EVENTS
    assert net.loss_weights == {"loss": 2.0}  # Python layers: only when set
    out = net.run(feed())
    f = feed()
    w, bias = (p.param.detach() for p in net.learnable_params())
    h = f["x"] @ w.t() + bias
    expected = 0.5 * ((1.5 * h ** 2 * f["b"] - f["target"]) ** 2).sum() / 3
    assert float(out["loss"].detach()[0]) == pytest.approx(float(expected), rel=1e-5)
    net.total_loss(out).backward()
    # The loss layer found loss_weight x upstream (2 x 1) in top[0].diff; `b` is an input
    # without gradient, so Square was told not to propagate to it.
    assert ("loss_diff", "loss", 2.0) in layers.EVENTS
    assert ("backward", "square", [True, False]) in layers.EVENTS


def test_gradients_match_finite_differences(tmp_path, layers):
    net = build(tmp_path, NET)
    data = feed()
    params = [info.param for info in net.learnable_params()]
    net.total_loss(net.run(data)).backward()
    eps = 1e-2
    for param in params:
        analytic = param.grad.clone()
        numeric = torch.zeros_like(param)
        with torch.no_grad():
            for index in range(param.numel()):
                flat = param.view(-1)
                original = float(flat[index])
                flat[index] = original + eps
                plus = float(net.total_loss(net.run(data)))
                flat[index] = original - eps
                minus = float(net.total_loss(net.run(data)))
                flat[index] = original
                numeric.view(-1)[index] = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(analytic.numpy(), numeric.numpy(), rtol=2e-2, atol=2e-3)


def test_propagate_down_false_detaches_the_bottom(tmp_path, layers):
    text = NET.replace('top: "sq"', 'top: "sq" propagate_down: false propagate_down: true')
    net = build(tmp_path, text)
    assert not net.total_loss(net.run(feed())).requires_grad  # the only path to the params is cut
    net.forward(**{k: v.numpy() for k, v in feed().items()})
    net.backward()
    assert not any(e[0] == "backward" and e[1] == "square" for e in layers.EVENTS)
    assert all(np.all(blob.diff == 0) for blob in net.params["ip"])


def test_pycaffe_backward_through_python_layers(tmp_path, layers):
    net = build(tmp_path, NET)
    data = {k: v.numpy() for k, v in feed().items()}
    net.forward(**data)
    net.backward()
    # Second path: the same gradient by autograd on the torch side.
    out = net.run({k: torch.from_numpy(v) for k, v in data.items()})
    h = out["h"]
    (grad_h,) = torch.autograd.grad(net.total_loss(out), [h])
    np.testing.assert_allclose(net.blobs["h"].diff, grad_h.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("module,needle", [
    ("engine_no_such_module", "ModuleNotFoundError"),
    ("engine_broken_layers", "a_module_that_is_not_installed_anywhere"),
])
def test_import_failure_names_layer_module_and_cause(tmp_path, layers, module, needle):
    text = input_layer("x", (1, 2)) + ('layer { name: "mine" type: "Python" bottom: "x" top: "y" '
                                       f'python_param {{ module: "{module}" layer: "Anything" }} }}\n')
    with pytest.raises(caffe.NetError) as err:
        build(tmp_path, text)
    message = str(err.value)
    assert "layer 'mine'" in message and module in message and needle in message


def test_missing_class_and_setup_error_are_located(tmp_path, layers):
    text = input_layer("x", (1, 2)) + python_layer("sq", "NoSuchClass", ["x", "x"], "y")
    with pytest.raises(caffe.NetError, match="layer 'sq'.*NoSuchClass"):
        build(tmp_path, text)
    text = input_layer("x", (1, 2)) + python_layer("sq", "Square", ["x", "x"], "y", param_str="not-a-number")
    with pytest.raises(caffe.NetError, match="layer 'sq'.*not-a-number"):
        build(tmp_path, text)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_python_layers_on_cuda(tmp_path, layers):
    cpu = build(tmp_path, NET)
    cpu_out = cpu.run(feed())
    cpu.total_loss(cpu_out).backward()
    gpu = build(tmp_path, NET).to("cuda")
    with torch.no_grad():
        for a, b in zip(cpu.learnable_params(), gpu.learnable_params()):
            b.param.copy_(a.param)
    gpu_out = gpu.run(feed())
    assert gpu_out["loss"].device.type == "cuda"
    gpu.total_loss(gpu_out).backward()
    for a, b in zip(cpu.learnable_params(), gpu.learnable_params()):
        np.testing.assert_allclose(b.param.grad.cpu().numpy(), a.param.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_project_pylayers_softmax_runs_with_gradients(tmp_path, layers):
    pytest.importorskip("pylayers", reason="the project's pylayers package is not installed")
    text = (input_layer("x", (2, 3, 2, 2)) + input_layer("target", (2, 3, 2, 2))
            + 'layer { name: "score" type: "Convolution" bottom: "x" top: "score" convolution_param { '
              'num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 0.5 } } }\n'
            + 'layer { name: "prob" type: "Python" bottom: "score" top: "prob" '
              'python_param { module: "pylayers" layer: "SoftmaxLayer" } }\n'
            + python_layer("loss", "HalfSquaredError", ["prob", "target"], "loss", extra="loss_weight: 1"))
    net = build(tmp_path, text)
    g = torch.Generator().manual_seed(3)
    data = {"x": torch.randn(2, 3, 2, 2, generator=g), "target": torch.rand(2, 3, 2, 2, generator=g)}
    out = net.run(data)
    np.testing.assert_allclose(out["prob"].detach().sum(1).numpy(), 1.0, rtol=1e-5)
    net.total_loss(out).backward()
    weight = net.params["score"][0].param
    eps = 1e-2
    with torch.no_grad():
        for index in range(weight.numel()):
            flat = weight.view(-1)
            original = float(flat[index])
            flat[index] = original + eps
            plus = float(net.total_loss(net.run(data)))
            flat[index] = original - eps
            minus = float(net.total_loss(net.run(data)))
            flat[index] = original
            assert float(weight.grad.view(-1)[index]) == pytest.approx((plus - minus) / (2 * eps), rel=3e-2, abs=1e-4)
