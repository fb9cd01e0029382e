// A small persistent thread pool for the kernels.
//
// The kernels do not use OpenMP: PyTorch wheels ship their own OpenMP runtime, and a second one
// would oversubscribe the cores. The caller passes the thread count (torch.get_num_threads()).
#pragma once

#include <cstdint>
#include <functional>

namespace slimrt {

// Runs fn(begin, end) over [0, n) split into at most num_threads contiguous chunks of whole
// `grain` units; the calling thread takes the first chunk. If the pool is already in use (another
// Python thread is inside a kernel) the work runs serially on the caller: correct, never blocked.
void parallel_for(int64_t n, int num_threads, const std::function<void(int64_t, int64_t)>& fn,
                  int64_t grain = 1);

// Idle workers spin-wait for new work (instead of sleeping) until `microseconds` from now. For
// callers that run many short kernels back to back (the decode step refreshes it per layer): a
// wake-up per kernel costs more than a small kernel. Not for eager PyTorch code: spinning workers
// take the cores PyTorch's own threads need between our kernels.
void parallel_keep_warm(int64_t microseconds);

}  // namespace slimrt
