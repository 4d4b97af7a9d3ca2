"""Utility layers that pick items by value (Caffe's "utility" family): ArgMax, BatchReindex,
Filter. Their index and selector bottoms get no gradient, as in Caffe (which refuses to
backpropagate to them); ArgMax passes none at all (Caffe's backward is not implemented)."""
import math

import torch

from sec.caffe.layers.base import canonical_axis, need_bottoms


def _layer(lp):
    """'layer NAME (type T)': forward-time errors name the layer themselves (the net only
    locates build-time errors)."""
    return f"layer '{lp.name}' (type {lp.type})"


class ArgMax:
    """Caffe's ArgMax: the `top_k` largest values and/or their indices (float32).

    Without `axis`: per item of axis 0 over all its values flattened; the top is
    (N, 1, top_k) (indices) or (N, 2, top_k) (indices in channel 0, values in channel 1 with
    `out_max_val`), padded with 1s to the bottom's number of axes (at least 3). With `axis`:
    the bottom's shape with that axis top_k long, holding the indices, or the values with
    `out_max_val`. Order: Caffe's std::partial_sort with std::greater on (value, index) pairs, so
    equal values come larger index first; this is matched exactly (a stable sort of the reversed
    axis). No gradient flows back.
    """

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 1)
        p = lp.argmax_param
        shape = tuple(shapes[0])
        if not shape:
            raise ValueError("the bottom needs at least one axis")
        self.top_k, self.out_max_val = int(p.top_k), p.out_max_val
        if self.top_k < 1:
            raise ValueError(f"argmax_param.top_k must be at least 1, got {self.top_k}")
        self.axis = canonical_axis(p.axis, len(shape), "argmax_param.axis") if p.HasField("axis") else None
        length = shape[self.axis] if self.axis is not None else math.prod(shape[1:])
        if self.top_k > length:
            where = f"axis {self.axis}" if self.axis is not None else "the flattened item"
            raise ValueError(f"argmax_param.top_k {self.top_k} exceeds the {length} values of {where} "
                             f"of bottom {shape}")
        self.params = []

    def shapes(self, shapes):
        shape = tuple(shapes[0])
        if self.axis is not None:
            return [shape[:self.axis] + (self.top_k,) + shape[self.axis + 1:]]
        top = [1] * max(len(shape), 3)
        top[0], top[1], top[2] = shape[0], 2 if self.out_max_val else 1, self.top_k
        return [tuple(top)]

    def forward(self, x):
        with torch.no_grad():
            values = x if self.axis is not None else x.reshape(x.shape[0], -1)
            dim = self.axis if self.axis is not None else 1
            length = values.shape[dim]
            ranked, order = torch.sort(values.flip(dim), dim=dim, descending=True, stable=True)
            best = ranked.narrow(dim, 0, self.top_k)
            index = (length - 1 - order.narrow(dim, 0, self.top_k)).to(x.dtype)
            if self.axis is not None:
                return (best if self.out_max_val else index,)
            top = torch.stack([index, best], 1) if self.out_max_val else index.unsqueeze(1)
            return (top.reshape(self.shapes([x.shape])[0]),)


class BatchReindex:
    """Caffe's BatchReindex: top[i] = bottom[0][index[i]] along axis 0; bottom[1] holds the
    indices as floats (1-D, truncated to int; each in [0, N)). The gradient is summed back into
    the rows picked; the indices get none."""

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 2)
        self.where = _layer(lp)
        self.params = []
        self.shapes(shapes)

    def shapes(self, shapes):
        data, index = tuple(shapes[0]), tuple(shapes[1])
        if len(index) != 1:
            raise ValueError(f"bottom[1] (the indices) must be 1-D, got shape {index}")
        if not data:
            raise ValueError("bottom[0] needs at least one axis (the batch)")
        return [index + data[1:]]

    def forward(self, x, index):
        index = index.detach()
        bad = (index < 0) | (index >= x.shape[0])
        if bool(bad.any()):
            raise ValueError(f"{self.where}: index {float(index[bad][0])} out of range for a batch of "
                             f"{x.shape[0]} (indices must be in [0, {x.shape[0]}))")
        return (x.index_select(0, index.long()),)


class Filter:
    """Caffe's Filter: the items (axis 0) of bottoms 0..k-1 whose selector (the last bottom,
    N x 1 x ...) is non-zero, in order; one top per filtered bottom. At build time the tops have
    all N items (Caffe's first Reshape); each forward gives them the selected number, which may
    be 0 (an empty top, as in Caffe). Items not selected get a zero gradient; the selector none."""

    def __init__(self, lp, shapes, ctx):
        if len(shapes) < 2:
            raise ValueError(f"needs at least 2 bottom blobs (data and selector), got {len(shapes)}")
        if len(lp.top) != len(shapes) - 1:
            raise ValueError(f"needs one top per filtered bottom ({len(shapes) - 1}), got {len(lp.top)}")
        self.params = []
        self.shapes(shapes)

    def shapes(self, shapes):
        selector = tuple(shapes[-1])
        if not selector or any(d != 1 for d in selector[1:]):
            raise ValueError(f"the selector (last bottom) must be N x 1 x ...; got shape {selector}")
        for i, shape in enumerate(shapes[:-1]):
            if not shape or shape[0] != selector[0]:
                raise ValueError(f"bottom {i} has shape {tuple(shape)}: its first axis must be the selector's "
                                 f"{selector[0]}")
        return [tuple(shape) for shape in shapes[:-1]]

    def forward(self, *bottoms):
        selector = bottoms[-1].detach().reshape(-1)
        picked = torch.nonzero(selector != 0).reshape(-1)
        return tuple(x.index_select(0, picked) for x in bottoms[:-1])
