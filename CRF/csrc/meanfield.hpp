// Mean-field inference in a fully connected CRF (Kraehenbuehl & Koltun, NIPS 2011) with a
// Gaussian (position) and a bilateral (position + colour) Potts kernel.
#pragma once

#include <cstdint>
#include <stdexcept>

#include "iteration_api.hpp"

namespace crf {

// Mean-field iterations accepted per call: enough for any convergence study (the SEC
// wrapper uses 10; Q barely changes after 20), few enough that no call runs for days.
constexpr int kMaxIterations = 1000;
// Keeps every per-corner index (pixels x 6 corners) inside int32.
constexpr int64_t kMaxPixels = int64_t(1) << 26;

// Thrown by dense_crf when its StopCheck asked it to stop.
struct Interrupted : std::runtime_error {
    Interrupted() : std::runtime_error("interrupted") {}
};

struct KernelParams {
    int maxiter = 10;
    float gaussian_sxy = 3.0f;
    float gaussian_weight = 3.0f;
    float bilateral_sxy = 80.0f;
    float bilateral_srgb = 13.0f;
    float bilateral_weight = 10.0f;
};

// image: height x width x 3 uint8 (row-major, channels last);
// unary: height x width x labels float32 scores (energy = -unary);
// out: height x width x labels float32 marginals; must not overlap the inputs.
// stop is asked before each lattice build and each iteration; when it says stop, dense_crf
// throws Interrupted (out is then unfinished).
// Throws std::invalid_argument on bad sizes or kernel parameters.
void dense_crf(const uint8_t* image, const float* unary, int height, int width, int labels,
               const KernelParams& params, float* out, const StopCheck& stop = StopCheck());

// For tests: run the baseline kernels even where AVX2 is available.
void force_baseline_kernels(bool force);
// "avx2" or "baseline": the kernels dense_crf runs on this CPU.
const char* kernel_instruction_set();

}  // namespace crf
