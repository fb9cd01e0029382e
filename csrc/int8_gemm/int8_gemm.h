// int8 GEMM family: dynamic per-token quantization and the W8A8 GEMM.
//
//   quantize_per_token: x (M, K) fp32|bf16, row stride ldx  ->  q (M, K) int8 (row stride K),
//                       scale (M,) fp32;  scale = amax/127, q = round_half_even(x * (127/amax)).
//                       amax == 0 -> scale 0, q 0.  amax NaN/Inf -> scale NaN, q 0 (never an
//                       undefined float->int cast).
//   int8_gemm:          out[m, n] = float(sum_k a[m, k] * b[n, k]) * a_scale[m] * b_scale[n] + bias[n]
//                       a (M, K) int8 row stride lda, b (N, K) int8 row stride ldb (nn.Linear
//                       layout), the sum exact in int32. out fp32|bf16 row stride ldc; or with
//                       out_dt == I32 the raw int32 accumulator (scales and bias must be null).
#pragma once

#include <cstdint>

#include "common.h"

namespace slimrt {

enum class OutType : int { F32 = 0, BF16 = 1, I32 = 2 };

void quantize_per_token(const void* x, DType x_dt, int64_t M, int64_t K, int64_t ldx, int8_t* q,
                        float* scale, int num_threads);

void int8_gemm(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, const float* a_scale,
               const float* b_scale, const float* bias, void* out, OutType out_dt, int64_t ldc,
               int64_t M, int64_t N, int64_t K, int num_threads);

namespace ref {
void quantize_per_token(const void* x, DType x_dt, int64_t M, int64_t K, int64_t ldx, int8_t* q,
                        float* scale, int num_threads);
void int8_gemm(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, const float* a_scale,
               const float* b_scale, const float* bias, void* out, OutType out_dt, int64_t ldc,
               int64_t M, int64_t N, int64_t K, int num_threads);
}  // namespace ref

}  // namespace slimrt
