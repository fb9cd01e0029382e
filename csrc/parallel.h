// Parallel loops for the kernels, on the caller's OpenMP runtime or on a small pool of our own.
//
// PyTorch runs its CPU ops on an OpenMP team. Two thread pools in one process compete for the
// cores: after every torch op OpenMP's idle threads spin for milliseconds, and a kernel on a
// second pool that starts in that window runs at a fraction of its speed (on 2 cores, 0.5-0.6x).
// So when the process has an OpenMP runtime loaded (torch's), the bindings hand its
// GOMP_parallel entry to use_openmp_runtime() and every parallel_for below runs on that same
// team: one set of threads serves torch and slimrt, and nothing spins against anything. The
// library stays free of torch and of any link-time OpenMP dependency: the entry is found with
// dlsym in the library that torch itself was linked against. Without one, the own pool runs.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace slimrt {

// Runs fn(begin, end) over [0, n) split into at most num_threads contiguous chunks of whole
// `grain` units; the calling thread takes part. Runs serially where the runtime says so (a call
// from inside another parallel region, or the own pool already busy with another Python thread's
// kernel): correct, never blocked.
void parallel_for(int64_t n, int num_threads, const std::function<void(int64_t, int64_t)>& fn,
                  int64_t grain = 1);

// Idle workers of the own pool spin-wait for new work (instead of sleeping) until `microseconds`
// from now: for callers that run many short kernels back to back (the decode step). A no-op on
// the OpenMP runtime, whose idle threads spin by themselves (GOMP_SPINCOUNT) between regions.
void parallel_keep_warm(int64_t microseconds);

// Shares the OpenMP runtime that the already-loaded library `anchor` (a path, e.g. torch's
// libtorch_cpu.so) resolves GOMP_parallel to. Returns the runtime's file path; throws
// std::runtime_error naming what is missing when `anchor` is not loaded or has no OpenMP.
std::string use_openmp_runtime(const std::string& anchor);

// Back to the own pool (for comparisons and for processes without OpenMP).
void use_own_pool();

// "openmp" or "pool", and the OpenMP runtime's path ("" on the own pool).
std::string parallel_runtime();
std::string parallel_runtime_path();

}  // namespace slimrt
