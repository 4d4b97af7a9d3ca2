// Permutohedral lattice (Adams, Baek & Davis 2010) for Gaussian filtering in feature space.
//
// The lattice is built once per image and kernel from the per-pixel features; filtering
// then costs splat (scatter every pixel's values onto the d+1 vertices of its simplex),
// blur (a [1/2 1 1/2] pass along each of the d+1 lattice axes) and slice (gather back
// with the same barycentric weights).  The per-pixel normalisation and the kernel weight
// are folded into the splat and slice weights, so splat + blur + slice computes
// weight * norm .* K(norm .* Q) for all labels at once (kernels in iteration.hpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace crf {

// Values are stored per point and per lattice vertex in rows of `kChunk`-float chunks
// (labels padded with zeros), so the inner loops work on whole vectors.
constexpr int kChunk = 8;

// What the filtering kernels (iteration.hpp) need of a built lattice.
struct LatticeView {
    int n_points, n_vertices, dim;
    const int32_t* vertex;        // n_points x (dim+1) vertex rows, 1-based (0: zero sentinel)
    const float* splat_weight;    // n_points x (dim+1): barycentric * norm
    const float* slice_weight;    // n_points x (dim+1): barycentric * norm * alpha * kernel weight
    const int32_t* chains;        // per axis, chains of neighbouring vertex rows, 0-separated
    const size_t* chain_offsets;  // dim+2 offsets into chains, one range per axis
    float* values;                // (n_vertices+1) x width work rows, row 0 all zero
};

class Lattice {
  public:
    // features: n_points x dim, row-major, already divided by the kernel widths.
    // row_length: points per image row when the points are pixels in raster order (a
    // hint that speeds up the build; 0 when there is no such order).
    // Throws std::invalid_argument when a feature is too large to index the lattice.
    void build(const float* features, int n_points, int dim, int row_length = 0);

    // Sets splat/slice weights for NORMALIZE_SYMMETRIC: norm_i = 1/sqrt((K 1)_i + 1e-20);
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

    int n_points_ = 0;
    int dim_ = 0;
    int n_vertices_ = 0;
    // Per point and simplex corner: vertex row (1-based, row 0 is an all-zero sentinel)
    // and barycentric weight.
    std::vector<int32_t> vertex_;
    std::vector<float> barycentric_;
    // Barycentric weights with the normalisation (and, for slicing, alpha and the kernel
    // weight) folded in.
    std::vector<float> splat_weight_;
    std::vector<float> slice_weight_;
    // Per axis and vertex: rows of the two neighbours along that axis (0 when absent).
    std::vector<int32_t> neighbour_lo_;
    std::vector<int32_t> neighbour_hi_;
    // Work buffers kept between calls to avoid reallocating every iteration.
    std::vector<int32_t> chains_;
    std::vector<size_t> chain_offsets_;
    std::vector<float> values_;
};

}  // namespace crf
