"""One-layer nets of Caffe's neuron layers for bench/caffe_reference.py (--only layers_neuron):
AbsVal BNLL Clip ELU Exp Log Power PReLU Swish Threshold, each parameter that changes the
formula, and in-place use where Caffe's backward then reads the overwritten bottom (its
results, not the derivative, are what the fixture holds)."""
import numpy as np

X = (2, 3, 4, 5)
IN_PLACE = {"tops": ("x",)}


def _uniform(low, high):
    return lambda rng, shape: rng.uniform(low, high, shape).astype(np.float32)


INPUT_KINDS = {
    "positive": _uniform(0.2, 3.0),   # Log, fractional Power: a positive argument
    "wide": _uniform(-70.0, 70.0),    # BNLL past its backward cap at 50
}

CASES = {
    "neuron_absval": (("AbsVal", ""), {"x": (X, "randn")}, {}),
    "neuron_bnll": (("BNLL", ""), {"x": (X, "randn3")}, {}),
    "neuron_bnll_wide": (("BNLL", ""), {"x": (X, "wide")}, {}),
    "neuron_bnll_in_place": (("BNLL", ""), {"x": (X, "randn3")}, IN_PLACE),
    "neuron_clip": (("Clip", "clip_param { min: -1 max: 1.5 }"), {"x": (X, "randn3")}, {}),
    "neuron_clip_min_above_max": (("Clip", "clip_param { min: 1 max: -1 }"), {"x": (X, "randn3")}, {}),
    "neuron_clip_in_place": (("Clip", "clip_param { min: -1 max: 1.5 }"), {"x": (X, "randn3")}, IN_PLACE),
    "neuron_elu": (("ELU", ""), {"x": (X, "randn")}, {}),
    "neuron_elu_alpha": (("ELU", "elu_param { alpha: 0.4 }"), {"x": (X, "randn")}, {}),
    "neuron_elu_negative_alpha_in_place": (("ELU", "elu_param { alpha: -0.5 }"), {"x": (X, "randn")}, IN_PLACE),
    "neuron_exp": (("Exp", ""), {"x": (X, "randn")}, {}),
    "neuron_exp_base_scale_shift": (("Exp", "exp_param { base: 2 scale: 0.5 shift: 1.5 }"), {"x": (X, "randn")}, {}),
    "neuron_exp_e_shift": (("Exp", "exp_param { scale: -1 shift: 0.5 }"), {"x": (X, "randn")}, {}),
    "neuron_exp_in_place": (("Exp", "exp_param { base: 3 }"), {"x": (X, "randn")}, IN_PLACE),
    "neuron_log": (("Log", ""), {"x": (X, "positive")}, {}),
    "neuron_log_base_scale_shift": (("Log", "log_param { base: 10 scale: 2 shift: 0.5 }"), {"x": (X, "positive")}, {}),
    "neuron_log_in_place": (("Log", "log_param { shift: 2 }"), {"x": (X, "positive")}, IN_PLACE),
    "neuron_power_square": (("Power", "power_param { power: 2 scale: 1.5 shift: 0.5 }"), {"x": (X, "randn")}, {}),
    "neuron_power_cube_no_shift": (("Power", "power_param { power: 3 scale: 0.5 }"), {"x": (X, "randn")}, {}),
    "neuron_power_root": (("Power", "power_param { power: 0.5 scale: 2 shift: 1 }"), {"x": (X, "positive")}, {}),
    "neuron_power_linear": (("Power", "power_param { scale: -2 shift: 1 }"), {"x": (X, "randn")}, {}),
    "neuron_power_scale_zero": (("Power", "power_param { power: 3 scale: 0 shift: 2 }"), {"x": (X, "randn")}, {}),
    "neuron_power_in_place": (("Power", "power_param { power: 2 shift: 1 }"), {"x": (X, "randn")}, IN_PLACE),
    "neuron_prelu": (("PReLU", ""), {"x": (X, "randn")}, {}),
    "neuron_prelu_shared": (("PReLU", "prelu_param { channel_shared: true }"), {"x": (X, "randn")}, {}),
    "neuron_prelu_2d": (("PReLU", ""), {"x": ((4, 3), "randn")}, {}),
    "neuron_prelu_in_place": (("PReLU", ""), {"x": (X, "randn")}, IN_PLACE),
    "neuron_prelu_default_filler": (("PReLU", ""), {"x": (X, "randn")}, {"fill": True}),
    "neuron_swish": (("Swish", ""), {"x": (X, "randn3")}, {}),
    "neuron_swish_beta_in_place": (("Swish", "swish_param { beta: 2.5 }"), {"x": (X, "randn3")}, IN_PLACE),
    "neuron_threshold": (("Threshold", "threshold_param { threshold: 0.3 }"), {"x": (X, "randn")},
                         {"backward": False}),
    "neuron_relu_negative_slope_in_place": (("ReLU", "relu_param { negative_slope: -0.5 }"), {"x": (X, "randn")},
                                            IN_PLACE),
    "neuron_sigmoid_in_place": (("Sigmoid", ""), {"x": (X, "randn3")}, IN_PLACE),
    "neuron_tanh_in_place": (("TanH", ""), {"x": (X, "randn")}, IN_PLACE),
}
