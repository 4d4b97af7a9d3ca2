"""The SEC Python layers: thin Caffe shells around `pylayers.functions`.

Class names and blob order are those of the original SEC train.prototxt. Loss layers output a
(1,) top and scale their gradient by ``top[0].diff[0]`` (Caffe's loss_weight, 1 in SEC).

``bottom``, ``top`` and ``propagate_down`` are only indexed and len()'d, never iterated, zipped,
unpacked or sliced: pycaffe hands the layers boost::python vectors (RawBlobVec, BoolVec) whose
iteration fails with "No to_python (by-value) converter found for C++ type: caffe::Blob<float>*".
"""
import numpy as np

from . import crf, cues, functions
from .base import Layer, float_param, layer_label, parse_param_str


def _check_blob_counts(layer, bottom, top, num_bottom, num_top):
    if len(bottom) != num_bottom or len(top) != num_top:
        raise ValueError(f"{layer_label(layer)}: need {num_bottom} bottom and {num_top} top blob(s), "
                         f"got {len(bottom)} and {len(top)}")


def _check_same_shape(layer, first, second, what):
    if tuple(first.data.shape) != tuple(second.data.shape):
        raise ValueError(f"{layer_label(layer)}: {what} need the shape of the probabilities "
                         f"{tuple(first.data.shape)}, got {tuple(second.data.shape)}")


def _memory_key(blobs):
    """Address, shape and dtype of each blob's data: which arrays a cached result belongs to."""
    key = []
    for index in range(len(blobs)):
        data = blobs[index].data
        key.append((data.__array_interface__["data"][0], data.shape, data.dtype.str))
    return tuple(key)


def _probability_param(layer, params, key):
    return float_param(params, key, layer_label(layer), lambda v: 0.0 <= v < 1.0, "in [0, 1)")


class SoftmaxLayer(Layer):
    """bottom: scores N x C x H x W; top: softmax + min_prob, renormalised (param_str: min_prob)."""

    def setup(self, bottom, top):
        _check_blob_counts(self, bottom, top, 1, 1)
        params = parse_param_str(self.param_str, {"min_prob": functions.MIN_PROB}, layer_label(self))
        self.min_prob = _probability_param(self, params, "min_prob")

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = functions.softmax_with_floor(bottom[0].data, self.min_prob)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = functions.softmax_with_floor_backward(
                top[0].data, top[0].diff, self.min_prob)


class _LossLayer(Layer):
    """Shared shell: two bottoms (probabilities first), a (1,) top, gradient to bottom 0 only."""

    defaults = {}

    def setup(self, bottom, top):
        _check_blob_counts(self, bottom, top, 2, 1)
        self.params = parse_param_str(self.param_str, self.defaults, layer_label(self))
        self.configure(self.params)
        self.cached = None

    def configure(self, params):
        """Validate the layer's param_str values (none by default)."""

    def reshape(self, bottom, top):
        self.check_bottoms(bottom)
        top[0].reshape(1)

    def check_bottoms(self, bottom):
        _check_same_shape(self, bottom[0], bottom[1], "bottom[1]")

    def forward(self, bottom, top):
        loss, grad = self.loss_and_grad(bottom[0].data, bottom[1].data)
        self.cached = (_memory_key(bottom), grad)
        top[0].data[...] = loss

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            # the gradient computed by forward serves unless the bottoms are other arrays now
            # (an engine that ran forward twice before backward): then it is recomputed
            key, grad = self.cached if self.cached is not None else (None, None)
            if key != _memory_key(bottom):
                grad = self.loss_and_grad(bottom[0].data, bottom[1].data)[1]
            np.multiply(grad, top[0].diff.flat[0], out=bottom[0].diff, casting="unsafe")
        if len(propagate_down) > 1 and propagate_down[1]:
            bottom[1].diff[...] = 0.0  # labels, cues and CRF output get no gradient


class SeedLossLayer(_LossLayer):
    """bottoms: probabilities, cues (N x C x H x W one-hot seeds); top: seeding loss."""

    def loss_and_grad(self, probs, seeds):
        return functions.seed_loss(probs, seeds)


class ExpandLossLayer(_LossLayer):
    """bottoms: probabilities, image labels N x 1 x 1 x C; top: expansion loss.

    param_str keys: pooling (gwrp | gmp | gap), q_fg, q_bg.
    """

    defaults = {"pooling": "gwrp", "q_fg": functions.Q_FG, "q_bg": functions.Q_BG}

    def configure(self, params):
        label = layer_label(self)
        if params["pooling"] not in functions.POOLINGS:
            raise ValueError(f"{label}: param_str pooling must be one of {functions.POOLINGS}, "
                             f"got {params['pooling']!r}")
        self.pooling = params["pooling"]
        self.q_fg, self.q_bg = (float_param(params, key, label, lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
                                for key in ("q_fg", "q_bg"))

    def check_bottoms(self, bottom):
        num, channels = bottom[0].data.shape[:2]
        if tuple(bottom[1].data.shape) != (num, 1, 1, channels):
            raise ValueError(f"{layer_label(self)}: labels need shape {(num, 1, 1, channels)}, "
                             f"got {tuple(bottom[1].data.shape)}")

    def loss_and_grad(self, probs, labels):
        return functions.expand_loss(probs, labels, self.q_fg, self.q_bg, self.pooling)


class ConstrainLossLayer(_LossLayer):
    """bottoms: probabilities, CRF log-probabilities; top: mean KL(Q || P)."""

    def loss_and_grad(self, probs, log_q):
        return functions.constrain_loss(probs, log_q)


class CRFLayer(Layer):
    """bottoms: raw scores N x C x h x w, input images N x 3 x H x W (mean-subtracted BGR);
    top: log of the clamped, renormalised dense-CRF marginals. No gradient (backward writes zeros).

    param_str keys: scale_factor, maxiter, min_prob, mean (BGR).
    """

    defaults = {"scale_factor": crf.SCALE_FACTOR, "maxiter": crf.MAX_ITER,
                "min_prob": functions.MIN_PROB, "mean": list(crf.MEAN_BGR)}

    def setup(self, bottom, top):
        _check_blob_counts(self, bottom, top, 2, 1)
        label = layer_label(self)
        params = parse_param_str(self.param_str, self.defaults, label)
        self.scale_factor = float_param(params, "scale_factor", label, lambda v: v > 0, "> 0")
        self.maxiter = int(float_param(params, "maxiter", label,
                                       lambda v: 0 <= v <= crf.MAX_ITERATIONS and v == int(v),
                                       f"a non-negative integer, at most {crf.MAX_ITERATIONS} (the dense CRF's limit)"))
        self.min_prob = _probability_param(self, params, "min_prob")
        try:
            mean = np.asarray(params["mean"], dtype=np.float64)
        except (TypeError, ValueError):
            mean = None
        if mean is None or mean.shape != (3,) or not np.isfinite(mean).all():
            raise ValueError(f"{label}: param_str mean needs 3 finite numbers (BGR), got {params['mean']!r}")
        self.mean = tuple(mean)
        try:
            import krahenbuhl2013
        except ImportError as err:
            raise ImportError(f"{label} needs the dense CRF extension: pip install ./CRF ({err})") from err
        self.crf_batch = krahenbuhl2013.CRF_batch

    def reshape(self, bottom, top):
        scores, images = bottom[0].data.shape, bottom[1].data.shape
        if len(scores) != 4 or len(images) != 4 or images[0] != scores[0] or images[1] != 3:
            raise ValueError(f"{layer_label(self)}: need scores N x C x h x w and images N x 3 x H x W, "
                             f"got {tuple(scores)} and {tuple(images)}")
        top[0].reshape(*scores)

    def forward(self, bottom, top):
        top[0].data[...] = crf.crf_log_probs(bottom[0].data, bottom[1].data, self.crf_batch,
                                             self.scale_factor, self.maxiter, self.min_prob, self.mean)

    def backward(self, top, propagate_down, bottom):
        for index in range(len(bottom)):
            if propagate_down[index]:
                bottom[index].diff[...] = 0.0


class AnnotationLayer(Layer):
    """bottom: image ids (N,) or N x 1 x 1 x 1; tops: labels N x 1 x 1 x C, cues N x C x S x S.

    param_str keys: cues (pickle path, plain or .gz), num_classes, cue_size.
    """

    defaults = {"cues": "localization_cues/localization_cues.pickle",
                "num_classes": cues.NUM_CLASSES, "cue_size": cues.CUE_SIZE}

    def setup(self, bottom, top):
        _check_blob_counts(self, bottom, top, 1, 2)
        label = layer_label(self)
        params = parse_param_str(self.param_str, self.defaults, label)
        positive_int = (lambda v: v >= 1 and v == int(v), "a positive integer")
        self.num_classes = int(float_param(params, "num_classes", label, *positive_int))
        self.cue_size = int(float_param(params, "cue_size", label, *positive_int))
        self.source = str(params["cues"])
        try:
            self.cues = cues.load_cues(self.source)
        except OSError as err:
            raise OSError(f"{label}: cannot open cue file {self.source}: {err}") from err

    def reshape(self, bottom, top):
        num = bottom[0].data.shape[0]
        if bottom[0].data.size != num:
            raise ValueError(f"{layer_label(self)}: image ids need shape (N,) or N x 1 x 1 x 1, "
                             f"got {tuple(bottom[0].data.shape)}")
        top[0].reshape(num, 1, 1, self.num_classes)
        top[1].reshape(num, self.num_classes, self.cue_size, self.cue_size)

    def forward(self, bottom, top):
        source = f"{layer_label(self)} bottom"
        images = [cues.image_id(value, source) for value in bottom[0].data.reshape(-1)]
        cues.batch_labels_and_cues(self.cues, images, self.num_classes, self.cue_size, self.source,
                                   labels_out=top[0].data, cues_out=top[1].data)

    def backward(self, top, propagate_down, bottom):
        """Data layer: nothing to propagate."""
