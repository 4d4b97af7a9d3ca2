// The mean-field iterations: splat, blur, slice and softmax, fused so that every
// iteration reads Q and the unary once and writes Q once.  This header is compiled
// twice (iteration_base.cpp, iteration_avx2.cpp) inside namespace CRF_ISA; the caller
// picks the variant the CPU supports at run time.
//
// Per iteration, with Potts compatibility and symmetric normalisation (densecrf v2):
//     Q <- softmax(unary + sum_k w_k * norm_k .* K_k(norm_k .* Q)),
// where the norms and weights are folded into the lattices' splat and slice weights.
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

// Per-row constants of the softmax: `pad` is 0 on labels and -inf on padding, `keep` 1
// on labels and 0 on padding.
template <int NC>
struct LabelMask {
    Vec8 pad[NC], keep[NC];
    explicit LabelMask(int labels) {
        float p[NC * kChunk], k[NC * kChunk];
        for (int u = 0; u < NC * kChunk; ++u) {
            p[u] = u < labels ? 0.0f : -std::numeric_limits<float>::infinity();
            k[u] = u < labels ? 1.0f : 0.0f;
        }
        for (int j = 0; j < NC; ++j) {
            pad[j] = load8(p + j * kChunk);
            keep[j] = load8(k + j * kChunk);
        }
    }
};

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
    return ((f[0] + f[1]) + (f[2] + f[3])) + ((f[4] + f[5]) + (f[6] + f[7]));
}

// q = softmax over the labels of the scores in x (NC vectors, padding -> 0).  A row that
// is -inf everywhere becomes uniform.
template <int NC>
void softmax_row(float* q, const Vec8* x, const LabelMask<NC>& mask, int labels) {
    constexpr int W = NC * kChunk;
    float s[W];
    Vec8 top8 = x[0] + mask.pad[0];
    store8(s, top8);
    for (int j = 1; j < NC; ++j) {
        const Vec8 v = x[j] + mask.pad[j];
        store8(s + j * kChunk, v);
        top8 = max8(top8, v);
    }
    const float top = horizontal_max(top8);
    if (top == -std::numeric_limits<float>::infinity()) {
        for (int u = 0; u < W; ++u) q[u] = u < labels ? 1.0f / labels : 0.0f;
        return;
    }
    Vec8 e[NC];
    Vec8 total8 = splat8(0.0f);
    for (int j = 0; j < NC; ++j) {
        e[j] = exp8(load8(s + j * kChunk) - splat8(top)) * mask.keep[j];
        total8 = total8 + e[j];
    }
    const Vec8 inv = splat8(1.0f / horizontal_sum(total8));
    for (int j = 0; j < NC; ++j) store8(q + j * kChunk, e[j] * inv);
}

// Rows of NC chunks.  NC is a compile-time constant so a row lives in registers.
// Zeroes the splat target including the sentinel row 0, every time, because label groups
// of different widths share the buffer.
template <int NC>
void clear_rows(const LatticeView& k) {
    zero(k.values, k.values + (static_cast<size_t>(k.n_vertices) + 1) * NC * kChunk);
}

// CORNERS is d+1 when known at compile time (3 and 6 for SEC's two kernels), else 0.
template <int NC, int CORNERS>
inline void splat_corners(const LatticeView& k, int i, const Vec8* q) {
    const int corners = CORNERS > 0 ? CORNERS : k.dim + 1;
    for (int c = 0; c < corners; ++c) {
        const size_t idx = static_cast<size_t>(i) * corners + c;
        const Vec8 w = splat8(k.splat_weight[idx]);
        float* dst = k.values + static_cast<size_t>(k.vertex[idx]) * (NC * kChunk);
        for (int j = 0; j < NC; ++j) store8(dst + j * kChunk, load8(dst + j * kChunk) + w * q[j]);
    }
}

template <int NC>
inline void splat_point(const LatticeView& k, int i, const Vec8* q) {
    switch (k.dim) {
        case 2: return splat_corners<NC, 3>(k, i, q);
        case 5: return splat_corners<NC, 6>(k, i, q);
        default: return splat_corners<NC, 0>(k, i, q);
    }
}

template <int NC, int CORNERS>
inline void slice_corners(const LatticeView& k, const float* blurred, int i, Vec8* acc) {
    const int corners = CORNERS > 0 ? CORNERS : k.dim + 1;
    for (int c = 0; c < corners; ++c) {
        const size_t idx = static_cast<size_t>(i) * corners + c;
        const Vec8 w = splat8(k.slice_weight[idx]);
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
// carried in registers and the next one not yet updated.  Returns the values.
template <int NC>
const float* blur(const LatticeView& k) {
    constexpr int W = NC * kChunk;
    float* values = k.values;
    for (int axis = 0; axis <= k.dim; ++axis) {
        const int32_t* chain = k.chains + k.chain_offsets[axis];
        const size_t length = k.chain_offsets[axis + 1] - k.chain_offsets[axis] - 1;
        Vec8 previous[NC];
        for (int j = 0; j < NC; ++j) previous[j] = splat8(0.0f);
        for (size_t e = 0; e < length; ++e) {
            const int32_t v = chain[e];
            if (v == 0) {
                for (int j = 0; j < NC; ++j) previous[j] = splat8(0.0f);
                continue;
            }
            float* self = values + static_cast<size_t>(v) * W;
            const float* next = values + static_cast<size_t>(chain[e + 1]) * W;
            for (int j = 0; j < NC; ++j) {
                const int o = j * kChunk;
                const Vec8 old = load8(self + o);
                store8(self + o, old + splat8(0.5f) * (previous[j] + load8(next + o)));
                previous[j] = old;
            }
        }
    }
    return values;
}

template <int NC>
void iterate(const IterationInput& in) {
    constexpr int W = NC * kChunk;
    const LabelMask<NC> mask(in.labels);
    const float* blurred[kMaxKernels];
    for (int it = 0; it < in.maxiter; ++it) {
        for (int k = 0; k < in.n_kernels; ++k) clear_rows<NC>(in.kernels[k]);
        for (int i = 0; i < in.n_points; ++i) {
            Vec8 q[NC];
            for (int j = 0; j < NC; ++j) q[j] = load8(in.q + static_cast<size_t>(i) * W + j * kChunk);
            for (int k = 0; k < in.n_kernels; ++k) splat_point<NC>(in.kernels[k], i, q);
        }
        for (int k = 0; k < in.n_kernels; ++k) blurred[k] = blur<NC>(in.kernels[k]);
        for (int i = 0; i < in.n_points; ++i) {
            Vec8 acc[NC];
            for (int j = 0; j < NC; ++j) acc[j] = load8(in.scores + static_cast<size_t>(i) * W + j * kChunk);
            for (int k = 0; k < in.n_kernels; ++k) slice_point<NC>(in.kernels[k], blurred[k], i, acc);
            softmax_row<NC>(in.q + static_cast<size_t>(i) * W, acc, mask, in.labels);
        }
    }
}

template <int NC>
void initial_softmax(const IterationInput& in) {
    constexpr int W = NC * kChunk;
    const LabelMask<NC> mask(in.labels);
    for (int i = 0; i < in.n_points; ++i) {
        Vec8 x[NC];
        for (int j = 0; j < NC; ++j) x[j] = load8(in.scores + static_cast<size_t>(i) * W + j * kChunk);
        softmax_row<NC>(in.q + static_cast<size_t>(i) * W, x, mask, in.labels);
    }
}

template <int NC>
void run_fixed(const IterationInput& in) {
    initial_softmax<NC>(in);
    iterate<NC>(in);
}

// More than kMaxChunks chunks: filter the labels in groups of up to kMaxChunks chunks,
// accumulating the energies in in.energy, then take the softmax of whole rows.
template <int NC>
void filter_group(const IterationInput& in, int offset) {
    const int row = in.n_chunks * kChunk;
    for (int k = 0; k < in.n_kernels; ++k) {
        const LatticeView& view = in.kernels[k];
        clear_rows<NC>(view);
        for (int i = 0; i < in.n_points; ++i) {
            Vec8 q[NC];
            for (int j = 0; j < NC; ++j) q[j] = load8(in.q + static_cast<size_t>(i) * row + offset + j * kChunk);
            splat_point<NC>(view, i, q);
        }
        const float* blurred = blur<NC>(view);
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
        for (size_t f = 0; f < static_cast<size_t>(in.n_points) * row; ++f) in.energy[f] = in.scores[f];
        for (int first = 0; first < in.n_chunks; first += kMaxChunks) {
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
