// AVX2 path of w4_linear (compiled with -mavx2 -mfma -mf16c -ffp-contract=off): the AVX-512 path's
// math on 8-column halves of each 16-column panel. Without VNNI the u8 x s8 dot of 4 is vpmaddubsw
// (pairs into int16: |15 * 127 * 2| = 3810, never saturating) then vpmaddwd by ones (int32): exact,
// so the integer sums and the fp32 epilogue are the AVX-512 path's, bit for bit.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "parallel.h"
#include "w4_linear/w4_linear.h"

namespace slimrt {
namespace avx2 {
namespace {

inline int32_t load32(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

using Args = W4PackedArgs;

inline __m256i dot4(__m256i acc, __m256i w_u8, __m256i x_s8, __m256i ones16) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w_u8, x_s8), ones16));
}

// Rows m0 .. m0 + MR - 1 of one panel (two 8-column halves), all groups.
template <int MR>
void tile(const Args& s, int64_t m0, int64_t p) {
  const int64_t ng = s.a.ng, G = s.a.G, kp = ng * G;
  const __m256i low4 = _mm256_set1_epi8(0x0f), ones16 = _mm256_set1_epi16(1);
  const uint8_t* pan = s.panels + p * s.panel_bytes;
  __m256 accf[MR][2];
  for (int r = 0; r < MR; ++r) accf[r][0] = accf[r][1] = _mm256_setzero_ps();
  const int8_t* q0 = s.a.q + m0 * kp;
  for (int64_t g = 0; g < ng; ++g) {
    __m256i acc[MR][2];
    for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int64_t c = g * G / 8; c < (g + 1) * G / 8; ++c) {
      const uint8_t* wp = pan + s.meta + c * 64;
      _mm_prefetch(reinterpret_cast<const char*>(wp) + 4096, _MM_HINT_T0);
      __m256i lo[2], hi[2];
      for (int h = 0; h < 2; ++h) {
        const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 32 * h));
        lo[h] = _mm256_and_si256(w, low4);
        hi[h] = _mm256_and_si256(_mm256_srli_epi16(w, 4), low4);
      }
      for (int r = 0; r < MR; ++r) {
        const int8_t* qr = q0 + r * kp + c * 8;
        const __m256i xa = _mm256_set1_epi32(load32(qr)), xb = _mm256_set1_epi32(load32(qr + 4));
        for (int h = 0; h < 2; ++h) acc[r][h] = dot4(dot4(acc[r][h], lo[h], xa, ones16), hi[h], xb, ones16);
      }
    }
    for (int h = 0; h < 2; ++h) {
      const __m256 sc = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pan + g * 32 + h * 16)));
      const __m256 zf = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(
          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(pan + ng * 32 + g * 16 + h * 8))));
      for (int r = 0; r < MR; ++r) {
        const int64_t mg = (m0 + r) * ng + g;
        const __m256 isum = _mm256_fnmadd_ps(zf, _mm256_set1_ps(static_cast<float>(s.a.sum[mg])),
                                             _mm256_cvtepi32_ps(acc[r][h]));  // exact: integers < 2^24
        const __m256 sxw = _mm256_mul_ps(sc, _mm256_set1_ps(s.a.scale[mg]));
        accf[r][h] = _mm256_add_ps(accf[r][h], _mm256_mul_ps(isum, sxw));
      }
    }
  }
  const int64_t n = p * 16;
  for (int r = 0; r < MR; ++r) {
    alignas(32) float v[16];
    _mm256_store_ps(v, accf[r][0]);
    _mm256_store_ps(v + 8, accf[r][1]);
    for (int64_t j = 0; j < 16 && n + j < s.N; ++j) {
      float f = v[j];
      if (s.bias) f = f + s.bias[n + j];
      const int64_t off = (m0 + r) * s.ldc + n + j;
      if (s.out_dt == OutType::F32) static_cast<float*>(s.out)[off] = f;
      else static_cast<uint16_t*>(s.out)[off] = f32_to_bf16(f);
    }
  }
}

}  // namespace

void w4_linear_packed(const W4Act& a, const uint8_t* packed, const float* bias, void* out, OutType out_dt,
                      int64_t ldc, int64_t N, int num_threads) {
  int64_t h[8];
  std::memcpy(h, packed, sizeof(h));
  const int64_t n_panels = h[3] / 16;
  const Args s{a, packed + 64, h[6], round_up(48 * a.ng, 64), N, bias, out, out_dt, ldc};
  parallel_for(n_panels, num_threads, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t m0 = 0; m0 < a.M; m0 += 2) {
        if (a.M - m0 >= 2) tile<2>(s, m0, p);
        else tile<1>(s, m0, p);
      }
  }, 1);
}

}  // namespace avx2
}  // namespace slimrt
