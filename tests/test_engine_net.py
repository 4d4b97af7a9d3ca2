"""Net-level behaviour of sec.caffe: phase rules, in-place blobs, loss weights, propagate_down,
shared params, errors, the pycaffe API, weights round trip, the SEC deploy net, CUDA."""
from pathlib import Path

import numpy as np
import pytest
import torch

from sec import caffe

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(1)


def make_net(tmp_path, text, phase=caffe.TEST, name="net.prototxt", **kwargs):
    path = tmp_path / name
    path.write_text(text)
    return caffe.Net(str(path), phase, **kwargs)


def input_layer(name, shape):
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


def conv(name, bottom, n, extra=""):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" {extra} '
            f'convolution_param {{ num_output: {n} kernel_size: 3 pad: 1 weight_filler {{ type: "gaussian" std: 0.3 }} '
            'bias_filler { type: "gaussian" std: 0.1 } } }\n')


SMALL = (input_layer("data", (2, 3, 6, 6)) + conv("conv1", "data", 4)
         + 'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n'
         + 'layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" '
           'pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }\n'
         + conv("conv2", "pool1", 5)
         + 'layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }\n'
         + conv("fc8", "conv2", 3)
         + 'layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }\n')


# ---------------------------------------------------------------- building rules

def test_phase_level_and_stage_rules(tmp_path):
    text = input_layer("x", (1, 2))
    rules = {
        "train_only": "include { phase: TRAIN }",
        "test_only": "include { phase: TEST }",
        "not_test": "exclude { phase: TEST }",
        "level2": "include { min_level: 2 }",
        "upto1": "include { max_level: 1 }",
        "staged": 'include { stage: "deploy" }',
        "not_staged": 'include { not_stage: "deploy" }',
    }
    for name, rule in rules.items():
        text += f'layer {{ name: "{name}" type: "ReLU" bottom: "x" top: "{name}" {rule} }}\n'
    path = tmp_path / "rules.prototxt"
    path.write_text(text)
    test = caffe.Net(str(path), caffe.TEST)
    assert set(test.layer_names) == {"x", "test_only", "upto1", "not_staged"}
    train = caffe.Net(str(path), phase=caffe.TRAIN, level=2, stages=["deploy"])
    assert set(train.layer_names) == {"x", "train_only", "not_test", "level2", "staged"}


def test_include_and_exclude_together_is_an_error(tmp_path):
    text = input_layer("x", (1, 2)) + \
        'layer { name: "bad" type: "ReLU" bottom: "x" top: "y" include { phase: TEST } exclude { phase: TRAIN } }\n'
    with pytest.raises(caffe.NetError, match="bad"):
        make_net(tmp_path, text)


def test_unknown_type_names_layer_file_and_line(tmp_path):
    text = input_layer("x", (1, 2)) + '\n\nlayer {\n  name: "mystery"\n  type: "Frobnicate"\n  bottom: "x" top: "y" }\n'
    with pytest.raises(caffe.NetError) as err:
        make_net(tmp_path, text, name="odd.prototxt")
    message = str(err.value)
    assert "odd.prototxt:5" in message and "mystery" in message and "Frobnicate" in message


def test_error_line_is_the_layers_not_the_nets_own_name(tmp_path):
    """A layer named like the net: the message points at the layer's line, not the net's `name:`
    (nor at a brace inside a comment)."""
    text = ('name: "relu"\n# a comment {\n' + input_layer("x", (1, 2)) +
            'layer {\n  name: "relu"\n  type: "ReLU" bottom: "nothere" top: "y" }\n')
    with pytest.raises(caffe.NetError, match=r"same.prototxt:5: layer 'relu'"):
        make_net(tmp_path, text, name="same.prototxt")


@pytest.mark.parametrize("layers,needle", [
    ('layer { name: "c" type: "Concat" bottom: "x" bottom: "z" top: "y" }', "bottom 1 has shape"),
    ('layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { kernel_size: 3 } }', "num_output"),
    ('layer { name: "c" type: "ReLU" bottom: "nothere" top: "y" }', "nothere"),
    ('layer { name: "c" type: "ReLU" bottom: "x" top: "z" }', "already produced"),
    ('layer { name: "c" type: "Pooling" bottom: "x" top: "y" pooling_param { kernel_size: 2 pad: 2 } }', "pad"),
    ('layer { name: "c" type: "Eltwise" bottom: "x" bottom: "z" top: "y" eltwise_param { coeff: 1 } }', "coeff"),
    # Caffe's BaseConvolutionLayer::Reshape: "All inputs must have the same shape."
    ('layer { name: "c" type: "Convolution" bottom: "x" bottom: "z" top: "y" top: "w" '
     'convolution_param { num_output: 2 kernel_size: 3 } }', "same shape"),
    ('layer { name: "c" type: "ReLU" bottom: "x" top: "y" loss_weight: 1 loss_weight: 2 }', "loss_weight"),
    ('layer { name: "c" type: "ReLU" bottom: "x" top: "y" }\nlayer { name: "c" type: "ReLU" bottom: "y" top: "w" }',
     "second layer named"),
])
def test_bad_parameters_are_errors_naming_the_layer(tmp_path, layers, needle):
    text = input_layer("x", (1, 2, 4, 4)) + input_layer("z", (1, 2, 5, 4)) + layers + "\n"
    with pytest.raises(caffe.NetError) as err:
        make_net(tmp_path, text)
    assert "layer 'c'" in str(err.value) and needle in str(err.value)
    assert "net.prototxt:3" in str(err.value)


def test_reshape_checks_inner_product_input_size(tmp_path):
    text = input_layer("x", (2, 3, 2, 2)) + \
        'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 4 } }\n'
    net = make_net(tmp_path, text)
    net.blobs["x"].reshape(5, 3, 2, 2)
    net.reshape()
    assert net.blobs["y"].shape == (5, 4)
    net.blobs["x"].reshape(5, 3, 3, 2)
    with pytest.raises(caffe.NetError, match="layer 'ip'.*take 12"):
        net.reshape()


def test_legacy_net_inputs(tmp_path):
    text = 'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 5\ninput_dim: 5\n' + conv("c", "data", 2)
    net = make_net(tmp_path, text)
    assert net.inputs == ["data"] and net.outputs == ["c"] and net.blobs["c"].shape == (1, 2, 5, 5)


# ---------------------------------------------------------------- autograd semantics

def test_in_place_blob_data_is_last_value_and_diff_is_first(tmp_path):
    net = make_net(tmp_path, SMALL)
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    net.forward(data=x)
    conv1 = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(net.params["conv1"][0].data),
                                       torch.from_numpy(net.params["conv1"][1].data), padding=1)
    np.testing.assert_allclose(net.blobs["conv1"].data, conv1.clamp(min=0).numpy(), rtol=1e-5, atol=1e-6)
    assert (net.blobs["conv1"].data >= 0).all()
    net.blobs["prob"].diff[...] = 1.0
    net.backward()
    # Gradient at the conv output is zero where ReLU cut it (Caffe overwrites the in-place diff).
    assert np.all(net.blobs["conv1"].diff[conv1.numpy() < 0] == 0)
    assert np.abs(net.blobs["conv1"].diff).sum() > 0


def test_backward_from_a_layer_matches_torch_autograd(tmp_path):
    net = make_net(tmp_path, SMALL)
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    seed = RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)
    # The notebook's way: feed through blobs[].data, set fc8's diff, backward from fc8.
    net.blobs["data"].data[...] = x
    net.forward()
    net.blobs["fc8"].diff[...] = seed
    net.backward(start="fc8")
    got_blob = net.blobs["conv2"].diff.copy()
    got_param = net.params["conv1"][0].diff.copy()
    # Second path: plain torch autograd through run().
    for blob in net.params["conv1"]:
        blob.diff[...] = 0
    out = net.run({"data": torch.from_numpy(x)})
    conv2 = out["conv2"]
    grads = torch.autograd.grad((out["fc8"] * torch.from_numpy(seed)).sum(),
                                [net.learnable_params()[0].param])
    np.testing.assert_allclose(got_param, grads[0].numpy(), rtol=1e-4, atol=1e-6)
    assert got_blob.shape == tuple(conv2.shape) and np.abs(got_blob).sum() > 0


def test_loss_weights_total_loss_and_propagate_down(tmp_path):
    text = (input_layer("x", (2, 4)) + input_layer("label", (2,))
            + 'layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" inner_product_param { num_output: 3 '
              'weight_filler { type: "gaussian" } } }\n'
            + 'layer { name: "b" type: "InnerProduct" bottom: "x" top: "b" inner_product_param { num_output: 3 '
              'weight_filler { type: "gaussian" } } }\n'
            + 'layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" propagate_down: true '
              'propagate_down: false loss_weight: 0.5 }\n'
            + 'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "sum" bottom: "label" top: "loss" }\n')
    net = make_net(tmp_path, text, phase=caffe.TRAIN)
    assert net.loss_weights == {"sum": 0.5, "loss": 1.0}
    out = net.run({"x": torch.randn(2, 4), "label": torch.tensor([0.0, 2.0])})
    total = net.total_loss(out)
    assert float(total.detach()) == pytest.approx(0.5 * float(out["sum"].detach().sum()) + float(out["loss"].detach()), rel=1e-6)
    total.backward()
    params = {(i.layer, i.index): i.param for i in net.learnable_params()}
    assert params[("a", 0)].grad is not None and params[("a", 0)].grad.abs().sum() > 0
    assert params[("b", 0)].grad is None


def test_param_specs_and_sharing(tmp_path):
    text = (input_layer("x", (2, 4))
            + 'layer { name: "p" type: "InnerProduct" bottom: "x" top: "p" param { name: "w" lr_mult: 2 decay_mult: 0 } '
              'param { lr_mult: 3 } inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }\n'
            + 'layer { name: "q" type: "InnerProduct" bottom: "p" top: "q" param { name: "w" lr_mult: 2 decay_mult: 0 } '
              'inner_product_param { num_output: 4 bias_term: false } }\n')
    net = make_net(tmp_path, text, phase=caffe.TRAIN)
    infos = [(i.layer, i.index, i.lr_mult, i.decay_mult) for i in net.learnable_params()]
    assert infos == [("p", 0, 2.0, 0.0), ("p", 1, 3.0, 1.0)]
    assert net.params["q"][0].param is net.params["p"][0].param
    x = torch.randn(2, 4)
    out = net.run({"x": x})
    out["q"].sum().backward()
    w = net.params["p"][0].param.detach().clone().requires_grad_()
    b = net.params["p"][1].param.detach()
    (((x @ w.t() + b) @ w.t()).sum()).backward()
    np.testing.assert_allclose(net.params["p"][0].param.grad.numpy(), w.grad.numpy(), rtol=1e-5)


# ---------------------------------------------------------------- pycaffe API

def test_pycaffe_feeding_params_and_partial_forward(tmp_path):
    net = make_net(tmp_path, SMALL)
    assert net.inputs == ["data"] and net.outputs == ["prob"]
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    net.blobs["data"].data[0] = x[0]
    net.blobs["data"].data[1] = x[1]
    first = net.forward()["prob"].copy()
    np.testing.assert_allclose(net.forward(data=x)["prob"], first, rtol=1e-6)
    # Writing params changes the net: zero fc8 weights, bias (0, log 2, 0).
    net.params["fc8"][0].data[...] = 0
    net.params["fc8"][1].data[...] = [0, np.log(2), 0]
    probs = net.forward()["prob"]
    np.testing.assert_allclose(probs[:, :, 0, 0], [[0.25, 0.5, 0.25]] * 2, rtol=1e-5)
    # forward(start=, end=): recompute fc8 from a changed conv2 blob only.
    net.blobs["conv2"].data[...] = 0
    out = net.forward(start="fc8", end="fc8")
    assert list(out) == ["fc8"]
    np.testing.assert_allclose(out["fc8"][:, 1], np.log(2), rtol=1e-6)
    # pycaffe's errors: list.index's ValueError for a layer name, a plain Exception for inputs.
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        net.forward(start="nope")
    with pytest.raises(Exception, match="Input blob arguments do not match net inputs"):
        net.forward(conv1=np.zeros((2, 4, 6, 6), np.float32))


def test_blob_reshape_then_net_reshape(tmp_path):
    net = make_net(tmp_path, SMALL)
    net.blobs["data"].reshape(1, 3, 10, 8)
    net.reshape()
    assert net.blobs["prob"].shape == (1, 3, 6, 5)
    out = net.forward(data=np.ones((1, 3, 10, 8), np.float32))
    assert out["prob"].shape == (1, 3, 6, 5)


def test_save_and_copy_from_round_trip(tmp_path):
    pytest.importorskip("sec.caffe.formats")
    torch.manual_seed(0)
    a = make_net(tmp_path, SMALL)
    a.save(str(tmp_path / "a.caffemodel"))
    torch.manual_seed(1)
    b = make_net(tmp_path, SMALL)
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    assert not np.allclose(a.forward(data=x)["prob"], b.forward(data=x)["prob"])
    b.copy_from(str(tmp_path / "a.caffemodel"))
    np.testing.assert_allclose(a.forward(data=x)["prob"], b.forward(data=x)["prob"], rtol=1e-6)
    c = caffe.Net(str(tmp_path / "net.prototxt"), str(tmp_path / "a.caffemodel"), caffe.TEST)
    np.testing.assert_allclose(c.params["conv2"][0].data, a.params["conv2"][0].data)
    other = make_net(tmp_path, SMALL.replace("num_output: 5", "num_output: 6"), name="other.prototxt")
    with pytest.raises(ValueError) as err:
        other.copy_from(str(tmp_path / "a.caffemodel"))
    assert "a.caffemodel" in str(err.value) and "conv2" in str(err.value)


def test_image_data_layer_uses_source_unless_fed(tmp_path, monkeypatch):
    import sec.caffe.image_data
    from sec.caffe.caffe_rng import CaffeRNG

    class StandIn:
        made = []

        def __init__(self, **options):
            StandIn.made.append(options)
            self.calls = 0

        def next_batch(self):
            self.calls += 1
            return np.full((2, 3, 4, 5), self.calls, np.float32), np.array([7, 8], np.float32)

    monkeypatch.setattr(sec.caffe.image_data, "ImageDataSource", StandIn)
    text = ('layer { name: "data" type: "ImageData" top: "images" top: "ids" '
            'transform_param { mean_value: 104 mean_value: 117 mean_value: 123 } '
            'image_data_param { source: "list.txt" root_folder: "img/" batch_size: 2 new_height: 4 new_width: 5 '
            'shuffle: true } }\n'
            'layer { name: "r" type: "ReLU" bottom: "images" top: "r" }\n')
    torch.manual_seed(1234)  # what the solver does with its random_seed, before it builds the net
    net = make_net(tmp_path, text, phase=caffe.TRAIN)
    assert StandIn.made == []  # created lazily
    out = net.run()
    options = StandIn.made[0]
    assert (options["source"], options["root_folder"], options["batch_size"], options["new_height"],
            options["new_width"], options["shuffle"]) == ("list.txt", "img/", 2, 4, 5, True)
    assert list(options["transformer"].mean_values) == [104.0, 117.0, 123.0]
    assert options["seed"] == CaffeRNG(1234).raw()  # Caffe's first draw seeds ImageData's shuffling
    assert float(out["r"][0, 0, 0, 0]) == 1.0 and out["ids"].tolist() == [7.0, 8.0]
    fed = net.run({"images": torch.zeros(2, 3, 4, 5), "ids": torch.zeros(2)})
    assert float(fed["r"].abs().sum()) == 0
    assert net.data_layers()[0].calls == 1


@pytest.mark.slow
def test_sec_deploy_net_maps_321_to_41():
    net = caffe.Net(str(REPO / "models" / "sec" / "deploy.prototxt"), caffe.TEST)
    expected = [f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)]
    assert [n for n in net.params] == expected + ["fc6", "fc7", "fc8-SEC"]
    assert net.params["fc6"][0].shape == (1024, 512, 3, 3) and net.params["fc8-SEC"][0].shape == (21, 1024, 1, 1)
    assert net.inputs == ["images"] and net.outputs == ["fc8-SEC-Softmax"]
    with torch.no_grad():
        out = net.forward(images=np.zeros((1, 3, 321, 321), np.float32))["fc8-SEC-Softmax"]
    assert out.shape == (1, 21, 41, 41)
    np.testing.assert_allclose(out, 1 / 21, rtol=1e-5)  # constant-0 fillers: uniform softmax


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_cuda_matches_cpu_and_feeds_through_blobs(tmp_path, ieee_float32):
    """IEEE float32 convolutions (ieee_float32): the engine's device handling is under test, not
    TF32, whose 2^-10 input rounding alone exceeds rtol 1e-4 (tests/test_nn_speed.py bounds it)."""
    torch.manual_seed(0)
    cpu = make_net(tmp_path, SMALL)
    cpu.save(str(tmp_path / "w.caffemodel"))
    caffe.set_mode_gpu()
    try:
        gpu = caffe.Net(str(tmp_path / "net.prototxt"), caffe.TEST, weights=str(tmp_path / "w.caffemodel"))
    finally:
        caffe.set_mode_cpu()
    assert gpu.device.type == "cuda"
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    gpu.blobs["data"].data[...] = x
    np.testing.assert_allclose(gpu.forward()["prob"], cpu.forward(data=x)["prob"], rtol=1e-4, atol=1e-5)
    gpu.params["fc8"][0].data[...] = 0
    gpu.params["fc8"][1].data[...] = 0
    np.testing.assert_allclose(gpu.forward()["prob"], 1 / 3, rtol=1e-5)


def test_import_is_light_and_solver_is_lazy():
    import subprocess
    import sys
    code = ("import sys, sec.caffe; heavy = [m for m in ('pylayers', 'sec.data', 'sec.caffe.solver', "
            "'krahenbuhl2013') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    solver = pytest.importorskip("sec.caffe.solver")
    assert caffe.SGDSolver is solver.SGDSolver
    with pytest.raises(AttributeError, match="NoSuchThing"):
        caffe.NoSuchThing  # noqa: B018


def test_shared_param_with_different_lr_mult_is_an_error(tmp_path):
    text = (input_layer("x", (2, 4))
            + 'layer { name: "p" type: "InnerProduct" bottom: "x" top: "p" param { name: "w" lr_mult: 2 } '
              'inner_product_param { num_output: 4 bias_term: false } }\n'
            + 'layer { name: "q" type: "InnerProduct" bottom: "p" top: "q" param { name: "w" lr_mult: 1 } '
              'inner_product_param { num_output: 4 bias_term: false } }\n')
    with pytest.raises(caffe.NetError, match="layer 'q'.*shared param 'w'"):
        make_net(tmp_path, text)


SCALAR_SCALE = (input_layer("x", (2, 3))
                + 'layer { name: "s" type: "Scale" bottom: "x" top: "y" scale_param { num_axes: 0 bias_term: true '
                  'filler { type: "uniform" min: 1 max: 2 } bias_filler { type: "uniform" min: -1 max: 0 } } }\n'
                + 'layer { name: "b" type: "Bias" bottom: "y" top: "z" bias_param { num_axes: 0 '
                  'filler { type: "uniform" min: 3 max: 4 } } }\n')


def test_zero_dim_params_survive_save_and_load(tmp_path):
    """Scale and Bias with num_axes: 0 have shape-() blobs: saved as Caffe does (shape {} and one value) and
    read back by copy_from and by Net(prototxt, weights, phase)."""
    from sec.caffe import formats
    torch.manual_seed(0)
    a = make_net(tmp_path, SCALAR_SCALE)
    path = tmp_path / "scalar.caffemodel"
    a.save(str(path))
    stored = [layer for layer in formats.read_caffemodel(str(path)).layer if layer.name == "s"][0]
    assert [(tuple(b.shape.dim), len(b.data)) for b in stored.blobs] == [((), 1), ((), 1)]
    gamma, beta = (float(b.data) for b in a.params["s"])
    shift = float(a.params["b"][0].data)
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(a.forward(x=x)["z"], x * gamma + beta + shift, rtol=1e-6)
    torch.manual_seed(1)
    b = make_net(tmp_path, SCALAR_SCALE)
    assert float(b.params["s"][0].data) != gamma
    b.copy_from(str(path))
    assert [blob.data.shape for blob in b.params["s"]] == [(), ()]
    assert (float(b.params["s"][0].data), float(b.params["s"][1].data)) == (gamma, beta)
    assert b.params["b"][0].data.shape == () and float(b.params["b"][0].data) == shift
    c = caffe.Net(str(tmp_path / "net.prototxt"), str(path), caffe.TEST)
    np.testing.assert_allclose(c.forward(x=x)["z"], x * gamma + beta + shift, rtol=1e-6)


@pytest.mark.parametrize("legacy, loads", [((1, 1, 1, 1), True), ((1, 1, 1, 2), False)])
def test_zero_dim_params_from_legacy_blobs(tmp_path, legacy, loads):
    """A legacy blob (num/channels/height/width) fills a 0-d parameter when it is 1x1x1x1."""
    from sec.caffe import formats
    from sec.proto import caffe_pb2
    model = caffe_pb2.NetParameter(name="legacy")
    layer = model.layer.add(name="s", type="Scale")
    count = int(np.prod(legacy))
    for value in (3.0, -0.5):
        blob = layer.blobs.add(num=legacy[0], channels=legacy[1], height=legacy[2], width=legacy[3])
        blob.data.extend([value] * count)
    path = tmp_path / "legacy.caffemodel"
    formats.atomic_write_bytes(path, model.SerializeToString())
    net = make_net(tmp_path, SCALAR_SCALE)
    if not loads:
        with pytest.raises(ValueError) as err:
            net.copy_from(str(path))
        assert "legacy.caffemodel" in str(err.value) and "'s'" in str(err.value)
        return
    net.copy_from(str(path))
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    net.forward(x=x)
    np.testing.assert_allclose(net.blobs["y"].data, x * 3.0 - 0.5, rtol=1e-6, atol=1e-7)


def test_split_tops_get_their_own_diffs(tmp_path):
    """As Caffe: each Split top's diff is the gradient from its own consumer; the bottom gets the sum."""
    text = ("force_backward: true\n" + input_layer("x", (2, 3))
            + 'layer { name: "split" type: "Split" bottom: "x" top: "x1" top: "x2" }\n'
            + 'layer { name: "a" type: "Eltwise" bottom: "x1" bottom: "x1" top: "a" eltwise_param { operation: PROD } '
              'loss_weight: 1 }\n'
            + 'layer { name: "b" type: "ReLU" bottom: "x2" top: "b" }\n'
            + 'layer { name: "c" type: "Eltwise" bottom: "b" bottom: "b" top: "c" eltwise_param { coeff: 1.5 coeff: 1.5 } '
              'loss_weight: 1 }\n')
    net = make_net(tmp_path, text)
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    net.forward(x=x)
    net.backward()
    np.testing.assert_allclose(net.blobs["x1"].diff, 2 * x, rtol=1e-6)           # d(x^2)/dx
    np.testing.assert_allclose(net.blobs["x2"].diff, 3.0 * (x > 0), rtol=1e-6)   # d(3 relu(x))/dx
    np.testing.assert_allclose(net.blobs["x"].diff, 2 * x + 3.0 * (x > 0), rtol=1e-6)


@pytest.mark.parametrize("layer", [
    'layer { name: "drop" type: "Dropout" bottom: "x" top: "x" dropout_param { dropout_ratio: 0.5 } }',
    'layer { name: "drop" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.5 } }',
    'layer { name: "drop" type: "Flatten" bottom: "x" top: "y" flatten_param { axis: 1 end_axis: 1 } }',
])
def test_backward_through_an_identity_layer_copies_the_diff(tmp_path, layer):
    """Caffe's TEST Dropout (in place or not) and a one-axis Flatten copy the top diff to the
    bottom; the top diff stays what the caller set. (Was: bottom diff 0, top diff wiped.)"""
    net = make_net(tmp_path, "force_backward: true\n" + input_layer("x", (2, 3)) + layer + "\n")
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    seed = RNG.standard_normal((2, 3)).astype(np.float32)
    net.forward(x=x)
    top = net.top_names["drop"][0]
    np.testing.assert_array_equal(net.blobs[top].data, x)
    net.blobs[top].diff[...] = seed
    net.backward(start="drop")
    np.testing.assert_array_equal(net.blobs["x"].diff, seed)
    np.testing.assert_array_equal(net.blobs[top].diff, seed)
