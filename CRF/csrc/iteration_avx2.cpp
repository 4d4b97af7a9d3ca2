// The mean-field kernels compiled for AVX2 + FMA, used only when the CPU has them
// (meanfield.cpp checks at run time), so the module still runs on any x86-64.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <utility>

#include "iteration_api.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx2,fma")
#endif
#define CRF_ISA avx2
#include "iteration.hpp"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#else
namespace crf {
namespace avx2 {
void run_mean_field(const IterationInput& in) { base::run_mean_field(in); }
}  // namespace avx2
}  // namespace crf
#endif
