// AVX2 + FMA path: 8 fp32 lanes, micro-tile 6 rows x 16 columns (12 ymm accumulators of 16),
// or up to 2 rows x 32 columns for decode.
#include <immintrin.h>

#include "lowrank_matmul/lowrank_matmul_impl.h"

namespace slimrt {
namespace avx2 {
namespace {

struct Simd {
  static constexpr int W = 8, MR = 6, NV = 2, NV_WIDE = 4;
  using V = __m256;
  static V zero() { return _mm256_setzero_ps(); }
  static V bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  // Tails go through a zero-padded copy: AVX2 has no 16-bit masked load, and tails are one panel per call.
  static V load_n(const float* p, int n) {
    alignas(32) float t[W] = {};
    std::memcpy(t, p, static_cast<size_t>(n) * 4);
    return _mm256_load_ps(t);
  }
  static V widen(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
  static V load(const uint16_t* p) { return widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static V load_n(const uint16_t* p, int n) {
    alignas(16) uint16_t t[W] = {};
    std::memcpy(t, p, static_cast<size_t>(n) * 2);
    return widen(_mm_load_si128(reinterpret_cast<const __m128i*>(t)));
  }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void store_n(float* p, V v, int n) {
    alignas(32) float t[W];
    _mm256_store_ps(t, v);
    std::memcpy(p, t, static_cast<size_t>(n) * 4);
  }
  // Round to nearest even, as torch's .to(bfloat16); NaN stays a quiet NaN.
  static void store_bf16_n(uint16_t* p, V v, int n) {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i hi = _mm256_srli_epi32(u, 16);
    const __m256i lsb = _mm256_and_si256(hi, _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_or_si256(hi, _mm256_set1_epi32(0x40)), nan);
    // 8 x u32 (all <= 0xffff) -> 8 x u16 in the low 128 bits.
    const __m256i pk = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xD8);
    if (n == W) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(pk));
    } else {
      alignas(16) uint16_t t[W];
      _mm_store_si128(reinterpret_cast<__m128i*>(t), _mm256_castsi256_si128(pk));
      std::memcpy(p, t, static_cast<size_t>(n) * 2);
    }
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

}  // namespace avx2
}  // namespace slimrt
