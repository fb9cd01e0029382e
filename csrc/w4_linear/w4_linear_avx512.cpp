// AVX-512 VNNI path of w4_linear (compiled with -mavx512{f,bw,vl,dq,vnni} -mf16c -ffp-contract=off).
//
// Per 8-deep k chunk and 16-column panel: one 64-byte load; its low nibbles are the vpdpbusd u8 operand
// "16 columns x 4 k", its high nibbles the next 4 k; the int8 activations of those k broadcast as a
// dword. Codes are 0..15 (u8), activations -127..127 (s8): vpdpbusd sums exactly. At a group's end
// the zero point comes off in fp32 (isum = float(sum c q) - z * sum q: integers below 2^24, so exact),
// then the fp32 epilogue of the spec, one column per lane: acc += float(isum) * (scale * x_scale).
//
// Napkin math, M = 1: a 64-byte chunk (128 weights) costs 1 load, 3 unpack ops, 2 vpdpbusd; at ~4 ops
// per cycle a core streams ~50 B/cycle of weights, far above its share of DRAM bandwidth, so decode
// is bound by the bytes (0.55 per weight at G = 64 against int8's 1.0).
#include <immintrin.h>

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "parallel.h"
#include "simd/vmath_avx512.h"
#include "w4_linear/w4_linear.h"

namespace slimrt {
namespace avx512 {
namespace {

using simd::dpbusd;
using simd::load32;
using simd::to_bf16;

constexpr int64_t kPrefetch = 8192;  // bytes of a panel's weight stream prefetched ahead

using Args = W4PackedArgs;

// Rows m0 .. m0 + MR - 1 times panels p0 .. p0 + NB - 1, all groups. SPLIT: separate accumulators for
// the low- and high-nibble products (more independent vpdpbusd chains when MR * NB is small).
template <int MR, int NB, bool SPLIT>
void tile(const Args& s, int64_t m0, int64_t p0) {
  const int64_t ng = s.a.ng, G = s.a.G, kp = ng * G;
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  const uint8_t* pan[NB];
  for (int j = 0; j < NB; ++j) pan[j] = s.panels + (p0 + j) * s.panel_bytes;
  __m512 accf[MR][NB];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NB; ++j) accf[r][j] = _mm512_setzero_ps();
  const int8_t* q0 = s.a.q + m0 * kp;
  for (int64_t g = 0; g < ng; ++g) {
    __m512i acc[MR][NB], acc2[MR][NB];
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NB; ++j) acc[r][j] = acc2[r][j] = _mm512_setzero_si512();
    for (int64_t c = g * G / 8; c < (g + 1) * G / 8; ++c) {
      __m512i lo[NB], hi[NB];
      for (int j = 0; j < NB; ++j) {
        const uint8_t* wp = pan[j] + s.meta + c * 64;
        _mm_prefetch(reinterpret_cast<const char*>(wp) + kPrefetch, _MM_HINT_T0);
        const __m512i w = _mm512_loadu_si512(wp);
        lo[j] = _mm512_and_si512(w, low4);
        hi[j] = _mm512_and_si512(_mm512_srli_epi16(w, 4), low4);
      }
      for (int r = 0; r < MR; ++r) {
        const int8_t* qr = q0 + r * kp + c * 8;
        const __m512i xa = _mm512_set1_epi32(load32(qr)), xb = _mm512_set1_epi32(load32(qr + 4));
        for (int j = 0; j < NB; ++j) {
          acc[r][j] = dpbusd(acc[r][j], lo[j], xa);
          if (SPLIT) acc2[r][j] = dpbusd(acc2[r][j], hi[j], xb);
          else acc[r][j] = dpbusd(acc[r][j], hi[j], xb);
        }
      }
    }
    for (int j = 0; j < NB; ++j) {
      const __m512 sc = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pan[j] + g * 32)));
      const __m512 zf = _mm512_cvtepi32_ps(
          _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pan[j] + ng * 32 + g * 16))));
      for (int r = 0; r < MR; ++r) {
        const int64_t mg = (m0 + r) * ng + g;
        const __m512i raw = SPLIT ? _mm512_add_epi32(acc[r][j], acc2[r][j]) : acc[r][j];
        const __m512 isum = _mm512_fnmadd_ps(zf, _mm512_set1_ps(static_cast<float>(s.a.sum[mg])),
                                             _mm512_cvtepi32_ps(raw));  // exact: integers < 2^24
        const __m512 sxw = _mm512_mul_ps(sc, _mm512_set1_ps(s.a.scale[mg]));
        accf[r][j] = _mm512_add_ps(accf[r][j], _mm512_mul_ps(isum, sxw));
      }
    }
  }
  for (int j = 0; j < NB; ++j) {
    const int64_t n = (p0 + j) * 16;
    if (n >= s.N) break;
    const __mmask16 mk = s.N - n >= 16 ? __mmask16(0xffff) : __mmask16((1u << (s.N - n)) - 1);
    const __m512 bb = s.bias ? _mm512_maskz_loadu_ps(mk, s.bias + n) : _mm512_setzero_ps();
    for (int r = 0; r < MR; ++r) {
      __m512 f = accf[r][j];
      if (s.bias) f = _mm512_add_ps(f, bb);
      const int64_t off = (m0 + r) * s.ldc + n;
      if (s.out_dt == OutType::F32) _mm512_mask_storeu_ps(static_cast<float*>(s.out) + off, mk, f);
      else _mm256_mask_storeu_epi16(static_cast<uint16_t*>(s.out) + off, mk, to_bf16(f));
    }
  }
}

constexpr int64_t kMR = 6;  // rows per tile at M > 1

template <int NB>
void rows(const Args& s, int64_t m0, int64_t mr, int64_t p0) {
  switch (mr) {
    case 1: return tile<1, NB, true>(s, m0, p0);
    case 2: return tile<2, NB, NB <= 2>(s, m0, p0);
    case 3: return tile<3, NB, false>(s, m0, p0);
    case 4: return tile<4, NB, false>(s, m0, p0);
    case 5: return tile<5, NB, false>(s, m0, p0);
    default: return tile<6, NB, false>(s, m0, p0);
  }
}

}  // namespace

// w4_quantize_act (w4_linear.h) with 16 lanes: the same fp32 amax, (1 / amax) * 127, x * inv and
// round-half-even conversion per element as the scalar version, so the same bytes. A group whose inv
// overflows (amax < 127 / FLT_MAX) goes to the scalar rule (returns false for the caller to redo it).
bool w4_quantize_group(const void* x, DType x_dt, int64_t off, int64_t kn, int64_t G, int8_t* q, float* scale,
                       int32_t* sum) {
  const __m512 inf = _mm512_set1_ps(INFINITY);
  __m512 vmax = _mm512_setzero_ps();
  __mmask16 bad = 0;
  __m512 xs[8];  // G <= 128
  for (int64_t i = 0, v = 0; i < G; i += 16, ++v) {
    const __mmask16 m = i >= kn ? __mmask16(0) : kn - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (kn - i)) - 1);
    if (x_dt == DType::F32) {
      xs[v] = _mm512_maskz_loadu_ps(m, static_cast<const float*>(x) + off + i);
    } else {
      const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(x) + off + i);
      xs[v] = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    const __m512 a = _mm512_abs_ps(xs[v]);
    bad |= _mm512_cmp_ps_mask(a, inf, _CMP_NLT_UQ);  // +-Inf or NaN
    vmax = _mm512_max_ps(vmax, a);
  }
  const float amax = _mm512_reduce_max_ps(vmax);
  if (bad || amax == 0.f) {
    std::memset(q, 0, static_cast<size_t>(G));
    *scale = bad ? NAN : 0.f;
    *sum = 0;
    return true;
  }
  const float inv_s = (1.f / amax) * 127.f;
  if (!std::isfinite(inv_s)) return false;
  const __m512 inv = _mm512_set1_ps(inv_s);
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  __m512i acc = _mm512_setzero_si512();
  for (int64_t i = 0, v = 0; i < G; i += 16, ++v) {
    __m512i r = _mm512_cvt_roundps_epi32(_mm512_mul_ps(xs[v], inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm512_min_epi32(_mm512_max_epi32(r, lo), hi);
    acc = _mm512_add_epi32(acc, r);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), _mm512_cvtepi32_epi8(r));
  }
  *scale = amax / 127.f;
  *sum = _mm512_reduce_add_epi32(acc);
  return true;
}

void w4_linear_packed(const W4Act& a, const uint8_t* packed, const float* bias, void* out, OutType out_dt,
                      int64_t ldc, int64_t N, int num_threads) {
  int64_t h[8];
  std::memcpy(h, packed, sizeof(h));
  const int64_t n_panels = h[3] / 16, pb = h[6];
  const Args s{a, packed + 64, pb, round_up(48 * a.ng, 64), N, bias, out, out_dt, ldc};
  // M = 1: 4 panels per tile (4 weight streams, 8 vpdpbusd chains); M > 1: 2 panels x 6 rows, the
  // unpacked chunk reused by every row of the tile, the panels' weights L1/L2-resident across row tiles.
  int64_t nb = a.M == 1 ? 4 : 2;
  // Equal shares: SmolLM2's N = 576 is 36 panels, 9 blocks of 4 (5 + 4 on 2 threads: 11% idle), 18 of 2.
  const int64_t nt = std::max(1, num_threads);
  while (nb > 1 && div_up(n_panels, nb) % nt != 0 && div_up(n_panels, nb) < 8 * nt) nb /= 2;
  const int64_t blocks = div_up(n_panels, nb);
  parallel_for(blocks, num_threads, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t p0 = b * nb, np = std::min(nb, n_panels - p0);
      for (int64_t m0 = 0; m0 < a.M; m0 += kMR) {
        const int64_t mr = std::min<int64_t>(kMR, a.M - m0);
        switch (np) {
          case 1: rows<1>(s, m0, mr, p0); break;
          case 2: rows<2>(s, m0, mr, p0); break;
          case 3: rows<3>(s, m0, mr, p0); break;
          default: rows<4>(s, m0, mr, p0); break;
        }
      }
    }
  }, 1);
}

}  // namespace avx512
}  // namespace slimrt
