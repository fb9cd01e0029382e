// AVX2 path (no VNNI). Compiled with -mavx2 -mfma -ffp-contract=off; reached only after dispatch.
//
// Exactness: int8 operands are sign-extended to int16 and multiplied with vpmaddwd, whose pair
// sums (at most 2 * 128 * 128 = 32768) always fit int32; accumulation is wrapping vpaddd. Never
// vpmaddubsw: its u8 x s8 pair sums saturate at int16 (255 * 127 * 2 > 32767) and give wrong answers.
// Reads the same packed layout as the AVX-512 path: one 16-byte load = 4 columns x 4 k, widened to
// 16 int16, times a[k..k+3] broadcast 4 times -> 8 int32 lanes = (column, k pair) partial sums,
// folded by vphaddd at the end. The comp column sums are not needed (a is used signed).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "int8_gemm/int8_gemm.h"
#include "parallel.h"

namespace slimrt {
namespace avx2 {
namespace {

constexpr int kMR = 4;  // rows per tile; a tile is 4 rows x 8 columns (half a panel): 8 accumulators

inline int64_t load64(const void* p) {
  int64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

inline __m128i to_bf16(__m256 f) {
  const __m256i u = _mm256_castps_si256(f);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40)), nan);
  r = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
  return _mm256_castsi256_si128(r);
}

// Stores 8 floats (or int32) at out + off, only the first `cnt` when cnt < 8.
inline void store8(void* out, OutType dt, int64_t off, int64_t cnt, __m256 f, __m256i i) {
  alignas(32) uint16_t h[8];
  if (dt == OutType::I32) {
    if (cnt >= 8) return _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<int32_t*>(out) + off), i);
    alignas(32) int32_t t[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(t), i);
    std::memcpy(static_cast<int32_t*>(out) + off, t, 4 * cnt);
  } else if (dt == OutType::F32) {
    if (cnt >= 8) return _mm256_storeu_ps(static_cast<float*>(out) + off, f);
    alignas(32) float t[8];
    _mm256_store_ps(t, f);
    std::memcpy(static_cast<float*>(out) + off, t, 4 * cnt);
  } else {
    _mm_store_si128(reinterpret_cast<__m128i*>(h), to_bf16(f));
    std::memcpy(static_cast<uint16_t*>(out) + off, h, 2 * std::min<int64_t>(cnt, 8));
  }
}

// Loads up to 8 activations as fp32 (zeros past cnt).
inline __m256 load_act8(const void* x, DType dt, int64_t off, int64_t cnt) {
  alignas(32) float t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  if (dt == DType::F32) {
    if (cnt >= 8) return _mm256_loadu_ps(static_cast<const float*>(x) + off);
    std::memcpy(t, static_cast<const float*>(x) + off, 4 * cnt);
    return _mm256_load_ps(t);
  }
  const uint16_t* h = static_cast<const uint16_t*>(x) + off;
  if (cnt >= 8)
    return _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h))), 16));
  for (int64_t i = 0; i < cnt; ++i) t[i] = bf16_to_f32(h[i]);
  return _mm256_load_ps(t);
}

struct Gemm {
  const int16_t* a16;  // (M, k_pad) a widened to int16
  int64_t k_pad, kq;
  const int8_t* panels;
  const float *a_scale, *b_scale, *bias;
  void* out;
  OutType out_dt;
  int64_t ldc, N;
};

// MR rows x 8 columns starting at column n0 (n0 % 8 == 0).
template <int MR>
void tile(const Gemm& g, int64_t m0, int64_t n0) {
  __m256i acc[MR][2];
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  const int8_t* b = g.panels + (n0 / kPanel) * kPanel * g.k_pad + (n0 % kPanel) * 4;
  const int16_t* a = g.a16 + m0 * g.k_pad;
  for (int64_t q = 0; q < g.kq; ++q, b += 64, a += 4) {
    const __m256i b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b)));
    const __m256i b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16)));
    for (int r = 0; r < MR; ++r) {
      const __m256i av = _mm256_set1_epi64x(load64(a + r * g.k_pad));
      acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(b0, av));
      acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(b1, av));
    }
  }
  const int64_t cnt = std::min<int64_t>(8, g.N - n0);
  __m256 bs = _mm256_setzero_ps(), bb = _mm256_setzero_ps();
  if (g.out_dt != OutType::I32) {
    bs = load_act8(g.b_scale, DType::F32, n0, cnt);
    if (g.bias) bb = load_act8(g.bias, DType::F32, n0, cnt);
  }
  for (int r = 0; r < MR; ++r) {
    // [c0 c1 c4 c5 | c2 c3 c6 c7] -> [c0 .. c7]
    const __m256i s = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[r][0], acc[r][1]), 0xD8);
    __m256 f = _mm256_setzero_ps();
    if (g.out_dt != OutType::I32) {
      f = _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(g.a_scale[m0 + r])), bs);
      if (g.bias) f = _mm256_add_ps(f, bb);
    }
    store8(g.out, g.out_dt, (m0 + r) * g.ldc + n0, cnt, f, s);
  }
}

using TileFn = void (*)(const Gemm&, int64_t, int64_t);
constexpr TileFn kTiles[kMR] = {tile<1>, tile<2>, tile<3>, tile<4>};

}  // namespace

void int8_gemm_packed(const int8_t* a, int64_t lda, const int8_t* packed, const float* a_scale,
                      const float* b_scale, const float* bias, void* out, OutType out_dt, int64_t ldc, int64_t M,
                      int64_t N, int64_t K, int num_threads) {
  int64_t hdr[5];
  std::memcpy(hdr, packed, sizeof(hdr));
  const int64_t k_pad = hdr[4];
  std::vector<int16_t> a16(static_cast<size_t>(M * k_pad));
  for (int64_t m = 0; m < M; ++m) {
    int16_t* d = a16.data() + m * k_pad;
    int64_t k = 0;
    for (; k + 16 <= K; k += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + k),
                          _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + m * lda + k))));
    for (; k < K; ++k) d[k] = a[m * lda + k];
    for (; k < k_pad; ++k) d[k] = 0;
  }
  Gemm g{a16.data(), k_pad, k_pad / 4, packed + kPackHeader, a_scale, b_scale, bias, out, out_dt, ldc, N};
  const int64_t n8 = div_up(N, 8);
  const int64_t mb = round_up(div_up(M, div_up(M, 64)), kMR);  // equal-height row blocks
  const int64_t m_blocks = div_up(M, mb);
  parallel_for(n8 * m_blocks, num_threads, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t n0 = (i / m_blocks) * 8, mbi = i % m_blocks;
      const int64_t m_end = std::min(M, (mbi + 1) * mb);
      for (int64_t m0 = mbi * mb; m0 < m_end; m0 += kMR) kTiles[std::min<int64_t>(kMR, m_end - m0) - 1](g, m0, n0);
    }
  }, 4);
}

void int8_w8_linear_packed(const void* x, DType x_dt, int64_t ldx, const int8_t* packed, const float* b_scale,
                           const float* bias, void* out, OutType out_dt, int64_t ldc, int64_t M, int64_t N,
                           int64_t K, int num_threads) {
  int64_t hdr[5];
  std::memcpy(hdr, packed, sizeof(hdr));
  const int64_t n_pad = hdr[3], k_pad = hdr[4], kq = k_pad / 4;
  const int8_t* panels = packed + kPackHeader;
  // x (M, K) -> xf (rows, xs) fp32 a block of rows at a time (w8_block_rows), zero padded; rows
  // rounded to 8 floats for the 8-wide stores. Each output element's arithmetic does not depend on it.
  const int64_t xs = round_up(k_pad, 8);
  const int64_t rows = w8_block_rows(M, xs);
  std::vector<float> xf(static_cast<size_t>(rows * xs), 0.f);
  for (int64_t r0 = 0; r0 < M; r0 += rows) {
    const int64_t mb = std::min(rows, M - r0);
    for (int64_t m = 0; m < mb; ++m)
      for (int64_t k = 0; k < K; k += 8)
        _mm256_storeu_ps(xf.data() + m * xs + k, load_act8(x, x_dt, (r0 + m) * ldx + k, std::min<int64_t>(8, K - k)));
    parallel_for(n_pad / kPanel, num_threads, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int8_t* pb = panels + p * kPanel * k_pad;
        for (int64_t m = 0; m < mb; ++m) {
          // acc[g] lanes = (column 2g + c, k % 4) for c in {0, 1}
          __m256 acc[8];
          for (auto& v : acc) v = _mm256_setzero_ps();
          const float* xr = xf.data() + m * xs;
          for (int64_t q = 0; q < kq; ++q) {
            const __m256 xv = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(xr + 4 * q));
            const int8_t* bp = pb + q * 64;
            for (int g = 0; g < 8; ++g) {
              const __m256 w = _mm256_cvtepi32_ps(
                  _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(bp + 8 * g))));
              acc[g] = _mm256_fmadd_ps(w, xv, acc[g]);
            }
          }
          alignas(32) float t[8];
          const int64_t row = r0 + m;
          for (int g = 0; g < 8; ++g) {
            const int64_t n = p * kPanel + 2 * g;
            _mm256_store_ps(t, acc[g]);
            for (int c = 0; c < 2; ++c) {
              if (n + c >= N) break;
              float v = ((t[4 * c] + t[4 * c + 1]) + (t[4 * c + 2] + t[4 * c + 3])) * b_scale[n + c];
              if (bias) v += bias[n + c];
              if (out_dt == OutType::F32) static_cast<float*>(out)[row * ldc + n + c] = v;
              else static_cast<uint16_t*>(out)[row * ldc + n + c] = f32_to_bf16(v);
            }
          }
        }
      }
    }, std::max<int64_t>(1, 8192 / std::max<int64_t>(k_pad, 1)));
  }
}

void quantize_per_token(const void* x, DType x_dt, int64_t M, int64_t K, int64_t ldx, int8_t* q, float* scale,
                        int num_threads) {
  parallel_for(M, num_threads, [&](int64_t m0, int64_t m1) {
    const __m256 inf = _mm256_set1_ps(INFINITY);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t m = m0; m < m1; ++m) {
      // Four running maxima (one would wait on vmaxps latency every vector) and the NaN/Inf test
      // kept in a vector: max is exact in any order, so amax is the same.
      __m256 vmax[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
      __m256 badv = _mm256_setzero_ps();
      // Pull the next row in while this one is reduced (the two passes per row break the hardware
      // prefetcher's stream; same fix as the AVX-512 path). Prefetches never fault.
      const int64_t esz = x_dt == DType::F32 ? 4 : 2;
      const char* nxt = static_cast<const char*>(x) + (m + 1) * ldx * esz;
      int64_t k = 0;
      for (; k + 32 <= K; k += 32) {
        _mm_prefetch(nxt + k * esz, _MM_HINT_T0);
        if (esz == 4) _mm_prefetch(nxt + k * esz + 64, _MM_HINT_T0);
        for (int u = 0; u < 4; ++u) {
          const __m256 a = _mm256_and_ps(load_act8(x, x_dt, m * ldx + k + 8 * u, 8), absmask);
          badv = _mm256_or_ps(badv, _mm256_cmp_ps(a, inf, _CMP_NLT_UQ));
          vmax[u] = _mm256_max_ps(vmax[u], a);
        }
      }
      for (; k < K; k += 8) {
        if ((k * esz) % 64 == 0) _mm_prefetch(nxt + k * esz, _MM_HINT_T0);
        const __m256 a = _mm256_and_ps(load_act8(x, x_dt, m * ldx + k, std::min<int64_t>(8, K - k)), absmask);
        badv = _mm256_or_ps(badv, _mm256_cmp_ps(a, inf, _CMP_NLT_UQ));
        vmax[0] = _mm256_max_ps(vmax[0], a);
      }
      const int bad = _mm256_movemask_ps(badv);
      alignas(32) float t[8];
      _mm256_store_ps(t, _mm256_max_ps(_mm256_max_ps(vmax[0], vmax[1]), _mm256_max_ps(vmax[2], vmax[3])));
      float amax = 0.f;
      for (float v : t) amax = std::max(amax, v);
      int8_t* qm = q + m * K;
      if (bad || amax == 0.f) {
        scale[m] = bad ? NAN : 0.f;
        std::memset(qm, 0, static_cast<size_t>(K));
        continue;
      }
      scale[m] = amax / 127.f;
      const float inv_s = (1.f / amax) * 127.f;  // torch: 127 / t == reciprocal(t) * 127
      if (!std::isfinite(inv_s)) {
        // amax < 127 / FLT_MAX: inv is +inf; nonzero values go to +-127, zeros stay 0 (as the reference).
        for (int64_t kk = 0; kk < K; ++kk) {
          const float v = x_dt == DType::F32 ? static_cast<const float*>(x)[m * ldx + kk]
                                             : bf16_to_f32(static_cast<const uint16_t*>(x)[m * ldx + kk]);
          qm[kk] = static_cast<int8_t>(v > 0.f ? 127 : v < 0.f ? -127 : 0);
        }
        continue;
      }
      const __m256 inv = _mm256_set1_ps(inv_s);
      const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
      // 32 at a time: |x| <= amax and a finite inv keep every rounded value in [-127, 127] (|x * inv| < 127.5), so the
      // saturating packs narrow four vectors unchanged and one dword permute undoes their lane order.
      const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
      k = 0;
      for (; k + 32 <= K; k += 32) {
        __m256i i[4];
        for (int u = 0; u < 4; ++u)
          i[u] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(load_act8(x, x_dt, m * ldx + k + 8 * u, 8), inv),
                                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]), _mm256_packs_epi32(i[2], i[3]));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(qm + k), _mm256_permutevar8x32_epi32(b, order));
      }
      for (; k + 8 <= K; k += 8) {
        const __m256 v = _mm256_round_ps(_mm256_mul_ps(load_act8(x, x_dt, m * ldx + k, 8), inv),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256i i = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(v), lo), hi);
        const __m256i p16 = _mm256_packs_epi32(i, i);     // [i0..3 i0..3 | i4..7 i4..7] int16
        const __m256i p8 = _mm256_packs_epi16(p16, p16);  // bytes i0..3 at lane 0, i4..7 at lane 1
        const int32_t lo4 = _mm_cvtsi128_si32(_mm256_castsi256_si128(p8));
        const int32_t hi4 = _mm256_extract_epi32(p8, 4);
        std::memcpy(qm + k, &lo4, 4);
        std::memcpy(qm + k + 4, &hi4, 4);
      }
      for (; k < K; ++k) {
        const float xv = x_dt == DType::F32 ? static_cast<const float*>(x)[m * ldx + k]
                                            : bf16_to_f32(static_cast<const uint16_t*>(x)[m * ldx + k]);
        const float r = std::nearbyint(xv * inv_s);
        qm[k] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, r)));
      }
    }
  }, std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)));
}

uint64_t probe_read(const uint8_t* p, int64_t n) {
  __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  for (; i + 128 <= n; i += 128) {
    s0 = _mm256_add_epi64(s0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
    s1 = _mm256_add_epi64(s1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
    s2 = _mm256_add_epi64(s2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 64)));
    s3 = _mm256_add_epi64(s3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 96)));
  }
  alignas(32) uint64_t t[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(t),
                     _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3)));
  return t[0] + t[1] + t[2] + t[3];
}

}  // namespace avx2
}  // namespace slimrt
