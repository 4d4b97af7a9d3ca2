// Permutohedral lattice, written from Adams, Baek & Davis, "Fast High-Dimensional
// Filtering Using the Permutohedral Lattice" (Eurographics 2010), with the feature
// scaling that Kraehenbuehl's densecrf uses so that results match it.
#include "lattice.hpp"

#include <algorithm>
#include <memory>
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>

namespace crf {

// Scaled features must stay where float arithmetic still resolves single lattice
// steps and the int32 keys cannot overflow.
constexpr float kMaxCoordinate = 1 << 20;
// Added to K*1 before the inverse square root, as densecrf does.
constexpr float kNormEpsilon = 1e-20f;
constexpr int kMaxDim = 16;
// First capacity estimate, in vertices: later builds start from the last vertex count.
constexpr size_t kInitialVertices = 4096;
// densecrf scales the sliced result by 1/(1 + 2^-d).
float slice_scale(int dim) { return 1.0f / (1.0f + std::pow(2.0f, -static_cast<float>(dim))); }

// Open-addressing hash map (linear probing, load <= 1/2) from a lattice key (the first
// `dim` integer coordinates of a vertex; the last one is minus their sum) to a 0-based
// vertex index.  When every coordinate fits in 64/dim bits, keys are packed into one
// 64-bit word stored in the slot itself, so a lookup is one multiply and usually one
// cache line; otherwise the slot points at the full key.
// The table is kept by its Lattice and reset per build, so that its storage is reused.
class VertexTable {
  public:
    // Empties the table for keys of `dim` coordinates. bound: no coordinate of any key
    // looked up exceeds it in magnitude; expected: about how many vertices will come.
    void reset(int dim, size_t expected, int64_t bound) {
        dim_ = dim;
        bits_ = 64 / dim;
        packed_ = bits_ < 64 && bound < (int64_t(1) << (bits_ - 1));
        size_ = 0;
        size_t capacity = 16;
        while (capacity < 2 * expected) capacity *= 2;
        resize_slots(capacity);
        keys_.clear();
        keys_.reserve(expected * dim);
    }

    int size() const { return size_; }
    const int32_t* key(int index) const { return &keys_[static_cast<size_t>(index) * dim_]; }

    // code: encode(key)
    int find_or_insert(const int32_t* key, uint64_t code) {
        if (2 * (static_cast<size_t>(size_) + 1) > slots_.size()) grow();
        Slot& slot = slots_[locate(key, code)];
        if (slot.index < 0) {
            slot.index = size_++;
            slot.code = code;
            keys_.insert(keys_.end(), key, key + dim_);
        }
        return slot.index;
    }

    // Index of `key`, or -1.
    template <int D>
    int find_as(const int32_t* key) const {
        return slots_[locate(key, encode_as<D>(key))].index;
    }

    bool same_key(int index, const int32_t* key) const {
        if (packed_) return true;  // equal codes are equal keys
        const int32_t* stored = this->key(index);
        for (int i = 0; i < dim_; ++i)
            if (stored[i] != key[i]) return false;
        return true;
    }

    // encode() with the dimension fixed at compile time when D > 0.
    template <int D>
    uint64_t encode_as(const int32_t* key) const {
        if (D == 0 || !packed_) return encode(key);
        constexpr int bits = D > 0 ? 64 / D : 64;
        constexpr uint64_t field = bits < 64 ? (uint64_t(1) << bits) - 1 : ~uint64_t(0);
        uint64_t code = 0;
        for (int i = 0; i < D; ++i) code |= (static_cast<uint64_t>(key[i]) & field) << ((bits * i) & 63);
        return code;
    }

    // The packed key, or a hash of it when keys do not pack.
    uint64_t encode(const int32_t* key) const {
        uint64_t code = 0;
        if (packed_) {
            const uint64_t field = (uint64_t(1) << bits_) - 1;
            for (int i = 0; i < dim_; ++i) code |= (static_cast<uint64_t>(key[i]) & field) << (bits_ * i);
            return code;
        }
        code = 0x9e3779b97f4a7c15ull;
        for (int i = 0; i < dim_; ++i) {
            code ^= static_cast<uint32_t>(key[i]);
            code *= 0xff51afd7ed558ccdull;
            code ^= code >> 29;
        }
        return code;
    }

  private:
    struct Slot {
        uint64_t code;  // encode(key)
        int32_t index;  // -1: empty
    };

    size_t home(uint64_t code) const { return static_cast<size_t>((code * 0x9e3779b97f4a7c15ull) >> shift_); }

    // Slot holding `key`, or the empty slot where it would go.
    size_t locate(const int32_t* key, uint64_t code) const {
        const size_t mask = slots_.size() - 1;
        for (size_t slot = home(code);; slot = (slot + 1) & mask) {
            const Slot& s = slots_[slot];
            if (s.index < 0) return slot;
            if (s.code != code) continue;
            if (packed_) return slot;
            const int32_t* stored = &keys_[static_cast<size_t>(s.index) * dim_];
            bool same = true;
            for (int i = 0; i < dim_ && same; ++i) same = stored[i] == key[i];
            if (same) return slot;
        }
    }

    void resize_slots(size_t capacity) {
        slots_.assign(capacity, Slot{0, -1});  // keeps the storage when it is large enough
        shift_ = 64;
        for (size_t c = capacity; c > 1; c >>= 1) --shift_;
    }

    void grow() {
        std::vector<Slot> old_slots;
        old_slots.swap(slots_);
        resize_slots(old_slots.size() * 2);
        const size_t mask = slots_.size() - 1;
        for (const Slot& s : old_slots) {
            if (s.index < 0) continue;
            size_t slot = home(s.code);
            while (slots_[slot].index >= 0) slot = (slot + 1) & mask;
            slots_[slot] = s;
        }
    }

    int dim_ = 1;
    int bits_ = 64;
    bool packed_ = false;
    int shift_ = 64;
    int size_ = 0;
    std::vector<Slot> slots_;
    std::vector<int32_t> keys_;
};

namespace {

struct RecentVertex {
    uint64_t code;
    int32_t vertex;  // 1-based, 0: empty
};
constexpr int kRecentBits = 10;  // 1024 entries, 16 KiB: stays in L1
constexpr int kRecentVertices = 1 << kRecentBits;
constexpr uint64_t kRecentHash = 0xd6e8feb86659fd93ull;  // odd, a different mix than the table's

// Finds each point's enclosing simplex: its d+1 corner vertices (1-based, inserted into
// `table`) and barycentric weights.  D is the dimension when known at compile time (the
// two kernels of the CRF), 0 otherwise.
template <int D>
void place_points(const float* features, int n_points, int runtime_dim, const float* scale, VertexTable& table,
                  int32_t* vertex, float* barycentric) {
    const int dim = D > 0 ? D : runtime_dim;
    const int corners = dim + 1;
    float elevated[kMaxDim + 1], rem0[kMaxDim + 1], bary[kMaxDim + 2];
    int rank[kMaxDim + 1];
    // Neighbouring points mostly share simplex corners, so a corner is first looked for
    // in a small direct-mapped cache of recently used vertices (one compare, in L1),
    // and only on a miss in the table.  Vertex 0 marks an empty entry.
    RecentVertex recent[kRecentVertices] = {};
    const float down = 1.0f / corners;
    const float up = static_cast<float>(corners);

    for (int p = 0; p < n_points; ++p) {
        const float* f = features + static_cast<size_t>(p) * dim;
        // Elevate onto the hyperplane sum(x) = 0 in R^(d+1).
        float running = 0.0f;
        for (int j = dim; j > 0; --j) {
            const float cf = f[j - 1] * scale[j - 1];
            if (!(std::fabs(cf) < kMaxCoordinate))
                throw std::invalid_argument(
                    "a scaled feature is too large or not finite (kernel width too small for "
                    "the image size?)");
            elevated[j] = running - j * cf;
            running += cf;
        }
        elevated[0] = running;

        // Nearest point whose coordinates are all multiples of d+1.
        int coordinate_sum = 0;
        for (int i = 0; i <= dim; ++i) {
            // floor and ceil without library calls (baseline x86-64 has no round instruction)
            const float v = down * elevated[i];
            int below = static_cast<int>(v);
            if (static_cast<float>(below) > v) --below;
            const int above = static_cast<float>(below) == v ? below : below + 1;
            const float hi_v = static_cast<float>(above) * up;
            const float lo_v = static_cast<float>(below) * up;
            const bool round_up = hi_v - elevated[i] < elevated[i] - lo_v;
            rem0[i] = round_up ? hi_v : lo_v;
            coordinate_sum += round_up ? above : below;
        }
        // Rank of each coordinate of the remainder in decreasing order (ties by index).
        for (int i = 0; i <= dim; ++i) rank[i] = 0;
        for (int i = 0; i < dim; ++i) {
            const float di = elevated[i] - rem0[i];
            for (int j = i + 1; j <= dim; ++j) {
                if (di < elevated[j] - rem0[j]) ++rank[i];
                else ++rank[j];
            }
        }
        // Bring the point back onto the plane when the rounding left it off.
        for (int i = 0; i <= dim; ++i) {
            rank[i] += coordinate_sum;
            if (rank[i] < 0) {
                rank[i] += corners;
                rem0[i] += up;
            } else if (rank[i] > dim) {
                rank[i] -= corners;
                rem0[i] -= up;
            }
        }
        // Barycentric coordinates of the point in its simplex.
        for (int i = 0; i <= dim + 1; ++i) bary[i] = 0.0f;
        for (int i = 0; i <= dim; ++i) {
            const float v = (elevated[i] - rem0[i]) * down;
            bary[dim - rank[i]] += v;
            bary[dim - rank[i] + 1] -= v;
        }
        bary[0] += 1.0f + bary[dim + 1];

        // The simplex corner with remainder r is rem0 plus the canonical simplex vertex r,
        // permuted by rank.
        for (int r = 0; r <= dim; ++r) {
            int32_t key[kMaxDim];
            for (int i = 0; i < dim; ++i)
                key[i] = static_cast<int32_t>(rem0[i]) + (rank[i] <= dim - r ? r : r - corners);
            const uint64_t code = table.encode_as<D>(key);
            RecentVertex& cached = recent[(code * kRecentHash) >> (64 - kRecentBits)];
            const size_t idx = static_cast<size_t>(p) * corners + r;
            if (cached.vertex != 0 && cached.code == code && table.same_key(cached.vertex - 1, key)) {
                vertex[idx] = cached.vertex;
            } else {
                vertex[idx] = table.find_or_insert(key, code) + 1;
                cached.code = code;
                cached.vertex = vertex[idx];
            }
            barycentric[idx] = bary[r];
        }
    }
}

// Per axis and vertex, the rows (1-based, 0: absent) of the two neighbours along that axis.
template <int D>
void find_neighbours(const VertexTable& table, int runtime_dim, int n_vertices, int32_t* lo, int32_t* hi) {
    const int dim = D > 0 ? D : runtime_dim;
    int32_t lo_key[kMaxDim], hi_key[kMaxDim];
    for (int axis = 0; axis <= dim; ++axis) {
        for (int v = 0; v < n_vertices; ++v) {
            const int32_t* k = table.key(v);
            // Step along axis: +d on that coordinate and -1 on all others (and back).
            for (int i = 0; i < dim; ++i) {
                lo_key[i] = k[i] - 1;
                hi_key[i] = k[i] + 1;
            }
            if (axis < dim) {
                lo_key[axis] = k[axis] + dim;
                hi_key[axis] = k[axis] - dim;
            }
            const size_t idx = static_cast<size_t>(axis) * n_vertices + v;
            lo[idx] = table.find_as<D>(lo_key) + 1;
            hi[idx] = table.find_as<D>(hi_key) + 1;
        }
    }
}

}  // namespace

Lattice::Lattice() = default;
Lattice::~Lattice() = default;
Lattice::Lattice(Lattice&&) noexcept = default;
Lattice& Lattice::operator=(Lattice&&) noexcept = default;

void Lattice::build(const float* features, int n_points, int dim) {
    if (dim < 1 || dim > kMaxDim) throw std::invalid_argument("lattice dimension out of range");
    n_points_ = n_points;
    dim_ = dim;
    const int corners = dim + 1;
    // every entry is written by place_points
    vertex_.resize(static_cast<size_t>(n_points) * corners);
    barycentric_.resize(static_cast<size_t>(n_points) * corners);

    // Diagonal of the elevation matrix E times the densecrf feature scaling
    // sqrt(2/3)*(d+1), which sets the effective width of the blurred kernel.
    float scale[kMaxDim];
    const double inv_std = std::sqrt(2.0 / 3.0) * corners;
    for (int i = 0; i < dim; ++i) scale[i] = static_cast<float>(inv_std / std::sqrt((i + 1.0) * (i + 2.0)));

    // A bound on every key coordinate: |elevated| <= (d+1) * sum |scaled feature|, and
    // rounding, simplex corners and blur neighbours move less than 3(d+1) from it.
    double scaled_sum = 0.0;
    for (int j = 0; j < dim; ++j) {
        float largest = 0.0f;
        for (int p = 0; p < n_points; ++p) largest = std::max(largest, std::fabs(features[static_cast<size_t>(p) * dim + j]));
        if (!(largest * scale[j] < kMaxCoordinate))
            throw std::invalid_argument(
                "a scaled feature is too large or not finite (kernel width too small for the image size?)");
        scaled_sum += static_cast<double>(largest) * scale[j];
    }
    const int64_t bound = static_cast<int64_t>(corners * scaled_sum) + 3 * corners + 1;
    // Start small and grow: natural images often have far fewer vertices than pixels,
    // and a table that fits in cache makes every lookup cheaper.  Images that follow
    // (a batch, a video) usually have about as many vertices as the last one.
    if (!table_) table_ = std::make_unique<VertexTable>();
    VertexTable& table = *table_;
    const size_t expected = n_vertices_ > 0 ? n_vertices_ + n_vertices_ / 4 : kInitialVertices;
    table.reset(dim, std::min(expected, static_cast<size_t>(n_points) * corners), bound);
    switch (dim) {
        case 2: place_points<2>(features, n_points, dim, scale, table, vertex_.data(), barycentric_.data()); break;
        case 5: place_points<5>(features, n_points, dim, scale, table, vertex_.data(), barycentric_.data()); break;
        default: place_points<0>(features, n_points, dim, scale, table, vertex_.data(), barycentric_.data());
    }

    n_vertices_ = table.size();
    neighbour_lo_.assign(static_cast<size_t>(corners) * n_vertices_, 0);
    neighbour_hi_.assign(static_cast<size_t>(corners) * n_vertices_, 0);
    switch (dim) {
        case 2: find_neighbours<2>(table, dim, n_vertices_, neighbour_lo_.data(), neighbour_hi_.data()); break;
        case 5: find_neighbours<5>(table, dim, n_vertices_, neighbour_lo_.data(), neighbour_hi_.data()); break;
        default: find_neighbours<0>(table, dim, n_vertices_, neighbour_lo_.data(), neighbour_hi_.data());
    }
    build_chains();
}

// Along one axis the neighbour relation splits the vertices into chains (hi of a is b
// exactly when lo of b is a).  Listing each chain of two or more vertices in order lets
// the blur update the values in place, carrying the previous vertex's old value, and
// skip vertices without neighbours on that axis altogether.  Chains follow one another
// without separators; each entry says where the chain goes next and whether it continues
// the previous entry, so the blur's inner loop has no branch at chain ends (chains are
// mostly short: two or three vertices on the sparse lattices of small images).
void Lattice::build_chains() {
    chains_.clear();
    chain_offsets_.assign(1, 0);
    for (int axis = 0; axis <= dim_; ++axis) {
        const int32_t* lo = &neighbour_lo_[static_cast<size_t>(axis) * n_vertices_];
        const int32_t* hi = &neighbour_hi_[static_cast<size_t>(axis) * n_vertices_];
        for (int v = 1; v <= n_vertices_; ++v) {
            if (lo[v - 1] != 0 || hi[v - 1] == 0) continue;  // not the start of a chain
            float linked = 0.0f;
            for (int u = v; u != 0; u = hi[u - 1]) {
                chains_.push_back(ChainLink{u, hi[u - 1], linked});
                linked = 1.0f;
            }
        }
        chain_offsets_.push_back(chains_.size());
    }
}

void Lattice::filter_scalar(float* out, const float* in) const {
    const int corners = dim_ + 1;
    std::vector<float> values(static_cast<size_t>(n_vertices_) + 1, 0.0f), scratch(values.size(), 0.0f);
    for (int i = 0; i < n_points_; ++i)
        for (int c = 0; c < corners; ++c) {
            const size_t idx = static_cast<size_t>(i) * corners + c;
            values[vertex_[idx]] += barycentric_[idx] * in[i];
        }
    for (int axis = 0; axis <= dim_; ++axis) {
        for (int v = 1; v <= n_vertices_; ++v) {
            const size_t idx = static_cast<size_t>(axis) * n_vertices_ + v - 1;
            scratch[v] = values[v] + 0.5f * (values[neighbour_lo_[idx]] + values[neighbour_hi_[idx]]);
        }
        values.swap(scratch);
    }
    const float alpha = slice_scale(dim_);
    for (int i = 0; i < n_points_; ++i) {
        float acc = 0.0f;
        for (int c = 0; c < corners; ++c) {
            const size_t idx = static_cast<size_t>(i) * corners + c;
            acc += barycentric_[idx] * values[vertex_[idx]];
        }
        out[i] = acc * alpha;
    }
}

void Lattice::set_symmetric_normalisation(float weight) {
    const int corners = dim_ + 1;
    std::vector<float> ones(n_points_, 1.0f), density(n_points_);
    filter_scalar(density.data(), ones.data());
    const float alpha = slice_scale(dim_);
    weight_.resize(barycentric_.size());
    for (int i = 0; i < n_points_; ++i) {
        const float norm = 1.0f / std::sqrt(density[i] + kNormEpsilon);
        for (int c = 0; c < corners; ++c) {
            const size_t idx = static_cast<size_t>(i) * corners + c;
            weight_[idx] = barycentric_[idx] * norm;
        }
    }
    scale_ = alpha * weight;
}

LatticeView Lattice::view(int width) {
    const size_t floats = (static_cast<size_t>(n_vertices_) + 1) * width;
    for (auto& buffer : values_)
        if (buffer.size() < floats) buffer.resize(floats);
    return LatticeView{n_points_,      n_vertices_,           dim_,
                       vertex_.data(), weight_.data(),        scale_,
                       chains_.data(), chain_offsets_.data(), {values_[0].data(), values_[1].data()}};
}

}  // namespace crf
