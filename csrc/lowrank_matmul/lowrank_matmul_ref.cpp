// Portable scalar path: the fallback on any CPU, and the path `SLIMRT_ISA=scalar` forces.
// Same math and summation order as the SIMD paths (k ascending into h, then r ascending into y).
#include <vector>

#include "lowrank_matmul/lowrank_matmul.h"
#include "parallel.h"

namespace slimrt {
namespace ref {

namespace {
inline float at(const void* p, DType dt, int64_t i) {
  return dt == DType::F32 ? static_cast<const float*>(p)[i] : bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
}
}  // namespace

void lowrank_matmul(const void* x, int64_t ldx, const void* vt, int64_t ldvt, const void* ut, int64_t ldut,
                    const float* bias, void* y, int64_t ldy, DType dt, int64_t M, int64_t K, int64_t R,
                    int64_t N, int num_threads) {
  parallel_for(M, num_threads, [&](int64_t m0, int64_t m1) {
    std::vector<float> h(static_cast<size_t>(R)), acc(static_cast<size_t>(N));
    for (int64_t m = m0; m < m1; ++m) {
      // h (R,) = x[m] @ vt
      for (int64_t r = 0; r < R; ++r) h[r] = 0.f;
      for (int64_t k = 0; k < K; ++k) {
        const float xk = at(x, dt, m * ldx + k);
        for (int64_t r = 0; r < R; ++r) h[r] += xk * at(vt, dt, k * ldvt + r);
      }
      // y[m] (N,) = h @ ut + bias
      for (int64_t n = 0; n < N; ++n) acc[n] = 0.f;
      for (int64_t r = 0; r < R; ++r) {
        const float hr = h[r];
        for (int64_t n = 0; n < N; ++n) acc[n] += hr * at(ut, dt, r * ldut + n);
      }
      for (int64_t n = 0; n < N; ++n) {
        const float v = bias ? acc[n] + bias[n] : acc[n];
        if (dt == DType::F32)
          static_cast<float*>(y)[m * ldy + n] = v;
        else
          static_cast<uint16_t*>(y)[m * ldy + n] = f32_to_bf16(v);
      }
    }
  });
}

}  // namespace ref
}  // namespace slimrt
