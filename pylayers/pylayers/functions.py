"""The SEC loss math as plain numpy functions: arrays in, loss and gradient out.

Layout and conventions shared by every function here:

* ``scores``  N x C x H x W network outputs (logits), any float dtype.
* ``probs``   N x C x H x W class probabilities, channel 0 = background.
* ``cues``    N x C x H x W localization cues, 1 where a class is seeded at a pixel, else 0.
* ``labels``  N x 1 x 1 x C image labels, > 0.5 for a present class; column 0 (background) ignored.
* ``log_q``   N x C x H x W log-probabilities of the CRF output.

Losses return ``(loss, grad)``: ``loss`` a python float, ``grad`` the gradient of the loss
with respect to ``probs`` (same shape and dtype), for a loss weight of 1.

Degenerate images never produce NaN: a term whose normaliser would be zero (no cue pixel, no
present foreground class, no absent foreground class) contributes 0 for that image, and the
mean over images still divides by the batch size N. The Caffe original divides by zero there.
"""
import numpy as np

MIN_PROB = 1e-4
"""Probability floor of the SEC softmax and CRF layers (`min_prob` in the original)."""

Q_FG = 0.996
"""GWRP decay for foreground classes (d+ in the paper)."""

Q_BG = 0.999
"""GWRP decay for the background class (d_bg in the paper). The paper's d- is the decay for
absent classes: 0, i.e. global max pooling, which expand_loss applies to them."""

POOLINGS = ("gwrp", "gmp", "gap")
"""Global pooling choices of the expansion loss: weighted rank, max, average."""

PRESENT_THRESHOLD = 0.5
"""A label value above this marks a class as present in the image."""


def softmax_with_floor(scores, min_prob=MIN_PROB):
    """Channel softmax of N x C x H x W ``scores``, then ``+ min_prob`` and renormalised.

    Every output probability is at least ``min_prob / (1 + C * min_prob)``, so the log in the
    losses stays finite. Returns an array of the dtype of ``scores``.
    """
    probs = scores - scores.max(axis=1, keepdims=True)
    np.exp(probs, out=probs)
    probs /= probs.sum(axis=1, keepdims=True)
    num_classes = scores.shape[1]
    # softmax sums to 1, so the renormaliser of (softmax + min_prob) is the constant 1 + C*min_prob
    probs += min_prob
    probs /= 1.0 + num_classes * min_prob
    return probs


def softmax_with_floor_backward(probs, top_diff, min_prob=MIN_PROB):
    """Gradient with respect to the scores, given the forward output ``probs`` and its ``top_diff``.

    With s the plain softmax and p = (s + m) / (1 + C m): dp/ds = 1 / (1 + C m) (the derivative
    of the renormaliser cancels because s sums to 1), and ds/dz is the softmax Jacobian.
    """
    scale = 1.0 + probs.shape[1] * min_prob
    softmax = probs * scale - min_prob
    diff = top_diff / scale
    return softmax * (diff - (softmax * diff).sum(axis=1, keepdims=True))


def _per_image_weights(counts, num_images):
    """1 / (N * count) for images with count > 0, else 0 (the image's term is dropped)."""
    weights = np.zeros(len(counts))
    nonzero = counts > 0
    weights[nonzero] = 1.0 / (num_images * counts[nonzero])
    return weights


def seed_loss(probs, cues):
    """Seeding loss: -mean over images of (sum of cues * log probs) / (number of cue pixels).

    An image without cue pixels contributes 0 (its gradient is 0). Logs are only taken where a
    cue is set, so probabilities of 0 elsewhere are harmless.
    """
    num_images = probs.shape[0]
    seeded = cues != 0
    counts = cues.reshape(num_images, -1).sum(axis=1, dtype=np.float64)
    weights = _per_image_weights(counts, num_images)
    log_probs = np.zeros_like(probs)
    np.log(probs, out=log_probs, where=seeded)
    per_image = (cues * log_probs).reshape(num_images, -1).sum(axis=1, dtype=np.float64)
    grad = np.zeros_like(probs)
    np.divide(cues, probs, out=grad, where=seeded)
    grad *= (-weights).astype(probs.dtype)[:, None, None, None]
    return float(-(per_image @ weights)), grad


def rank_weights(length, decay):
    """GWRP weights d^j for ranks j = 0..length-1 (descending order), normalised to sum 1."""
    weights = np.power(float(decay), np.arange(length, dtype=np.float64))
    return weights / weights.sum()


def global_pool(rows, pooling="gwrp", decay=Q_FG):
    """Pool each row of the M x K array ``rows``; returns (pooled (M,) float64, d pooled / d rows).

    ``gwrp``: sort a row in descending order and average with weights d^j (decay d); d -> 0 is
    max pooling, d = 1 average pooling. ``gmp``: max. ``gap``: mean. The gradient has the dtype
    of ``rows``. At ties it goes to one of the tied entries (a subgradient).
    """
    length = rows.shape[1]
    if pooling == "gap":
        return rows.mean(axis=1, dtype=np.float64), np.full(rows.shape, 1.0 / length, dtype=rows.dtype)
    if pooling == "gmp":
        decay = 0.0
    elif pooling != "gwrp":
        raise ValueError(f"need pooling in {POOLINGS}, got {pooling!r}")
    # ascending sort with reversed weights: the largest value gets weight d^0
    weights = rank_weights(length, decay)[::-1]
    order = np.argsort(rows, axis=1, kind="stable")  # ties ranked by position, whatever the numpy
    pooled = np.take_along_axis(rows, order, axis=1).astype(np.float64) @ weights
    grad = np.empty_like(rows)
    np.put_along_axis(grad, order, np.broadcast_to(weights.astype(rows.dtype), rows.shape), axis=1)
    return pooled, grad


def expand_loss(probs, labels, q_fg=Q_FG, q_bg=Q_BG, pooling="gwrp"):
    """Expansion loss of SEC (global weighted rank pooling), for any C and H x W.

    loss = - mean_i [ sum_{present fg c} log pool_{q_fg}(p_c) / #present ]
           - mean_i [ sum_{absent fg c} log(1 - max p_c) / #absent ]
           - mean_i log pool_{q_bg}(p_background)
    An image with no present (or no absent) foreground class contributes 0 to that term.
    Only present classes and the background are sorted; absent classes need only their max.
    """
    num_images, num_classes = probs.shape[:2]
    flat = probs.reshape(num_images, num_classes, -1)
    present = labels.reshape(num_images, num_classes)[:, 1:] > PRESENT_THRESHOLD
    grad = np.zeros(flat.shape, dtype=probs.dtype)
    loss = 0.0

    present_weight = _per_image_weights(present.sum(axis=1), num_images)
    image, fg = np.nonzero(present)
    if len(image):
        pooled, pooled_grad = global_pool(flat[image, fg + 1], pooling, q_fg)
        weight = present_weight[image]
        loss -= np.sum(weight * np.log(pooled))
        grad[image, fg + 1] = -(weight / pooled)[:, None] * pooled_grad

    absent_weight = _per_image_weights((~present).sum(axis=1), num_images)
    image, fg = np.nonzero(~present)
    if len(image):
        arg = flat[:, 1:].argmax(axis=2)[image, fg]
        peak = flat[image, fg + 1, arg].astype(np.float64)
        weight = absent_weight[image]
        loss -= np.sum(weight * np.log1p(-peak))
        grad[image, fg + 1, arg] = weight / (1.0 - peak)

    pooled, pooled_grad = global_pool(flat[:, 0], pooling, q_bg)
    loss -= np.sum(np.log(pooled)) / num_images
    grad[:, 0] = -pooled_grad / (num_images * pooled)[:, None]
    return float(loss), grad.reshape(probs.shape)


def constrain_loss(probs, log_q):
    """Constrain-to-boundary loss: mean over images and pixels of KL(Q || P) = sum_c Q log(Q / P).

    ``log_q`` are the CRF log-probabilities (no gradient goes to them).
    """
    num_pixels = probs.shape[0] * probs.shape[2] * probs.shape[3]
    q = np.exp(log_q)
    loss = np.sum(q * (log_q - np.log(probs)), dtype=np.float64) / num_pixels
    grad = q / probs
    grad *= -1.0 / num_pixels
    return float(loss), grad.astype(probs.dtype, copy=False)


def clamp_and_normalise(probs, min_prob=MIN_PROB):
    """Raise every probability below ``min_prob`` to it, then renormalise over axis 1 (in place)."""
    np.maximum(probs, min_prob, out=probs)
    probs /= probs.sum(axis=1, keepdims=True)
    return probs
