"""Permutohedral lattice (Adams, Baek & Davis 2010) in torch: splat, blur, slice by scatter/gather.

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
"""
import math
import warnings

import torch

_CSR_NOTICE = "Sparse CSR tensor support is in beta"
"""torch's one-time notice on creating a CSR tensor; the products used here are long stable."""

NORM_EPSILON = 1e-20
"""Added to K 1 before the inverse square root (densecrf's NORMALIZE_SYMMETRIC)."""
KEY_BITS = 62
"""Packed vertex keys (group and d coordinates, mixed radix) must fit in this many bits."""


def slice_scale(dim):
    """densecrf's factor on the sliced result, 1 / (1 + 2^-d), as the C++ computes it (float32)."""
    return float(torch.tensor(1.0 / (1.0 + 2.0 ** -dim), dtype=torch.float32))


def _feature_scale(dim):
    """Diagonal of the elevation matrix times sqrt(2/3)(d+1), cast to float32 as the C++ does."""
    inv_std = math.sqrt(2.0 / 3.0) * (dim + 1)
    return [float(torch.tensor(inv_std / math.sqrt((i + 1.0) * (i + 2.0)), dtype=torch.float32))
            for i in range(dim)]


def _simplices(features):
    """Per point: remainder-0 point, ranks (P x (d+1) int64) and barycentric weights P x (d+2)."""
    num, dim = features.shape
    corners = dim + 1
    scale = _feature_scale(dim)
    elevated = [None] * corners
    running = torch.zeros(num, dtype=torch.float32, device=features.device)
    for j in range(dim, 0, -1):
        cf = features[:, j - 1] * scale[j - 1]
        elevated[j] = running - float(j) * cf
        running = running + cf
    elevated[0] = running
    elevated = torch.stack(elevated, dim=1)
    down = float(torch.tensor(1.0 / corners, dtype=torch.float32))
    up = float(corners)
    scaled = down * elevated
    below = torch.floor(scaled)
    above = torch.ceil(scaled)
    hi_v, lo_v = above * up, below * up
    round_up = (hi_v - elevated) < (elevated - lo_v)
    rem0 = torch.where(round_up, hi_v, lo_v)
    coordinate_sum = torch.where(round_up, above, below).to(torch.int64).sum(dim=1, keepdim=True)
    diff = elevated - rem0
    # rank[i] = #{j > i: d_j > d_i} + #{j < i: d_j >= d_i}: decreasing order, ties by index
    later = torch.triu(torch.ones(corners, corners, dtype=torch.bool, device=features.device), diagonal=1)
    greater = diff[:, None, :] > diff[:, :, None]        # [p, i, j]: d_j > d_i
    greater_equal = diff[:, None, :] >= diff[:, :, None]
    rank = (greater & later).sum(dim=2) + (greater_equal & later.T).sum(dim=2)
    rank = rank + coordinate_sum
    low, high = rank < 0, rank > dim
    rank = torch.where(low, rank + corners, torch.where(high, rank - corners, rank))
    rem0 = torch.where(low, rem0 + up, torch.where(high, rem0 - up, rem0))
    value = (elevated - rem0) * down
    by_rank = torch.empty_like(value).scatter_(1, rank, value)   # by_rank[r] = v of the point ranked r
    bary = torch.empty(num, corners + 1, dtype=torch.float32, device=features.device)
    for slot in range(1, corners):
        bary[:, slot] = by_rank[:, dim - slot] - by_rank[:, dim - slot + 1]
    bary[:, corners] = -by_rank[:, 0]
    bary[:, 0] = by_rank[:, dim] + (1.0 + bary[:, corners])
    return rem0.to(torch.int64), rank, bary[:, :corners]


class Lattice:
    """A built lattice: filter(values) = slice(blur(splat(values))) for P x L values.

    Attributes: ``vertex`` P x (d+1) int64 vertex rows (1-based; row 0 is an all-zero sentinel),
    ``barycentric`` P x (d+1) float32, ``neighbours`` (d+1) x 2 x (V+1) int64 rows of the lower and
    upper neighbour along each axis (0 when absent), ``num_vertices`` V.
    """

    def __init__(self, features, groups=None):
        if features.ndim != 2 or features.shape[1] < 1:
            raise ValueError(f"need features P x d, got shape {tuple(features.shape)}")
        features = features.to(torch.float32)
        if not bool(torch.isfinite(features).all()):
            raise ValueError("need finite lattice features")
        num, dim = features.shape
        device = features.device
        self.dim = dim
        rem0, rank, self.barycentric = _simplices(features)
        corners = dim + 1
        r = torch.arange(corners, device=device)
        # corner r: rem0 + canonical vertex r permuted by rank (first d coordinates only)
        offset = torch.where(rank[:, None, :dim] <= dim - r[None, :, None], r[None, :, None],
                             r[None, :, None] - corners)
        keys = rem0[:, None, :dim] + offset                                  # P x (d+1) x d
        group = torch.zeros(num, dtype=torch.int64, device=device) if groups is None else groups.to(device)
        group = group[:, None].expand(num, corners)
        self._strides, group_stride = self._key_strides(keys, groups)
        codes = self._encode(keys, group, group_stride)
        unique, inverse = torch.unique(codes.reshape(-1), sorted=True, return_inverse=True)
        self.num_vertices = int(unique.numel())
        self.vertex = inverse.reshape(num, corners) + 1
        # one key (and group) per vertex: every point corner mapped to it carries the same one
        vertex_keys = torch.empty(self.num_vertices, dim, dtype=torch.int64, device=device)
        vertex_keys.index_copy_(0, inverse, keys.reshape(-1, dim))
        vertex_group = torch.empty(self.num_vertices, dtype=torch.int64, device=device)
        vertex_group.index_copy_(0, inverse, group.reshape(-1))
        self.neighbours = self._neighbours(unique, vertex_keys, vertex_group, group_stride)

    def _key_strides(self, keys, groups):
        """Mixed-radix strides of the d key coordinates and of the group: each coordinate's range
        with room for the neighbour steps (+-d) on both sides, so that distinct keys, neighbours
        included, get distinct codes."""
        dim = self.dim
        self._low = keys.amin(dim=(0, 1)) - (dim + 1)
        spans = (keys.amax(dim=(0, 1)) - self._low + dim + 2).tolist()
        num_groups = int(groups.max()) + 1 if groups is not None and groups.numel() else 1
        bits = math.log2(num_groups) + sum(math.log2(s) for s in spans)
        if bits > KEY_BITS:
            raise ValueError(f"lattice keys need {bits:.0f} bits (> {KEY_BITS}): features too spread "
                             "(kernel widths too small for the image?)")
        strides = [1] * dim
        for i in range(dim - 2, -1, -1):
            strides[i] = strides[i + 1] * spans[i + 1]
        return torch.tensor(strides, dtype=torch.int64, device=keys.device), strides[0] * spans[0]

    def _encode(self, keys, group, group_stride):
        return ((keys - self._low) * self._strides).sum(dim=-1) + group * group_stride

    def _neighbours(self, unique, vertex_keys, vertex_group, group_stride):
        """(d+1) x 2 x (V+1) rows of the lower and upper neighbour along each axis (0: absent):
        a step along axis a < d is -1 on every coordinate and +d on coordinate a (and back); along
        axis d it is -1 on every one of the first d coordinates."""
        dim = self.dim
        rows = torch.zeros(dim + 1, 2, self.num_vertices + 1, dtype=torch.int64, device=unique.device)
        for axis in range(dim + 1):
            for side, step in ((0, -1), (1, 1)):
                moved = vertex_keys + step
                if axis < dim:
                    moved[:, axis] = vertex_keys[:, axis] - step * dim
                code = self._encode(moved, vertex_group, group_stride)
                found = torch.searchsorted(unique, code).clamp(max=self.num_vertices - 1)
                hit = unique[found] == code
                rows[axis, side, 1:] = torch.where(hit, found + 1, torch.zeros_like(found))
        return rows

    def splat(self, values, weight):
        """(V+1) x L sums of weight x values over each vertex's points; weight P x (d+1)."""
        out = torch.zeros(self.num_vertices + 1, values.shape[1], dtype=values.dtype, device=values.device)
        contributions = weight[:, :, None] * values[:, None, :]
        out.index_add_(0, self.vertex.reshape(-1), contributions.reshape(-1, values.shape[1]))
        return out

    def blur(self, grid):
        """[1/2 1 1/2] along each axis 0..d in turn (the sentinel row stays 0)."""
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

    def sparse_filter(self, weight):
        """`filter` with ``weight`` fixed, as (splat, slice) CSR matrices ((V+1) x P and P x (V+1)):
        splat and slice become sparse-dense products (no atomics, ~6x faster than index_add on CPU),
        for filtering many times with one lattice (the mean-field iterations)."""
        num, corners = self.vertex.shape
        device = self.vertex.device
        order = torch.argsort(self.vertex, dim=1)
        columns = torch.gather(self.vertex, 1, order)
        values = torch.gather(weight, 1, order)
        slice_rows = torch.arange(0, num * corners + 1, corners, device=device)
        slicing = _csr(slice_rows, columns.reshape(-1), values.reshape(-1), (num, self.num_vertices + 1))
        flat = self.vertex.reshape(-1)
        rows, by_row = torch.sort(flat, stable=True)       # stable: points stay in order in a row
        counts = torch.bincount(rows, minlength=self.num_vertices + 1)
        splat_rows = torch.cat([torch.zeros(1, dtype=torch.int64, device=device), torch.cumsum(counts, 0)])
        points = torch.div(by_row, corners, rounding_mode="floor")
        splatting = _csr(splat_rows, points, weight.reshape(-1)[by_row], (self.num_vertices + 1, num))
        return splatting, slicing

    def symmetric_weights(self):
        """Barycentric weights times norm_i = 1 / sqrt((K 1)_i + 1e-20), K the lattice filter."""
        ones = torch.ones(self.vertex.shape[0], 1, dtype=torch.float32, device=self.vertex.device)
        density = self.filter(ones)[:, 0]
        return self.barycentric * (1.0 / torch.sqrt(density + NORM_EPSILON))[:, None]


def _csr(row_starts, columns, values, size):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_CSR_NOTICE)
        return torch.sparse_csr_tensor(row_starts, columns, values, size, check_invariants=False)
