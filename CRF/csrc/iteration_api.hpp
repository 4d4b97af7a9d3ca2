// Interface between the set-up (meanfield.cpp) and the per-instruction-set iteration
// kernels (iteration.hpp compiled as iteration_base.cpp and iteration_avx2.cpp).
#pragma once

#include "lattice.hpp"

namespace crf {

constexpr int kMaxKernels = 2;
// Rows of up to kMaxChunks * kChunk labels are kept in registers; more labels are
// filtered in groups of that many.
constexpr int kMaxChunks = 8;

struct IterationInput {
    int n_points, labels, n_chunks, maxiter, n_kernels;
    const float* scores;  // n_points x n_chunks*kChunk unary scores, padding 0
    float* q;             // n_points x n_chunks*kChunk: out, the marginals
    float* energy;        // n_points x n_chunks*kChunk work rows, used when n_chunks > kMaxChunks
    LatticeView kernels[kMaxKernels];
};

namespace base {
void run_mean_field(const IterationInput& in);
}
namespace avx2 {
void run_mean_field(const IterationInput& in);
}

}  // namespace crf
