"""The one-layer nets bench/caffe_reference.py runs in BVLC Caffe: every layer type sec.caffe
supports, with its parameter variants, and the inputs they are fed (seeded numpy)."""
import re

import numpy as np

X = (2, 3, 5, 6)


def layer(type_, param="", bottoms=("x",), tops=("y",), name="l"):
    lines = " ".join([f'bottom: "{b}"' for b in bottoms] + [f'top: "{t}"' for t in tops])
    return f'layer {{ name: "{name}" type: "{type_}" {lines} {param} }}'


def conv(extra, kind="Convolution", n=4):
    return (kind, f"convolution_param {{ num_output: {n} {extra} weight_filler {{ type: \"gaussian\" }} }}")


def pool(extra):
    return ("Pooling", f"pooling_param {{ {extra} }}")


def py(cls, loss=False):
    return ("Python", f'python_param {{ module: "pylayers" layer: "{cls}" }}' + (" loss_weight: 1" if loss else ""))


# name: ((type, params), {input: (shape, kind)}, options). Kinds: see make_input.
CASES = {
    "conv_basic": (conv("kernel_size: 3 pad: 1"), {"x": (X, "randn")}, {}),
    "conv_stride2": (conv("kernel_size: 3 stride: 2"), {"x": ((2, 3, 7, 8), "randn")}, {}),
    "conv_dilation": (conv("kernel_size: 3 pad: 2 dilation: 2"), {"x": ((2, 3, 7, 7), "randn")}, {}),
    "conv_group": (conv("kernel_size: 3 group: 2"), {"x": ((2, 4, 5, 5), "randn")}, {}),
    "conv_nobias": (conv("kernel_size: 2 bias_term: false"), {"x": (X, "randn")}, {}),
    "conv_rect": (conv("kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 stride_h: 2 stride_w: 1"), {"x": (X, "randn")}, {}),
    "conv_1x1": (conv("kernel_size: 1"), {"x": (X, "randn")}, {}),
    "conv_two_bottoms": (conv("kernel_size: 3 pad: 1"), {"x": (X, "randn"), "x2": (X, "randn")},
                         {"bottoms": ("x", "x2"), "tops": ("y", "y2")}),
    "deconv_basic": (conv("kernel_size: 4 stride: 2 pad: 1", "Deconvolution", 3), {"x": (X, "randn")}, {}),
    "deconv_group": (conv("kernel_size: 3 group: 2", "Deconvolution"), {"x": ((2, 4, 3, 4), "randn")}, {}),
    "deconv_bilinear": (("Deconvolution", "convolution_param { num_output: 3 group: 3 kernel_size: 4 stride: 2 "
                         "pad: 1 bias_term: false weight_filler { type: \"bilinear\" } }"),
                        {"x": (X, "randn")}, {"fill": True}),
    "pool_max_3_2_1": (pool("pool: MAX kernel_size: 3 stride: 2 pad: 1"), {"x": ((2, 3, 7, 8), "randn")}, {}),
    "pool_ave_3_2_1": (pool("pool: AVE kernel_size: 3 stride: 2 pad: 1"), {"x": ((2, 3, 7, 8), "randn")}, {}),
    "pool_max_3_1_1": (pool("pool: MAX kernel_size: 3 stride: 1 pad: 1"), {"x": (X, "randn")}, {}),
    "pool_ave_3_1_1": (pool("pool: AVE kernel_size: 3 stride: 1 pad: 1"), {"x": (X, "randn")}, {}),
    "pool_max_2_2_0": (pool("pool: MAX kernel_size: 2 stride: 2"), {"x": ((2, 3, 6, 7), "randn")}, {}),
    "pool_ave_3_2_0": (pool("pool: AVE kernel_size: 3 stride: 2"), {"x": ((2, 3, 8, 9), "randn")}, {}),
    "pool_max_4_3_3": (pool("pool: MAX kernel_size: 4 stride: 3 pad: 3"), {"x": ((2, 3, 7, 7), "randn")}, {}),
    "pool_ave_4_3_3": (pool("pool: AVE kernel_size: 4 stride: 3 pad: 3"), {"x": ((2, 3, 7, 7), "randn")}, {}),
    "pool_max_rect_pad_h": (pool("pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 4 pad_h: 1 pad_w: 0"),
                            {"x": ((2, 3, 7, 7), "randn")}, {}),
    "pool_ave_rect_pad_h": (pool("pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 4 pad_h: 1 pad_w: 0"),
                            {"x": ((2, 3, 7, 7), "randn")}, {}),
    "pool_ave_rect_pad_w": (pool("pool: AVE kernel_h: 2 kernel_w: 3 stride_h: 4 stride_w: 2 pad_h: 0 pad_w: 1"),
                            {"x": ((2, 3, 7, 7), "randn")}, {}),
    "pool_global_max": (pool("pool: MAX global_pooling: true"), {"x": (X, "randn")}, {}),
    "pool_global_ave": (pool("pool: AVE global_pooling: true"), {"x": (X, "randn")}, {}),
    "lrn_across_3": (("LRN", "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 }"), {"x": (X, "randn")}, {}),
    "lrn_across_5": (("LRN", "lrn_param { local_size: 5 alpha: 1.0 beta: 0.75 }"), {"x": ((2, 7, 3, 4), "randn")}, {}),
    "lrn_within": (("LRN", "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL }"),
                   {"x": (X, "randn")}, {}),
    "ip_basic": (("InnerProduct", "inner_product_param { num_output: 5 }"), {"x": ((2, 3, 2, 2), "randn")}, {}),
    "ip_axis2": (("InnerProduct", "inner_product_param { num_output: 5 axis: 2 }"), {"x": ((2, 3, 4), "randn")}, {}),
    "ip_transpose": (("InnerProduct", "inner_product_param { num_output: 5 transpose: true }"),
                     {"x": ((2, 6), "randn")}, {}),
    "ip_nobias": (("InnerProduct", "inner_product_param { num_output: 5 bias_term: false }"),
                  {"x": ((3, 4), "randn")}, {}),
    "relu": (("ReLU", ""), {"x": (X, "randn")}, {}),
    "relu_leaky": (("ReLU", "relu_param { negative_slope: 0.1 }"), {"x": (X, "randn")}, {}),
    "relu_in_place": (("ReLU", ""), {"x": (X, "randn")}, {"tops": ("x",)}),
    "sigmoid": (("Sigmoid", ""), {"x": (X, "randn")}, {}),
    "tanh": (("TanH", ""), {"x": (X, "randn")}, {}),
    "dropout_test": (("Dropout", "dropout_param { dropout_ratio: 0.5 }"), {"x": (X, "randn")}, {}),
    "dropout_test_in_place": (("Dropout", "dropout_param { dropout_ratio: 0.3 }"), {"x": (X, "randn")},
                              {"tops": ("x",)}),
    "batchnorm_global": (("BatchNorm", ""), {"x": (X, "randn")}, {"bn_factor": 1.7}),
    "batchnorm_global_eps": (("BatchNorm", "batch_norm_param { use_global_stats: true eps: 0.001 }"),
                             {"x": (X, "randn")}, {"bn_factor": 0.5}),
    "batchnorm_train": (("BatchNorm", "batch_norm_param { use_global_stats: false moving_average_fraction: 0.9 }"),
                        {"x": (X, "randn")}, {"phase": "TRAIN", "bn_factor": 2.0}),
    "scale_bias": (("Scale", "scale_param { bias_term: true }"), {"x": (X, "randn")}, {}),
    "scale_axis0_two_axes": (("Scale", "scale_param { axis: 0 num_axes: 2 }"), {"x": (X, "randn")}, {}),
    "scale_scalar": (("Scale", "scale_param { num_axes: 0 }"), {"x": (X, "randn")}, {}),
    "scale_bottom": (("Scale", "scale_param { axis: 1 }"), {"x": (X, "randn"), "s": ((3, 5), "randn")},
                     {"bottoms": ("x", "s")}),
    "bias_basic": (("Bias", ""), {"x": (X, "randn")}, {}),
    "bias_scalar": (("Bias", "bias_param { num_axes: 0 }"), {"x": (X, "randn")}, {}),
    "bias_bottom": (("Bias", "bias_param { axis: 2 }"), {"x": (X, "randn"), "b": ((5, 6), "randn")},
                    {"bottoms": ("x", "b")}),
    "softmax": (("Softmax", ""), {"x": (X, "randn3")}, {}),
    "softmax_last_axis": (("Softmax", "softmax_param { axis: -1 }"), {"x": (X, "randn3")}, {}),
    "swl_valid": (("SoftmaxWithLoss", ""), {"x": (X, "randn3"), "label": ((2, 1, 5, 6), "labels3")},
                  {"bottoms": ("x", "label"), "tops": ("loss",)}),
    "swl_ignore": (("SoftmaxWithLoss", "loss_param { ignore_label: 255 }"),
                   {"x": (X, "randn3"), "label": ((2, 1, 5, 6), "labels3_ignore")},
                   {"bottoms": ("x", "label"), "tops": ("loss",)}),
    "swl_full_ignore": (("SoftmaxWithLoss", "loss_param { ignore_label: 255 normalization: FULL }"),
                        {"x": (X, "randn3"), "label": ((2, 1, 5, 6), "labels3_ignore")},
                        {"bottoms": ("x", "label"), "tops": ("loss",)}),
    "swl_batch_size": (("SoftmaxWithLoss", "loss_param { normalization: BATCH_SIZE }"),
                       {"x": (X, "randn3"), "label": ((2, 5, 6), "labels3")}, {"bottoms": ("x", "label"), "tops": ("loss",)}),
    "swl_none_weight2": (("SoftmaxWithLoss", "loss_param { normalization: NONE } loss_weight: 2"),
                         {"x": (X, "randn3"), "label": ((2, 1, 5, 6), "labels3")},
                         {"bottoms": ("x", "label"), "tops": ("loss",)}),
    "swl_legacy_normalize_false": (("SoftmaxWithLoss", "loss_param { normalize: false }"),
                                   {"x": (X, "randn3"), "label": ((2, 1, 5, 6), "labels3")},
                                   {"bottoms": ("x", "label"), "tops": ("loss",)}),
    "swl_axis2": (("SoftmaxWithLoss", "softmax_param { axis: 2 }"),
                  {"x": ((2, 4, 3), "randn3"), "label": ((2, 4), "labels3")}, {"bottoms": ("x", "label"), "tops": ("loss",)}),
    "sce_batch_size": (("SigmoidCrossEntropyLoss", ""), {"x": (X, "randn3"), "t": (X, "uniform")},
                       {"bottoms": ("x", "t"), "tops": ("loss",)}),
    "sce_valid_ignore": (("SigmoidCrossEntropyLoss", "loss_param { ignore_label: -1 normalization: VALID }"),
                         {"x": (X, "randn3"), "t": (X, "binary_ignore")}, {"bottoms": ("x", "t"), "tops": ("loss",)}),
    "sce_full": (("SigmoidCrossEntropyLoss", "loss_param { normalization: FULL } loss_weight: 0.5"),
                 {"x": (X, "randn3"), "t": (X, "uniform")}, {"bottoms": ("x", "t"), "tops": ("loss",)}),
    "sce_none": (("SigmoidCrossEntropyLoss", "loss_param { normalization: NONE }"),
                 {"x": ((4, 3), "randn3"), "t": ((4, 3), "binary")}, {"bottoms": ("x", "t"), "tops": ("loss",)}),
    "accuracy_top1": (("Accuracy", ""), {"x": (X, "randn"), "label": ((2, 1, 5, 6), "labels3")},
                      {"bottoms": ("x", "label"), "backward": False}),
    "accuracy_top2_ignore": (("Accuracy", "accuracy_param { top_k: 2 ignore_label: 255 }"),
                             {"x": (X, "randn"), "label": ((2, 1, 5, 6), "labels3_ignore")},
                             {"bottoms": ("x", "label"), "backward": False}),
    "accuracy_per_class": (("Accuracy", ""), {"x": ((6, 4), "randn"), "label": ((6,), "labels4")},
                           {"bottoms": ("x", "label"), "tops": ("y", "per_class"), "backward": False}),
    "concat_axis1": (("Concat", ""), {"x": (X, "randn"), "x2": ((2, 1, 5, 6), "randn"), "x3": ((2, 2, 5, 6), "randn")},
                     {"bottoms": ("x", "x2", "x3")}),
    "concat_axis0": (("Concat", "concat_param { axis: 0 }"), {"x": (X, "randn"), "x2": ((1, 3, 5, 6), "randn")},
                     {"bottoms": ("x", "x2")}),
    "concat_dim_legacy": (("Concat", "concat_param { concat_dim: 2 }"), {"x": (X, "randn"), "x2": ((2, 3, 2, 6), "randn")},
                          {"bottoms": ("x", "x2")}),
    "eltwise_sum": (("Eltwise", ""), {"x": (X, "randn"), "x2": (X, "randn")}, {"bottoms": ("x", "x2")}),
    "eltwise_sum_coeff": (("Eltwise", "eltwise_param { operation: SUM coeff: 0.5 coeff: -2 coeff: 1.5 }"),
                          {"x": (X, "randn"), "x2": (X, "randn"), "x3": (X, "randn")}, {"bottoms": ("x", "x2", "x3")}),
    "eltwise_prod": (("Eltwise", "eltwise_param { operation: PROD }"), {"x": (X, "randn"), "x2": (X, "randn"),
                     "x3": (X, "randn")}, {"bottoms": ("x", "x2", "x3")}),
    "eltwise_max": (("Eltwise", "eltwise_param { operation: MAX }"), {"x": (X, "randn"), "x2": (X, "randn"),
                    "x3": (X, "randn")}, {"bottoms": ("x", "x2", "x3")}),
    "split": (("Split", ""), {"x": (X, "randn")}, {"tops": ("y", "y2")}),
    "flatten": (("Flatten", ""), {"x": (X, "randn")}, {}),
    "flatten_one_axis": (("Flatten", "flatten_param { axis: 1 end_axis: 1 }"), {"x": (X, "randn")}, {}),
    "flatten_axis2": (("Flatten", "flatten_param { axis: 2 end_axis: -1 }"), {"x": (X, "randn")}, {}),
    "reshape": (("Reshape", "reshape_param { shape { dim: 0 dim: -1 dim: 3 } }"), {"x": (X, "randn")}, {}),
    "reshape_axis": (("Reshape", "reshape_param { axis: 1 num_axes: 2 shape { dim: 15 } }"), {"x": (X, "randn")}, {}),
    "silence": (("Silence", ""), {"x": (X, "randn"), "x2": ((3,), "randn")}, {"bottoms": ("x", "x2"), "tops": ()}),
    "python_softmax": (py("SoftmaxLayer"), {"x": ((2, 4, 3, 3), "randn3")}, {}),
    "python_seed_loss": (py("SeedLossLayer", True), {"p": ((2, 4, 3, 3), "probs"), "c": ((2, 4, 3, 3), "seeds")},
                         {"bottoms": ("p", "c"), "tops": ("loss",)}),
    "python_expand_loss": (py("ExpandLossLayer", True), {"p": ((2, 4, 3, 3), "probs"), "c": ((2, 1, 1, 4), "fglabels")},
                           {"bottoms": ("p", "c"), "tops": ("loss",)}),
    "python_constrain_loss": (py("ConstrainLossLayer", True),
                              {"p": ((2, 4, 3, 3), "probs"), "c": ((2, 4, 3, 3), "logprobs")},
                              {"bottoms": ("p", "c"), "tops": ("loss",)}),
    "python_crf": (py("CRFLayer"), {"x": ((2, 4, 3, 3), "randn3"), "im": ((2, 3, 9, 9), "image")},
                   {"bottoms": ("x", "im")}),
}
INPUT_CASE = ('layer { name: "l" type: "Input" top: "a" top: "b" '
              'input_param { shape { dim: 2 dim: 3 } shape { dim: 4 } } }')


def make_input(rng, shape, kind):
    """A float32 array of `shape` for an input of kind `kind` (N x C x ... where C matters)."""
    if kind in ("randn", "randn3"):
        return (rng.standard_normal(shape) * (3.0 if kind == "randn3" else 1.0)).astype(np.float32)
    if kind.startswith("labels"):
        classes = int(re.match(r"labels(\d+)", kind).group(1))
        labels = rng.integers(0, classes, shape).astype(np.float32)
        if kind.endswith("_ignore"):
            labels.flat[::4] = 255
        return labels
    if kind == "uniform":
        return rng.uniform(0, 1, shape).astype(np.float32)
    if kind in ("binary", "binary_ignore"):
        targets = (rng.uniform(0, 1, shape) > 0.5).astype(np.float32)
        if kind == "binary_ignore":
            targets.flat[::3] = -1
        return targets
    if kind in ("probs", "logprobs"):
        scores = rng.standard_normal(shape) * 2
        probs = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
        return (np.log(probs) if kind == "logprobs" else probs).astype(np.float32)
    if kind == "seeds":
        seeds = np.zeros(shape, np.float32)
        flat = seeds.reshape(shape[0], shape[1], -1)
        for n in range(shape[0]):
            for pos in rng.choice(flat.shape[2], 4, replace=False):
                flat[n, rng.integers(shape[1]), pos] = 1
        return seeds
    if kind == "fglabels":
        labels = (rng.uniform(0, 1, shape) > 0.5).astype(np.float32)
        labels[..., 0], labels[..., 1] = 1, 1
        return labels
    if kind == "image":
        return rng.uniform(-120, 130, shape).astype(np.float32)
    raise ValueError(f"unknown input kind {kind}")


def case_prototxt(name, spec):
    """The one-layer net of a case: an Input layer per bottom, then the layer.

    force_backward unless opts say "backward": False or "force_backward": False (a loss_weight
    then drives it). With opts["learned"] (bottom names), those bottoms come from Parameter layers
    instead and the net has no force_backward: for layers with a bottom Caffe refuses to backpropagate to
    (BatchReindex's indices, Filter's selector, InfogainLoss's H), which force_backward would
    force. The layer's tops then get loss_weight 1 so that Caffe runs its backward at all;
    bench/caffe_reference.py seeds them with random diffs like any other output.
    """
    (type_, param), inputs, opts = spec
    learned = opts.get("learned", ())
    tops = opts.get("tops", ("y",))
    forced = opts.get("force_backward", opts.get("backward", True))
    text = "force_backward: true\n" if forced and not learned else ""
    for blob, (shape, _) in inputs.items():
        dims = " ".join(f"dim: {d}" for d in shape)
        if blob in learned:
            text += (f'layer {{ name: "input_{blob}" type: "Parameter" top: "{blob}" '
                     f'parameter_param {{ shape {{ {dims} }} }} }}\n')
        else:
            text += f'layer {{ name: "input_{blob}" type: "Input" top: "{blob}" input_param {{ shape {{ {dims} }} }} }}\n'
    if learned:
        param = " ".join([param] + ["loss_weight: 1"] * len(tops))
    text += layer(type_, param, opts.get("bottoms", ("x",)), tops) + "\n"
    return text


def _net(*layers, shape=(2, 3, 5, 6)):
    dims = " ".join(f"dim: {d}" for d in shape)
    return ("\n".join([f'layer {{ name: "input_x" type: "Input" top: "x" input_param {{ shape {{ {dims} }} }} }}']
                      + list(layers)) + "\n")


_X2 = 'layer { name: "input_x2" type: "Input" top: "x2" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 6 } } }'
_LABEL = 'layer { name: "input_label" type: "Input" top: "label" input_param { shape { dim: 2 dim: 1 dim: 5 dim: 6 } } }'
_LABEL_N3 = 'layer { name: "input_label" type: "Input" top: "label" input_param { shape { dim: 3 } } }'
_LABEL2 = 'layer { name: "input_label" type: "Input" top: "label" input_param { shape { dim: 2 dim: 2 } } }'
_H3 = 'layer { name: "input_H" type: "Input" top: "H" input_param { shape { dim: 3 dim: 3 } } }'
_CONT = 'layer { name: "input_cont" type: "Input" top: "cont" input_param { shape { dim: 2 dim: 3 } } }'
_STATIC1 = 'layer { name: "input_s" type: "Input" top: "s" input_param { shape { dim: 3 } } }'
_LABEL_FLAT = 'layer { name: "input_label" type: "Input" top: "label" input_param { shape { dim: 60 } } }'
_TARGET_FLAT = 'layer { name: "input_label" type: "Input" top: "label" input_param { shape { dim: 180 } } }'

# Nets at the edge of what Caffe builds: name -> prototxt. bench/caffe_reference.py records
# whether BVLC Caffe's Net::Init accepts each (and its message); sec.caffe must agree.
EDGE_NETS = {
    "softmax_loss_two_tops": _net(_LABEL, layer("SoftmaxWithLoss", "", ("x", "label"), ("loss", "prob"))),
    "softmax_loss_two_tops_weighted": _net(_LABEL, layer("SoftmaxWithLoss", "loss_weight: 1 loss_weight: 0",
                                                         ("x", "label"), ("loss", "prob"))),
    "conv_bottoms_differ": _net(_X2, layer(*conv("kernel_size: 3"), ("x", "x2"), ("y", "y2"))),
    "conv_group_not_dividing": _net(layer(*conv("kernel_size: 3 group: 2"))),
    "pool_pad_one_axis": _net(layer(*pool("pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 4 pad_h: 1 "
                                         "pad_w: 0")), shape=(1, 1, 7, 7)),
    "pool_pad_equals_kernel": _net(layer(*pool("pool: MAX kernel_size: 2 pad: 2"))),
    "pool_global_with_kernel": _net(layer(*pool("pool: AVE global_pooling: true kernel_size: 2"))),
    "lrn_even_size": _net(layer("LRN", "lrn_param { local_size: 4 }")),
    "concat_mismatch": _net(_X2, layer("Concat", "", ("x", "x2"))),
    "eltwise_mismatch": _net(_X2, layer("Eltwise", "", ("x", "x2"))),
    "eltwise_prod_coeff": _net(layer("Eltwise", "eltwise_param { operation: PROD coeff: 1 coeff: 2 }", ("x", "x"))),
    "accuracy_top_k_too_large": _net(_LABEL, layer("Accuracy", "accuracy_param { top_k: 4 }", ("x", "label"))),
    "reshape_two_inferred": _net(layer("Reshape", "reshape_param { shape { dim: -1 dim: -1 } }")),
    "flatten_axes_reversed": _net(layer("Flatten", "flatten_param { axis: 2 end_axis: 1 }")),
    "softmax_axis_out_of_range": _net(layer("Softmax", "softmax_param { axis: 4 }")),
    "top_reused_not_in_place": _net(layer("ReLU", "", ("x",), ("y",), "a"), layer("ReLU", "", ("x",), ("y",), "b")),
    "unknown_bottom": _net(layer("ReLU", "", ("nothere",))),
    "input_shapes_mismatch": ('layer { name: "input_x" type: "Input" top: "x" top: "y" input_param { shape { dim: 1 } '
                              'shape { dim: 2 } shape { dim: 3 } } }\n'),
    "scale_bottom_mismatch": _net(_X2, layer("Scale", "scale_param { axis: 1 }", ("x", "x2"))),
    "duplicate_layer_names": _net(layer("ReLU", "", ("x",), ("y",), "a"), layer("ReLU", "", ("y",), ("z",), "a")),
    "ip_without_num_output": _net(layer("InnerProduct", "")),
    "dropout_ratio_one": _net(layer("Dropout", "dropout_param { dropout_ratio: 1 }")),
    "pool_window_outside_unpadded": _net(layer(*pool("pool: MAX kernel_size: 2 stride: 4")), shape=(1, 1, 7, 7)),
    "absval_in_place": _net(layer("AbsVal", "", ("x",), ("x",))),
    "clip_without_param": _net(layer("Clip", "")),
    "clip_missing_max": _net(layer("Clip", "clip_param { min: 1 }")),
    "clip_min_above_max": _net(layer("Clip", "clip_param { min: 1 max: -1 }")),
    "exp_negative_base": _net(layer("Exp", "exp_param { base: -2 }")),
    "log_base_one": _net(layer("Log", "log_param { base: 1 }")),
    "prelu_one_axis": _net(layer("PReLU", ""), shape=(6,)),
    "threshold_builds": _net(layer("Threshold", "threshold_param { threshold: 1 }")),
    "mvn_five_axes": _net(layer("MVN", ""), shape=(2, 3, 2, 2, 2)),
    "embed_without_input_dim": _net(layer("Embed", "embed_param { num_output: 3 }")),
    "embed_without_num_output": _net(layer("Embed", "embed_param { input_dim: 3 }")),
    "spp_without_height": _net(layer("SPP", "")),
    "spp_pad_reaches_kernel": _net(layer("SPP", "spp_param { pyramid_height: 3 }"), shape=(1, 1, 5, 5)),
    "spp_three_axes": _net(layer("SPP", "spp_param { pyramid_height: 1 }"), shape=(2, 3, 5)),
    "spp_stochastic_padded": _net(layer("SPP", "spp_param { pyramid_height: 2 pool: STOCHASTIC }"), shape=(1, 1, 5, 5)),
    "crop_larger_than_bottom": _net(_X2, layer("Crop", "", ("x2", "x"))),
    "crop_offset_past_the_end": _net(_X2, layer("Crop", "crop_param { offset: 2 }", ("x", "x2"))),
    "crop_offset_count": _net(_X2, layer("Crop", "crop_param { offset: 0 offset: 0 offset: 0 }", ("x", "x2"))),
    "im2col_no_spatial_axis": _net(layer("Im2col", "convolution_param { axis: -1 kernel_size: 1 }")),
    "conv_kernel_h_on_3d": _net(layer(*conv("kernel_h: 2 kernel_w: 2")), shape=(1, 2, 3, 4, 5)),
    "conv_kernel_count": _net(layer(*conv("kernel_size: 2 kernel_size: 2")), shape=(1, 2, 3, 4, 5)),
    "conv_axis_out_of_range": _net(layer(*conv("axis: 4 kernel_size: 1"))),
    "pool_stochastic_builds": _net(layer(*pool("pool: STOCHASTIC kernel_size: 2 stride: 2"))),
    "pool_stochastic_padded": _net(layer(*pool("pool: STOCHASTIC kernel_size: 3 pad: 1"))),
    "pool_ave_two_tops": _net(layer(*pool("pool: AVE kernel_size: 2"), ("x",), ("y", "mask"))),
    "pool_max_three_tops": _net(layer(*pool("pool: MAX kernel_size: 2"), ("x",), ("y", "mask", "z"))),
    # utility, loss and recurrent layers (issue 18)
    "argmax_top_k_over_axis": _net(layer("ArgMax", "argmax_param { axis: 1 top_k: 4 }")),
    "argmax_top_k_whole_item": _net(layer("ArgMax", "argmax_param { top_k: 90 }")),
    "batch_reindex_2d_indices": _net(_X2, layer("BatchReindex", "", ("x", "x2"))),
    "filter_selector_not_singleton": _net(_X2, layer("Filter", "", ("x", "x2"))),
    "filter_batch_mismatch": _net(_LABEL_N3, layer("Filter", "", ("x", "label"))),
    "parameter_no_bottoms": _net(layer("Parameter", "parameter_param { shape { dim: 2 } }", (), ("p",))),
    "reduction_axis_out_of_range": _net(layer("Reduction", "reduction_param { axis: 4 }")),
    "slice_axis_and_slice_dim": _net(layer("Slice", "slice_param { axis: 1 slice_dim: 1 }", ("x",), ("y", "z"))),
    "slice_points_not_increasing": _net(layer("Slice", "slice_param { axis: 2 slice_point: 3 slice_point: 2 }",
                                              ("x",), ("y", "z", "w"))),
    "slice_last_piece_empty": _net(layer("Slice", "slice_param { axis: 2 slice_point: 5 }", ("x",), ("y", "z"))),
    "slice_uneven": _net(layer("Slice", "slice_param { axis: 2 }", ("x",), ("y", "z"))),
    "tile_without_tiles": _net(layer("Tile", "")),
    "euclidean_counts_differ": _net(_X2, layer("EuclideanLoss", "", ("x", "x2"), ("loss",))),
    "hinge_labels_not_one_per_item": _net(_LABEL2, layer("HingeLoss", "", ("x", "label"), ("loss",))),
    "multinomial_labels_not_singleton": _net(_LABEL2, layer("MultinomialLogisticLoss", "", ("x", "label"),
                                                            ("loss",))),
    "contrastive_not_one_by_one": _net(_LABEL, layer("ContrastiveLoss", "", ("x", "x", "label"), ("loss",))),
    "infogain_without_source": _net(_LABEL, layer("InfogainLoss", "", ("x", "label"), ("loss",))),
    "infogain_prob_top_default_weights": _net(_LABEL, _H3, layer("InfogainLoss", "", ("x", "label", "H"),
                                                                  ("loss", "prob"))),
    "infogain_prob_top_weighted": _net(_LABEL, _H3, layer("InfogainLoss", "loss_weight: 1 loss_weight: 0",
                                                           ("x", "label", "H"), ("loss", "prob"))),
    "infogain_legacy_normalize": _net(_LABEL, _H3, layer("InfogainLoss", "loss_param { normalize: true }",
                                                          ("x", "label", "H"), ("loss",))),
    "rnn_without_num_output": _net(_CONT, layer("RNN", "", ("x", "cont"))),
    "lstm_cont_not_t_by_n": _net(_LABEL, layer("LSTM", "recurrent_param { num_output: 2 }", ("x", "label"))),
    "lstm_exposed_state_missing": _net(_CONT, layer("LSTM", "recurrent_param { num_output: 2 expose_hidden: true }",
                                                    ("x", "cont"), ("y", "hT", "cT"))),
    "lstm_unit_gates_not_four_times": _net(_CONT, layer("LSTMUnit", "", ("x", "x", "cont"), ("c", "h"))),
    "rnn_input_without_values": _net(_CONT, layer("RNN", "recurrent_param { num_output: 2 }", ("x", "cont")),
                                     shape=(2, 3)),
    "rnn_static_input_one_axis": _net(_CONT, _STATIC1, layer("RNN", "recurrent_param { num_output: 2 }",
                                                             ("x", "cont", "s"))),
    "softmax_loss_labels_flattened": _net(_LABEL_FLAT, layer("SoftmaxWithLoss", "", ("x", "label"), ("loss",))),
    "sigmoid_ce_targets_flattened": _net(_TARGET_FLAT, layer("SigmoidCrossEntropyLoss", "", ("x", "label"),
                                                             ("loss",))),
    # BatchNorm's blobs are statistics: a given lr_mult must be 0 (it defaults to 1); three specs are the old
    # definition, which reading the prototxt upgrades to lr_mult 0
    "batch_norm_lr_mult_one": _net(layer("BatchNorm", "param { lr_mult: 1 }")),
    "batch_norm_lr_mult_default": _net(layer("BatchNorm", "param { lr_mult: 0 } param { decay_mult: 0 }")),
    "batch_norm_lr_mult_zero": _net(layer("BatchNorm", "param { lr_mult: 0 } param { lr_mult: 0 decay_mult: 1 }")),
    "batch_norm_three_specs_upgraded": _net(layer("BatchNorm", "param { lr_mult: 1 } param { lr_mult: 2 } "
                                                               "param { lr_mult: 1 }")),
}
# Where sec.caffe refuses on purpose what Caffe builds (sec/caffe/README, "Differences").
EDGE_DIFFERENCES = {
    "duplicate_layer_names": "weights and net.params go by layer name",
    "dropout_ratio_one": "scale 1 / (1 - 1); Caffe checks the ratio only in debug builds",
    "pool_window_outside_unpadded": "Caffe outputs -FLT_MAX for MAX there (and 0/0 for AVE)",
    "hinge_labels_not_one_per_item": "Caffe reads the first N values of the label blob, whatever its shape",
}
