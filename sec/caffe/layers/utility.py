"""Utility layers (Caffe's "utility" layers): blob plumbing: Concat, Slice, Split, Tile, Eltwise,
Flatten, Reshape, Reduction, Parameter, Silence. ArgMax, BatchReindex and Filter, which pick items
by value, are in utility_select.py."""
import math

import torch

from sec.caffe.layers.base import canonical_axis, need_bottoms

ELTWISE_PROD, ELTWISE_SUM, ELTWISE_MAX = 0, 1, 2
REDUCTION_SUM, REDUCTION_ASUM, REDUCTION_SUMSQ, REDUCTION_MEAN = 1, 2, 3, 4


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


class Slice:
    """Caffe's Slice: bottom cut along `axis` (or the legacy `slice_dim`, not both) into the tops,
    at `slice_point`s (strictly increasing, one fewer than the tops; the last piece may be empty,
    as Caffe allows) or into equal pieces. One top: the bottom itself."""

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 1)
        if not lp.top:
            raise ValueError("needs at least 1 top")
        p = lp.slice_param
        if p.HasField("axis") and p.HasField("slice_dim"):
            raise ValueError("slice_param: either axis or slice_dim may be set, not both")
        ndim = len(shapes[0])
        if p.HasField("slice_dim"):
            if p.slice_dim >= ndim:
                raise ValueError(f"slice_param.slice_dim {p.slice_dim} out of range for a {ndim}-axis blob")
            self.axis = int(p.slice_dim)
        else:
            self.axis = canonical_axis(p.axis, ndim, "slice_param.axis")
        self.points = [int(v) for v in p.slice_point]
        self.ntop = len(lp.top)
        if self.points and len(self.points) != self.ntop - 1:
            raise ValueError(f"slice_param has {len(self.points)} slice_point(s) for {self.ntop} tops "
                             f"(needs {self.ntop - 1})")
        self.params = []
        self.shapes(shapes)

    def shapes(self, shapes):
        shape = tuple(shapes[0])
        length = shape[self.axis]
        if self.points:
            if self.ntop > length:
                raise ValueError(f"{self.ntop} tops cannot slice axis {self.axis} of {shape} ({length} long)")
            edges = [0] + self.points
            if any(b <= a for a, b in zip(edges, edges[1:])) or self.points[-1] > length:
                raise ValueError(f"slice_param.slice_point {self.points} must increase strictly within "
                                 f"(0, {length}] (axis {self.axis} of {shape})")
            self.sizes = [b - a for a, b in zip(edges, edges[1:] + [length])]
        else:
            if length % self.ntop:
                raise ValueError(f"{self.ntop} tops do not divide axis {self.axis} of {shape} ({length} long) evenly")
            self.sizes = [length // self.ntop] * self.ntop
        return [shape[:self.axis] + (size,) + shape[self.axis + 1:] for size in self.sizes]

    def forward(self, x):
        if self.ntop == 1:
            return (x,)
        self.shapes([x.shape])   # the piece sizes of this bottom (its axis may have changed since build)
        return tuple(torch.split(x, self.sizes, dim=self.axis))


class Tile:
    """Caffe's Tile: the block of axes [axis, end) repeated `tiles` times along `axis`."""

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 1)
        p = lp.tile_param
        self.axis = canonical_axis(p.axis, len(shapes[0]), "tile_param.axis")
        if not p.HasField("tiles"):
            raise ValueError("tile_param.tiles is required")
        if p.tiles <= 0:
            raise ValueError(f"tile_param.tiles must be positive, got {p.tiles}")
        self.repeats = [1] * len(shapes[0])
        self.repeats[self.axis] = int(p.tiles)
        self.params = []

    def shapes(self, shapes):
        return [tuple(d * r for d, r in zip(shapes[0], self.repeats))]

    def forward(self, x):
        return (x.repeat(self.repeats),)


class Reduction:
    """Caffe's Reduction: every value of axes [axis, end) reduced to one (SUM, ASUM = sum of
    |x|, SUMSQ = sum of x^2, MEAN), times `coeff`; the top keeps axes [0, axis) (axis 0: a scalar).
    Gradients as Caffe's: sign(x) for ASUM (0 at 0), 2x for SUMSQ."""

    OPERATIONS = {REDUCTION_SUM: "SUM", REDUCTION_ASUM: "ASUM", REDUCTION_SUMSQ: "SUMSQ", REDUCTION_MEAN: "MEAN"}

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 1)
        p = lp.reduction_param
        if p.operation not in self.OPERATIONS:
            raise ValueError(f"reduction_param.operation {p.operation} is not one of SUM, ASUM, SUMSQ, MEAN")
        self.op, self.coeff = p.operation, float(p.coeff)
        self.axis = canonical_axis(p.axis, len(shapes[0]), "reduction_param.axis")
        self.params = []

    def shapes(self, shapes):
        return [tuple(shapes[0][:self.axis])]

    def forward(self, x):
        flat = x.reshape(x.shape[:self.axis] + (-1,))
        if self.op == REDUCTION_ASUM:
            flat = flat.abs()
        elif self.op == REDUCTION_SUMSQ:
            flat = flat * flat
        out = flat.sum(-1)
        coeff = self.coeff / flat.shape[-1] if self.op == REDUCTION_MEAN else self.coeff
        return (out * coeff if coeff != 1 else out,)


class Parameter:
    """Caffe's Parameter layer: one learnable blob of `parameter_param.shape` (zeros until
    weights are loaded or a solver trains it), handed out as the top."""

    def __init__(self, lp, shapes, ctx):
        need_bottoms(lp, shapes, 0)
        if len(lp.top) != 1:
            raise ValueError(f"needs exactly 1 top, got {len(lp.top)}")
        shape = tuple(int(d) for d in lp.parameter_param.shape.dim)
        if any(d < 0 for d in shape):
            raise ValueError(f"parameter_param.shape {shape} has a negative dimension")
        self.blob = ctx.param(lp, 0, shape, None)
        self.params = [self.blob]

    def shapes(self, shapes):
        return [tuple(self.blob.shape)]

    def forward(self):
        return (self.blob.view_as(self.blob),)
