// Entry points: validate, then pick the ISA path.
#include "int8_gemm/int8_gemm.h"

#include "cpu_features.h"

namespace slimrt {

namespace {
void check_common(int64_t M, int64_t N, int64_t K) {
  SLIMRT_CHECK(M >= 0 && N >= 0 && K >= 0, "int8_gemm: negative size M=" << M << " N=" << N << " K=" << K);
}
}  // namespace

void quantize_per_token(const void* x, DType x_dt, int64_t M, int64_t K, int64_t ldx, int8_t* q,
                        float* scale, int num_threads) {
  SLIMRT_CHECK(M >= 0 && K >= 0, "quantize_per_token: negative size M=" << M << " K=" << K);
  SLIMRT_CHECK(M == 0 || ldx >= K, "quantize_per_token: row stride " << ldx << " < K=" << K);
  if (M == 0) return;
  ref::quantize_per_token(x, x_dt, M, K, ldx, q, scale, num_threads);
}

void int8_gemm(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, const float* a_scale,
               const float* b_scale, const float* bias, void* out, OutType out_dt, int64_t ldc,
               int64_t M, int64_t N, int64_t K, int num_threads) {
  check_common(M, N, K);
  SLIMRT_CHECK(M == 0 || lda >= K, "int8_gemm: a row stride " << lda << " < K=" << K);
  SLIMRT_CHECK(N == 0 || ldb >= K, "int8_gemm: b row stride " << ldb << " < K=" << K);
  SLIMRT_CHECK(M == 0 || ldc >= N, "int8_gemm: out row stride " << ldc << " < N=" << N);
  SLIMRT_CHECK(out_dt == OutType::I32 || (a_scale && b_scale), "int8_gemm: scales are required for a float output");
  if (M == 0 || N == 0) return;
  ref::int8_gemm(a, lda, b, ldb, a_scale, b_scale, bias, out, out_dt, ldc, M, N, K, num_threads);
}

}  // namespace slimrt
