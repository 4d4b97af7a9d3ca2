// Python bindings of the dense CRF.  The Python package validates and converts user
// input; this layer re-checks dtype, layout and shape so that nothing reaching it can
// crash the interpreter, then computes with the GIL released, looking for interrupts
// (Ctrl-C) between mean-field iterations.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <exception>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "lattice.hpp"
#include "meanfield.hpp"
#include "pool.hpp"

namespace py = pybind11;

namespace {

struct Job {
    const uint8_t* image;
    const float* unary;
    float* out;
    int height, width, labels;
    // A unary in any other layout than C order is copied, by the thread that runs the
    // job, into a per-thread buffer: the strides in bytes of its three axes.
    bool unary_in_c_order;
    py::ssize_t unary_strides[3];
};

// Pixels per side of the tiles in which a strided unary is copied: a tile's source and
// destination rows stay in cache whichever axis the source runs along (a transposed
// network output, say).
constexpr int kCopyTile = 16;

// The unary in C order: the job's own array, or a copy in the calling thread's buffer.
const float* unary_in_c_order(const Job& j) {
    if (j.unary_in_c_order) return j.unary;
    thread_local std::vector<float> staging;
    staging.resize(static_cast<size_t>(j.height) * j.width * j.labels);
    const char* base = reinterpret_cast<const char*>(j.unary);
    const bool labels_packed = j.unary_strides[2] == static_cast<py::ssize_t>(sizeof(float));
    for (int y0 = 0; y0 < j.height; y0 += kCopyTile)
        for (int x0 = 0; x0 < j.width; x0 += kCopyTile)
            for (int y = y0; y < std::min(y0 + kCopyTile, j.height); ++y)
                for (int x = x0; x < std::min(x0 + kCopyTile, j.width); ++x) {
                    const char* pixel = base + y * j.unary_strides[0] + x * j.unary_strides[1];
                    float* dst = &staging[(static_cast<size_t>(y) * j.width + x) * j.labels];
                    if (labels_packed) {
                        std::memcpy(dst, pixel, sizeof(float) * j.labels);
                        continue;
                    }
                    for (int l = 0; l < j.labels; ++l)
                        std::memcpy(dst + l, pixel + l * j.unary_strides[2], sizeof(float));
                }
    return staging.data();
}

// dtype equivalence, not identity: an unpickled array carries its own dtype object.
template <typename T>
bool is_array_of(const py::array& a) {
    return py::isinstance<py::array_t<T>>(a);
}

template <typename T>
bool is_c_array_of(const py::array& a) {
    return is_array_of<T>(a) && (a.flags() & py::array::c_style);
}

std::string shape_of(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + ")";
}

// The kernels write the output while still reading the unary.
bool overlap(const py::array& a, const py::array& b) {
    const char* a0 = static_cast<const char*>(a.data());
    const char* b0 = static_cast<const char*>(b.data());
    return a.nbytes() > 0 && b.nbytes() > 0 && a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

Job make_job(const py::array& image, const py::array& unary, py::array& out, size_t index) {
    const std::string where = "image " + std::to_string(index) + ": ";
    if (!is_c_array_of<uint8_t>(image) || image.ndim() != 3 || image.shape(2) != 3)
        throw py::value_error(where + "need a C-contiguous uint8 HxWx3 image, got dtype " +
                              std::string(py::str(image.dtype())) + " shape " + shape_of(image));
    if (!is_array_of<float>(unary) || unary.ndim() != 3)
        throw py::value_error(where + "need a float32 HxWxL unary, got dtype " +
                              std::string(py::str(unary.dtype())) + " shape " + shape_of(unary));
    if (!is_c_array_of<float>(out) || !out.writeable() || out.ndim() != 3)
        throw py::value_error(where + "need a writeable C-contiguous float32 HxWxL output");
    for (int axis = 0; axis < 2; ++axis)
        if (unary.shape(axis) != image.shape(axis) || out.shape(axis) != image.shape(axis))
            throw py::value_error(where + "need image, unary and output with the same HxW, got " +
                                  shape_of(image) + ", " + shape_of(unary) + ", " + shape_of(out));
    if (out.shape(2) != unary.shape(2))
        throw py::value_error(where + "need an output with as many labels as the unary");
    const bool in_c_order = is_c_array_of<float>(unary);
    if ((in_c_order && overlap(out, unary)) || overlap(out, image))
        throw py::value_error(where + "need an output that shares no memory with the image or unary");
    if (image.shape(0) > INT32_MAX || image.shape(1) > INT32_MAX || unary.shape(2) > INT32_MAX)
        throw py::value_error(where + "image too large");
    return Job{static_cast<const uint8_t*>(image.data()), static_cast<const float*>(unary.data()),
               static_cast<float*>(out.mutable_data()), static_cast<int>(image.shape(0)),
               static_cast<int>(image.shape(1)), static_cast<int>(unary.shape(2)), in_c_order,
               {unary.strides(0), unary.strides(1), unary.strides(2)}};
}

// Interrupts during a call.  The calling thread (the one holding the Python thread state)
// takes the GIL back for a moment, at most every kSignalPollMilliseconds, to run Python's
// signal handlers (PyErr_CheckSignals); when a handler raises (KeyboardInterrupt for
// Ctrl-C), the exception is kept, every thread stops before its next iteration or image,
// and the call re-raises it.  Pool workers only read the flag.
constexpr int kSignalPollMilliseconds = 20;

class Interrupt {
  public:
    Interrupt() : caller_(std::this_thread::get_id()), last_poll_(std::chrono::steady_clock::now()) {}
    Interrupt(const Interrupt&) = delete;
    Interrupt& operator=(const Interrupt&) = delete;

    bool requested() const { return requested_.load(std::memory_order_relaxed); }

    // Called without the GIL, from any thread: true once an interrupt was seen.
    static bool check(void* self) { return static_cast<Interrupt*>(self)->poll(); }

    crf::StopCheck stop_check() { return crf::StopCheck{&Interrupt::check, this}; }

    // With the GIL held, after the computation: re-raises the handler's exception.
    void raise_if_requested() {
        if (!requested()) return;
        PyErr_Restore(type_, value_, traceback_);
        type_ = value_ = traceback_ = nullptr;
        throw py::error_already_set();
    }

  private:
    bool poll() {
        if (requested() || std::this_thread::get_id() != caller_) return requested();
        const auto now = std::chrono::steady_clock::now();
        if (now - last_poll_ < std::chrono::milliseconds(kSignalPollMilliseconds)) return false;
        last_poll_ = now;
        py::gil_scoped_acquire gil;
        if (PyErr_CheckSignals() != 0) {
            PyErr_Fetch(&type_, &value_, &traceback_);
            requested_ = true;
        }
        return requested();
    }

    const std::thread::id caller_;
    std::chrono::steady_clock::time_point last_poll_;
    std::atomic<bool> requested_{false};
    PyObject* type_ = nullptr;
    PyObject* value_ = nullptr;
    PyObject* traceback_ = nullptr;
};

// Runs every job on `num_threads` threads (0: all cores) of the process-wide pool.  Each
// image is computed by exactly the same code as a single call, so results do not depend
// on the thread count.  The largest images are handed out first, so that the threads
// finish close together when sizes differ.
void run_jobs(const std::vector<Job>& jobs, const crf::KernelParams& params, int num_threads) {
    if (num_threads < 0) throw py::value_error("need num_threads >= 0, got " + std::to_string(num_threads));
    const size_t workers = num_threads > 0 ? num_threads : std::max(1u, std::thread::hardware_concurrency());
    std::vector<size_t> order(jobs.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    auto work_of = [&](size_t i) { return static_cast<int64_t>(jobs[i].height) * jobs[i].width * jobs[i].labels; };
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return work_of(a) > work_of(b); });
    std::vector<std::string> errors(jobs.size());
    std::atomic<bool> out_of_memory{false};
    Interrupt interrupt;
    const crf::StopCheck stop = interrupt.stop_check();
    auto work = [&](size_t k) {
        const size_t i = order[k];
        const Job& j = jobs[i];
        if (stop()) return;  // interrupted: the results are dropped
        try {
            crf::dense_crf(j.image, unary_in_c_order(j), j.height, j.width, j.labels, params, j.out, stop);
        } catch (const crf::Interrupted&) {
        } catch (const std::bad_alloc&) {
            out_of_memory = true;
            errors[i] = "out of memory";
        } catch (const std::exception& e) {
            errors[i] = e.what();
        }
    };
    {
        py::gil_scoped_release release;
        crf::run_in_pool(jobs.size(), workers, work, [&] { stop(); });
    }
    interrupt.raise_if_requested();
    if (out_of_memory) throw std::bad_alloc();  // pybind11 turns it into MemoryError
    for (size_t i = 0; i < jobs.size(); ++i)
        if (!errors[i].empty()) throw py::value_error("image " + std::to_string(i) + ": " + errors[i]);
}

crf::KernelParams make_params(int maxiter, float gaussian_sxy, float gaussian_weight, float bilateral_sxy,
                              float bilateral_srgb, float bilateral_weight) {
    crf::KernelParams p;
    p.maxiter = maxiter;
    p.gaussian_sxy = gaussian_sxy;
    p.gaussian_weight = gaussian_weight;
    p.bilateral_sxy = bilateral_sxy;
    p.bilateral_srgb = bilateral_srgb;
    p.bilateral_weight = bilateral_weight;
    return p;
}

void dense_crf_into(const py::list& images, const py::list& unaries, const py::list& outputs, int maxiter,
                    float gaussian_sxy, float gaussian_weight, float bilateral_sxy, float bilateral_srgb,
                    float bilateral_weight, int num_threads) {
    if (images.size() != unaries.size() || images.size() != outputs.size())
        throw py::value_error("need equal numbers of images, unaries and outputs");
    if (maxiter < 0 || maxiter > crf::kMaxIterations)
        throw py::value_error("need 0 <= maxiter <= " + std::to_string(crf::kMaxIterations) + ", got " +
                              std::to_string(maxiter));
    // Holding the arrays keeps their buffers alive while the GIL is released.
    std::vector<py::array> held;
    std::vector<Job> jobs;
    for (size_t i = 0; i < images.size(); ++i) {
        if (!py::isinstance<py::array>(images[i]) || !py::isinstance<py::array>(unaries[i]) ||
            !py::isinstance<py::array>(outputs[i]))
            throw py::value_error("image " + std::to_string(i) + ": need numpy arrays");
        auto image = py::reinterpret_borrow<py::array>(images[i]);
        auto unary = py::reinterpret_borrow<py::array>(unaries[i]);
        auto out = py::reinterpret_borrow<py::array>(outputs[i]);
        jobs.push_back(make_job(image, unary, out, i));
        held.push_back(image);
        held.push_back(unary);
        held.push_back(out);
    }
    run_jobs(jobs, make_params(maxiter, gaussian_sxy, gaussian_weight, bilateral_sxy, bilateral_srgb,
                               bilateral_weight),
             num_threads);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "Dense CRF core (permutohedral lattice mean-field); use the krahenbuhl2013 package API.";
    m.def("dense_crf_into", &dense_crf_into, py::arg("images"), py::arg("unaries"), py::arg("outputs"),
          py::arg("maxiter"), py::arg("gaussian_sxy"), py::arg("gaussian_weight"), py::arg("bilateral_sxy"),
          py::arg("bilateral_srgb"), py::arg("bilateral_weight"), py::arg("num_threads"),
          "Writes the CRF marginals of images[i] (HxWx3 uint8, C order) and unaries[i] (HxWxL float32, "
          "any strides) into outputs[i] (HxWxL float32, C order), num_threads threads (0: all cores).");
    m.attr("MAX_ITERATIONS") = crf::kMaxIterations;
    m.attr("MAX_PIXELS") = crf::kMaxPixels;
    m.def("instruction_set", &crf::kernel_instruction_set,
          "Which compiled mean-field kernels run on this CPU: 'avx2' or 'baseline'.");
    m.def("use_baseline_kernels", &crf::force_baseline_kernels, py::arg("force"),
          "For tests and benchmarks: run the baseline kernels even where AVX2 is available.");
    m.def("filter_scalar", [](py::array_t<float, py::array::c_style | py::array::forcecast> features,
                              py::array_t<float, py::array::c_style | py::array::forcecast> values) {
        if (features.ndim() != 2 || values.ndim() != 1 || values.shape(0) != features.shape(0) ||
            features.shape(0) < 1 || features.shape(1) < 1 || features.shape(1) > 16 ||
            features.shape(0) > (1 << 26))
            throw py::value_error("need features (N, d) with 1 <= d <= 16 and values (N,)");
        py::array_t<float> out(values.shape(0));
        crf::Lattice lattice;
        lattice.build(features.data(), static_cast<int>(features.shape(0)), static_cast<int>(features.shape(1)));
        lattice.filter_scalar(out.mutable_data(), values.data());
        return out;
    }, py::arg("features"), py::arg("values"),
          "Raw permutohedral filtering of one value per point (features already divided by the "
          "kernel widths), scaled as densecrf scales it; for tests and kernel measurements.");
}
