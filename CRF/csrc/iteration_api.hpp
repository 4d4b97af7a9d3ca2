// Interface between the set-up (meanfield.cpp) and the per-instruction-set iteration
// kernels (iteration.hpp compiled as iteration_base.cpp and iteration_avx2.cpp).
#pragma once

#include "lattice.hpp"

namespace crf {

constexpr int kMaxKernels = 2;
// Rows of up to kMaxChunks * kChunk labels are kept in registers; more labels are
// filtered in groups of that many.
constexpr int kMaxChunks = 8;

// Asked between iterations whether to stop early (an interrupt): fn(context) true means
// stop; the output is then left unfinished.  fn may be null (never stop).
struct StopCheck {
    bool (*fn)(void*) = nullptr;
    void* context = nullptr;
    bool operator()() const { return fn != nullptr && fn(context); }
};

struct IterationInput {
    int n_points, labels, n_chunks, maxiter, n_kernels;
    // Floats from one row of scores (and of q) to the next: labels or more; exactly
    // n_chunks*kChunk (rows padded with zeros) when n_chunks > kMaxChunks.
    int stride;
    const float* scores;  // n_points x stride unary scores
    float* q;             // n_points x stride: out, the marginals (labels only)
    float* energy;        // n_points x n_chunks*kChunk work rows, used when n_chunks > kMaxChunks
    LatticeView kernels[kMaxKernels];
    StopCheck stop;
};

namespace base {
void run_mean_field(const IterationInput& in);
}
namespace avx2 {
void run_mean_field(const IterationInput& in);
}

}  // namespace crf
