// The mean-field iterations: splat, blur, slice and softmax, fused so that every
// iteration reads Q and the unary once and writes Q once.  This header is compiled
// twice (iteration_base.cpp, iteration_avx2.cpp) inside namespace CRF_ISA; the caller
// picks the variant the CPU supports at run time.
//
// Per iteration, with Potts compatibility and symmetric normalisation (densecrf v2):
//     Q <- softmax(unary + sum_k w_k * norm_k .* K_k(norm_k .* Q)),
// where the norms are folded into the lattices' splat/slice weights and w_k (times the
// lattice's slice factor) into the values splatted.
#ifndef CRF_ISA
#error "define CRF_ISA before including iteration.hpp"
#endif

#include "iteration_api.hpp"

namespace crf {
namespace CRF_ISA {
// Everything here has internal linkage and uses no standard-library templates, so the
// two compilations cannot be mixed up by the linker.
namespace {

// Eight floats as one value: a vector-extension type with GCC/Clang (one AVX register,
// or two SSE registers on the baseline), a plain array elsewhere.
#if defined(__GNUC__)
typedef float Vec8 __attribute__((vector_size(32)));
inline Vec8 splat8(float x) { return Vec8{x, x, x, x, x, x, x, x}; }
#else
struct Vec8 {
    float f[8];
};
inline Vec8 splat8(float x) { return Vec8{{x, x, x, x, x, x, x, x}}; }
inline Vec8 operator+(Vec8 a, Vec8 b) {
    for (int i = 0; i < 8; ++i) a.f[i] += b.f[i];
    return a;
}
inline Vec8 operator*(Vec8 a, Vec8 b) {
    for (int i = 0; i < 8; ++i) a.f[i] *= b.f[i];
    return a;
}
inline Vec8 max8(Vec8 a, Vec8 b) {
    for (int i = 0; i < 8; ++i) a.f[i] = a.f[i] < b.f[i] ? b.f[i] : a.f[i];
    return a;
}
#endif
#if defined(__GNUC__)
inline Vec8 max8(Vec8 a, Vec8 b) { return a < b ? b : a; }
typedef int32_t Vec8i __attribute__((vector_size(32)));
// Lanes of a where mask is all ones, of b where it is zero.
inline Vec8 select8(Vec8i mask, Vec8 a, Vec8 b) {
    return reinterpret_cast<Vec8>((mask & reinterpret_cast<Vec8i>(a)) | (~mask & reinterpret_cast<Vec8i>(b)));
}
#else
struct Vec8i {
    int32_t i[8];
};
inline Vec8 select8(Vec8i mask, Vec8 a, Vec8 b) {
    for (int u = 0; u < 8; ++u) a.f[u] = mask.i[u] ? a.f[u] : b.f[u];
    return a;
}
#endif
inline Vec8 load8(const float* p) {
    Vec8 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
inline void store8(float* p, Vec8 v) { std::memcpy(p, &v, sizeof v); }
inline float max_of(float a, float b) { return a < b ? b : a; }
inline void zero(float* begin, float* end) {
    for (; begin != end; ++begin) *begin = 0.0f;
}

// e[u] = exp(s[u] - top) for s <= top, vectorisable: x = n ln2 + r with |r| <= ln2/2,
// e^r by its degree-6 Taylor polynomial (relative error < 2e-7), 2^n built in the
// exponent bits.  Inputs below kExpFloor (including -inf) give e^kExpFloor ~ 1e-38,
// which is zero next to the row maximum's 1.
constexpr float kExpFloor = -87.0f;

template <int W>
void exp_shifted(float* __restrict e, const float* __restrict s, float top) {
    constexpr float kLog2e = 1.44269504f, kLn2Hi = 0.693145752f, kLn2Lo = 1.42860677e-6f;
    constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
    int32_t bits[W];
    for (int u = 0; u < W; ++u) {
        const float x = max_of(s[u] - top, kExpFloor);
        const float n = (x * kLog2e + kRoundMagic) - kRoundMagic;
        const float r = (x - n * kLn2Hi) - n * kLn2Lo;
        float p = 1.0f / 720;
        p = p * r + 1.0f / 120;
        p = p * r + 1.0f / 24;
        p = p * r + 1.0f / 6;
        p = p * r + 0.5f;
        p = p * r + 1.0f;
        p = p * r + 1.0f;
        e[u] = p;
        bits[u] = (static_cast<int32_t>(n) + 127) << 23;
    }
    float scale[W];
    std::memcpy(scale, bits, sizeof scale);
    for (int u = 0; u < W; ++u) e[u] *= scale[u];
}

// exp on eight lanes at once, the same formula as exp_shifted, kept in registers.
inline Vec8 exp8(Vec8 x) {
    const Vec8 n = (max8(x, splat8(kExpFloor)) * splat8(1.44269504f) + splat8(12582912.0f)) - splat8(12582912.0f);
    x = max8(x, splat8(kExpFloor));
    const Vec8 r = (x - n * splat8(0.693145752f)) - n * splat8(1.42860677e-6f);
    Vec8 p = splat8(1.0f / 720);
    p = p * r + splat8(1.0f / 120);
    p = p * r + splat8(1.0f / 24);
    p = p * r + splat8(1.0f / 6);
    p = p * r + splat8(0.5f);
    p = p * r + splat8(1.0f);
    p = p * r + splat8(1.0f);
    float lanes[kChunk], scale[kChunk];
    store8(lanes, n);
    int32_t bits[kChunk];
    for (int u = 0; u < kChunk; ++u) bits[u] = (static_cast<int32_t>(lanes[u]) + 127) << 23;
    std::memcpy(scale, bits, sizeof scale);
    return p * load8(scale);
}

// Per-row constants of the softmax: `is_label` all ones on labels and 0 on padding,
// `pad` -inf, `keep` 1 on labels and 0 on padding.  Padding lanes may hold anything on
// input (rows read straight from an unpadded unary carry the next row's first scores).
template <int NC>
struct LabelMask {
    Vec8i is_label[NC];
    Vec8 pad, keep[NC];
    int partial;  // the first chunk with padding lanes (NC: none)
    explicit LabelMask(int labels)
        : pad(splat8(-std::numeric_limits<float>::infinity())), partial(labels / kChunk) {
        int32_t m[NC * kChunk];
        float k[NC * kChunk];
        for (int u = 0; u < NC * kChunk; ++u) {
            m[u] = u < labels ? -1 : 0;
            k[u] = u < labels ? 1.0f : 0.0f;
        }
        for (int j = 0; j < NC; ++j) {
            std::memcpy(&is_label[j], m + j * kChunk, sizeof is_label[j]);
            keep[j] = load8(k + j * kChunk);
        }
    }
};

#if defined(__GNUC__) && !defined(__clang__)
// Halving reductions in registers (the lanes combine in a fixed order).
inline Vec8 swap_lanes(Vec8 v, int distance) {
    const Vec8i order = {distance ^ 0, distance ^ 1, distance ^ 2, distance ^ 3,
                         distance ^ 4, distance ^ 5, distance ^ 6, distance ^ 7};
    return __builtin_shuffle(v, order);
}
inline float horizontal_max(Vec8 v) {
    v = max8(v, swap_lanes(v, 4));
    v = max8(v, swap_lanes(v, 2));
    return max_of(v[0], v[1]);
}
inline float horizontal_sum(Vec8 v) {
    v = v + swap_lanes(v, 4);
    v = v + swap_lanes(v, 2);
    return v[0] + v[1];
}
#else
inline float horizontal_max(Vec8 v) {
    float f[kChunk];
    store8(f, v);
    float m = f[0];
    for (int u = 1; u < kChunk; ++u) m = max_of(m, f[u]);
    return m;
}

inline float horizontal_sum(Vec8 v) {
    float f[kChunk];
    store8(f, v);
    return ((f[0] + f[4]) + (f[2] + f[6])) + ((f[1] + f[5]) + (f[3] + f[7]));
}
#endif

// q = softmax over the labels of the scores in x (NC vectors, padding -> 0).  A row that
// is -inf everywhere becomes uniform.
template <int NC>
void softmax_row(Vec8* q, const Vec8* x, const LabelMask<NC>& mask, int labels) {
    // Chunks before mask.partial hold labels only (a predictable branch per chunk).
    Vec8 v[NC];
    for (int j = 0; j < NC; ++j) v[j] = j < mask.partial ? x[j] : select8(mask.is_label[j], x[j], mask.pad);
    Vec8 top8 = v[0];
    for (int j = 1; j < NC; ++j) top8 = max8(top8, v[j]);
    const float top = horizontal_max(top8);
    if (top == -std::numeric_limits<float>::infinity()) {
        float s[NC * kChunk];
        for (int u = 0; u < NC * kChunk; ++u) s[u] = u < labels ? 1.0f / labels : 0.0f;
        for (int j = 0; j < NC; ++j) q[j] = load8(s + j * kChunk);
        return;
    }
    Vec8 e[NC];
    Vec8 total8 = splat8(0.0f);
    for (int j = 0; j < NC; ++j) {
        e[j] = exp8(v[j] - splat8(top));
        if (j >= mask.partial) e[j] = e[j] * mask.keep[j];
        total8 = total8 + e[j];
    }
    const Vec8 inv = splat8(1.0f / horizontal_sum(total8));
    for (int j = 0; j < NC; ++j) q[j] = e[j] * inv;
}

// Zeroes a kernel's splat target, including the sentinel row 0, before every splat,
// because label groups of different widths share the buffers.
template <int NC>
void clear_rows(float* values, const LatticeView& k) {
    zero(values, values + (static_cast<size_t>(k.n_vertices) + 1) * NC * kChunk);
}

// CORNERS is d+1 when known at compile time (3 and 6 for SEC's two kernels), else 0.
// Adds weight * q to the point's simplex corners; q already carries the kernel's scale.
template <int NC, int CORNERS>
inline void splat_corners(const LatticeView& k, float* values, int i, const Vec8* q) {
    const int corners = CORNERS > 0 ? CORNERS : k.dim + 1;
    for (int c = 0; c < corners; ++c) {
        const size_t idx = static_cast<size_t>(i) * corners + c;
        const Vec8 w = splat8(k.weight[idx]);
        float* dst = values + static_cast<size_t>(k.vertex[idx]) * (NC * kChunk);
        for (int j = 0; j < NC; ++j) store8(dst + j * kChunk, load8(dst + j * kChunk) + w * q[j]);
    }
}

template <int NC>
inline void splat_point(const LatticeView& k, float* values, int i, const Vec8* q) {
    Vec8 scaled[NC];
    for (int j = 0; j < NC; ++j) scaled[j] = q[j] * splat8(k.scale);
    switch (k.dim) {
        case 2: return splat_corners<NC, 3>(k, values, i, scaled);
        case 5: return splat_corners<NC, 6>(k, values, i, scaled);
        default: return splat_corners<NC, 0>(k, values, i, scaled);
    }
}

// Splats points start .. start+count-1, whose Q rows are in `rows`.  With d = 2 (the
// Gaussian kernel on the pixel grid) consecutive pixels mostly share their simplex
// corners, in the same corner slot (three times in four on a 500x375 image), so each
// slot's contributions are summed in registers while its vertex repeats and added to the
// row once: this saves read-modify-writes of one row, whose store-to-load latency would
// otherwise chain from pixel to pixel.  (With d = 5 the runs are short and the 18 sums
// would not fit in registers.)
template <int NC>
void splat_block(const LatticeView& k, float* values, int start, int count, const Vec8 (*rows)[NC]) {
    constexpr int kCorners = 3;
    if (k.dim != kCorners - 1) {
        for (int b = 0; b < count; ++b) splat_point<NC>(k, values, start + b, rows[b]);
        return;
    }
    constexpr int W = NC * kChunk;
    const Vec8 scale = splat8(k.scale);
    Vec8 sum[kCorners][NC] = {};
    int32_t held[kCorners] = {-1, -1, -1};  // the vertex each slot sums for, -1: none yet
    auto add_held = [&](int c) {
        float* dst = values + static_cast<size_t>(held[c]) * W;
        for (int j = 0; j < NC; ++j) store8(dst + j * kChunk, load8(dst + j * kChunk) + sum[c][j]);
    };
    for (int b = 0; b < count; ++b) {
        const size_t at = static_cast<size_t>(start + b) * kCorners;
        Vec8 q[NC];
        for (int j = 0; j < NC; ++j) q[j] = rows[b][j] * scale;
        for (int c = 0; c < kCorners; ++c) {
            const int32_t v = k.vertex[at + c];
            const Vec8 w = splat8(k.weight[at + c]);
            if (v == held[c]) {
                for (int j = 0; j < NC; ++j) sum[c][j] = sum[c][j] + w * q[j];
                continue;
            }
            if (held[c] >= 0) add_held(c);
            held[c] = v;
            for (int j = 0; j < NC; ++j) sum[c][j] = w * q[j];
        }
    }
    for (int c = 0; c < kCorners; ++c)
        if (held[c] >= 0) add_held(c);
}

template <int NC, int CORNERS>
inline void slice_corners(const LatticeView& k, const float* blurred, int i, Vec8* acc) {
    const int corners = CORNERS > 0 ? CORNERS : k.dim + 1;
    for (int c = 0; c < corners; ++c) {
        const size_t idx = static_cast<size_t>(i) * corners + c;
        const Vec8 w = splat8(k.weight[idx]);
        const float* src = blurred + static_cast<size_t>(k.vertex[idx]) * (NC * kChunk);
        for (int j = 0; j < NC; ++j) acc[j] = acc[j] + w * load8(src + j * kChunk);
    }
}

template <int NC>
inline void slice_point(const LatticeView& k, const float* blurred, int i, Vec8* acc) {
    switch (k.dim) {
        case 2: return slice_corners<NC, 3>(k, blurred, i, acc);
        case 5: return slice_corners<NC, 6>(k, blurred, i, acc);
        default: return slice_corners<NC, 0>(k, blurred, i, acc);
    }
}

// [1/2 1 1/2] along each of the d+1 lattice axes, in place, chain by chain: a vertex's
// new value is old + (old of previous + old of next) / 2, the previous vertex's old value
// carried in registers (times 0 at a chain start) and the next one not yet updated.
template <int NC>
void blur(const LatticeView& k, float* values) {
    constexpr int W = NC * kChunk;
    for (int axis = 0; axis <= k.dim; ++axis) {
        const ChainLink* chain = k.chains + k.chain_offsets[axis];
        const size_t length = k.chain_offsets[axis + 1] - k.chain_offsets[axis];
        Vec8 previous[NC];
        for (int j = 0; j < NC; ++j) previous[j] = splat8(0.0f);
        for (size_t e = 0; e < length; ++e) {
            float* self = values + static_cast<size_t>(chain[e].vertex) * W;
            const float* next = values + static_cast<size_t>(chain[e].next) * W;
            const Vec8 linked = splat8(chain[e].linked);
            for (int j = 0; j < NC; ++j) {
                const int o = j * kChunk;
                const Vec8 old = load8(self + o);
                store8(self + o, old + splat8(0.5f) * (previous[j] * linked + load8(next + o)));
                previous[j] = old;
            }
        }
    }
}

// Scores and Q rows are `in.stride` floats apart, which may be fewer than the NC*kChunk
// floats a row of vectors covers (the unary and the output are used unpadded).  Rows
// before the returned index can be read and written as whole vectors: reading spills
// into the next row (harmless, padding lanes are masked), and writing rows in order lets
// each row overwrite what the previous one spilled.  Later rows go through a copy.
template <int NC>
int rows_with_room(const IterationInput& in) {
    const size_t total = static_cast<size_t>(in.n_points) * in.stride;
    const size_t spill = NC * kChunk;
    return total < spill ? 0 : static_cast<int>((total - spill) / in.stride) + 1;
}

template <int NC>
inline void load_row(Vec8* row, const IterationInput& in, int i, int whole_rows) {
    const float* src = in.scores + static_cast<size_t>(i) * in.stride;
    if (i < whole_rows) {
        for (int j = 0; j < NC; ++j) row[j] = load8(src + j * kChunk);
        return;
    }
    float padded[NC * kChunk] = {};
    for (int l = 0; l < in.labels; ++l) padded[l] = src[l];
    for (int j = 0; j < NC; ++j) row[j] = load8(padded + j * kChunk);
}

template <int NC>
inline void store_row(const IterationInput& in, int i, const Vec8* row, int whole_rows) {
    float* dst = in.q + static_cast<size_t>(i) * in.stride;
    if (i < whole_rows) {
        for (int j = 0; j < NC; ++j) store8(dst + j * kChunk, row[j]);
        return;
    }
    float padded[NC * kChunk];
    for (int j = 0; j < NC; ++j) store8(padded + j * kChunk, row[j]);
    for (int l = 0; l < in.labels; ++l) dst[l] = padded[l];
}

// Points are processed in blocks: slice a block, take its softmaxes, splat it.  The rows
// of a block are independent, so the out-of-order core overlaps their long softmax
// dependency chains, which it cannot do across one whole point's slice+softmax+splat.
constexpr int kBlock = 16;
// Points between two looks for an interrupt inside an iteration (a multiple of kBlock):
// one iteration of a large image, or of one whose colours fill the lattice, takes seconds.
constexpr int kStopCheckPoints = 1 << 14;

// One pass over the points per iteration: Q = softmax(scores + sliced messages of the
// previous splat), splatted at once into the other buffer of each kernel for the next
// iteration, so Q is neither stored nor re-read between iterations; only the last
// iteration (or the initial softmax when maxiter is 0) writes Q out.
template <int NC>
void run_fixed(const IterationInput& in) {
    const LabelMask<NC> mask(in.labels);
    const int whole_rows = rows_with_room<NC>(in);
    float* current[kMaxKernels];
    float* next[kMaxKernels];
    for (int k = 0; k < in.n_kernels; ++k) {
        current[k] = in.kernels[k].values[0];
        next[k] = in.kernels[k].values[1];
    }
    for (int it = 0; it <= in.maxiter; ++it) {
        if (in.stop()) return;
        const bool first = it == 0, last = it == in.maxiter;
        if (!first)
            for (int k = 0; k < in.n_kernels; ++k) blur<NC>(in.kernels[k], current[k]);
        if (!last)
            for (int k = 0; k < in.n_kernels; ++k) clear_rows<NC>(next[k], in.kernels[k]);
        for (int start = 0; start < in.n_points; start += kBlock) {
            if (start % kStopCheckPoints == 0 && start > 0 && in.stop()) return;
            const int count = in.n_points - start < kBlock ? in.n_points - start : kBlock;
            Vec8 rows[kBlock][NC];
            for (int b = 0; b < count; ++b) {
                const int i = start + b;
                load_row<NC>(rows[b], in, i, whole_rows);
                if (!first)
                    for (int k = 0; k < in.n_kernels; ++k) slice_point<NC>(in.kernels[k], current[k], i, rows[b]);
            }
            for (int b = 0; b < count; ++b) softmax_row<NC>(rows[b], rows[b], mask, in.labels);
            if (last) {
                for (int b = 0; b < count; ++b) store_row<NC>(in, start + b, rows[b], whole_rows);
            } else {
                for (int k = 0; k < in.n_kernels; ++k) splat_block<NC>(in.kernels[k], next[k], start, count, rows);
            }
        }
        for (int k = 0; k < in.n_kernels; ++k) {
            float* t = current[k];
            current[k] = next[k];
            next[k] = t;
        }
    }
}

// More than kMaxChunks chunks: filter the labels in groups of up to kMaxChunks chunks,
// accumulating the energies in in.energy, then take the softmax of whole rows.
template <int NC>
void filter_group(const IterationInput& in, int offset) {
    const int row = in.n_chunks * kChunk;
    for (int k = 0; k < in.n_kernels; ++k) {
        const LatticeView& view = in.kernels[k];
        float* blurred = view.values[0];
        clear_rows<NC>(blurred, view);
        for (int i = 0; i < in.n_points; ++i) {
            Vec8 q[NC];
            for (int j = 0; j < NC; ++j) q[j] = load8(in.q + static_cast<size_t>(i) * row + offset + j * kChunk);
            splat_point<NC>(view, blurred, i, q);
        }
        blur<NC>(view, blurred);
        for (int i = 0; i < in.n_points; ++i) {
            float* energy = in.energy + static_cast<size_t>(i) * row + offset;
            Vec8 acc[NC];
            for (int j = 0; j < NC; ++j) acc[j] = load8(energy + j * kChunk);
            slice_point<NC>(view, blurred, i, acc);
            for (int j = 0; j < NC; ++j) store8(energy + j * kChunk, acc[j]);
        }
    }
}

void softmax_wide_row(float* q, const float* s, int labels, int n_chunks) {
    float top = -std::numeric_limits<float>::infinity();
    for (int l = 0; l < labels; ++l) top = max_of(top, s[l]);
    const bool impossible = top == -std::numeric_limits<float>::infinity();
    for (int j = 0; j < n_chunks; ++j) exp_shifted<kChunk>(q + j * kChunk, s + j * kChunk, top);
    float total = 0.0f;
    for (int l = 0; l < labels; ++l) total += impossible ? 1.0f : q[l];
    const float inv = 1.0f / total;
    for (int u = 0; u < n_chunks * kChunk; ++u) q[u] = u < labels ? (impossible ? 1.0f : q[u]) * inv : 0.0f;
}

void run_grouped(const IterationInput& in) {
    const int row = in.n_chunks * kChunk;
    for (int i = 0; i < in.n_points; ++i)
        softmax_wide_row(in.q + static_cast<size_t>(i) * row, in.scores + static_cast<size_t>(i) * row, in.labels,
                         in.n_chunks);
    for (int it = 0; it < in.maxiter; ++it) {
        if (in.stop()) return;
        for (size_t f = 0; f < static_cast<size_t>(in.n_points) * row; ++f) in.energy[f] = in.scores[f];
        for (int first = 0; first < in.n_chunks; first += kMaxChunks) {
            if (in.stop()) return;
            const int offset = first * kChunk;
            switch (in.n_chunks - first < kMaxChunks ? in.n_chunks - first : kMaxChunks) {
#define CRF_CASE(nc) \
    case nc: filter_group<nc>(in, offset); break;
                CRF_CASE(1) CRF_CASE(2) CRF_CASE(3) CRF_CASE(4) CRF_CASE(5) CRF_CASE(6) CRF_CASE(7) CRF_CASE(8)
#undef CRF_CASE
            }
        }
        for (int i = 0; i < in.n_points; ++i)
            softmax_wide_row(in.q + static_cast<size_t>(i) * row, in.energy + static_cast<size_t>(i) * row,
                             in.labels, in.n_chunks);
    }
}

}  // namespace

void run_mean_field(const IterationInput& in) {
    switch (in.n_chunks) {
#define CRF_CASE(nc) \
    case nc: return run_fixed<nc>(in);
        CRF_CASE(1) CRF_CASE(2) CRF_CASE(3) CRF_CASE(4) CRF_CASE(5) CRF_CASE(6) CRF_CASE(7) CRF_CASE(8)
#undef CRF_CASE
        default: return run_grouped(in);
    }
}

}  // namespace CRF_ISA
}  // namespace crf
