"""One-layer cases of Caffe's loss layers that sec.caffe gained for issue 18: EuclideanLoss,
HingeLoss, ContrastiveLoss, InfogainLoss (H as bottom[2]; from a .binaryproto source see
bench/caffe_infogain_source.py), MultinomialLogisticLoss, and SoftmaxWithLoss's cap of a
position's loss at -log(FLT_MIN) (format: bench/caffe_reference_cases.py)."""
import numpy as np

SCALE_700 = 300.0     # scores of a freshly initialised FCN reach +-700
TINY_PROBABILITY = 1e-30


def scores_700(rng, shape):
    """Scores of hundreds: softmax probabilities underflow below FLT_MIN and 1e-20."""
    return (rng.standard_normal(shape) * SCALE_700).astype(np.float32)


def infogain(rng, shape):
    """An infogain matrix H: positive, heavier on the diagonal."""
    values = rng.uniform(0.1, 1.0, shape)
    values += 2 * np.eye(shape[0], shape[1]) if len(shape) == 2 else 0
    return values.astype(np.float32)


def probs_tiny(rng, shape):
    """Probabilities over axis 1 whose class 0 has 1e-30 (below Caffe's kLOG_THRESHOLD 1e-20,
    which clamps the value and the gradient)."""
    probs = rng.uniform(0.1, 1.0, shape)
    probs[:, 0] = TINY_PROBABILITY
    return (probs / probs.sum(1, keepdims=True)).astype(np.float32)


def pairs(rng, shape):
    """Features at distances around the default margin 1 from each other's partner."""
    return (rng.standard_normal(shape) * 0.4).astype(np.float32)


INPUT_KINDS = {"scores_700": scores_700, "infogain": infogain, "probs_tiny": probs_tiny, "pairs": pairs}

LOSS = {"tops": ("loss",)}
CASES = {
    "loss_euclidean": (("EuclideanLoss", ""), {"x": ((4, 3), "randn"), "x2": ((4, 3), "randn")},
                       {"bottoms": ("x", "x2"), **LOSS}),
    "loss_euclidean_shapes_weight": (("EuclideanLoss", "loss_weight: 2.5"),
                                     {"x": ((3, 6), "randn"), "x2": ((3, 2, 3, 1), "randn")},
                                     {"bottoms": ("x", "x2"), **LOSS}),
    "loss_hinge_l1": (("HingeLoss", ""), {"x": ((6, 4), "randn"), "label": ((6,), "labels4")},
                      {"bottoms": ("x", "label"), **LOSS}),
    "loss_hinge_l2": (("HingeLoss", "hinge_loss_param { norm: L2 } loss_weight: 0.5"),
                      {"x": ((3, 2, 2, 2), "randn"), "label": ((3, 1, 1, 1), "labels8")},
                      {"bottoms": ("x", "label"), **LOSS}),
    "loss_contrastive": (("ContrastiveLoss", ""), {"a": ((6, 3), "pairs"), "b": ((6, 3), "pairs"),
                                                   "sim": ((6,), "binary")}, {"bottoms": ("a", "b", "sim"), **LOSS}),
    "loss_contrastive_legacy_4d": (("ContrastiveLoss", "contrastive_loss_param { margin: 0.8 legacy_version: true }"),
                                   {"a": ((6, 3, 1, 1), "pairs"), "b": ((6, 3, 1, 1), "pairs"),
                                    "sim": ((6, 1, 1, 1), "binary")}, {"bottoms": ("a", "b", "sim"), **LOSS}),
    "loss_multinomial": (("MultinomialLogisticLoss", ""), {"p": ((5, 4), "probs"), "label": ((5, 1, 1, 1), "labels4")},
                         {"bottoms": ("p", "label"), **LOSS}),
    "loss_multinomial_tiny": (("MultinomialLogisticLoss", ""),
                              {"p": ((8, 2, 2), "probs_tiny"), "label": ((8,), "labels4")},
                              {"bottoms": ("p", "label"), **LOSS}),
    "loss_infogain": (("InfogainLoss", ""), {"x": ((3, 4, 2), "randn3"), "label": ((3, 2), "labels4"),
                                             "H": ((4, 4), "infogain")},
                      {"bottoms": ("x", "label", "H"), "learned": ("x",), **LOSS}),
    "loss_infogain_axis2_ignore_prob": (("InfogainLoss", "infogain_loss_param { axis: 2 } "
                                         "loss_param { ignore_label: 255 normalization: FULL }"),
                                        {"x": ((2, 3, 4), "randn3"), "label": ((2, 3), "labels4_ignore"),
                                         "H": ((1, 1, 4, 4), "infogain")},
                                        {"bottoms": ("x", "label", "H"), "learned": ("x",), "tops": ("loss", "prob")}),
    "loss_infogain_700_none": (("InfogainLoss", "loss_param { normalization: NONE }"),
                               {"x": ((4, 3), "scores_700"), "label": ((4,), "labels3"), "H": ((3, 3), "infogain")},
                               {"bottoms": ("x", "label", "H"), "learned": ("x",), **LOSS}),
    "loss_softmax_700_capped": (("SoftmaxWithLoss", ""), {"x": ((2, 5, 3, 2), "scores_700"),
                                                          "label": ((2, 1, 3, 2), "labels5")},
                                {"bottoms": ("x", "label"), **LOSS}),
    "loss_softmax_700_ignore_none": (("SoftmaxWithLoss", "loss_param { ignore_label: 255 normalization: NONE }"),
                                     {"x": ((6, 3), "scores_700"), "label": ((6,), "labels3_ignore")},
                                     {"bottoms": ("x", "label"), **LOSS}),
}
