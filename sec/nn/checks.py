"""Argument and input checks of sec.nn's public modules, worded as pylayers' layers word them.

Two kinds, by what they cost on a GPU:

* shape, dtype, device and parameter checks read only metadata and host numbers: always made;
* value checks (finiteness, ranges, a finite result) need the values on the host: `ValueChecks`
  gathers every condition of a call as device booleans and reads them in one transfer (one host
  synchronisation per call), and only on a failure works out which argument and what values.
  A module made with ``check_values=False`` skips them (no host read: the engine's twins, whose
  inputs come from the net and whose non-finite losses the solver's own read catches).

Every failure is one ValueError (TypeError for a wrong type) whose message starts with the
module's name and names the argument.
"""
import math
import numbers

import torch


def need_tensor(where, name, value, floating=False):
    """TypeError unless ``value`` is a tensor (of a floating dtype when ``floating``; else of any
    real dtype, bool included)."""
    if not torch.is_tensor(value):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(value).__name__}")
    if value.is_complex() or (floating and not value.dtype.is_floating_point):
        kind = "floating-point" if floating else "real"
        raise TypeError(f"{where}: {name} must be a {kind} tensor, got dtype {value.dtype}")
    return value


def need_layout(where, name, value, layout, ndim=4):
    """ValueError unless ``value`` has ``ndim`` dimensions; ``layout`` names them (e.g. 'N x C x H x W')."""
    if value.ndim != ndim:
        raise ValueError(f"{where}: {name} need {layout} ({ndim} dimensions), got shape {tuple(value.shape)}")


def need_nonempty(where, name, value, layout):
    if value.numel() == 0:
        raise ValueError(f"{where}: {name} need {layout} with no empty dimension (at least one image, "
                         f"class and pixel), got shape {tuple(value.shape)}")


def need_shape(where, name, value, shape, what):
    """pylayers' wording: '<name> need <what> <shape>, got <shape>'."""
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{where}: {name} need {what} {tuple(shape)}, got {tuple(value.shape)}")


def need_one_device(where, **tensors):
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"{where}: need every tensor on one device, got {listed}")


def number_param(where, name, value, valid, requirement):
    """``value`` as a finite float satisfying ``valid``; else ValueError (pylayers' float_param wording)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or not valid(number):
        raise ValueError(f"{where}: {name} must be {requirement}, got {value!r}")
    return number


def probability_param(where, name, value, closed=False):
    """A probability parameter: in [0, 1) (min_prob, as pylayers) or [0, 1] (q_fg, q_bg)."""
    if closed:
        return number_param(where, name, value, lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
    return number_param(where, name, value, lambda v: 0.0 <= v < 1.0, "in [0, 1)")


def count_param(where, name, value, largest):
    """A non-negative integer up to ``largest`` (e.g. maxiter, capped as krahenbuhl2013 caps it);
    integral floats are taken, as pylayers' param_str takes them."""
    integral = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
                and int(value) == value)
    if not integral or not 0 <= value <= largest:
        raise ValueError(f"{where}: {name} must be an integer in 0..{largest}, got {value!r}")
    return int(value)


class ValueChecks:
    """Conditions on tensor values, read from the device together (one host transfer).

    add(name, bad, explain): ``bad`` a 0-d bool tensor (True: the input is wrong); ``explain()``
    the message's tail, computed only when ``bad`` is found true. raise_first(where) raises
    ValueError('<where>: <name> <explain()>') for the first bad condition, in the order added.
    """

    def __init__(self):
        self.names, self.flags, self.explanations = [], [], []

    def add(self, name, bad, explain):
        self.names.append(name)
        self.flags.append(bad.reshape(()))
        self.explanations.append(explain)

    def finite(self, name, value):
        """``value`` has no NaN or infinity."""
        self.add(name, ~torch.isfinite(value).all(), lambda: "need finite values, got NaN or inf")

    def within(self, name, value, low, high, requirement):
        """``value`` finite and in [low, high]."""
        def explain():
            if not bool(torch.isfinite(value).all()):
                return f"need finite values {requirement}, got NaN or inf"
            return f"need values {requirement}, got values in [{float(value.min())}, {float(value.max())}]"
        self.add(name, ~(torch.isfinite(value) & (value >= low) & (value <= high)).all(), explain)

    def raise_first(self, where):
        if not self.flags:
            return
        found = torch.stack(self.flags).tolist()   # the one host read
        for name, bad, explain in zip(self.names, found, self.explanations):
            if bad:
                raise ValueError(f"{where}: {name} {explain()}")
