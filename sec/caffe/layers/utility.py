"""Utility layers (Caffe's "utility" layers): blob plumbing without parameters: Concat, Eltwise,
Split, Flatten, Reshape, Silence."""
import math

import torch

from sec.caffe.layers.base import canonical_axis, need_bottoms

ELTWISE_PROD, ELTWISE_SUM, ELTWISE_MAX = 0, 1, 2


class Concat:
    def __init__(self, lp, shapes, ctx):
        if not shapes:
            raise ValueError("needs at least 1 bottom blob")
        p = lp.concat_param
        axis = p.concat_dim if p.HasField("concat_dim") else p.axis
        self.axis = canonical_axis(axis, len(shapes[0]), "concat_param.axis")
        self.params = []

    def shapes(self, shapes):
        first = tuple(shapes[0])
        for i, shape in enumerate(shapes[1:], 1):
            shape = tuple(shape)
            if len(shape) != len(first) or any(a != b for j, (a, b) in enumerate(zip(shape, first))
                                               if j != self.axis):
                raise ValueError(f"bottom {i} has shape {shape}, bottom 0 has {first}: all axes but "
                                 f"axis {self.axis} must agree")
        total = sum(s[self.axis] for s in shapes)
        return [first[:self.axis] + (total,) + first[self.axis + 1:]]

    def forward(self, *bottoms):
        return (torch.cat(bottoms, dim=self.axis),)


class Eltwise:
    """SUM (with optional coeff per bottom), PROD or MAX of equally shaped bottoms."""

    def __init__(self, lp, shapes, ctx):
        if len(shapes) < 2:
            raise ValueError(f"needs at least 2 bottom blobs, got {len(shapes)}")
        p = lp.eltwise_param
        self.op = p.operation
        self.coeffs = list(p.coeff)
        if self.coeffs and self.op != ELTWISE_SUM:
            raise ValueError("eltwise_param.coeff is only allowed with operation SUM")
        if self.coeffs and len(self.coeffs) != len(shapes):
            raise ValueError(f"eltwise_param has {len(self.coeffs)} coeffs for {len(shapes)} bottoms")
        if all(c == 1 for c in self.coeffs):
            self.coeffs = []
        self.params = []

    def shapes(self, shapes):
        for i, shape in enumerate(shapes[1:], 1):
            if tuple(shape) != tuple(shapes[0]):
                raise ValueError(f"bottom {i} has shape {tuple(shape)}, bottom 0 has {tuple(shapes[0])}")
        return [tuple(shapes[0])]

    def forward(self, *bottoms):
        if self.op == ELTWISE_SUM:
            if self.coeffs:
                out = bottoms[0] * self.coeffs[0]
                for x, c in zip(bottoms[1:], self.coeffs[1:]):
                    out = out + x * c
                return (out,)
            out = bottoms[0]
            for x in bottoms[1:]:
                out = out + x
            return (out,)
        combine = torch.mul if self.op == ELTWISE_PROD else torch.maximum
        out = bottoms[0]
        for x in bottoms[1:]:
            out = combine(out, x)
        return (out,)


class Split:
    """The same data under several names; autograd sums the gradients into the bottom as Caffe's
    Split does. Each top is its own view, so pycaffe's backward gives each top blob its own diff."""

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 1)
        self.ntop = len(lp.top)
        self.params = []

    def shapes(self, shapes):
        return [tuple(shapes[0])] * self.ntop

    def forward(self, x):
        return tuple(x.view_as(x) for _ in range(self.ntop))


class Flatten:
    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 1)
        p = lp.flatten_param
        self.axis = canonical_axis(p.axis, len(shapes[0]), "flatten_param.axis")
        self.end = canonical_axis(p.end_axis, len(shapes[0]), "flatten_param.end_axis")
        self.params = []

    def shapes(self, shapes):
        s = tuple(shapes[0])
        return [s[:self.axis] + (math.prod(s[self.axis:self.end + 1]),) + s[self.end + 1:]]

    def forward(self, x):
        return (x.flatten(self.axis, self.end),)


class Reshape:
    """Caffe's Reshape: replace axes [axis, axis + num_axes) by reshape_param.shape, where 0 copies
    the input dimension at that position and one -1 is inferred."""

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 1)
        p = lp.reshape_param
        self.dims = [int(d) for d in p.shape.dim]
        if self.dims.count(-1) > 1:
            raise ValueError("reshape_param.shape may have at most one -1")
        self.axis, self.num_axes = p.axis, p.num_axes
        self.params = []
        self.shapes(shapes)

    def shapes(self, shapes):
        s = tuple(shapes[0])
        start = self.axis + len(s) + 1 if self.axis < 0 else self.axis
        if not 0 <= start <= len(s):
            raise ValueError(f"reshape_param.axis {self.axis} out of range for input {s}")
        end = len(s) if self.num_axes == -1 else start + self.num_axes
        if self.num_axes < -1 or end > len(s):
            raise ValueError(f"reshape_param.num_axes {self.num_axes} out of range for input {s}")
        dims = []
        for i, d in enumerate(self.dims):
            if d == 0:
                if start + i >= len(s):
                    raise ValueError(f"reshape dim {i} copies input axis {start + i}, which {s} lacks")
                d = s[start + i]
            dims.append(d)
        out = list(s[:start]) + dims + list(s[end:])
        known = math.prod(d for d in out if d != -1)
        total = math.prod(s)
        if -1 in out:
            if known == 0 or total % known:
                raise ValueError(f"cannot infer the -1 of {self.dims} for input {s}")
            out[out.index(-1)] = total // known
        if math.prod(out) != total:
            raise ValueError(f"reshape of {s} ({total} values) to {tuple(out)} changes the count")
        self.out = tuple(out)
        return [self.out]

    def forward(self, x):
        return (x.reshape(self.shapes([x.shape])[0]),)


class Silence:
    """Consumes its bottoms, produces nothing (no gradient flows back)."""

    def __init__(self, lp, shapes, ctx):
        if lp.top:
            raise ValueError("Silence takes no tops")
        self.params = []

    def shapes(self, shapes):
        return []

    def forward(self, *bottoms):
        return ()
