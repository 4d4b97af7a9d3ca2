// Permutohedral lattice (Adams, Baek & Davis 2010) for Gaussian filtering in feature space.
//
// The lattice is built once per image and kernel from the per-pixel features; filtering
// then costs splat (scatter every pixel's values onto the d+1 vertices of its simplex),
// blur (a [1/2 1 1/2] pass along each of the d+1 lattice axes) and slice (gather back
// with the same barycentric weights).  The per-pixel normalisation is folded into the
// splat/slice weights and the kernel weight (times alpha) into the values splatted, so
// splat + blur + slice computes
// weight * norm .* K(norm .* Q) for all labels at once (kernels in iteration.hpp).
// Two value buffers let an iteration splat the new Q while slicing the old one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace crf {

// Values are stored per point and per lattice vertex in rows of `kChunk`-float chunks
// (labels padded with zeros), so the inner loops work on whole vectors.
constexpr int kChunk = 8;

// One vertex of a chain of neighbours along a lattice axis (see Lattice::build_chains).
struct ChainLink {
    int32_t vertex;  // row
    int32_t next;    // the next row in the chain, 0 (the zero sentinel row) at its end
    float linked;    // 1 when the previous entry is this vertex's predecessor, 0 at a chain start
};

// What the filtering kernels (iteration.hpp) need of a built lattice.
struct LatticeView {
    int n_points, n_vertices, dim;
    const int32_t* vertex;        // n_points x (dim+1) vertex rows, 1-based (0: zero sentinel)
    const float* weight;          // n_points x (dim+1): barycentric * norm, to splat and slice
    float scale;                  // alpha * kernel weight, applied to the values splatted
    const ChainLink* chains;      // per axis, chains of neighbouring vertex rows, one after another
    const size_t* chain_offsets;  // dim+2 offsets into chains, one range per axis
    float* values[2];             // two buffers of (n_vertices+1) x width work rows, row 0 zero
};

class VertexTable;

class Lattice {
  public:
    Lattice();
    ~Lattice();
    Lattice(Lattice&&) noexcept;
    Lattice& operator=(Lattice&&) noexcept;

    // features: n_points x dim, row-major, already divided by the kernel widths.
    // Throws std::invalid_argument when a feature is too large to index the lattice.
    void build(const float* features, int n_points, int dim);

    // Sets the splat/slice weights for NORMALIZE_SYMMETRIC, norm_i = 1/sqrt((K 1)_i + 1e-20),
    // and the scale alpha * weight;
    // afterwards the kernels of iteration.hpp add w * norm .* K(norm .* in) to their output.
    void set_symmetric_normalisation(float weight);

    // Pointers for the filtering kernels, with work rows `width` floats wide.  Needs
    // set_symmetric_normalisation first.
    LatticeView view(int width);

    // Raw lattice filtering K v of one scalar per point (no normalisation), for tests
    // and the normalisation itself.
    void filter_scalar(float* out, const float* in) const;

    int n_vertices() const { return n_vertices_; }

  private:
    void build_chains();

    std::unique_ptr<VertexTable> table_;  // kept so that its storage is reused
    int n_points_ = 0;
    int dim_ = 0;
    int n_vertices_ = 0;
    // Per point and simplex corner: vertex row (1-based, row 0 is an all-zero sentinel)
    // and barycentric weight.
    std::vector<int32_t> vertex_;
    std::vector<float> barycentric_;
    // Barycentric weights with the normalisation folded in (the same for splat and slice:
    // the normalisation is symmetric), and alpha * kernel weight.
    std::vector<float> weight_;
    float scale_ = 1.0f;
    // Per axis and vertex: rows of the two neighbours along that axis (0 when absent).
    std::vector<int32_t> neighbour_lo_;
    std::vector<int32_t> neighbour_hi_;
    // Work buffers kept between calls to avoid reallocating every iteration.
    std::vector<ChainLink> chains_;
    std::vector<size_t> chain_offsets_;
    std::vector<float> values_[2];
};

}  // namespace crf
