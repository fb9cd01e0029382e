// Machine probes: the int8 peak and memory read bandwidth the int8 benchmarks are measured against.
// Built for baseline x86-64; the wide loops live in the _avx512 / _avx2 files and run after dispatch.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <vector>

#include "cpu_features.h"
#include "int8_gemm/int8_gemm.h"
#include "parallel.h"

namespace slimrt {

namespace {
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

namespace {
// Calibrates the iteration count of `loop` on one thread, then runs every thread for about `seconds`:
// ops/s, best of 3.
template <typename Loop>
double peak_of(Loop loop, int num_threads, double seconds) {
  int64_t iters = 1 << 12;
  double t0 = now_s();
  loop(iters);
  const double per_iter = std::max(1e-12, (now_s() - t0) / iters);
  iters = std::max<int64_t>(1 << 12, static_cast<int64_t>(seconds / per_iter));
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    std::vector<double> ops(num_threads, 0.0);
    t0 = now_s();
    parallel_for(num_threads, num_threads, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) ops[t] = loop(iters);
    });
    const double dt = now_s() - t0;
    double total = 0;
    for (double o : ops) total += o;
    best = std::max(best, total / dt);
  }
  return best;
}
}  // namespace

double probe_int8_peak_ops(int num_threads, double seconds) {
  SLIMRT_CHECK(active_isa() == Isa::Avx512, "probe_int8_peak: needs the avx512 (VNNI) path, active isa is "
                                                << isa_name(active_isa()));
  SLIMRT_CHECK(num_threads >= 1 && seconds > 0, "probe_int8_peak: num_threads and seconds must be positive");
  return peak_of(avx512::probe_vnni_loop, num_threads, seconds);
}

double probe_amx_peak_ops(int num_threads, double seconds) {
  SLIMRT_CHECK(amx_available(), "probe_amx_peak: AMX-INT8 is not available (CPU, OS or process permission)");
  SLIMRT_CHECK(num_threads >= 1 && seconds > 0, "probe_amx_peak: num_threads and seconds must be positive");
  return peak_of(avx512::probe_amx_loop, num_threads, seconds);
}

double probe_read_bandwidth(int64_t nbytes, int num_threads, int passes) {
  SLIMRT_CHECK(active_isa() != Isa::Scalar, "probe_read_bandwidth: needs the avx2 or avx512 path");
  SLIMRT_CHECK(nbytes >= (1 << 20) && num_threads >= 1 && passes >= 1,
               "probe_read_bandwidth: nbytes >= 1 MiB, num_threads >= 1 and passes >= 1 required");
  nbytes = round_up(nbytes, 4096);
  auto* buf = static_cast<uint8_t*>(std::aligned_alloc(4096, static_cast<size_t>(nbytes)));
  SLIMRT_CHECK(buf != nullptr, "probe_read_bandwidth: could not allocate " << nbytes << " bytes");
  std::memset(buf, 1, static_cast<size_t>(nbytes));
  const bool wide = active_isa() == Isa::Avx512;
  double best = 0;
  volatile uint64_t sink = 0;
  for (int pass = 0; pass < passes; ++pass) {
    // Workers stay on their cores between passes (a freshly woken one was often queued behind
    // the caller on a VM: 2 threads then measured the 1-thread figure).
    parallel_keep_warm(1000000);
    const int64_t chunks = nbytes / 4096;
    const double t0 = now_s();
    std::vector<uint64_t> sums(num_threads, 0);
    parallel_for(num_threads, num_threads, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const int64_t c0 = chunks * t / num_threads, c1 = chunks * (t + 1) / num_threads;
        const uint8_t* p = buf + c0 * 4096;
        const int64_t n = (c1 - c0) * 4096;
        sums[t] = wide ? avx512::probe_read(p, n) : avx2::probe_read(p, n);
      }
    });
    const double dt = now_s() - t0;
    for (uint64_t s : sums) sink = sink + s;
    best = std::max(best, static_cast<double>(nbytes) / dt);
  }
  parallel_keep_warm(0);  // back to sleeping: whatever runs next (PyTorch's threads) gets the cores
  std::free(buf);
  return best;
}

}  // namespace slimrt
