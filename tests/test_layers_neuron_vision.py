"""Neuron, vision and common layers beyond the Caffe fixtures (tests/test_caffe_reference.py
compares them with the real Caffe): finite-difference gradients of Caffe's backward formulas,
STOCHASTIC pooling (Caffe has it only on the GPU: its math on CPU tensors here, the layer on CUDA
where there is one), errors raised where Caffe aborts (Threshold's and Embed's missing backward,
Embed's indices), the column-buffer convolution against torch's, and bad parameters refused at
build time naming file, line, layer and field."""
import numpy as np
import pytest
import torch

from sec import caffe
from sec.caffe.layers import vision, vision_pooling

RNG = np.random.default_rng(3)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason="needs a CUDA device (torch.cuda.is_available() is False)")


def input_layer(name, shape):
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "input_{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


def build(tmp_path, text, phase=caffe.TEST):
    path = tmp_path / "net.prototxt"
    path.write_text(text)
    return caffe.Net(str(path), phase)


def one_layer(tmp_path, shape, type_, param="", phase=caffe.TEST, top="y", extra=""):
    return build(tmp_path, extra + input_layer("x", shape) +
                 f'layer {{ name: "l" type: "{type_}" bottom: "x" top: "{top}" {param} }}\n', phase)


def layer_impl(net, name="l"):
    return next(s.impl for s in net._layers if s.name == name)


# ---------------------------------------------------------------- Caffe's backward formulas

@pytest.mark.parametrize("type_, param, low, high", [
    ("AbsVal", "", -2, 2),
    ("BNLL", "", -4, 4),
    ("Clip", "clip_param { min: -0.5 max: 0.7 }", -2, 2),
    ("ELU", "elu_param { alpha: 0.7 }", -2, 2),
    ("Exp", "exp_param { base: 2 scale: 0.7 shift: 0.3 }", -1, 1),
    ("Log", "log_param { base: 3 scale: 1.5 shift: 0.2 }", 0.2, 2),
    ("Power", "power_param { power: 2.5 scale: 0.8 shift: 0.5 }", 0.1, 2),
    ("Power", "power_param { power: 3 scale: 0.8 }", -2, 2),
    ("Power", "power_param { power: 2 scale: -1.5 shift: 0.5 }", -2, 2),
    ("Swish", "swish_param { beta: 1.7 }", -3, 3),
    ("PReLU", "", -2, 2),
    ("MVN", "mvn_param { across_channels: true }", -2, 2),
])
def test_backward_formulas_match_finite_differences(tmp_path, type_, param, low, high):
    """Each layer's backward (Caffe's own formula) against central differences in float64,
    away from the kinks (|x| > 0.05 from 0 and from Clip's bounds)."""
    net = one_layer(tmp_path, (2, 3, 2, 3), type_, param)
    impl = layer_impl(net)
    x = torch.from_numpy(RNG.uniform(low, high, (2, 3, 2, 3)))
    x = torch.where((x.abs() < 0.05) | ((x + 0.5).abs() < 0.05) | ((x - 0.7).abs() < 0.05), x + 0.1, x)
    for p in impl.params:
        p.data = p.data.double()
    assert torch.autograd.gradcheck(lambda t: impl.forward(t)[0], (x.requires_grad_(),), eps=1e-6, atol=1e-5)


def test_prelu_slope_gradient_matches_finite_differences(tmp_path):
    net = one_layer(tmp_path, (2, 3, 2, 2), "PReLU", "prelu_param { filler { type: \"uniform\" min: 0 max: 1 } }")
    impl = layer_impl(net)
    x = torch.from_numpy(RNG.uniform(-2, 2, (2, 3, 2, 2)))
    slope = impl.slope.detach().double().requires_grad_()
    impl.slope = slope
    assert torch.autograd.gradcheck(lambda s: impl.forward(x)[0], (slope,), eps=1e-6, atol=1e-5)


def test_prelu_in_place_equals_not_in_place(tmp_path):
    """Caffe keeps a copy of PReLU's bottom when in place: same top, bottom and slope diffs."""
    results = []
    for top in ("y", "x"):
        net = one_layer(tmp_path, (2, 3, 4), "PReLU", "prelu_param { filler { type: \"constant\" value: 0.3 } }",
                        top=top, extra="force_backward: true\n")
        x = RNG.standard_normal((2, 3, 4)).astype(np.float32) if not results else results[0][3]
        out = net.forward(x=x)[top].copy()
        dy = np.linspace(-1, 1, x.size, dtype=np.float32).reshape(x.shape)
        net.blobs[top].diff[...] = dy
        net.backward()
        results.append((out, net.blobs["x"].diff.copy(), net.params["l"][0].diff.copy(), x))
    for same, other in zip(results[0][:3], results[1][:3]):
        np.testing.assert_allclose(same, other, rtol=1e-6)


def test_log_in_place_gives_caffes_squared_derivative(tmp_path):
    """Caffe's in-place Log writes the bottom diff (the top diff's memory) first: the bottom
    diff is the derivative at the top, squared, whatever the top diff."""
    net = one_layer(tmp_path, (4,), "Log", top="x", extra="force_backward: true\n")
    x = np.array([0.5, 1.5, 2.0, 4.0], np.float32)
    y = net.forward(x=x)["x"].copy()
    net.blobs["x"].diff[...] = [3.0, -1.0, 0.0, 7.0]
    net.backward()
    np.testing.assert_allclose(net.blobs["x"].diff, (1 / y) ** 2, rtol=1e-6)


# ---------------------------------------------------------------- Threshold and Embed

def test_threshold_backward_is_an_error_naming_the_layer(tmp_path):
    net = one_layer(tmp_path, (2, 3), "Threshold", "threshold_param { threshold: 0.1 }",
                    extra="force_backward: true\n")
    x = np.array([[0.1, 0.2, -1], [5, 0.0999, 0.1001]], np.float32)
    np.testing.assert_array_equal(net.forward(x=x)["y"], [[0, 1, 0], [1, 0, 1]])
    net.blobs["y"].diff[...] = 1
    with pytest.raises(RuntimeError, match="layer 'l' \\(type Threshold\\): Caffe has no backward"):
        net.backward()


def test_threshold_behind_propagate_down_false_backpropagates_nothing(tmp_path):
    net = build(tmp_path, "force_backward: true\n" + input_layer("x", (3,)) +
                'layer { name: "l" type: "Threshold" bottom: "x" top: "y" propagate_down: false }\n')
    net.forward(x=np.array([1, -1, 2], np.float32))
    net.blobs["y"].diff[...] = 1
    net.backward()
    np.testing.assert_array_equal(net.blobs["x"].diff, 0)


EMBED = 'embed_param { input_dim: 4 num_output: 3 weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }'


def test_embed_weight_and_bias_gradients_accumulate_per_index(tmp_path):
    net = one_layer(tmp_path, (2, 3), "Embed", EMBED + " loss_weight: 1")
    x = np.array([[0, 3, 3], [1, 0, 3]], np.float32)
    weight, bias = net.params["l"][0].data.copy(), net.params["l"][1].data.copy()
    np.testing.assert_allclose(net.forward(x=x)["y"], weight[x.astype(int)] + bias, rtol=1e-6)
    dy = RNG.standard_normal((2, 3, 3)).astype(np.float32)
    net.blobs["y"].diff[...] = dy
    net.backward()
    want = np.zeros_like(weight)
    np.add.at(want, x.astype(int).reshape(-1), dy.reshape(-1, 3))
    np.testing.assert_allclose(net.params["l"][0].diff, want, rtol=1e-6)
    np.testing.assert_allclose(net.params["l"][1].diff, dy.reshape(-1, 3).sum(0), rtol=1e-5)


@pytest.mark.parametrize("bad", [4.0, -1.0, 1.5, float("nan")])
def test_embed_index_out_of_range_or_fractional_names_the_layer(tmp_path, bad):
    net = one_layer(tmp_path, (3,), "Embed", EMBED)
    with pytest.raises(ValueError, match="layer 'l' \\(type Embed\\): index .* not an integer in \\[0, input_dim 4\\)"):
        net.forward(x=np.array([0, bad, 1], np.float32))


def test_embed_cannot_backpropagate_to_its_indices(tmp_path):
    """As Caffe: force_backward asks for the indices' gradient, which Embed cannot give."""
    net = one_layer(tmp_path, (3,), "Embed", EMBED, extra="force_backward: true\n")
    net.forward(x=np.array([0, 2, 1], np.float32))
    net.blobs["y"].diff[...] = 1
    with pytest.raises(RuntimeError, match="layer 'l' \\(type Embed\\): Can't backpropagate to EmbedLayer input"):
        net.backward()


# ---------------------------------------------------------------- STOCHASTIC pooling

def stochastic_test_loops(x, kernel, stride, out):
    """Caffe's StoPoolForwardTest, loop by loop: windows clipped to the image, no padding."""
    n, c, h, w = x.shape
    top = np.zeros((n, c) + out)
    for i in range(out[0]):
        for j in range(out[1]):
            win = x[:, :, i * stride[0]:min(i * stride[0] + kernel[0], h),
                    j * stride[1]:min(j * stride[1] + kernel[1], w)].astype(np.float64)
            total, squares = win.sum(axis=(2, 3)), (win * win).sum(axis=(2, 3))
            top[:, :, i, j] = np.where(total > 0, squares / np.where(total > 0, total, 1), 0)
    return top


@pytest.mark.parametrize("size, kernel, stride", [((5, 7), (3, 3), (2, 2)), ((6, 6), (2, 3), (2, 3)),
                                                  ((4, 5), (4, 5), (1, 1))])
def test_stochastic_test_phase_is_the_self_weighted_average(size, kernel, stride):
    x = np.abs(RNG.standard_normal((2, 3) + size)).astype(np.float32)
    x[0, 0] = -x[0, 0]  # a channel of negative sums: Caffe outputs 0 there
    window = vision_pooling.Window(vision_pooling.POOL_STOCHASTIC, kernel, stride, (0, 0))
    out = window.out_size(*size)
    got = vision_pooling.stochastic_pool(torch.from_numpy(x), kernel, stride, out, train=False)
    np.testing.assert_allclose(got.numpy(), stochastic_test_loops(x, kernel, stride, out), rtol=1e-5, atol=1e-6)


def test_stochastic_train_picks_in_proportion_to_value_and_routes_the_gradient():
    """One 2 x 2 window of values 1, 2, 3, 4 sampled 40000 times (the same torch code the layer
    runs on CUDA): each is picked with probability value / 10, and the gradient of the top
    reaches only the picked position."""
    torch.manual_seed(0)
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    x = values.expand(40000, 1, 2, 2).clone().requires_grad_()
    top = vision_pooling.stochastic_pool(x, (2, 2), (2, 2), (1, 1), train=True)
    top.sum().backward()
    picked = x.grad.reshape(-1, 4)
    assert torch.equal(picked.sum(1), torch.ones(40000))
    np.testing.assert_array_equal(top.detach().reshape(-1).numpy(), (picked * values.reshape(1, 4)).sum(1).numpy())
    np.testing.assert_allclose(picked.mean(0).numpy(), [0.1, 0.2, 0.3, 0.4], atol=0.01)


def test_stochastic_train_windows_overlapping_the_edge_pick_inside_the_image():
    torch.manual_seed(1)
    x = torch.rand(50, 2, 5, 5) + 0.01
    top = vision_pooling.stochastic_pool(x, (3, 3), (2, 2), (2, 2), train=True)
    for i in range(2):
        for j in range(2):
            win = x[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].reshape(50, 2, -1)
            assert bool((win == top[:, :, i, j, None]).any(-1).all())


def test_stochastic_pooling_builds_on_cpu_and_refuses_to_run_there(tmp_path):
    net = one_layer(tmp_path, (1, 2, 4, 4), "Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }")
    assert net.blobs["y"].shape == (1, 2, 2, 2)
    with pytest.raises(RuntimeError, match="layer 'l' \\(type Pooling\\): pool STOCHASTIC runs only on a GPU"):
        net.forward(x=np.ones((1, 2, 4, 4), np.float32))


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("phase", [caffe.TRAIN, caffe.TEST])
def test_stochastic_pooling_on_cuda(tmp_path, phase):
    caffe.set_mode_gpu()
    try:
        net = one_layer(tmp_path, (2, 3, 7, 6), "Pooling",
                        "pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }", phase,
                        extra="force_backward: true\n")
    finally:
        caffe.set_mode_cpu()
    x = np.abs(RNG.standard_normal((2, 3, 7, 6))).astype(np.float32) + 0.01
    top = net.forward(x=x)["y"]
    assert top.shape == (2, 3, 3, 3)   # ceil((7 - 3) / 2) + 1, ceil((6 - 3) / 2) + 1
    if phase == caffe.TEST:
        np.testing.assert_allclose(top, stochastic_test_loops(x, (3, 3), (2, 2), (3, 3)), rtol=1e-5)
        return
    net.blobs["y"].diff[...] = 1
    net.backward()
    grad = net.blobs["x"].diff
    for i in range(3):
        for j in range(3):
            win = x[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].reshape(2, 3, -1)
            assert bool((win == top[:, :, i, j, None]).any(-1).all())
    np.testing.assert_allclose(grad.sum(axis=(2, 3)), 9)   # one pick per window, 3 x 3 windows
    np.testing.assert_allclose((grad * x).sum(axis=(2, 3)), top.sum(axis=(2, 3)), rtol=1e-5)


# ---------------------------------------------------------------- N-D convolution

@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("shape, param", [
    ((2, 4, 5), "kernel_size: 3 stride: 2 pad: 1 dilation: 2 group: 2"),
    ((1, 2, 5, 6), "kernel_size: 2 kernel_size: 3 stride: 1 stride: 2 pad: 1 pad: 0 dilation: 2 dilation: 1"),
    ((1, 4, 4, 3, 5), "kernel_size: 2 stride: 2 pad: 1 pad: 0 pad: 1 group: 2"),
])
def test_column_buffer_convolution_equals_torch_convolution(tmp_path, transposed, shape, param):
    """The im2col path (used for 0 and > 3 spatial axes) against torch's convNd on 1 to 3 axes."""
    type_ = "Deconvolution" if transposed else "Convolution"
    net = one_layer(tmp_path, shape, type_, f'convolution_param {{ num_output: 4 {param} '
                    'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }')
    impl = layer_impl(net)
    x = torch.from_numpy(RNG.standard_normal(shape).astype(np.float32)).requires_grad_()
    direct, columns = impl._one(x), impl._columns(x)
    assert tuple(direct.shape) == net.blobs["y"].shape
    torch.testing.assert_close(columns, direct, rtol=1e-5, atol=1e-5)
    dy = torch.randn_like(direct)
    grads = [torch.autograd.grad(y, [x, impl.weight], dy) for y in (direct, columns)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_col2im_is_the_adjoint_of_im2col():
    geometry = ((2, 3, 2), (1, 0, 1), (2, 1, 1), (1, 2, 1))
    x = torch.randn(2, 3, 5, 6, 4, dtype=torch.float64)
    out = tuple(vision.conv_out_size(n, *g) for n, *g in zip(x.shape[2:], *geometry))
    cols = vision.im2col(x, *geometry, out)
    c = torch.randn_like(cols)
    back = vision.col2im(c, tuple(x.shape[2:]), *geometry)
    torch.testing.assert_close((cols * c).sum(), (x * back).sum())


# ---------------------------------------------------------------- refused at build time

@pytest.mark.parametrize("shape, type_, param, message", [
    ((1, 2, 5, 6, 4), "Convolution", "convolution_param { num_output: 2 kernel_size: 3 dilation: 1 dilation: 2 }",
     "convolution_param.dilation must be given once, or once per spatial axis"),
    ((1, 2, 5, 6), "Convolution", "convolution_param { num_output: 2 kernel_size: 3 stride: 0 }", "must be positive"),
    ((1, 2, 5, 6), "Convolution", "convolution_param { num_output: 2 kernel_size: 7 }", "output size"),
    ((1, 2, 5, 6), "Im2col", "convolution_param { kernel_size: 2 pad_h: 1 pad: 1 }",
     "either convolution_param.pad or pad_h/pad_w"),
    ((1, 2, 5, 6), "Crop", "crop_param { axis: 4 }", "crop_param.axis 4 out of range"),
    ((1, 2, 5, 6), "SPP", "spp_param { pyramid_height: 4 }",
     "pyramid level 2 \\(4 bins\\) of a 5x6 input: pad \\(2, 1\\)"),
    ((1, 2, 5, 6), "Embed", "embed_param { input_dim: 3 }", "embed_param.num_output must be set"),
    ((1, 2, 5, 6), "Exp", "exp_param { base: 0 }", "exp_param.base must be strictly positive"),
    ((1, 2, 5, 6), "Log", "log_param { base: -3 }", "log_param.base must be strictly positive"),
    ((1, 2, 5, 6), "Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 2 }", None),
])
def test_bad_parameters_fail_at_build_naming_file_line_layer_and_field(tmp_path, shape, type_, param, message):
    bottoms = 'bottom: "x" bottom: "x2"' if type_ == "Crop" else 'bottom: "x"'
    text = input_layer("x", shape) + input_layer("x2", (1, 2, 3, 3))
    text += f'layer {{\n  name: "bad" type: "{type_}" {bottoms}\n  top: "y" {param} }}\n'
    if message is None:   # built fine (fails at forward on the CPU, as Caffe)
        build(tmp_path, text)
        return
    with pytest.raises(caffe.NetError, match=message) as err:
        build(tmp_path, text)
    assert f"{tmp_path / 'net.prototxt'}:4: layer 'bad' (type {type_})" in str(err.value)
