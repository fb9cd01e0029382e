// Entry point: validate sizes and strides, then pick the ISA path.
#include "lowrank_matmul/lowrank_matmul.h"

#include "cpu_features.h"

namespace slimrt {

void lowrank_matmul(const void* x, int64_t ldx, const void* vt, int64_t ldvt, const void* ut, int64_t ldut,
                    const float* bias, void* y, int64_t ldy, DType dt, int64_t M, int64_t K, int64_t R,
                    int64_t N, int num_threads) {
  SLIMRT_CHECK(M >= 0 && K >= 0 && R >= 0 && N >= 0,
               "lowrank_matmul: negative size M=" << M << " K=" << K << " R=" << R << " N=" << N);
  SLIMRT_CHECK(dt == DType::F32 || dt == DType::BF16, "lowrank_matmul: dtype code " << static_cast<int>(dt)
                                                          << " is not float32 (0) or bfloat16 (1)");
  SLIMRT_CHECK(M == 0 || ldx >= K, "lowrank_matmul: x row stride " << ldx << " < K=" << K);
  SLIMRT_CHECK(K == 0 || ldvt >= R, "lowrank_matmul: v^T row stride " << ldvt << " < R=" << R);
  SLIMRT_CHECK(R == 0 || ldut >= N, "lowrank_matmul: u^T row stride " << ldut << " < N=" << N);
  SLIMRT_CHECK(M == 0 || ldy >= N, "lowrank_matmul: y row stride " << ldy << " < N=" << N);
  if (M == 0 || N == 0) return;
  SLIMRT_CHECK(y != nullptr, "lowrank_matmul: y is null");
  SLIMRT_CHECK(K == 0 || x != nullptr, "lowrank_matmul: x is null");
  SLIMRT_CHECK(K == 0 || R == 0 || vt != nullptr, "lowrank_matmul: v is null");
  SLIMRT_CHECK(R == 0 || ut != nullptr, "lowrank_matmul: u is null");
  if (num_threads < 1) num_threads = 1;
  switch (active_isa()) {
    case Isa::Avx512:
      return avx512::lowrank_matmul(x, ldx, vt, ldvt, ut, ldut, bias, y, ldy, dt, M, K, R, N, num_threads);
    case Isa::Avx2:
      return avx2::lowrank_matmul(x, ldx, vt, ldvt, ut, ldut, bias, y, ldy, dt, M, K, R, N, num_threads);
    default:
      return ref::lowrank_matmul(x, ldx, vt, ldvt, ut, ldut, bias, y, ldy, dt, M, K, R, N, num_threads);
  }
}

}  // namespace slimrt
