"""One-layer nets of Caffe's MVN and Embed for bench/caffe_reference.py (--only layers_common).

Embed cannot pass a gradient to its indices, and Caffe's force_backward would ask for one (its
backward then aborts), so the Embed nets run without force_backward and give their top a
loss_weight: Caffe then backpropagates to the weights only (a top diff of loss_weight everywhere)."""
import numpy as np

X = (2, 3, 4, 5)
EMBED_INPUT_DIM = 5


def _indices(rng, shape):
    return rng.integers(0, EMBED_INPUT_DIM, shape).astype(np.float32)


INPUT_KINDS = {"indices": _indices}
EMBED = {"force_backward": False}

CASES = {
    "common_mvn": (("MVN", ""), {"x": (X, "randn3")}, {}),
    "common_mvn_across_channels": (("MVN", "mvn_param { across_channels: true }"), {"x": (X, "randn3")}, {}),
    "common_mvn_mean_only": (("MVN", "mvn_param { normalize_variance: false }"), {"x": (X, "randn3")}, {}),
    "common_mvn_large_eps": (("MVN", "mvn_param { eps: 0.5 }"), {"x": (X, "randn")}, {}),
    "common_mvn_2d": (("MVN", "mvn_param { across_channels: true eps: 0.01 }"), {"x": ((3, 6), "randn")}, {}),
    "common_mvn_3d": (("MVN", ""), {"x": ((2, 3, 7), "randn")}, {}),
    "common_mvn_in_place": (("MVN", ""), {"x": (X, "randn")}, {"tops": ("x",)}),
    "common_embed": (("Embed", f"embed_param {{ input_dim: {EMBED_INPUT_DIM} num_output: 3 }} loss_weight: 1"),
                     {"x": ((2, 4), "indices")}, EMBED),
    "common_embed_no_bias": (("Embed", f"embed_param {{ input_dim: {EMBED_INPUT_DIM} num_output: 4 bias_term: false }} "
                              "loss_weight: 0.5"), {"x": ((7,), "indices")}, EMBED),
}
