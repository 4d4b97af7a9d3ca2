"""Layer math of sec.caffe against small numpy references written from Caffe's definitions.

Each reference below is written independently of the engine: explicit loops over tiny sizes,
Caffe's output-size formulas spelled out again here.
"""
import math

import numpy as np
import pytest
import torch

from sec import caffe

RNG = np.random.default_rng(0)


def make_net(tmp_path, text, phase=caffe.TEST, name="net.prototxt"):
    path = tmp_path / name
    path.write_text(text)
    return caffe.Net(str(path), phase)


def input_layer(name, shape):
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


def one_layer_net(tmp_path, shape, layer_type, param_text, extra_params="", bottom="x", inputs=None):
    text = input_layer("x", shape) + (inputs or "")
    text += (f'layer {{ name: "l" type: "{layer_type}" {bottom_lines(bottom)} top: "y" '
             f'{param_text} {extra_params} }}\n')
    return make_net(tmp_path, text)


def bottom_lines(bottom):
    names = [bottom] if isinstance(bottom, str) else bottom
    return " ".join(f'bottom: "{b}"' for b in names)


def set_params(net, layer, *arrays):
    for blob, array in zip(net.params[layer], arrays):
        blob.data[...] = array


# ---------------------------------------------------------------- numpy references

def conv_ref(x, w, b, stride, pad, dilation, group):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh = (h + 2 * pad[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (wd + 2 * pad[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    xp = np.zeros((n, c, h + 2 * pad[0], wd + 2 * pad[1]))
    xp[:, :, pad[0]:pad[0] + h, pad[1]:pad[1] + wd] = x
    out = np.zeros((n, o, oh, ow))
    per_group = o // group
    for ni in range(n):
        for oc in range(o):
            g = oc // per_group
            for i in range(oh):
                for j in range(ow):
                    acc = 0.0
                    for ci in range(cg):
                        for a in range(kh):
                            for bb in range(kw):
                                acc += w[oc, ci, a, bb] * xp[ni, g * cg + ci, i * stride[0] + a * dilation[0],
                                                             j * stride[1] + bb * dilation[1]]
                    out[ni, oc, i, j] = acc + (b[oc] if b is not None else 0.0)
    return out


def deconv_ref(x, w, b, stride, pad):
    """Scatter form of Caffe's deconvolution (group 1, dilation 1)."""
    n, c, h, wd = x.shape
    _, o, kh, kw = w.shape
    full = np.zeros((n, o, (h - 1) * stride + kh, (wd - 1) * stride + kw))
    for i in range(h):
        for j in range(wd):
            full[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw] += \
                np.einsum("nc,cokl->nokl", x[:, :, i, j], w)
    out = full[:, :, pad:full.shape[2] - pad, pad:full.shape[3] - pad]
    return out + b[None, :, None, None]


def caffe_pooled(size, k, s, p, padded=None, floor=False):
    """Caffe's pooled size along one axis; the clip rule applies when either axis is padded."""
    rounding = math.floor if floor else math.ceil
    pooled = int(rounding(float(size + 2 * p - k) / s)) + 1
    if (p if padded is None else padded) and (pooled - 1) * s >= size + p:
        pooled -= 1
    return pooled


def pool_ref(x, k, s, p, method, floor=False):
    """Caffe's PoolingLayer::Forward_cpu, loop for loop; k, s, p are ints or (h, w) pairs."""
    (kh, kw), (sh, sw), (ph_, pw_) = [v if isinstance(v, tuple) else (v, v) for v in (k, s, p)]
    n, c, h, w = x.shape
    padded = bool(ph_ or pw_)
    ph, pw = caffe_pooled(h, kh, sh, ph_, padded, floor), caffe_pooled(w, kw, sw, pw_, padded, floor)
    out = np.zeros((n, c, ph, pw))
    for i in range(ph):
        for j in range(pw):
            hs, ws = i * sh - ph_, j * sw - pw_
            he, we = min(hs + kh, h + ph_), min(ws + kw, w + pw_)
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            window = x[:, :, hs:he, ws:we]
            if method == "MAX":
                out[:, :, i, j] = window.max(axis=(2, 3))
            else:
                out[:, :, i, j] = window.sum(axis=(2, 3)) / size
    return out


def lrn_across_ref(x, size, alpha, beta, k):
    n, c, h, w = x.shape
    out = np.zeros_like(x)
    half = (size - 1) // 2
    for ci in range(c):
        lo, hi = max(0, ci - half), min(c, ci + half + 1)
        scale = k + alpha / size * (x[:, lo:hi] ** 2).sum(axis=1)
        out[:, ci] = x[:, ci] * scale ** -beta
    return out


def softmax_ref(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ---------------------------------------------------------------- convolution family

@pytest.mark.parametrize("geometry,stride,pad,dilation", [
    ("kernel_size: 3 pad: 1", (1, 1), (1, 1), (1, 1)),
    ("kernel_size: 3 stride: 2", (2, 2), (0, 0), (1, 1)),
    ("kernel_h: 3 kernel_w: 1 pad_h: 2 pad_w: 0 stride_h: 2 stride_w: 1", (2, 1), (2, 0), (1, 1)),
    ("kernel_size: 3 pad: 2 dilation: 2", (1, 1), (2, 2), (2, 2)),
    ("kernel_size: 2 stride: 3 pad: 1", (3, 3), (1, 1), (1, 1)),
    ("kernel_size: 3 kernel_size: 2 pad: 1 pad: 0 stride: 1 stride: 2", (1, 2), (1, 0), (1, 1)),
])
def test_convolution_shape_and_values(tmp_path, geometry, stride, pad, dilation):
    x = RNG.standard_normal((2, 4, 7, 6)).astype(np.float32)
    net = one_layer_net(tmp_path, x.shape, "Convolution",
                        f"convolution_param {{ num_output: 6 group: 2 {geometry} }}")
    w = RNG.standard_normal(net.params["l"][0].shape).astype(np.float32)
    b = RNG.standard_normal(6).astype(np.float32)
    set_params(net, "l", w, b)
    assert net.params["l"][0].shape[:2] == (6, 2)
    kernel = w.shape[2:]
    expected = tuple((size + 2 * p - (d * (k - 1) + 1)) // s + 1
                     for size, k, s, p, d in zip(x.shape[2:], kernel, stride, pad, dilation))
    assert net.blobs["y"].shape == (2, 6) + expected
    out = net.forward(x=x)["y"]
    ref = conv_ref(x, w, b, stride, pad, dilation, 2)
    assert net.layers[1].type == "Convolution"
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_convolution_without_bias(tmp_path):
    net = one_layer_net(tmp_path, (1, 2, 4, 4), "Convolution",
                        "convolution_param { num_output: 3 kernel_size: 1 bias_term: false }")
    assert len(net.params["l"]) == 1


@pytest.mark.parametrize("stride,pad", [(1, 0), (2, 0), (2, 1), (3, 1)])
def test_deconvolution(tmp_path, stride, pad):
    x = RNG.standard_normal((1, 3, 4, 5)).astype(np.float32)
    net = one_layer_net(tmp_path, x.shape, "Deconvolution",
                        f"convolution_param {{ num_output: 2 kernel_size: 3 stride: {stride} pad: {pad} }}")
    w = RNG.standard_normal((3, 2, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(2).astype(np.float32)
    set_params(net, "l", w, b)
    expected = tuple(stride * (s - 1) + 3 - 2 * pad for s in (4, 5))
    assert net.blobs["y"].shape == (1, 2) + expected
    np.testing.assert_allclose(net.forward(x=x)["y"], deconv_ref(x, w, b, stride, pad), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- pooling

POOL_CASES = [
    # (size, kernel, stride, pad): ceil rounding, clip rule, pad > kernel // 2 (explicit path)
    (7, 3, 2, 1), (6, 3, 2, 1), (5, 2, 2, 1), (8, 3, 3, 1), (6, 3, 2, 0), (7, 2, 2, 0),
    (5, 3, 1, 1), (4, 3, 2, 2), (5, 4, 3, 3), (6, 3, 3, 2), (9, 3, 2, 1), (1, 3, 2, 1),
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("size,kernel,stride,pad", POOL_CASES)
def test_pooling_against_caffe_loops(tmp_path, method, size, kernel, stride, pad):
    x = RNG.standard_normal((2, 3, size, size + 1)).astype(np.float32)
    net = one_layer_net(tmp_path, x.shape, "Pooling",
                        f"pooling_param {{ pool: {method} kernel_size: {kernel} stride: {stride} pad: {pad} }}")
    ref = pool_ref(x.astype(np.float64), kernel, stride, pad, method)
    assert net.blobs["y"].shape == ref.shape
    np.testing.assert_allclose(net.forward(x=x)["y"], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("size,kernel,stride,pad", POOL_CASES)
def test_pooling_round_mode_floor_against_caffe_loops(tmp_path, method, size, kernel, stride, pad):
    """round_mode FLOOR (BVLC 9b89154): floor((size + 2 pad - kernel) / stride) + 1 windows."""
    x = RNG.standard_normal((2, 3, size, size + 1)).astype(np.float32)
    net = one_layer_net(tmp_path, x.shape, "Pooling",
                        f"pooling_param {{ pool: {method} kernel_size: {kernel} stride: {stride} pad: {pad} "
                        "round_mode: FLOOR }")
    ref = pool_ref(x.astype(np.float64), kernel, stride, pad, method, floor=True)
    assert net.blobs["y"].shape == ref.shape
    np.testing.assert_allclose(net.forward(x=x)["y"], ref, rtol=1e-5, atol=1e-5)


def test_pooling_round_mode_floor_size(tmp_path):
    # 4x4, kernel 3, stride 2: FLOOR gives 1x1 (as the real Caffe built here), CEIL 2x2.
    shapes = {}
    for mode in ("CEIL", "FLOOR"):
        net = one_layer_net(tmp_path, (1, 1, 4, 4), "Pooling",
                            f"pooling_param {{ pool: MAX kernel_size: 3 stride: 2 round_mode: {mode} }}")
        shapes[mode] = net.blobs["y"].shape
    assert shapes == {"CEIL": (1, 1, 2, 2), "FLOOR": (1, 1, 1, 1)}


def test_pooling_clip_rule_drops_window_in_padding(tmp_path):
    # size 4, kernel 2, stride 2, pad 1: ceil gives 4 windows, the 4th would start at 5 >= 4 + 1.
    assert caffe_pooled(4, 2, 2, 1) == 3
    net = one_layer_net(tmp_path, (1, 1, 4, 4), "Pooling",
                        "pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 }")
    assert net.blobs["y"].shape == (1, 1, 3, 3)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("kernel,stride,pad", [((3, 2), (2, 4), (1, 0)), ((2, 3), (4, 2), (0, 1)),
                                               ((3, 3), (2, 3), (0, 2))])
def test_pooling_clip_rule_applies_to_both_axes_when_one_is_padded(tmp_path, method, kernel, stride, pad):
    """Caffe clips the last window on both axes when pad_h or pad_w is non-zero: kernel 3x2, stride
    2x4, pad 1x0 on 7x7 gives 4x2 (the unpadded axis loses its window starting at 8 >= 7)."""
    x = RNG.standard_normal((2, 3, 7, 7)).astype(np.float32)
    net = one_layer_net(tmp_path, x.shape, "Pooling",
                        f"pooling_param {{ pool: {method} kernel_h: {kernel[0]} kernel_w: {kernel[1]} "
                        f"stride_h: {stride[0]} stride_w: {stride[1]} pad_h: {pad[0]} pad_w: {pad[1]} }}")
    ref = pool_ref(x.astype(np.float64), kernel, stride, pad, method)
    if kernel == (3, 2):
        assert ref.shape == (2, 3, 4, 2)
    assert net.blobs["y"].shape == ref.shape
    np.testing.assert_allclose(net.forward(x=x)["y"], ref, rtol=1e-5, atol=1e-5)


def test_pooling_ave_divisor_counts_padding(tmp_path):
    net = one_layer_net(tmp_path, (1, 1, 2, 2), "Pooling",
                        "pooling_param { pool: AVE kernel_size: 3 stride: 1 pad: 1 }")
    out = net.forward(x=np.ones((1, 1, 2, 2), np.float32))["y"]
    # Each 3x3 window covers 4 image pixels and is divided by 9 (its size, padding included).
    np.testing.assert_allclose(out, np.full((1, 1, 2, 2), 4 / 9), rtol=1e-6)


@pytest.mark.parametrize("method,reduce", [("MAX", np.max), ("AVE", np.mean)])
def test_global_pooling(tmp_path, method, reduce):
    x = RNG.standard_normal((2, 3, 5, 4)).astype(np.float32)
    net = one_layer_net(tmp_path, x.shape, "Pooling", f"pooling_param {{ pool: {method} global_pooling: true }}")
    np.testing.assert_allclose(net.forward(x=x)["y"], reduce(x, axis=(2, 3), keepdims=True), rtol=1e-5)


# ---------------------------------------------------------------- other layers

@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn(tmp_path, region):
    x = RNG.standard_normal((2, 7, 4, 5)).astype(np.float32)
    net = one_layer_net(tmp_path, x.shape, "LRN",
                        f"lrn_param {{ local_size: 3 alpha: 0.5 beta: 0.75 k: 2 norm_region: {region} }}")
    if region == "ACROSS_CHANNELS":
        ref = lrn_across_ref(x.astype(np.float64), 3, 0.5, 0.75, 2.0)
    else:
        padded = np.pad(x.astype(np.float64) ** 2, ((0, 0), (0, 0), (1, 1), (1, 1)))
        mean = sum(padded[:, :, i:i + 4, j:j + 5] for i in range(3) for j in range(3)) / 9
        ref = x * (1 + 0.5 * mean) ** -0.75
    np.testing.assert_allclose(net.forward(x=x)["y"], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axis,transpose", [(1, False), (2, False), (-1, True)])
def test_inner_product_axis(tmp_path, axis, transpose):
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    flag = "true" if transpose else "false"
    net = one_layer_net(tmp_path, x.shape, "InnerProduct",
                        f"inner_product_param {{ num_output: 5 axis: {axis} transpose: {flag} }}")
    k = int(np.prod(x.shape[axis:]))
    w = RNG.standard_normal((k, 5) if transpose else (5, k)).astype(np.float32)
    b = RNG.standard_normal(5).astype(np.float32)
    set_params(net, "l", w, b)
    flat = x.reshape(x.shape[:axis % 3] + (k,))
    ref = flat @ (w if transpose else w.T) + b
    assert net.blobs["y"].shape == ref.shape
    np.testing.assert_allclose(net.forward(x=x)["y"], ref, rtol=1e-5, atol=1e-5)


def test_eltwise_operations(tmp_path):
    a, b = (RNG.standard_normal((2, 3, 2, 2)).astype(np.float32) for _ in range(2))
    text = input_layer("a", a.shape) + input_layer("b", b.shape)
    for name, param in (("s", "operation: SUM coeff: 2 coeff: -0.5"), ("p", "operation: PROD"),
                        ("m", "operation: MAX"), ("plain", "")):
        text += (f'layer {{ name: "{name}" type: "Eltwise" bottom: "a" bottom: "b" top: "{name}" '
                 f'eltwise_param {{ {param} }} }}\n')
    out = make_net(tmp_path, text).forward(a=a, b=b)
    np.testing.assert_allclose(out["s"], 2 * a - 0.5 * b, rtol=1e-6)
    np.testing.assert_allclose(out["p"], a * b, rtol=1e-6)
    np.testing.assert_allclose(out["m"], np.maximum(a, b), rtol=1e-6)
    np.testing.assert_allclose(out["plain"], a + b, rtol=1e-6)


@pytest.mark.parametrize("axis", [1, 2, -1])
def test_softmax(tmp_path, axis):
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    net = one_layer_net(tmp_path, x.shape, "Softmax", f"softmax_param {{ axis: {axis} }}")
    np.testing.assert_allclose(net.forward(x=x)["y"], softmax_ref(x, axis), rtol=1e-5)


def softmax_loss_ref(x, labels, ignore, normalization):
    p = softmax_ref(x.astype(np.float64), 1)
    n, c, h, w = x.shape
    total, count = 0.0, 0
    for i in range(n):
        for a in range(h):
            for b in range(w):
                label = int(labels[i, 0, a, b])
                if label == ignore:
                    continue
                total -= math.log(max(p[i, label, a, b], np.finfo(np.float32).tiny))
                count += 1
    divisor = {"FULL": n * h * w, "VALID": count, "BATCH_SIZE": n, "NONE": 1}[normalization]
    return total / max(1, divisor), p


@pytest.mark.parametrize("normalization, legacy", [("FULL", ""), ("VALID", ""), ("BATCH_SIZE", ""), ("NONE", ""),
                                                   ("FULL", "normalize: true")])
def test_softmax_with_loss(tmp_path, normalization, legacy):
    """`normalization` wins over the legacy `normalize` when both are set (Caffe's rule)."""
    x = RNG.standard_normal((2, 4, 3, 2)).astype(np.float32)
    labels = RNG.integers(0, 4, (2, 1, 3, 2)).astype(np.float32)
    labels[0, 0, 1, 1] = labels[1, 0, 0, 0] = 255
    text = input_layer("x", x.shape) + input_layer("label", labels.shape)
    text += ('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" '
             f'loss_param {{ ignore_label: 255 normalization: {normalization} {legacy} }} }}\n')
    net = make_net(tmp_path, text)
    out = net.forward(x=x, label=labels)
    ref, _ = softmax_loss_ref(x, labels, 255, normalization)
    assert net.loss_weights == {"loss": 1.0}
    np.testing.assert_allclose(float(out["loss"]), ref, rtol=1e-5)


@pytest.mark.parametrize("weights", ["", "loss_weight: 1 loss_weight: 0"])
def test_softmax_with_loss_refuses_a_probability_top(tmp_path, weights):
    """BVLC Caffe 1.0 fails on a second SoftmaxWithLoss top whatever the loss_weight (its inner
    Softmax copies the layer's loss_weight list): "loss_weight must be unspecified or specified
    once per top blob". sec.caffe refuses it at build time, naming the layer."""
    text = input_layer("x", (2, 4)) + input_layer("label", (2,))
    text += ('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" top: "prob" '
             f'{weights} }}\n')
    with pytest.raises(caffe.NetError, match="layer 'loss'.*1 top"):
        make_net(tmp_path, text)


def test_accuracy_top_k_ignore_and_per_class(tmp_path):
    scores = np.array([[3, 1, 2], [0, 5, 1], [2, 2, 1], [1, 3, 4], [0, 1, 2]], np.float32)
    labels = np.array([0, 2, 1, 0, 1], np.float32)
    text = input_layer("x", scores.shape) + input_layer("label", labels.shape)
    text += ('layer { name: "a1" type: "Accuracy" bottom: "x" bottom: "label" top: "a1" top: "per" '
             'accuracy_param { ignore_label: 1 } }\n'
             'layer { name: "a2" type: "Accuracy" bottom: "x" bottom: "label" top: "a2" '
             'accuracy_param { top_k: 2 } }\n')
    out = make_net(tmp_path, text).forward(x=scores, label=labels)
    # ignore label 1: rows 0 (right), 1 (wrong), 3 (wrong) count.
    assert float(out["a1"]) == pytest.approx(1 / 3)
    np.testing.assert_allclose(out["per"], [0.5, 0.0, 0.0])
    # top-2: row0 yes, row1 (label 2 is second) yes, row2 tie 2,2 with label 1: yes, row3 no, row4 yes.
    assert float(out["a2"]) == pytest.approx(4 / 5)


def test_batchnorm_global_stats_with_scale_factor(tmp_path):
    x = RNG.standard_normal((2, 3, 2, 2)).astype(np.float32)
    net = one_layer_net(tmp_path, x.shape, "BatchNorm", "batch_norm_param { use_global_stats: true eps: 0.001 }")
    mean, var, factor = np.array([1., -2., .5]), np.array([4., 1., 9.]), 2.0
    set_params(net, "l", mean, var, [factor])
    ref = (x - (mean / factor)[None, :, None, None]) / np.sqrt((var / factor)[None, :, None, None] + 0.001)
    np.testing.assert_allclose(net.forward(x=x)["y"], ref, rtol=1e-5, atol=1e-5)
    assert net.learnable_params() == []
    set_params(net, "l", mean, var, [0.0])  # factor 0: Caffe uses zero statistics
    np.testing.assert_allclose(net.forward(x=x)["y"], x / np.sqrt(0.001), rtol=1e-5)


def test_batchnorm_train_updates_running_blobs(tmp_path):
    x = RNG.standard_normal((4, 2, 3, 3)).astype(np.float32)
    path = tmp_path / "bn.prototxt"
    path.write_text(input_layer("x", x.shape) + 'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" '
                    'batch_norm_param { moving_average_fraction: 0.9 } }\n')
    net = caffe.Net(str(path), caffe.TRAIN)
    y = net.forward(x=x)["y"]
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(y, (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5), rtol=1e-4, atol=1e-4)
    m = x.size // 2
    np.testing.assert_allclose(net.params["bn"][0].data, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.params["bn"][1].data, var * m / (m - 1), rtol=1e-5)
    np.testing.assert_allclose(net.params["bn"][2].data, [1.0])


def test_scale_with_bias_and_two_bottom_form(tmp_path):
    x = RNG.standard_normal((2, 3, 2, 2)).astype(np.float32)
    s = RNG.standard_normal((3, 2)).astype(np.float32)
    text = input_layer("x", x.shape) + input_layer("s", s.shape)
    text += ('layer { name: "sc" type: "Scale" bottom: "x" top: "y" scale_param { bias_term: true } }\n'
             'layer { name: "sc2" type: "Scale" bottom: "x" bottom: "s" top: "z" scale_param { axis: 1 } }\n')
    net = make_net(tmp_path, text)
    np.testing.assert_allclose(net.params["sc"][0].data, np.ones(3))  # Caffe's default filler: 1
    gamma, beta = np.array([2., -1., .5]), np.array([.1, .2, .3])
    set_params(net, "sc", gamma, beta)
    out = net.forward(x=x, s=s)
    np.testing.assert_allclose(out["y"], x * gamma[:, None, None] + beta[:, None, None], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out["z"], x * s[None, :, :, None], rtol=1e-6)


def test_plumbing_layers(tmp_path):
    x = RNG.standard_normal((2, 3, 2, 4)).astype(np.float32)
    text = input_layer("x", x.shape)
    text += ('layer { name: "split" type: "Split" bottom: "x" top: "x1" top: "x2" }\n'
             'layer { name: "cat" type: "Concat" bottom: "x1" bottom: "x2" top: "cat" concat_param { axis: 2 } }\n'
             'layer { name: "flat" type: "Flatten" bottom: "cat" top: "flat" flatten_param { axis: 2 } }\n'
             'layer { name: "resh" type: "Reshape" bottom: "flat" top: "resh" '
             'reshape_param { shape { dim: 0 dim: -1 dim: 4 } } }\n'
             'layer { name: "relu" type: "ReLU" bottom: "resh" top: "relu" relu_param { negative_slope: 0.1 } }\n'
             'layer { name: "sig" type: "Sigmoid" bottom: "relu" top: "sig" }\n'
             'layer { name: "tanh" type: "TanH" bottom: "relu" top: "tanh" }\n'
             'layer { name: "drop" type: "Dropout" bottom: "tanh" top: "drop" }\n'
             'layer { name: "silence" type: "Silence" bottom: "sig" }\n')
    net = make_net(tmp_path, text)
    out = net.forward(x=x)
    cat = np.concatenate([x, x], axis=2)
    relu = np.where(cat > 0, cat, 0.1 * cat).reshape(2, -1, 4)
    assert net.blobs["flat"].shape == (2, 3, 16)
    assert net.blobs["resh"].shape == (2, 12, 4)
    assert net.outputs == ["drop"]
    np.testing.assert_allclose(out["drop"], np.tanh(relu), rtol=1e-6)
    np.testing.assert_allclose(net.blobs["sig"].data, 1 / (1 + np.exp(-relu)), rtol=1e-6)


def test_dropout_train_scales_by_inverse_keep(tmp_path):
    path = tmp_path / "drop.prototxt"
    path.write_text(input_layer("x", (1, 1, 100, 100)) + 'layer { name: "d" type: "Dropout" bottom: "x" top: "y" '
                    'dropout_param { dropout_ratio: 0.25 } }\n')
    net = caffe.Net(str(path), caffe.TRAIN)
    y = net.forward(x=np.ones((1, 1, 100, 100), np.float32))["y"]
    kept = y[y != 0]
    np.testing.assert_allclose(kept, 1 / 0.75, rtol=1e-6)
    assert 0.7 < kept.size / y.size < 0.8


def test_fillers_follow_caffe_fan_rules(tmp_path):
    text = input_layer("x", (1, 8, 5, 5))
    for name, filler in (("xa", 'type: "xavier"'), ("xo", 'type: "xavier" variance_norm: FAN_OUT'),
                         ("ms", 'type: "msra"'), ("un", 'type: "uniform" min: 2 max: 3'),
                         ("ga", 'type: "gaussian" mean: 1 std: 0.5'), ("co", 'type: "constant" value: 0.25')):
        text += (f'layer {{ name: "{name}" type: "Convolution" bottom: "x" top: "{name}" convolution_param {{ '
                 f'num_output: 64 kernel_size: 3 weight_filler {{ {filler} }} bias_filler {{ {filler} }} }} }}\n')
    torch.manual_seed(0)
    net = make_net(tmp_path, text)
    fan_in, fan_out = 8 * 9, 64 * 9
    w = {n: net.params[n][0].data for n in ("xa", "xo", "ms", "un", "ga", "co")}
    assert np.abs(w["xa"]).max() <= math.sqrt(3 / fan_in) and np.abs(w["xa"]).max() > 0.9 * math.sqrt(3 / fan_in)
    assert np.abs(w["xo"]).max() <= math.sqrt(3 / fan_out) and np.abs(w["xo"]).max() > 0.9 * math.sqrt(3 / fan_out)
    assert w["ms"].std() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
    assert w["un"].min() >= 2 and w["un"].max() <= 3
    assert w["ga"].mean() == pytest.approx(1, abs=0.03) and w["ga"].std() == pytest.approx(0.5, rel=0.05)
    assert np.all(w["co"] == 0.25) and np.all(net.params["co"][1].data == 0.25)


def test_scale_and_bias_with_num_axes_0_are_scalars(tmp_path):
    x = RNG.standard_normal((2, 3, 2)).astype(np.float32)
    net = one_layer_net(tmp_path, x.shape, "Scale", "scale_param { num_axes: 0 bias_term: true }")
    assert [blob.data.shape for blob in net.params["l"]] == [(), ()]
    set_params(net, "l", np.float32(-1.5), np.float32(0.25))
    np.testing.assert_allclose(net.forward(x=x)["y"], x * -1.5 + 0.25, rtol=1e-6)
    net = one_layer_net(tmp_path, x.shape, "Bias", "bias_param { num_axes: 0 }")
    assert net.params["l"][0].data.shape == () and float(net.params["l"][0].data) == 0.0  # filler default 0
    set_params(net, "l", np.float32(0.75))
    np.testing.assert_allclose(net.forward(x=x)["y"], x + 0.75, rtol=1e-6)


@pytest.mark.parametrize("param, bshape, view", [
    ("", (3,), (1, 3, 1, 1)),                                   # Caffe's defaults: axis 1, num_axes 1
    ("bias_param { axis: 1 num_axes: -1 }", (3, 4, 5), (1, 3, 4, 5)),
    ("bias_param { axis: -2 num_axes: 2 }", (4, 5), (1, 1, 4, 5)),
])
def test_bias_axes(tmp_path, param, bshape, view):
    x = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    net = one_layer_net(tmp_path, x.shape, "Bias", param)
    b = RNG.standard_normal(bshape).astype(np.float32)
    assert net.params["l"][0].data.shape == bshape
    set_params(net, "l", b)
    np.testing.assert_allclose(net.forward(x=x)["y"], x + b.reshape(view), rtol=1e-6)
    two = one_layer_net(tmp_path, x.shape, "Bias", param.replace("num_axes: -1", "").replace("num_axes: 2", ""),
                        bottom=["x", "b"], inputs=input_layer("b", bshape))
    assert "l" not in two.params
    np.testing.assert_allclose(two.forward(x=x, b=b)["y"], x + b.reshape(view), rtol=1e-6)


def test_bias_shape_errors_name_the_layer(tmp_path):
    with pytest.raises(ValueError, match="bias_param axis 1 \\+ num_axes 4"):
        one_layer_net(tmp_path, (2, 3, 4), "Bias", "bias_param { num_axes: 4 }")
    with pytest.raises(ValueError, match="'l'.*bias of shape \\(4,\\)"):
        one_layer_net(tmp_path, (2, 3, 4), "Bias", "", bottom=["x", "b"], inputs=input_layer("b", (4,)))


# ---------------------------------------------------------------- SigmoidCrossEntropyLoss

def sigmoid_ce_ref(x, t, ignore):
    """Caffe's definition, written naively in float64: (-sum(t log s + (1-t) log(1-s)) over the
    positions whose target truncated to int is not `ignore`, number of those positions)."""
    x, t = x.astype(np.float64).ravel(), t.astype(np.float64).ravel()
    total, valid = 0.0, 0
    for xi, ti in zip(x, t):
        if ignore is not None and int(ti) == ignore:
            continue
        s = 1.0 / (1.0 + math.exp(-xi))
        total -= ti * math.log(s) + (1 - ti) * math.log(1 - s)
        valid += 1
    return total, valid


SCE_SHAPE = (3, 2, 2, 2)
SCE_LOSS_PARAMS = {
    "FULL": "normalization: FULL", "VALID": "normalization: VALID",
    "BATCH_SIZE": "normalization: BATCH_SIZE", "NONE": "normalization: NONE",
    "default": "", "normalize_true": "normalize: true", "normalize_false": "normalize: false",
    "both": "normalization: FULL normalize: true",
}
# What each setting divides by (Caffe: unset means BATCH_SIZE for this layer; normalize maps to VALID /
# BATCH_SIZE; normalization wins when both are set).
SCE_DIVISORS = {
    "FULL": lambda n, count, valid: count, "VALID": lambda n, count, valid: valid,
    "BATCH_SIZE": lambda n, count, valid: n, "NONE": lambda n, count, valid: 1,
    "default": lambda n, count, valid: n, "normalize_true": lambda n, count, valid: valid,
    "normalize_false": lambda n, count, valid: n, "both": lambda n, count, valid: count,
}
IGNORE = -1


def sigmoid_ce_net(tmp_path, mode, ignore, loss_weight=None):
    param = SCE_LOSS_PARAMS[mode] + (f" ignore_label: {ignore}" if ignore is not None else "")
    text = "force_backward: true\n" + input_layer("x", SCE_SHAPE)
    text += input_layer("t", (SCE_SHAPE[0], math.prod(SCE_SHAPE[1:])))
    weight = f"loss_weight: {loss_weight}" if loss_weight is not None else ""
    text += ('layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "loss" '
             f'loss_param {{ {param} }} {weight} }}\n')
    return make_net(tmp_path, text, phase=caffe.TRAIN)


def sigmoid_ce_inputs(ignored=True):
    x = (RNG.standard_normal(SCE_SHAPE) * 2).astype(np.float32)
    t = RNG.uniform(0, 1, (SCE_SHAPE[0], math.prod(SCE_SHAPE[1:]))).astype(np.float32)
    t[0, :3] = (0, 1, 1)
    if ignored:
        t[1, 2] = t[2, 0] = t[2, 5] = IGNORE
    return x, t


@pytest.mark.parametrize("mode", list(SCE_LOSS_PARAMS))
@pytest.mark.parametrize("ignore", [None, IGNORE])
def test_sigmoid_cross_entropy_loss_values(tmp_path, mode, ignore):
    x, t = sigmoid_ce_inputs(ignored=ignore is not None)
    net = sigmoid_ce_net(tmp_path, mode, ignore)
    assert net.loss_weights == {"loss": 1.0}
    total, valid = sigmoid_ce_ref(x, t, ignore)
    assert valid == x.size - (3 if ignore is not None else 0)
    divisor = SCE_DIVISORS[mode](SCE_SHAPE[0], x.size, valid)
    out = net.forward(x=x, t=t)
    assert out["loss"].shape == ()
    np.testing.assert_allclose(float(out["loss"]), total / divisor, rtol=1e-5)


@pytest.mark.parametrize("mode", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
def test_sigmoid_cross_entropy_gradient_by_finite_differences(tmp_path, mode):
    weight, eps = 2.5, 1e-2
    x, t = sigmoid_ce_inputs()
    net = sigmoid_ce_net(tmp_path, mode, IGNORE, loss_weight=weight)
    net.forward(x=x, t=t)
    net.backward()
    got = net.blobs["x"].diff.copy()
    numeric = np.zeros(x.size)
    flat = x.ravel()
    for i in range(x.size):
        losses = []
        for step in (eps, -eps):
            probe = flat.copy()
            probe[i] += step
            with torch.no_grad():
                losses.append(float(net.forward(x=probe.reshape(x.shape), t=t)["loss"]))
        numeric[i] = weight * (losses[0] - losses[1]) / (2 * eps)
    np.testing.assert_allclose(got.ravel(), numeric, rtol=2e-2, atol=2e-4)
    # the closed form: loss_weight x (sigmoid(x) - t) / normaliser, zero where ignored
    _, valid = sigmoid_ce_ref(x, t, IGNORE)
    divisor = SCE_DIVISORS[mode](SCE_SHAPE[0], x.size, valid)
    tt = t.reshape(x.shape)
    closed = np.where(tt == IGNORE, 0.0, weight * (1 / (1 + np.exp(-x.astype(np.float64))) - tt) / divisor)
    np.testing.assert_allclose(got, closed, rtol=1e-5, atol=1e-7)


def test_sigmoid_cross_entropy_is_stable_and_ignores_by_truncated_target(tmp_path):
    x = np.zeros(SCE_SHAPE, np.float32)
    t = np.zeros((SCE_SHAPE[0], math.prod(SCE_SHAPE[1:])), np.float32)
    x.ravel()[:2] = (100.0, -100.0)       # confidently wrong: loss 100 each, no overflow
    t[0, 1] = 1.0
    t[2, :] = 0.7                          # int(0.7) == 0 == ignore_label: Caffe skips these
    net = sigmoid_ce_net(tmp_path, "NONE", 0)
    loss = float(net.forward(x=x, t=t)["loss"])
    # ignored: every target truncating to 0 (all but t[0, 1]); kept: x = -100 against t = 1
    assert loss == pytest.approx(100.0, rel=1e-6)
    net = sigmoid_ce_net(tmp_path, "NONE", None)
    per_zero = math.log(2.0)
    expected = 100.0 + 100.0 + (x.size - 2) * per_zero
    assert float(net.forward(x=x, t=t)["loss"]) == pytest.approx(expected, rel=1e-6)


def test_sigmoid_cross_entropy_needs_equal_counts(tmp_path):
    text = input_layer("x", (2, 3)) + input_layer("t", (2, 4))
    text += 'layer { name: "bad" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "loss" }\n'
    with pytest.raises(ValueError) as err:
        make_net(tmp_path, text)
    assert "bad" in str(err.value) and "same count" in str(err.value)
