"""The six update rules of Caffe (ComputeUpdateValue of each solver), on lists of tensors.

Every rule takes, for all learnable blobs at once (torch._foreach_* kernels, one launch per
operation instead of one per blob and operation):

* `diffs`: the gradients after clipping, iter_size normalisation and regularisation; the rule
  overwrites them with the update value, as Caffe overwrites the blob diffs (the caller then
  subtracts them from the weights: Caffe's Net::Update);
* `history`: the solver's history blobs in Caffe's order, one set of len(diffs) tensors per
  history set (SGD, Nesterov, AdaGrad, RMSProp: 1; AdaDelta: gradients then updates; Adam: m
  then v);
* `rates`: each blob's local rate, rate x lr_mult, as Caffe's float (Python floats);
* `param`: the SolverParameter (momentum, momentum2, delta, rms_decay), `t`: iter + 1.

The arithmetic is Caffe's CPU code step for step (same order of operations), in float32.
"""
import math

import numpy as np
import torch

F32 = np.float32


def sgd(diffs, history, rates, param, t):
    """h = momentum * h + rate * g; update = h."""
    h = history[0]
    torch._foreach_mul_(h, param.momentum)
    torch._foreach_mul_(diffs, rates)
    torch._foreach_add_(h, diffs)
    torch._foreach_copy_(diffs, h)


def nesterov(diffs, history, rates, param, t):
    """h' = momentum * h + rate * g; update = (1 + momentum) * h' - momentum * h."""
    h = history[0]
    momentum = param.momentum
    previous = torch._foreach_mul(h, momentum)
    torch._foreach_mul_(h, momentum)
    torch._foreach_mul_(diffs, rates)
    torch._foreach_add_(h, diffs)
    update = torch._foreach_mul(h, float(F32(1) + F32(momentum)))
    torch._foreach_sub_(update, previous)
    torch._foreach_copy_(diffs, update)


def adagrad(diffs, history, rates, param, t):
    """h += g^2; update = rate * g / (sqrt(h) + delta)."""
    h = history[0]
    torch._foreach_addcmul_(h, diffs, diffs)
    _divide_by_root(diffs, h, param.delta)
    torch._foreach_mul_(diffs, rates)


def rmsprop(diffs, history, rates, param, t):
    """h = rms_decay * h + (1 - rms_decay) * g^2; update = rate * g / (sqrt(h) + delta)."""
    h = history[0]
    squares = torch._foreach_mul(diffs, diffs)
    torch._foreach_mul_(h, param.rms_decay)
    torch._foreach_add_(h, squares, alpha=float(F32(1) - F32(param.rms_decay)))
    _divide_by_root(diffs, h, param.delta)
    torch._foreach_mul_(diffs, rates)


def adadelta(diffs, history, rates, param, t):
    """h_g = m h_g + (1 - m) g^2; u = g sqrt((h_u + delta) / (h_g + delta));
    h_u = m h_u + (1 - m) u^2; update = rate * u."""
    grads, updates = history
    momentum, delta = param.momentum, param.delta
    rest = float(F32(1) - F32(momentum))
    _decay_add_squares(grads, diffs, momentum, rest)
    ratio = torch._foreach_add(updates, delta)
    torch._foreach_div_(ratio, torch._foreach_add(grads, delta))
    torch._foreach_sqrt_(ratio)
    torch._foreach_mul_(diffs, ratio)
    _decay_add_squares(updates, diffs, momentum, rest)
    torch._foreach_mul_(diffs, rates)


def adam(diffs, history, rates, param, t):
    """m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    update = rate * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + delta)."""
    m, v = history
    beta1, beta2 = param.momentum, param.momentum2
    torch._foreach_mul_(m, beta1)
    torch._foreach_add_(m, diffs, alpha=float(F32(1) - F32(beta1)))
    _decay_add_squares(v, diffs, beta2, float(F32(1) - F32(beta2)))
    correction = F32(math.sqrt(1.0 - math.pow(float(F32(beta2)), t)) / (1.0 - math.pow(float(F32(beta1)), t)))
    denominator = torch._foreach_sqrt(v)
    torch._foreach_add_(denominator, param.delta)
    torch._foreach_copy_(diffs, torch._foreach_div(m, denominator))
    torch._foreach_mul_(diffs, [float(F32(rate) * correction) for rate in rates])


def _divide_by_root(diffs, h, delta):
    """diffs /= sqrt(h) + delta (AdaGrad, RMSProp)."""
    denominator = torch._foreach_sqrt(h)
    torch._foreach_add_(denominator, delta)
    torch._foreach_div_(diffs, denominator)


def _decay_add_squares(h, diffs, decay, rest):
    """h = decay * h + rest * diffs^2 (Caffe: powx then axpby)."""
    squares = torch._foreach_mul(diffs, diffs)
    torch._foreach_mul_(h, decay)
    torch._foreach_add_(h, squares, alpha=rest)


# type string -> (update rule, number of history sets): Caffe's solver registry.
RULES = {
    "SGD": (sgd, 1),
    "Nesterov": (nesterov, 1),
    "AdaGrad": (adagrad, 1),
    "RMSProp": (rmsprop, 1),
    "AdaDelta": (adadelta, 2),
    "Adam": (adam, 2),
}


def check_rule(kind, param):
    """The constructor checks of Caffe's solver classes; returns a message or None."""
    if kind in ("AdaGrad", "RMSProp") and param.momentum != 0:
        return f"momentum cannot be used with {kind} (got {param.momentum:g}; Caffe requires 0)"
    if kind == "RMSProp" and not 0 <= param.rms_decay < 1:
        return f"rms_decay should lie between 0 and 1 (got {param.rms_decay:g})"
    return None
