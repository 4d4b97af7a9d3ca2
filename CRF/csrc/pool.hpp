// A process-wide pool of worker threads for the batch call, started on first use and
// kept: threads are not created per call, and each keeps its per-thread workspace (and
// cached Gaussian lattice) between calls, as the calling thread does.
#pragma once

#include <cstddef>
#include <functional>

namespace crf {

// Runs task(0) .. task(count - 1), each exactly once, on up to `threads` threads: the
// calling thread and threads - 1 pool workers.  Tasks are handed out one at a time from
// a shared counter, so threads that finish early take more.  task must not throw.
// Concurrent calls are served one after the other.  While the calling thread waits for
// the workers to finish their last tasks it calls idle() every kIdlePollMilliseconds
// (when given), e.g. to look for an interrupt.
constexpr int kIdlePollMilliseconds = 20;
void run_in_pool(size_t count, size_t threads, const std::function<void(size_t)>& task,
                 const std::function<void()>& idle = nullptr);

}  // namespace crf
