"""Permutohedral lattice (Adams, Baek & Davis 2010) in torch: splat, blur, slice.

The same lattice as `krahenbuhl2013` (CRF/csrc/lattice.cpp, after densecrf): feature scaling
sqrt(2/3)(d+1), elevation onto the plane sum(x) = 0, rounding to the nearest remainder-0 point
with ties down, ranks with ties by index, barycentric weights, a [1/2 1 1/2] blur along each of
the d+1 axes in order 0..d (absent neighbours count as 0), slice with the same weights and the
factor 1 / (1 + 2^-d). The float32 arithmetic of the build follows the C++ operation by
operation, so both find the same vertices and weights; filtering differs only in the order of
float additions.

Several point sets ("images") can share one lattice object: each point carries a group index
that is part of every vertex key, so the groups never mix and one splat/blur/slice filters all.
Tensors: ``features`` P x d float32 (already divided by the kernel widths), ``groups`` (P,) int64.

On a GPU the build costs one host synchronisation, the ``unique`` that counts the vertices (the
size of every later tensor): the vertex keys are packed into int64 codes with strides derived on
the host from ``bounds`` (the range the features can take, known to the CRF from the image size
and the kernel widths), and neighbours are found by code arithmetic and one ``searchsorted``.
Without ``bounds`` the range is read from the features (one more host read). Filtering with
`SparseFilter` is 2 + (d+1) sparse-dense products, with no host synchronisation.

Grid rows: 0 and V+1 are zero sentinels (absent lower and upper neighbours), 1..V the vertices.
"""
import math
import struct
import warnings

import torch

_CSR_NOTICES = ("Sparse CSR tensor support is in beta", "Sparse invariant checks are implicitly disabled")
"""torch's one-time notices on creating a CSR tensor (the products used here are long stable; the
structure is built here, so its invariants hold by construction)."""

NORM_EPSILON = 1e-20
"""Added to K 1 before the inverse square root (densecrf's NORMALIZE_SYMMETRIC)."""
KEY_BITS = 62
"""Packed vertex keys (group and d coordinates, mixed radix) must fit in this many bits."""
KEY_MARGIN_STEPS = 4
"""A key coordinate lies within this many multiples of (d+1) of its elevated feature (rounding,
the rank correction, the simplex corner offset and a neighbour step, each at most d+1)."""
BLUR_WEIGHTS = (0.5, 1.0, 0.5)
"""One blur pass: the lower neighbour, the vertex, the upper neighbour."""
BLUR_TAPS = len(BLUR_WEIGHTS)


def to_float32(value):
    """A Python float rounded to float32, as a C++ float holds it (host only: no tensor)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def slice_scale(dim):
    """densecrf's factor on the sliced result, 1 / (1 + 2^-d), as the C++ computes it (float32)."""
    return to_float32(1.0 / (1.0 + 2.0 ** -dim))


def _feature_scale(dim):
    """Diagonal of the elevation matrix times sqrt(2/3)(d+1), cast to float32 as the C++ does."""
    inv_std = math.sqrt(2.0 / 3.0) * (dim + 1)
    return [to_float32(inv_std / math.sqrt((i + 1.0) * (i + 2.0))) for i in range(dim)]


def _elevation_steps(dim, scale):
    """The C++'s elevation loop as (j, coefficient) steps: elevated[j] = running - j cf,
    running += cf, cf = feature[j-1] scale[j-1], for j = d..1; elevated[0] = running."""
    return [(j, scale[j - 1]) for j in range(dim, 0, -1)]


def _elevate(features, scale):
    """(P x (d+1)) elevated coordinates of P x d features, the C++'s loop (float32 on float32 input)."""
    dim = features.shape[1]
    elevated = [None] * (dim + 1)
    running = torch.zeros_like(features[:, 0])
    for j, coefficient in _elevation_steps(dim, scale):
        cf = features[:, j - 1] * coefficient
        elevated[j] = running - float(j) * cf
        running = running + cf
    elevated[0] = running
    return torch.stack(elevated, dim=1)


def _elevation_matrix(dim):
    """E ((d+1) x d, Python floats): elevated = E feature, the loop of `_elevate` in exact arithmetic."""
    rows = [[0.0] * dim for _ in range(dim + 1)]
    running = [0.0] * dim
    for j, coefficient in _elevation_steps(dim, _feature_scale(dim)):
        rows[j] = list(running)
        rows[j][j - 1] -= j * coefficient
        running[j - 1] += coefficient
    rows[0] = running
    return rows


def _simplices(features):
    """Per point: remainder-0 point, ranks (P x (d+1) int64) and barycentric weights P x (d+1)."""
    num, dim = features.shape
    corners = dim + 1
    elevated = _elevate(features, _feature_scale(dim))
    down = to_float32(1.0 / corners)
    up = float(corners)
    scaled = down * elevated
    below = torch.floor(scaled)
    above = torch.ceil(scaled)
    round_up = (above * up - elevated) < (elevated - below * up)
    rounded = torch.where(round_up, above, below)
    rem0 = rounded * up
    coordinate_sum = rounded.to(torch.int64).sum(dim=1, keepdim=True)
    diff = elevated - rem0
    # rank[i] = #{j > i: d_j > d_i} + #{j < i: d_j >= d_i}: decreasing order, ties by index
    later = torch.ones(corners, corners, dtype=torch.bool, device=features.device).triu(diagonal=1)
    rank = torch.where(later, diff[:, None, :] > diff[:, :, None], diff[:, None, :] >= diff[:, :, None]).sum(dim=2)
    rank = rank + (coordinate_sum - 1)            # - 1: the j == i term counted above
    low, high = rank < 0, rank > dim
    wrap = low.to(torch.int64) - high.to(torch.int64)             # +1: rank += d+1, rem0 += d+1
    rank = rank + wrap * corners
    rem0 = rem0 + wrap * up
    value = (elevated - rem0) * down
    by_rank = torch.empty_like(value).scatter_(1, rank, value)   # by_rank[r] = v of the point ranked r
    # barycentric[s] = by_rank[d-s] - by_rank[d-s+1] for s = 1..d, barycentric[0] = by_rank[d] + 1 + by_rank[0]
    flipped = by_rank.flip(1)
    bary = torch.cat([flipped[:, :1] + (1.0 - by_rank[:, :1]), flipped[:, 1:] - flipped[:, :-1]], dim=1)
    return rem0.to(torch.int64), rank, bary


def _key_bounds(low, high, dim):
    """Host bounds (lo, hi) of each of the d key coordinates for features within [low, high]."""
    matrix = _elevation_matrix(dim)
    margin = KEY_MARGIN_STEPS * (dim + 1) + 1
    bounds = []
    for j in range(dim):
        lo = sum(min(c * a, c * b) for c, a, b in zip(matrix[j], low, high))
        hi = sum(max(c * a, c * b) for c, a, b in zip(matrix[j], low, high))
        bounds.append((math.floor(lo) - margin, math.ceil(hi) + margin))
    return bounds


class Lattice:
    """A built lattice: filter(values) = slice(blur(splat(values))) for P x L values.

    ``bounds``: (low, high), the smallest and largest value each feature column can take (host
    floats, d each); None reads them from the features (one host synchronisation more). Features
    outside ``bounds`` or not finite give a wrong lattice: the CRF passes bounds it guarantees.
    ``num_groups``: the number of groups (host int; default: 1 + max(groups), read from the device).

    Attributes: ``vertex`` P x (d+1) int64 vertex rows (1..V), ``barycentric`` P x (d+1) float32,
    ``neighbours`` (d+1) x 2 x (V+2) int64 rows of the lower (0 when absent) and upper (V+1 when
    absent) neighbour along each axis, ``num_vertices`` V.
    """

    def __init__(self, features, groups=None, bounds=None, num_groups=None):
        if features.ndim != 2 or features.shape[1] < 1:
            raise ValueError(f"need features P x d, got shape {tuple(features.shape)}")
        features = features.to(torch.float32)
        num, dim = features.shape
        device = features.device
        self.dim = dim
        if bounds is None:
            bounds = self._data_bounds(features)
        if num_groups is None:
            num_groups = int(groups.max()) + 1 if groups is not None and groups.numel() else 1
        rem0, rank, self.barycentric = _simplices(features)
        corners = dim + 1
        r = torch.arange(corners, device=device)
        # corner r: rem0 + canonical vertex r permuted by rank (first d coordinates only)
        offset = torch.where(rank[:, None, :dim] <= dim - r[None, :, None], r[None, :, None],
                             r[None, :, None] - corners)
        keys = rem0[:, None, :dim] + offset                                  # P x (d+1) x d
        self._strides, base, group_stride = self._key_strides(_key_bounds(*bounds, dim), num_groups)
        codes = (keys * torch.tensor(self._strides, dtype=torch.int64).to(device)).sum(dim=-1) + base
        if groups is not None:
            codes = codes + groups.to(device)[:, None] * group_stride
        unique, inverse = torch.unique(codes.reshape(-1), sorted=True, return_inverse=True)   # the one sync
        self.num_vertices = int(unique.numel())
        self.vertex = inverse.reshape(num, corners) + 1
        self.neighbours = self._neighbours(unique)
        self._structure = self._blurs = None   # CSR structure and blur passes, made on first use

    @staticmethod
    def _data_bounds(features):
        """(low, high) of each feature column, read from the device (one host read); ValueError
        when a feature is not finite."""
        stats = torch.cat([features.amin(dim=0), features.amax(dim=0)]).tolist() if features.numel() else []
        if not all(math.isfinite(v) for v in stats):
            raise ValueError("need finite lattice features")
        dim = features.shape[1]
        return (stats[:dim], stats[dim:]) if stats else ([0.0] * dim, [0.0] * dim)

    def _key_strides(self, key_bounds, num_groups):
        """Mixed-radix strides of the d key coordinates, the code of the all-low key subtracted
        (``base``), and the group stride: each coordinate's range covers the keys and their
        neighbours, so distinct keys, neighbours included, get distinct codes."""
        spans = [hi - lo + 1 for lo, hi in key_bounds]
        bits = math.log2(max(num_groups, 1)) + sum(math.log2(s) for s in spans)
        if bits > KEY_BITS:
            raise ValueError(f"lattice keys need {bits:.0f} bits (> {KEY_BITS}): features too spread "
                             "(kernel widths too small for the image?)")
        strides = [1] * self.dim
        for i in range(self.dim - 2, -1, -1):
            strides[i] = strides[i + 1] * spans[i + 1]
        base = -sum(stride * lo for stride, (lo, _) in zip(strides, key_bounds))
        return strides, base, strides[0] * spans[0]

    def _step_offsets(self):
        """Code change of a step to the lower / upper neighbour along each axis: along axis a < d
        every coordinate moves by -1 and coordinate a by +d (and back); along axis d every one of
        the d coordinates by -1. Row (axis, side)."""
        total = sum(self._strides)
        offsets = []
        for axis in range(self.dim + 1):
            delta = total if axis == self.dim else total - (self.dim + 1) * self._strides[axis]
            offsets.append([-delta, delta])
        return offsets

    def _neighbours(self, unique):
        """(d+1) x 2 x (V+2) rows of each vertex's neighbours (0 / V+1 when absent; sentinel rows 0
        and V+1 point at the sentinels)."""
        count = self.num_vertices
        offsets = torch.tensor(self._step_offsets(), dtype=torch.int64).to(unique.device)
        moved = unique[None, None, :] + offsets[:, :, None]                 # (d+1) x 2 x V
        found = torch.searchsorted(unique, moved).clamp_(max=count - 1)
        hit = unique[found] == moved
        absent = torch.tensor([0, count + 1], dtype=torch.int64).to(unique.device)[None, :, None]
        rows = torch.where(hit, found + 1, absent)
        return torch.cat([absent.expand(self.dim + 1, 2, 1), rows, absent.expand(self.dim + 1, 2, 1)], dim=2)

    def splat(self, values, weight):
        """(V+2) x L sums of weight x values over each vertex's points; weight P x (d+1)."""
        out = torch.zeros(self.num_vertices + 2, values.shape[1], dtype=values.dtype, device=values.device)
        contributions = weight[:, :, None] * values[:, None, :]
        out.index_add_(0, self.vertex.reshape(-1), contributions.reshape(-1, values.shape[1]))
        return out

    def blur(self, grid):
        """[1/2 1 1/2] along each axis 0..d in turn (the sentinel rows stay 0)."""
        rows = grid.shape[0]
        for axis in range(self.dim + 1):
            both = torch.index_select(grid, 0, self.neighbours[axis].reshape(-1)).view(2, rows, -1)
            grid = grid + 0.5 * (both[0] + both[1])
        return grid

    def slice(self, grid, weight):
        """P x L: sum over a point's corners of weight x vertex value."""
        corners = torch.index_select(grid, 0, self.vertex.reshape(-1)).view(*self.vertex.shape, -1)
        return (corners * weight[:, :, None]).sum(dim=1)

    def filter(self, values, weight=None):
        """slice(blur(splat(values))) with ``weight`` (default: the barycentric weights) on both
        ends, times the slice factor 1 / (1 + 2^-d); values P x L."""
        weight = self.barycentric if weight is None else weight
        return self.slice(self.blur(self.splat(values, weight)), weight) * slice_scale(self.dim)

    def sparse_filter(self, weight, slice_weight=None):
        """`filter`'s splat and slice with ``weight`` fixed (``slice_weight`` on the slice, default
        the same), as CSR matrices ((V+2) x P and P x (V+2)): sparse-dense products (no atomics,
        ~6x faster than index_add on CPU). The sparsity structure is made once per lattice."""
        slice_weight = weight if slice_weight is None else slice_weight
        if self._structure is None:
            num, corners = self.vertex.shape
            device = self.vertex.device
            columns, order = torch.sort(self.vertex, dim=1)
            rows, by_row = torch.sort(self.vertex.reshape(-1), stable=True)   # stable: points stay in order
            self._structure = {
                "slice_rows": torch.arange(0, num * corners + 1, corners, device=device),
                "slice_columns": columns.reshape(-1), "slice_order": order,
                "splat_rows": torch.searchsorted(rows, torch.arange(self.num_vertices + 3, device=device)),
                "splat_columns": torch.div(by_row, corners, rounding_mode="floor"), "splat_order": by_row}
        s = self._structure
        num = self.vertex.shape[0]
        slicing = _csr(s["slice_rows"], s["slice_columns"], torch.gather(slice_weight, 1, s["slice_order"]).reshape(-1),
                       (num, self.num_vertices + 2))
        splatting = _csr(s["splat_rows"], s["splat_columns"], weight.reshape(-1)[s["splat_order"]],
                         (self.num_vertices + 2, num))
        return splatting, slicing

    def blur_matrices(self):
        """The d+1 blur passes as (V+2) x (V+2) CSR matrices, three entries per row in column order
        (the sentinel rows hold zeros on three distinct columns). Built once per lattice."""
        if self._blurs is not None:
            return self._blurs
        count = self.num_vertices
        device = self.vertex.device
        vertex = torch.arange(count + 2, device=device)
        columns = torch.stack([self.neighbours[:, 0], vertex.expand(self.dim + 1, -1), self.neighbours[:, 1]], dim=2)
        weights = torch.tensor(BLUR_WEIGHTS, dtype=torch.float32).to(device).expand_as(columns).clone()
        # the sentinels' own rows: zeros on columns (0, 1, V+1) and (0, V, V+1), distinct for V >= 1
        sentinels = torch.tensor([0, count + 1]).to(device)
        columns[:, sentinels] = torch.tensor([[0, 1, count + 1], [0, count, count + 1]]).to(device)
        weights[:, sentinels] = 0.0
        columns, order = torch.sort(columns, dim=2)
        weights = torch.gather(weights, 2, order)
        starts = torch.arange(0, BLUR_TAPS * (count + 2) + 1, BLUR_TAPS, device=device)
        self._blurs = [_csr(starts, columns[axis].reshape(-1), weights[axis].reshape(-1), (count + 2, count + 2))
                       for axis in range(self.dim + 1)]
        return self._blurs

    def symmetric_weights(self):
        """Barycentric weights times norm_i = 1 / sqrt((K 1)_i + 1e-20), K the lattice filter."""
        ones = torch.ones(self.vertex.shape[0], 1, dtype=torch.float32, device=self.vertex.device)
        density = SparseFilter(self, self.barycentric, slice_scale(self.dim)).apply(ones)[:, 0]
        return self.barycentric * (1.0 / torch.sqrt(density + NORM_EPSILON))[:, None]


class SparseFilter:
    """slice(blur(splat(.))) of one lattice as CSR products, with ``weight`` P x (d+1) on both ends
    and ``scale`` folded into the slice: apply(values) = scale * slice(blur(splat(values))).
    ``apply(values, add_to)`` returns add_to + that, in the same product (one kernel less)."""

    def __init__(self, lattice, weight, scale=1.0):
        self.splat, self.slice = lattice.sparse_filter(weight, weight * scale if scale != 1.0 else weight)
        self.blurs = lattice.blur_matrices()

    def apply(self, values, add_to=None):
        grid = self.splat @ values
        for blur in self.blurs:
            grid = blur @ grid
        if add_to is None:
            return self.slice @ grid
        return torch.addmm(add_to, self.slice, grid)


def _csr(row_starts, columns, values, size):
    with warnings.catch_warnings():
        for notice in _CSR_NOTICES:
            warnings.filterwarnings("ignore", message=notice)
        return torch.sparse_csr_tensor(row_starts, columns, values, size, check_invariants=False)
