#include "pool.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#define CRF_HAVE_GETPID 1
#endif

namespace crf {
namespace {

long current_process() {
#ifdef CRF_HAVE_GETPID
    return static_cast<long>(getpid());
#else
    return 0;
#endif
}

class Pool {
  public:
    Pool() : process_(current_process()) {}
    long process() const { return process_; }

    void run(size_t count, size_t threads, const std::function<void(size_t)>& task,
             const std::function<void()>& idle) {
        std::lock_guard<std::mutex> serial(call_mutex_);
        const size_t helpers = threads > 1 ? threads - 1 : 0;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            while (workers_.size() < helpers) {
                const size_t id = workers_.size();
                workers_.emplace_back([this, id] { work(id); });
                workers_.back().detach();
            }
            task_ = &task;
            count_ = count;
            next_.store(0);
            active_ = helpers;
            running_ = helpers;
            ++generation_;
        }
        wake_.notify_all();
        drain();
        std::unique_lock<std::mutex> lock(mutex_);
        const auto poll = std::chrono::milliseconds(kIdlePollMilliseconds);
        while (!done_.wait_for(lock, poll, [this] { return running_ == 0; }))
            if (idle) {
                lock.unlock();
                idle();
                lock.lock();
            }
        task_ = nullptr;
    }

  private:
    void drain() {
        for (size_t i = next_++; i < count_; i = next_++) (*task_)(i);
    }

    void work(size_t id) {
        unsigned long seen = 0;
        for (;;) {
            {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] { return generation_ != seen; });
                seen = generation_;
                if (id >= active_) continue;  // not needed for this call
            }
            drain();
            std::lock_guard<std::mutex> lock(mutex_);
            if (--running_ == 0) done_.notify_one();
        }
    }

    const long process_;
    std::mutex call_mutex_;  // one batch at a time
    std::mutex mutex_;
    std::condition_variable wake_, done_;
    std::vector<std::thread> workers_;
    const std::function<void(size_t)>* task_ = nullptr;
    size_t count_ = 0, active_ = 0, running_ = 0;
    unsigned long generation_ = 0;
    // Tasks are coarse (whole images), so sharing this counter's cache line costs nothing.
    std::atomic<size_t> next_{0};
};

std::mutex g_pool_mutex;
// Never destroyed: the workers wait on it until the process exits.  A forked child
// inherits none of the threads, so it starts a pool of its own.
Pool* g_pool = nullptr;

Pool& pool() {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    if (g_pool == nullptr || g_pool->process() != current_process()) g_pool = new Pool();
    return *g_pool;
}

}  // namespace

void run_in_pool(size_t count, size_t threads, const std::function<void(size_t)>& task,
                 const std::function<void()>& idle) {
    if (count == 0) return;
    if (threads <= 1 || count == 1) {
        for (size_t i = 0; i < count; ++i) task(i);
        return;
    }
    pool().run(count, threads < count ? threads : count, task, idle);
}

}  // namespace crf
