#include "meanfield.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "iteration_api.hpp"
#include "lattice.hpp"

namespace crf {
namespace {

constexpr int kGaussianDim = 2;
constexpr int kBilateralDim = 5;

void check_params(const KernelParams& p) {
    if (p.maxiter < 0 || p.maxiter > kMaxIterations)
        throw std::invalid_argument("need 0 <= maxiter <= " + std::to_string(kMaxIterations));
    const float widths[] = {p.gaussian_sxy, p.bilateral_sxy, p.bilateral_srgb};
    for (float w : widths)
        if (!(w > 0.0f) || !std::isfinite(w)) throw std::invalid_argument("need finite kernel widths > 0");
    if (!std::isfinite(p.gaussian_weight) || !std::isfinite(p.bilateral_weight))
        throw std::invalid_argument("need finite kernel weights");
}

bool cpu_has_avx2() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
}

std::atomic<bool> g_force_baseline{false};

}  // namespace

void force_baseline_kernels(bool force) { g_force_baseline = force; }

const char* kernel_instruction_set() { return (!g_force_baseline && cpu_has_avx2()) ? "avx2" : "baseline"; }

namespace {

// Per-thread buffers and lattices, kept between calls so that repeated calls (a batch, a
// folder of images) neither reallocate nor page-fault, and so that the Gaussian lattice,
// which depends only on the image size and kernel, is built once per size.
struct Workspace {
    std::vector<float> scores, q, energy, features;
    Lattice gaussian, bilateral;
    bool gaussian_ready = false;
    int gaussian_height = 0, gaussian_width = 0;
    float gaussian_sxy = 0.0f, gaussian_weight = 0.0f;
};

thread_local Workspace t_workspace;

void prepare_gaussian(Workspace& ws, int height, int width, const KernelParams& params) {
    if (ws.gaussian_ready && ws.gaussian_height == height && ws.gaussian_width == width &&
        ws.gaussian_sxy == params.gaussian_sxy && ws.gaussian_weight == params.gaussian_weight)
        return;
    ws.gaussian_ready = false;
    const int n = height * width;
    ws.features.resize(static_cast<size_t>(n) * kGaussianDim);
    for (int y = 0; y < height; ++y)
        for (int x = 0; x < width; ++x) {
            float* fp = &ws.features[(static_cast<size_t>(y) * width + x) * kGaussianDim];
            fp[0] = x / params.gaussian_sxy;
            fp[1] = y / params.gaussian_sxy;
        }
    ws.gaussian.build(ws.features.data(), n, kGaussianDim);
    ws.gaussian.set_symmetric_normalisation(params.gaussian_weight);
    ws.gaussian_ready = true;
    ws.gaussian_height = height;
    ws.gaussian_width = width;
    ws.gaussian_sxy = params.gaussian_sxy;
    ws.gaussian_weight = params.gaussian_weight;
}

void prepare_bilateral(Workspace& ws, const uint8_t* image, int height, int width, const KernelParams& params) {
    const int n = height * width;
    ws.features.resize(static_cast<size_t>(n) * kBilateralDim);
    for (int y = 0; y < height; ++y)
        for (int x = 0; x < width; ++x) {
            const size_t i = static_cast<size_t>(y) * width + x;
            float* fp = &ws.features[i * kBilateralDim];
            fp[0] = x / params.bilateral_sxy;
            fp[1] = y / params.bilateral_sxy;
            for (int c = 0; c < 3; ++c) fp[2 + c] = image[i * 3 + c] / params.bilateral_srgb;
        }
    ws.bilateral.build(ws.features.data(), n, kBilateralDim);
    ws.bilateral.set_symmetric_normalisation(params.bilateral_weight);
}

}  // namespace

void dense_crf(const uint8_t* image, const float* unary, int height, int width, int labels,
               const KernelParams& params, float* out, const StopCheck& stop) {
    if (height < 1 || width < 1 || labels < 1) throw std::invalid_argument("need height, width, labels >= 1");
    if (static_cast<int64_t>(height) * width > kMaxPixels)
        throw std::invalid_argument("need at most 2**26 pixels per image");
    check_params(params);
    if (stop()) throw Interrupted();
    Workspace& ws = t_workspace;
    const int n = height * width;
    const int n_chunks = (labels + kChunk - 1) / kChunk;
    const int row = n_chunks * kChunk;
    const size_t floats = static_cast<size_t>(n) * row;

    // Up to kMaxChunks chunks the kernels read the unary and write the output in place,
    // unpadded; wider rows are filtered in groups and need padded copies.
    const bool padded = n_chunks > kMaxChunks;
    IterationInput input{n, labels, n_chunks, params.maxiter, 0, labels, unary, out, nullptr, {}, stop};
    if (padded) {
        ws.scores.assign(floats, 0.0f);
        for (int i = 0; i < n; ++i)
            std::copy(unary + static_cast<size_t>(i) * labels, unary + static_cast<size_t>(i + 1) * labels,
                      ws.scores.begin() + static_cast<size_t>(i) * row);
        ws.q.resize(floats);
        ws.energy.resize(floats);
        input.stride = row;
        input.scores = ws.scores.data();
        input.q = ws.q.data();
        input.energy = ws.energy.data();
    }
    const int view_width = std::min(n_chunks, kMaxChunks) * kChunk;
    if (params.maxiter > 0 && params.gaussian_weight != 0.0f) {
        prepare_gaussian(ws, height, width, params);
        input.kernels[input.n_kernels++] = ws.gaussian.view(view_width);
    }
    if (params.maxiter > 0 && params.bilateral_weight != 0.0f) {
        if (stop()) throw Interrupted();
        prepare_bilateral(ws, image, height, width, params);
        input.kernels[input.n_kernels++] = ws.bilateral.view(view_width);
    }
    if (!g_force_baseline && cpu_has_avx2())
        avx2::run_mean_field(input);
    else
        base::run_mean_field(input);
    if (stop()) throw Interrupted();
    if (padded)
        for (int i = 0; i < n; ++i)
            std::copy(ws.q.begin() + static_cast<size_t>(i) * row,
                      ws.q.begin() + static_cast<size_t>(i) * row + labels, out + static_cast<size_t>(i) * labels);
}

}  // namespace crf
