"""One-layer cases of Caffe's utility layers that sec.caffe gained for issue 18: ArgMax,
BatchReindex, Filter, Parameter, Reduction, Slice, Tile (format: bench/caffe_reference_cases.py).

BatchReindex and Filter take their data from Parameter layers ("learned"): Caffe aborts when
force_backward reaches their index / selector bottoms. ArgMax has no backward in Caffe."""
import numpy as np

from caffe_reference_cases import X

BATCH = 4


def ties(rng, shape):
    """Small integers: many exact ties, ordered by Caffe's (value, index) rule."""
    return rng.integers(0, 3, shape).astype(np.float32)


def reindex(rng, shape):
    """Indices into a batch of BATCH, repeated and missing ones, with fractions Caffe truncates."""
    return (rng.integers(0, BATCH, shape) + rng.uniform(0, 0.9, shape)).astype(np.float32)


def selector(rng, shape):
    """Zeros and non-zeros (not only 1) choosing items; at least one of each."""
    values = rng.choice([0.0, 0.0, 1.0, 2.5, -1.0], shape).astype(np.float32)
    values.flat[0], values.flat[-1] = 0.0, 1.0
    return values


def nothing(rng, shape):
    return np.zeros(shape, np.float32)


INPUT_KINDS = {"ties": ties, "reindex": reindex, "selector": selector, "nothing": nothing}

NO_BACKWARD = {"backward": False}
CASES = {
    "utility_argmax": (("ArgMax", ""), {"x": (X, "randn")}, NO_BACKWARD),
    "utility_argmax_top3_max_val": (("ArgMax", "argmax_param { top_k: 3 out_max_val: true }"),
                                    {"x": (X, "randn")}, NO_BACKWARD),
    "utility_argmax_2d_max_val": (("ArgMax", "argmax_param { top_k: 2 out_max_val: true }"),
                                  {"x": ((3, 7), "randn")}, NO_BACKWARD),
    "utility_argmax_axis1_top2": (("ArgMax", "argmax_param { axis: 1 top_k: 2 }"), {"x": (X, "randn")}, NO_BACKWARD),
    "utility_argmax_axis_last_max_val": (("ArgMax", "argmax_param { axis: -1 top_k: 3 out_max_val: true }"),
                                         {"x": (X, "randn")}, NO_BACKWARD),
    "utility_argmax_ties": (("ArgMax", "argmax_param { top_k: 5 out_max_val: true }"),
                            {"x": ((3, 2, 4), "ties")}, NO_BACKWARD),
    "utility_argmax_ties_axis1": (("ArgMax", "argmax_param { axis: 1 top_k: 3 }"), {"x": ((2, 5, 3), "ties")},
                                  NO_BACKWARD),
    "utility_batch_reindex": (("BatchReindex", ""), {"x": ((BATCH, 3, 2), "randn"), "i": ((6,), "reindex")},
                              {"bottoms": ("x", "i"), "learned": ("x",)}),
    "utility_filter": (("Filter", ""), {"x": ((6, 3, 2), "randn"), "x2": ((6, 2), "randn"), "s": ((6, 1), "selector")},
                       {"bottoms": ("x", "x2", "s"), "tops": ("y", "y2"), "learned": ("x", "x2")}),
    "utility_filter_none_selected": (("Filter", ""), {"x": ((4, 3), "randn"), "s": ((4,), "nothing")},
                                     {"bottoms": ("x", "s"), "backward": False}),
    "utility_parameter": (("Parameter", "parameter_param { shape { dim: 2 dim: 3 dim: 4 } }"), {},
                          {"bottoms": ()}),
    "utility_reduction_sum": (("Reduction", ""), {"x": (X, "uniform")}, {}),   # positive: no cancellation
    "utility_reduction_asum_axis1": (("Reduction", "reduction_param { operation: ASUM axis: 1 }"),
                                     {"x": (X, "randn")}, {}),
    "utility_reduction_sumsq_axis2_coeff": (("Reduction", "reduction_param { operation: SUMSQ axis: 2 coeff: -0.5 }"),
                                            {"x": (X, "randn")}, {}),
    "utility_reduction_mean_last_coeff": (("Reduction", "reduction_param { operation: MEAN axis: -1 coeff: 3 }"),
                                          {"x": (X, "randn")}, {}),
    "utility_slice_points": (("Slice", "slice_param { slice_point: 1 slice_point: 3 }"),
                             {"x": ((2, 4, 3, 2), "randn")}, {"tops": ("y", "y2", "y3")}),
    "utility_slice_equal_axis2": (("Slice", "slice_param { axis: 2 }"), {"x": ((2, 3, 4, 2), "randn")},
                                  {"tops": ("y", "y2")}),
    "utility_slice_dim_legacy": (("Slice", "slice_param { slice_dim: 0 slice_point: 3 }"),
                                 {"x": ((4, 3, 2), "randn")}, {"tops": ("y", "y2")}),
    "utility_slice_one_top": (("Slice", "slice_param { axis: -1 }"), {"x": ((2, 3), "randn")}, {}),
    "utility_tile_axis1": (("Tile", "tile_param { tiles: 3 }"), {"x": ((2, 3, 2), "randn")}, {}),
    "utility_tile_axis0": (("Tile", "tile_param { axis: 0 tiles: 2 }"), {"x": ((2, 3, 2), "randn")}, {}),
    "utility_tile_last": (("Tile", "tile_param { axis: -1 tiles: 4 }"), {"x": ((2, 3, 2), "randn")}, {}),
}
