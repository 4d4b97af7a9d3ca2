"""SEC's Caffe Python layers (Kolesnikov & Lampert, ECCV 2016) with the math in plain numpy.

Load them from a prototxt with ``python_param { module: 'pylayers' layer: 'SeedLossLayer' }``.
The classes subclass ``caffe.Layer`` when a real pycaffe is importable, else `PythonLayer`
(see `pylayers.base`). The loss math is in `pylayers.functions`, the cue reader in
`pylayers.cues`, the CRF step in `pylayers.crf`.
"""
from .base import CAFFE_UNAVAILABLE_REASON, Layer, PythonLayer, parse_param_str
from .cues import image_labels_and_cues, load_cues
from .functions import (MIN_PROB, Q_BG, Q_FG, constrain_loss, expand_loss, global_pool,
                        seed_loss, softmax_with_floor, softmax_with_floor_backward)
from .layers import (AnnotationLayer, ConstrainLossLayer, CRFLayer, ExpandLossLayer,
                     SeedLossLayer, SoftmaxLayer)

__version__ = "0.1.0"

__all__ = [
    "AnnotationLayer", "CAFFE_UNAVAILABLE_REASON", "CRFLayer", "ConstrainLossLayer",
    "ExpandLossLayer", "Layer", "MIN_PROB", "PythonLayer", "Q_BG", "Q_FG", "SeedLossLayer",
    "SoftmaxLayer", "constrain_loss", "expand_loss", "global_pool", "image_labels_and_cues",
    "load_cues", "parse_param_str", "seed_loss", "softmax_with_floor",
    "softmax_with_floor_backward",
]
