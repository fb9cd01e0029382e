// AVX-512 path: 16 fp32 lanes, micro-tile 8 rows x 32 columns (16 zmm accumulators),
// or up to 2 rows x 128 columns for decode.
#include <immintrin.h>

#include "lowrank_matmul/lowrank_matmul_impl.h"

namespace slimrt {
namespace avx512 {
namespace {

struct Simd {
  static constexpr int W = 16, MR = 8, NV = 2, NV_WIDE = 8;
  using V = __m512;
  static __mmask16 mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static V zero() { return _mm512_setzero_ps(); }
  static V bcast(const float* p) { return _mm512_set1_ps(*p); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load_n(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static V widen(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
  static V load(const uint16_t* p) { return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static V load_n(const uint16_t* p, int n) { return widen(_mm256_maskz_loadu_epi16(mask(n), p)); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void store_n(float* p, V v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  // Round to nearest even, as torch's .to(bfloat16); NaN stays a quiet NaN.
  static void store_bf16_n(uint16_t* p, V v, int n) {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i hi = _mm512_srli_epi32(u, 16);
    const __m512i lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
    _mm256_mask_storeu_epi16(p, mask(n), _mm512_cvtepi32_epi16(r));
  }
  static void bf16_row(const uint16_t* src, float* dst, int64_t n) {
    int64_t i = 0;
    for (; i + W <= n; i += W) store(dst + i, load(src + i));
    if (i < n) store_n(dst + i, load_n(src + i, static_cast<int>(n - i)), static_cast<int>(n - i));
  }
};

}  // namespace

void lowrank_matmul(const void* x, int64_t ldx, const void* vt, int64_t ldvt, const void* ut, int64_t ldut,
                    const float* bias, void* y, int64_t ldy, DType dt, int64_t M, int64_t K, int64_t R,
                    int64_t N, int num_threads) {
  run<Simd>(x, ldx, vt, ldvt, ut, ldut, bias, y, ldy, dt, M, K, R, N, num_threads);
}

}  // namespace avx512
}  // namespace slimrt
