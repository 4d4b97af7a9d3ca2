"""pycaffe's `caffe.coord_map`: how coordinates map between the tops of a NetSpec net, and `crop`.

A map is (axis, a, b): output coordinate = a * input coordinate + b along the spatial axes from
`axis` on (None: any axis, the identity of pointwise layers being (None, 1, 0)); `a` and `b` are
numbers or per-axis arrays. Convolution, Pooling and Im2col map by (1 / stride, (pad - (k - 1) / 2)
/ stride) with k the dilated kernel extent, Deconvolution by (stride, (k - 1) / 2 - pad), Crop by
(1, -offset); the layers in PASS_THROUGH_LAYERS map by the identity; any other layer has no map
(UndefinedMapException) and stops the walk. Works on NetSpec Tops (sec.caffe.net_spec), before any
net is built.
"""
import numpy as np

from sec.caffe.net_spec import layers as L

PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log", "LRN", "Exp",
                       "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split", "TanH", "Threshold"]
SPATIAL_LAYERS = ("Convolution", "Pooling", "Im2col")
LEGACY_SPATIAL_FIELDS = {"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"}
CROP_DEFAULT_AXIS = 2   # Crop's default: the spatial axes of N x C x H x W


class UndefinedMapException(Exception):
    """The layer has no coordinate map (not spatial, not pointwise)."""


class AxisMismatchException(Exception):
    """Two maps on different axes cannot be composed."""


def conv_params(fn):
    """(axis, stride, dilated kernel extent, pad) of a Convolution-like or Pooling Function, as arrays
    (one value or one per axis). The legacy _h/_w fields are refused (AssertionError), as pycaffe."""
    params = fn.params.get("convolution_param", fn.params)
    if LEGACY_SPATIAL_FIELDS & set(fn.params):
        raise AssertionError("cropping does not support legacy _h/_w params")
    kernel = np.array(params["kernel_size"], ndmin=1)
    dilation = np.array(params.get("dilation", 1), ndmin=1)
    return (params.get("axis", 1), np.array(params.get("stride", 1), ndmin=1), (kernel - 1) * dilation + 1,
            np.array(params.get("pad", 0), ndmin=1))


def crop_params(fn):
    """(axis, offset) of a Crop Function, with Crop's defaults."""
    params = fn.params.get("crop_param", fn.params)
    return params.get("axis", CROP_DEFAULT_AXIS), np.array(params.get("offset", 0), ndmin=1)


def coord_map(fn):
    """The map (axis, a, b) of one layer (see the module docstring)."""
    if fn.type_name in SPATIAL_LAYERS:
        axis, stride, extent, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (extent - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, extent, pad = conv_params(fn)
        return axis, stride, (extent - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset   # the map's axis is the last one not cropped
    raise UndefinedMapException(fn.type_name)


def compose(base_map, next_map):
    """base (a1, b1) then next (a2, b2): scales multiply, the next shift is scaled by a1."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        ax = ax2
    elif ax2 is None or ax1 == ax2:
        ax = ax1
    else:
        raise AxisMismatchException(f"axis {ax1} vs {ax2}")
    return ax, a1 * a2, a1 * b2 + b1


def inverse(coord_map):
    """The map back: (1 / a, -b / a)."""
    ax, a, b = coord_map
    return ax, 1 / a, -b / a


def _mappable_bottoms(top):
    """The bottoms a map walks through: all of them, except Crop's second (its reference shape)."""
    bottoms = top.fn.inputs
    return bottoms[:1] if top.fn.type_name == "Crop" else bottoms


def _walk(top, maps, frontier):
    """Extend `maps` (top -> map to it) one layer down from `top`; a layer without a map ends the walk."""
    try:
        for bottom in _mappable_bottoms(top):
            maps[bottom] = compose(maps[top], coord_map(top.fn))
            frontier.add(bottom)
    except UndefinedMapException:
        pass


def coord_map_from_to(top_from, top_to):
    """The map from the coordinates of `top_from` to those of `top_to`: walk down from both to a
    common blob, composing maps, then invert the `from` side. RuntimeError when no spatial path
    connects them."""
    from_maps = {top_from: (None, 1, 0)}
    frontier = {top_from}
    while frontier:
        _walk(frontier.pop(), from_maps, frontier)
    to_maps = {top_to: (None, 1, 0)}
    frontier = {top_to}
    while frontier:
        top = frontier.pop()
        if top in from_maps:
            return compose(to_maps[top], inverse(from_maps[top]))
        _walk(top, to_maps, frontier)
    raise RuntimeError("Could not compute map between tops; are they connected by spatial layers?")


def crop(top_from, top_to):
    """A Crop layer cropping `top_from` to `top_to`, its axis and offsets from their coordinate map.
    AssertionError when the scales differ, the offset is negative or not an integer."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    if not np.all(a == 1):
        raise AssertionError(f"scale mismatch on crop (a = {a})")
    if not np.all(b <= 0):
        raise AssertionError(f"cannot crop negative offset (b = {b})")
    if not np.all(np.round(b) == b):
        raise AssertionError(f"cannot crop noninteger offset (b = {b})")
    return L.Crop(top_from, top_to, crop_param=dict(axis=ax + 1, offset=[int(o) for o in -np.round(np.atleast_1d(b))]))
