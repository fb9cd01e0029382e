// Portable scalar path: the fallback on any CPU, and the path `SLIMRT_ISA=scalar` forces.
#include <cmath>

#include "int8_gemm/int8_gemm.h"
#include "parallel.h"

namespace slimrt {
namespace ref {

void quantize_per_token(const void* x, DType x_dt, int64_t M, int64_t K, int64_t ldx, int8_t* q,
                        float* scale, int num_threads) {
  parallel_for(M, num_threads, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      auto load = [&](int64_t k) -> float {
        return x_dt == DType::F32 ? static_cast<const float*>(x)[m * ldx + k]
                                  : bf16_to_f32(static_cast<const uint16_t*>(x)[m * ldx + k]);
      };
      float amax = 0.f;
      bool finite = true;
      for (int64_t k = 0; k < K; ++k) {
        const float v = load(k);
        if (!std::isfinite(v)) finite = false;
        amax = std::fmax(amax, std::fabs(v));
      }
      int8_t* qm = q + m * K;
      if (!finite || amax == 0.f) {
        scale[m] = finite ? 0.f : NAN;
        for (int64_t k = 0; k < K; ++k) qm[k] = 0;
        continue;
      }
      const float inv = (1.f / amax) * 127.f;  // as torch forms 127 / amax: reciprocal, then multiply
      scale[m] = amax / 127.f;
      for (int64_t k = 0; k < K; ++k) {
        const float v = load(k);
        float r = std::nearbyint(v * inv);  // round half to even, as torch.round
        r = std::fmin(127.f, std::fmax(-127.f, r));
        // inv overflows to +inf for amax < 127 / FLT_MAX: a zero then stays 0 (not 0 * inf = NaN).
        qm[k] = v == 0.f ? 0 : static_cast<int8_t>(r);
      }
    }
  });
}

void int8_gemm(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, const float* a_scale,
               const float* b_scale, const float* bias, void* out, OutType out_dt, int64_t ldc,
               int64_t M, int64_t N, int64_t K, int num_threads) {
  parallel_for(M * N, num_threads, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t m = i / N, n = i % N;
      const int8_t* am = a + m * lda;
      const int8_t* bn = b + n * ldb;
      int32_t acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += static_cast<int32_t>(am[k]) * static_cast<int32_t>(bn[k]);
      if (out_dt == OutType::I32) {
        static_cast<int32_t*>(out)[m * ldc + n] = acc;
        continue;
      }
      float v = static_cast<float>(acc) * a_scale[m] * b_scale[n];
      if (bias) v += bias[n];
      if (out_dt == OutType::F32)
        static_cast<float*>(out)[m * ldc + n] = v;
      else
        static_cast<uint16_t*>(out)[m * ldc + n] = f32_to_bf16(v);
    }
  }, 64);
}

void int8_w8_linear(const void* x, DType x_dt, int64_t ldx, const int8_t* b, int64_t ldb, const float* b_scale,
                    const float* bias, void* out, OutType out_dt, int64_t ldc, int64_t M, int64_t N, int64_t K,
                    int num_threads) {
  parallel_for(M * N, num_threads, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t m = i / N, n = i % N;
      const int8_t* bn = b + n * ldb;
      float acc = 0.f;
      for (int64_t k = 0; k < K; ++k) {
        const float xv = x_dt == DType::F32 ? static_cast<const float*>(x)[m * ldx + k]
                                            : bf16_to_f32(static_cast<const uint16_t*>(x)[m * ldx + k]);
        acc += xv * static_cast<float>(bn[k]);
      }
      float v = acc * b_scale[n];
      if (bias) v += bias[n];
      if (out_dt == OutType::F32)
        static_cast<float*>(out)[m * ldc + n] = v;
      else
        static_cast<uint16_t*>(out)[m * ldc + n] = f32_to_bf16(v);
    }
  }, 16);
}

}  // namespace ref
}  // namespace slimrt
