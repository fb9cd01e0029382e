// AVX-512 VNNI path. Compiled with -mavx512{f,bw,vl,dq,vnni} -ffp-contract=off; only ever reached
// after int8_gemm.cpp checked active_isa(), so nothing here runs on a CPU without it.
//
// W8A8 GEMM: vpdpbusd multiplies u8 x s8, so activations enter as a + 128 (u8) and the packed
// weight carries comp[n] = 128 * sum_k b[n, k]: sum (a + 128) b - comp = sum a b exactly, all in
// wrapping int32 (no saturating instruction anywhere), so -128 x -128 over any K that fits int32 is exact.
// Microkernel: 6 rows x 64 columns = 24 zmm accumulators + 4 weight vectors + 1 broadcast; per
// 4-deep k step it does 10 loads for 24 vpdpbusd (24 * 64 MACs). vpdpbusd is inline asm: gcc 12
// spills accumulators of the intrinsic form (~2.5x slower), see objdump of this file.
#include <immintrin.h>

// gcc 12's own avx512fintrin.h trips -Wmaybe-uninitialized on its _mm512_undefined_* helpers
// (masked loads, reductions): a false positive inside the header, silenced for this file only.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "cpu_features.h"
#include "int8_gemm/int8_gemm.h"
#include "simd/vmath_avx512.h"
#include "parallel.h"

namespace slimrt {
namespace avx512 {
namespace {

using simd::dpbusd;
using simd::load32;
using simd::to_bf16;

constexpr int kMR = 6;  // rows per microkernel tile
constexpr int kNB = 4;  // 16-column panels per tile (64 columns)

inline __mmask16 tail_mask(int64_t n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1); }

// Masked loads and stores are used only for partial vectors: with a full mask they are measurably
// slower than the plain forms on AMD Zen 5 (3-9% of the GEMM for the output stores alone).
inline __m512 load_act(const void* x, DType dt, int64_t off, __mmask16 m) {
  if (dt == DType::F32)
    return m == 0xffff ? _mm512_loadu_ps(static_cast<const float*>(x) + off)
                       : _mm512_maskz_loadu_ps(m, static_cast<const float*>(x) + off);
  const __m256i h = m == 0xffff ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(x) + off))
                                : _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(x) + off);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

inline void store_out(void* out, OutType dt, int64_t off, __mmask16 m, __m512 v) {
  if (dt == OutType::F32 && m == 0xffff)
    _mm512_storeu_ps(static_cast<float*>(out) + off, v);
  else if (dt == OutType::F32)
    _mm512_mask_storeu_ps(static_cast<float*>(out) + off, m, v);
  else if (m == 0xffff)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(static_cast<uint16_t*>(out) + off), to_bf16(v));
  else
    _mm256_mask_storeu_epi16(static_cast<uint16_t*>(out) + off, m, to_bf16(v));
}

// 1 / d for d >= 1 (finite or +inf): rcp14 plus one Newton step (relative error ~2^-28; vdivps costs
// several times more in the epilogue). 1 / inf = 0.
inline __m512 recip_ge1(__m512 d) {
  const __m512 r = _mm512_rcp14_ps(d);
  const __m512 rn = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.f)));
  return _mm512_mask_mov_ps(rn, _mm512_cmp_ps_mask(r, _mm512_setzero_ps(), _CMP_EQ_OQ), r);
}

// The epilogue activations (Act in int8_gemm.h), in fp32. erf by Abramowitz & Stegun 7.1.26 (|error|
// <= 1.5e-7): with u = |x| / sqrt 2, c = 1 - erf(u) = t (a1 + t (a2 + ...)) e^{-u^2}, t = 1 / (1 + p u),
// so 1 + erf(x / sqrt 2) is 2 - c for x >= 0 and c for x < 0 (no cancellation on the negative side).
// tanh by e = e^{-2|z|}: 1 + tanh(z) = 2 / (1 + e) for z >= 0 and 2 e / (1 + e) below; sigmoid alike
// with e = e^{-|x|}: 1 / (1 + e) for x >= 0, e / (1 + e) below.
inline __m512 act_vec(__m512 x, Act act) {
  if (act == Act::Relu) return _mm512_max_ps(_mm512_setzero_ps(), x);  // max(0, NaN) = NaN
  const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.f);
  if (act == Act::Gelu) {
    const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    const __m512 u = _mm512_mul_ps(_mm512_abs_ps(x), _mm512_set1_ps(0.70710678118654752f));
    const __m512 t = recip_ge1(_mm512_fmadd_ps(u, _mm512_set1_ps(0.3275911f), one));
    __m512 p = _mm512_set1_ps(1.061405429f);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
    const __m512 c = _mm512_mul_ps(_mm512_mul_ps(p, t), simd::exp16(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), u), u)));
    const __m512 s = _mm512_mask_mov_ps(_mm512_sub_ps(_mm512_set1_ps(2.f), c), neg, c);  // 1 + erf(x / sqrt 2)
    return _mm512_mul_ps(_mm512_mul_ps(half, x), s);
  }
  // GeluTanh: x (1 + tanh z) / 2 with z as below; Silu: x sigmoid(x), the same form with z = x / 2.
  const __m512 z = act == Act::Silu ? _mm512_mul_ps(half, x)
                                    : _mm512_mul_ps(_mm512_set1_ps(0.79788456080286536f),
                                                    _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), x),
                                                                    _mm512_mul_ps(x, x), x));
  const __mmask16 zneg = _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_LT_OQ);
  const __m512 e = simd::exp16(_mm512_mul_ps(_mm512_set1_ps(-2.f), _mm512_abs_ps(z)));
  const __m512 num = _mm512_mask_mov_ps(one, zneg, e);  // (1 + tanh z) / 2 = num / (1 + e)
  return _mm512_mul_ps(x, _mm512_mul_ps(num, recip_ge1(_mm512_add_ps(one, e))));
}

struct Gemm {
  const uint8_t* au;  // (M, k_pad) a + 128, row stride lda_u
  int64_t lda_u, k_pad, kq;
  const int8_t* panels;
  const int32_t* comp;
  const float *a_scale, *b_scale, *bias;
  void* out;
  OutType out_dt;
  int64_t ldc, N;
  int64_t am0;  // row of au[0] and a_scale[0] (the first row of a thread's chunk buffer; 0 when shared)
  Act act = Act::None;  // epilogue activation (fused linear only)
};

// Epilogue of one 16-column panel (columns n..n+15) for rows m0..m0+mr-1: acc[r][j] are the raw
// sums of (a + 128) * b; out = float(acc - comp) * a_scale * b_scale + bias (then the activation),
// in the reference's op order. Shared by the VNNI tiles and the AMX blocks.
template <typename Acc>
inline void epilogue(const Gemm& g, int64_t m0, int mr, int64_t n, const Acc& acc, int j) {
  const __mmask16 mk = tail_mask(g.N - n);
  const __m512i cv = _mm512_loadu_si512(g.comp + n);  // comp is padded to N_pad
  if (g.out_dt == OutType::I32) {
    for (int r = 0; r < mr; ++r) {
      int32_t* o = static_cast<int32_t*>(g.out) + (m0 + r) * g.ldc + n;
      if (mk == 0xffff) _mm512_storeu_si512(o, _mm512_sub_epi32(acc(r, j), cv));
      else _mm512_mask_storeu_epi32(o, mk, _mm512_sub_epi32(acc(r, j), cv));
    }
    return;
  }
  const __m512 bs = _mm512_maskz_loadu_ps(mk, g.b_scale + n);
  const __m512 bb = g.bias ? _mm512_maskz_loadu_ps(mk, g.bias + n) : _mm512_setzero_ps();
  for (int r = 0; r < mr; ++r) {
    __m512 f = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc(r, j), cv));
    f = _mm512_mul_ps(_mm512_mul_ps(f, _mm512_set1_ps(g.a_scale[m0 - g.am0 + r])), bs);
    if (g.bias) f = _mm512_add_ps(f, bb);
    if (g.act != Act::None) f = act_vec(f, g.act);
    store_out(g.out, g.out_dt, (m0 + r) * g.ldc + n, mk, f);
  }
}

// k blocks of up to 1024 4-deep groups (K = 4096: one block, a 256 KiB weight slab per 64-column
// tile, streamed from L2 by every row tile); longer K is split evenly and the partial sums go to a
// per-chunk int32 buffer between blocks. Measured on Zen 5 (1 thread, 512 x 4096 x 4096): blocks of
// 128 groups (the slab block in L1) 88%, 256: 90%, 512: 91%, 1024: 93% of the peak; the round trips
// of the partial sums cost more than streaming the weight from L2 does.
constexpr int64_t kKcq = 1024;
// Bytes of u8 activations per row chunk (all of K): the chunk stays in L2 (1 MiB on Zen 5) next to
// the weight slab while every column tile passes over it. K = 4096: 132 rows.
constexpr int64_t kAChunkBytes = 576 << 10;

// acc[r][j] (+)= sum over k groups [q0, q0 + nq) of (a[m0 + r] + 128) * b[panel p0 + j]; on the last
// block the epilogue writes out, otherwise the partial sums go to cbuf (row stride 64 int32).
template <int MR, int NB>
void tile(const Gemm& g, int64_t m0, int64_t p0, int64_t q0, int64_t nq, int32_t* cbuf, bool first, bool last,
          int64_t pfd, const int8_t* pfp, int64_t pfn) {
  __m512i acc[MR][NB];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NB; ++j)
      acc[r][j] = first ? _mm512_setzero_si512() : _mm512_loadu_si512(cbuf + r * 64 + j * 16);
  const uint8_t* a = g.au + (m0 - g.am0) * g.lda_u + q0 * 4;
  const int8_t* b = g.panels + p0 * kPanel * g.k_pad + q0 * 64;
  const int64_t ps = kPanel * g.k_pad;
  for (int64_t q = 0; q < nq; ++q, a += 4, b += 64) {
    __m512i bv[NB];
    for (int j = 0; j < NB; ++j) bv[j] = _mm512_loadu_si512(b + j * ps);
    // pfp[0, pfn): this row tile's run of the weight block that runs next (see run_part), a line per
    // k step. pfd (only when a chunk has too few row tiles to spread that over): the first row tile
    // pulls the next pfd groups of its own panels, whose runs the hardware prefetchers do not follow
    // across 4 KiB pages.
    if (q < pfn) _mm_prefetch(reinterpret_cast<const char*>(pfp + q * 64), _MM_HINT_T0);
    if (pfd)
      for (int j = 0; j < NB; ++j) _mm_prefetch(reinterpret_cast<const char*>(b + j * ps + pfd * 64), _MM_HINT_T0);
    for (int r = 0; r < MR; ++r) {
      const __m512i av = _mm512_set1_epi32(load32(a + r * g.lda_u));
      for (int j = 0; j < NB; ++j) acc[r][j] = dpbusd(acc[r][j], av, bv[j]);
    }
  }
  if (!last) {
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NB; ++j) _mm512_storeu_si512(cbuf + r * 64 + j * 16, acc[r][j]);
    return;
  }
  for (int j = 0; j < NB; ++j) {
    const int64_t n = (p0 + j) * kPanel;
    if (n >= g.N) break;
    epilogue(g, m0, MR, n, [&](int r, int jj) { return acc[r][jj]; }, j);
  }
}

using TileFn = void (*)(const Gemm&, int64_t, int64_t, int64_t, int64_t, int32_t*, bool, bool, int64_t, const int8_t*, int64_t);
template <int MR>
constexpr TileFn row_fns[kNB] = {tile<MR, 1>, tile<MR, 2>, tile<MR, 3>, tile<MR, 4>};
constexpr const TileFn* kTiles[kMR] = {row_fns<1>, row_fns<2>, row_fns<3>, row_fns<4>, row_fns<5>, row_fns<6>};

// One row of dynamic per-token quantization, bit-exact with reference.quantize_per_token: the same
// fp32 amax, 127/amax, x * inv and round-half-even (cvt with explicit RNE), clamp to +-127.
// x[off, off + K) -> dst[0, K) int8, or with flip the u8 GEMM operand q + 128 (xor 0x80); dst[K, k_pad)
// is the zero pad (flip: 128; it multiplies zero weights). Returns the row's scale. amax == 0 ->
// scale 0, q 0; amax NaN/Inf -> scale NaN, q 0. next_off: the next row, prefetched while this one is
// reduced (the two passes per row break the stream the hardware prefetcher follows: 7 GB/s from
// DRAM without it at K = 1536).
float quant_row(const void* x, DType x_dt, int64_t off, int64_t next_off, int64_t K, int64_t k_pad, int8_t* dst,
                bool flip) {
  const __m512 inf = _mm512_set1_ps(INFINITY);
  const int64_t esz = x_dt == DType::F32 ? 4 : 2;
  const char* nxt = static_cast<const char*>(x) + next_off * esz;
  // Four running maxima: one would wait on vmaxps latency every vector (half the quantizer's time).
  __m512 vmax[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  __mmask16 bad = 0;
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    for (int u = 0; u < 4; ++u) {
      _mm_prefetch(nxt + (k + 16 * u) * esz, _MM_HINT_T0);  // prefetches never fault
      const __m512 a = _mm512_abs_ps(load_act(x, x_dt, off + k + 16 * u, 0xffff));
      bad |= _mm512_cmp_ps_mask(a, inf, _CMP_NLT_UQ);  // +-Inf or NaN
      vmax[u] = _mm512_max_ps(vmax[u], a);
    }
  }
  for (; k < K; k += 16) {
    _mm_prefetch(nxt + k * esz, _MM_HINT_T0);
    const __m512 a = _mm512_abs_ps(load_act(x, x_dt, off + k, tail_mask(K - k)));
    bad |= _mm512_cmp_ps_mask(a, inf, _CMP_NLT_UQ);
    vmax[0] = _mm512_max_ps(vmax[0], a);
  }
  const int zero = flip ? 0x80 : 0;
  // max is exact in any order: the same amax as one running maximum (NaN/Inf rows are caught by bad).
  const float amax =
      _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(vmax[0], vmax[1]), _mm512_max_ps(vmax[2], vmax[3])));
  if (bad || amax == 0.f) {
    std::memset(dst, zero, static_cast<size_t>(k_pad));
    return bad ? NAN : 0.f;
  }
  const float inv_s = (1.f / amax) * 127.f;  // torch: 127 / t == reciprocal(t) * 127
  if (!std::isfinite(inv_s)) {
    // amax < 127 / FLT_MAX: inv is +inf, so nonzero values go to +-127 and zeros stay 0 (as the
    // reference); the vector paths below would turn inf into the integer-indefinite value.
    for (int64_t kk = 0; kk < K; ++kk) {
      float v;
      if (x_dt == DType::F32) {
        v = static_cast<const float*>(x)[off + kk];
      } else {  // bf16 by hand: no shared inline helper in an ISA file (its copy could be linked elsewhere)
        const uint32_t u = static_cast<uint32_t>(static_cast<const uint16_t*>(x)[off + kk]) << 16;
        std::memcpy(&v, &u, 4);
      }
      dst[kk] = static_cast<int8_t>((v > 0.f ? 127 : v < 0.f ? -127 : 0) ^ zero);
    }
    if (k_pad > K) std::memset(dst + K, zero, static_cast<size_t>(k_pad - K));
    return amax / 127.f;
  }
  const __m512 inv = _mm512_set1_ps(inv_s);
  const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
  const __m128i fl = _mm_set1_epi8(static_cast<char>(zero));
  // 64 at a time: |x| <= amax and a finite inv give |x * inv| <= 127 (1 + 2^-24)^3 < 127.5, so the rounded values are
  // already in [-127, 127] and two saturating packs (which then change nothing) narrow four vectors
  // to bytes; one dword permute undoes the packs' per-lane interleave. Half the shuffle-port work of
  // four vpmovdb, and no clamp (the tail below keeps it: same values either way).
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m512i fl64 = _mm512_set1_epi8(static_cast<char>(zero));
  for (k = 0; k + 64 <= K; k += 64) {
    __m512i i[4];
    for (int u = 0; u < 4; ++u)
      i[u] = _mm512_cvt_roundps_epi32(_mm512_mul_ps(load_act(x, x_dt, off + k + 16 * u, 0xffff), inv),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512i b = _mm512_packs_epi16(_mm512_packs_epi32(i[0], i[1]), _mm512_packs_epi32(i[2], i[3]));
    _mm512_storeu_si512(dst + k, _mm512_xor_si512(_mm512_permutexvar_epi32(order, b), fl64));
  }
  for (; k < K; k += 16) {
    const __mmask16 mk = tail_mask(K - k);
    const __m512 v = _mm512_mul_ps(load_act(x, x_dt, off + k, mk), inv);
    __m512i i = _mm512_cvt_roundps_epi32(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    i = _mm512_min_epi32(_mm512_max_epi32(i, lo), hi);
    // Register-form vpmovdb + a plain store: the memory-destination form (vpmovdb m128{k}) is slow on
    // AMD Zen 4/5.
    const __m128i b8 = _mm_xor_si128(_mm512_cvtepi32_epi8(i), fl);
    if (K - k >= 16) _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + k), b8);
    else _mm_mask_storeu_epi8(dst + k, mk, b8);
  }
  if (k_pad > K) std::memset(dst + K, zero, static_cast<size_t>(k_pad - K));
  return amax / 127.f;
}

// a + 128 (xor 0x80) of one int8 row a[0, K) into dst[0, k_pad) u8; the pad (0x80) multiplies zero weights.
void flip_row(const int8_t* a, int64_t K, int64_t k_pad, uint8_t* dst) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  for (int64_t k = 0; k < k_pad; k += 64) {
    const int64_t n = std::min<int64_t>(64, K - k);
    const __mmask64 mk = n <= 0 ? 0 : (n >= 64 ? ~__mmask64(0) : (__mmask64(1) << n) - 1);
    const __mmask64 mst = k_pad - k >= 64 ? ~__mmask64(0) : (__mmask64(1) << (k_pad - k)) - 1;
    const __m512i v = _mm512_xor_si512(mk == ~__mmask64(0) ? _mm512_loadu_si512(a + k) : _mm512_maskz_loadu_epi8(mk, a + k), flip);
    if (mst == ~__mmask64(0)) _mm512_storeu_si512(dst + k, v);
    else _mm512_mask_storeu_epi8(dst + k, mst, v);
  }
}

// The activations: int8 rows (the GEMM: a + 128, scales from the caller) or float rows quantized
// per token on the fly (the fused linear: scales from quant_row), written into the u8 operand
// buffer a row chunk at a time, so the chunk stays in L2 and there is no separate pass over a.
struct ASrc {
  const void* x;
  DType x_dt;
  int64_t ldx, K;
  bool quant;
};

// Row m of the source into dst (k_pad bytes); returns its scale (quant) or 0.
inline float fill_row(const ASrc& s, int64_t m, int64_t k_pad, uint8_t* dst) {
  if (!s.quant) {
    flip_row(static_cast<const int8_t*>(s.x) + m * s.ldx, s.K, k_pad, dst);
    return 0.f;
  }
  return quant_row(s.x, s.x_dt, m * s.ldx, (m + 1) * s.ldx, s.K, k_pad, reinterpret_cast<int8_t*>(dst), true);
}

// One thread's share of the product: rows [r0, r1) x panels [pa, pb), a row chunk at a time. With
// `src` each chunk is filled into this thread's buffer first; without, g0.au already holds all rows.
void run_part(const Gemm& g0, int64_t r0, int64_t r1, int64_t pa, int64_t pb, int64_t mc, int64_t kc,
              const ASrc* src) {
  if (r0 >= r1 || pa >= pb) return;
  const int64_t kblocks = div_up(g0.kq, kc);
  std::vector<int32_t> cbuf(kblocks > 1 ? static_cast<size_t>(mc * 64) : 0);
  Gemm g = g0;
  std::unique_ptr<uint8_t[]> abuf(src ? new uint8_t[static_cast<size_t>(mc * g.lda_u)] : nullptr);
  std::unique_ptr<float[]> sbuf(src && src->quant ? new float[static_cast<size_t>(mc)] : nullptr);
  const int64_t n_chunks = div_up(r1 - r0, mc);
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int64_t m_beg = r0 + c * mc, m_end = std::min(r1, m_beg + mc);
    if (src) {
      for (int64_t m = m_beg; m < m_end; ++m) {
        const float sc = fill_row(*src, m, g.k_pad, abuf.get() + (m - m_beg) * g.lda_u);
        if (src->quant) sbuf[m - m_beg] = sc;
      }
      g.au = abuf.get();
      g.am0 = m_beg;
      // a_scale is indexed with the chunk's rows: m - am0.
      g.a_scale = src->quant ? sbuf.get() : (g0.a_scale ? g0.a_scale + m_beg : nullptr);
    }
    const int64_t n_rt = div_up(m_end - m_beg, kMR);
    for (int64_t p0 = pa; p0 < pb; p0 += kNB) {
      const int64_t nb = std::min<int64_t>(kNB, pb - p0);
      for (int64_t q0 = 0; q0 < g.kq; q0 += kc) {
        const int64_t nq = std::min(kc, g.kq - q0);
        // The weight block that runs next (this tile's next k block, else the next tile's first, else
        // the next chunk's first tile) is prefetched a line per k step, spread over this block's row
        // tiles (each takes one contiguous run of one panel): it is in L1/L2 in time, with no burst of
        // misses at the block start (hardware prefetchers do not cross the 4 KiB pages it spans).
        // Measured on Zen 5: +8-14% over prefetching the whole next block from the first row tile.
        const int8_t* nx = nullptr;
        int64_t nx_nq = 0, nx_np = 0;
        if (q0 + nq < g.kq) {
          nx = g.panels + p0 * kPanel * g.k_pad + (q0 + nq) * 64;
          nx_nq = std::min(kc, g.kq - q0 - nq);
          nx_np = nb;
        } else if (p0 + kNB < pb || c + 1 < n_chunks) {
          const int64_t p1 = p0 + kNB < pb ? p0 + kNB : pa;
          nx = g.panels + p1 * kPanel * g.k_pad;
          nx_nq = std::min(kc, g.kq);
          nx_np = std::min<int64_t>(kNB, pb - p1);
        }
        // segs runs per panel, one per row tile, rounded down so that every line is covered (the
        // last n_rt % nx_np row tiles prefetch nothing). Measured: +1% over rounding up (22 row tiles,
        // 4 panels: 6 runs per panel, the last run of panels 2 and 3 was never prefetched).
        const bool spread = nx && n_rt >= nx_np;
        const int64_t segs = spread ? n_rt / nx_np : 1, seg = div_up(nx_nq, segs);
        int64_t rt = 0;
        for (int64_t m0 = m_beg; m0 < m_end; m0 += kMR, ++rt) {
          const int64_t mr = std::min<int64_t>(kMR, m_end - m0);
          const int8_t* pf = nullptr;
          int64_t pfn = 0;
          if (spread) {
            const int64_t j = rt % nx_np, si = rt / nx_np;
            pf = nx + j * kPanel * g.k_pad + si * seg * 64;
            pfn = std::max<int64_t>(0, std::min(seg, nx_nq - si * seg));
          }
          // Too few row tiles to spread over: the first one prefetches the whole next block.
          kTiles[mr - 1][nb - 1](g, m0, p0, q0, nq, kblocks > 1 ? cbuf.data() + (m0 - m_beg) * 64 : nullptr,
                                 q0 == 0, q0 + nq >= g.kq, (!spread && nx && m0 == m_beg) ? nq : 0, pf, pfn);
        }
      }
    }
  }
}

// ---- AMX (Intel AMX-TILE + AMX-INT8, Sapphire Rapids and later) ----
// Only these functions carry the amx target, and only run after amx_active() (CPUID, XCR0 and the
// Linux permission for the tile state, see cpu_features.cpp). One tdpbusd multiplies a 16 x 64 u8
// tile of a + 128 by a 16 x 64 s8 tile of the weight, which is exactly a run of 16 k groups of a
// packed panel (16 columns x 4 k per 64-byte row), so the packed layout serves both kernels and the
// comp correction and the epilogue are the VNNI kernel's: the results agree bit for bit.
#define SLIMRT_AMX __attribute__((target("amx-tile,amx-int8")))
// The tile intrinsics are asm statements without memory operands: the compiler must not move loads
// or stores of the buffers they read or write across them.
#define SLIMRT_MEMORY_BARRIER() __asm__ volatile("" ::: "memory")

struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Every tile 16 rows x 64 bytes: C 0-3 (16 x 16 int32), A 4-5 (16 rows x 64 k), B 6-7 (16 k groups).
SLIMRT_AMX void amx_configure() {
  TileConfig c{};
  c.palette = 1;
  for (int t = 0; t < 8; ++t) {
    c.rows[t] = 16;
    c.colsb[t] = 64;
  }
  // ldtilecfg with the whole 64-byte struct as the memory operand: gcc 12's _tile_loadconfig
  // declares an 8-byte read, which lets the optimizer drop the stores to rows and colsb.
  __asm__ volatile("ldtilecfg %0" : : "m"(c));
}

constexpr int64_t kAmxRows = 32;  // rows per block: two A tiles
// Rows of u8 activations per chunk: the chunk (all of K) stays in L2 while a thread's weight
// column blocks pass over it (2 MiB L2 on every AMX Xeon). K = 4096: 288 rows.
constexpr int64_t kAmxChunkBytes = 1280 << 10;

// C (32 x 16 NT int32, row stride 32) = A rows [0, 32) x panels [0, NT) over k in [0, k64).
template <int NT>
SLIMRT_AMX void amx_block(const uint8_t* a, int64_t lda, const int8_t* b, int64_t ps, int64_t k64, int32_t* c) {
  SLIMRT_MEMORY_BARRIER();  // the previous block's epilogue has read c before these tiles overwrite it
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  const uint8_t* a1 = a + 16 * lda;
  for (int64_t k = 0; k < k64; k += 64) {
    _tile_loadd(4, a + k, lda);
    _tile_loadd(6, b + k * 16, 64);
    _tile_loadd(5, a1 + k, lda);
    _tile_dpbusd(0, 4, 6);
    _tile_dpbusd(2, 5, 6);
    if (NT == 2) {
      _tile_loadd(7, b + ps + k * 16, 64);
      _tile_dpbusd(1, 4, 7);
      _tile_dpbusd(3, 5, 7);
    }
  }
  _tile_stored(0, c, 128);
  _tile_stored(2, c + 16 * 32, 128);
  if (NT == 2) {
    _tile_stored(1, c + 16, 128);
    _tile_stored(3, c + 16 * 32 + 16, 128);
  }
  SLIMRT_MEMORY_BARRIER();
}

// One thread's share: 32-column blocks [b0, b1) x padded rows [r0, r1), an L2-sized row chunk at a time.
SLIMRT_AMX void amx_part(const Gemm& g, int64_t M, int64_t r0, int64_t r1, int64_t mc, int64_t k64, int64_t panels,
                         int64_t b0, int64_t b1) {
  amx_configure();
  alignas(64) int32_t c[kAmxRows * 32];
  const int64_t ps = kPanel * g.k_pad;
  for (int64_t mb = r0; mb < r1; mb += mc) {
    const int64_t me = std::min(r1, mb + mc);
    for (int64_t bi = b0; bi < b1; ++bi) {
      const int64_t p = 2 * bi;
      const int nt = p + 1 < panels ? 2 : 1;
      const int8_t* b = g.panels + p * ps;
      for (int64_t m0 = mb; m0 < me; m0 += kAmxRows) {
        if (nt == 2) amx_block<2>(g.au + m0 * g.lda_u, g.lda_u, b, ps, k64, c);
        else amx_block<1>(g.au + m0 * g.lda_u, g.lda_u, b, ps, k64, c);
        const int mr = static_cast<int>(std::min<int64_t>(kAmxRows, M - m0));
        for (int j = 0; j < nt; ++j) {
          const int64_t n = (p + j) * kPanel;
          if (n >= g.N) break;
          epilogue(g, m0, mr, n, [&](int r, int jj) { return _mm512_load_si512(c + r * 32 + jj * 16); }, j);
        }
      }
    }
  }
  _tile_release();
}

// The whole product on AMX: the threads fill the u8 operand of all rows together (rows claimed from
// a counter, as in run_tiles' col mode), then each takes an equal run of 32-column blocks (and of
// 32-row blocks when there are fewer column blocks than threads) and walks it once per L2-sized row
// chunk. Rows are padded to 32 with zeros, and each row's k to 64 with
// zeros (u8 0 times whatever weight bytes the last tile reads past k_pad: the packed weight carries
// kPackSlack bytes for that), so every tile is a full 16 x 64; only real rows reach the output.
SLIMRT_AMX void run_amx_rows(const Gemm& g0, int64_t n_pad, int64_t M, int num_threads, const ASrc& src) {
  const int64_t panels = n_pad / kPanel, blocks = div_up(panels, 2);
  const int64_t k64 = round_up(g0.k_pad, 64), m_pad = round_up(M, kAmxRows);
  const int64_t mc = std::max<int64_t>(kAmxRows, kAmxChunkBytes / g0.lda_u / kAmxRows * kAmxRows);
  std::unique_ptr<uint8_t[]> abuf(new uint8_t[static_cast<size_t>(m_pad * g0.lda_u)]);
  std::unique_ptr<float[]> sbuf(src.quant ? new float[static_cast<size_t>(M)] : nullptr);
  Gemm g = g0;
  g.au = abuf.get();
  g.am0 = 0;
  if (src.quant) g.a_scale = sbuf.get();
  // Threads split the column blocks; with fewer blocks than threads (N <= 32 per thread) they split
  // the 32-row blocks too, so a narrow product still runs on every thread.
  const int nt = std::max(1, num_threads);
  const int64_t tc = std::min<int64_t>(nt, blocks), rblocks = m_pad / kAmxRows;
  const int64_t tr = std::min<int64_t>(std::max<int64_t>(1, nt / tc), rblocks);
  std::atomic<int64_t> next{0}, done{0};
  parallel_for(tr * tc, nt, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t ir = i / tc, ic = i % tc;
      constexpr int64_t kRows = 4;
      for (int64_t r; (r = next.fetch_add(kRows)) < m_pad;) {
        const int64_t re = std::min(m_pad, r + kRows);
        for (int64_t m = r; m < re; ++m) {
          uint8_t* dst = abuf.get() + m * g.lda_u;
          if (m < M) {
            const float sc = fill_row(src, m, g.k_pad, dst);
            if (src.quant) sbuf[m] = sc;
            std::memset(dst + g.k_pad, 0, static_cast<size_t>(k64 - g.k_pad));
          } else {
            std::memset(dst, 0, static_cast<size_t>(k64));
          }
        }
        done.fetch_add(re - r, std::memory_order_release);
      }
      while (done.load(std::memory_order_acquire) < m_pad) _mm_pause();
      SLIMRT_MEMORY_BARRIER();
      amx_part(g, M, rblocks * ir / tr * kAmxRows, rblocks * (ir + 1) / tr * kAmxRows, mc, k64, panels,
               blocks * ic / tc, blocks * (ic + 1) / tc);
    }
  });
}

// Rows per run_amx_rows call: its u8 operand buffer holds all of its rows (8.5 MB at K = 4096), so a
// long input goes through in slices of this many rows instead of one buffer as large as the input.
// The weight is re-read per L2-sized row chunk anyway, so slicing costs no extra weight traffic.
constexpr int64_t kAmxSliceRows = 2048;

SLIMRT_AMX void run_amx(const Gemm& g0, int64_t n_pad, int64_t M, int num_threads, const ASrc& src) {
  const int64_t out_esz = g0.out_dt == OutType::BF16 ? 2 : 4;
  const int64_t x_esz = !src.quant ? 1 : (src.x_dt == DType::F32 ? 4 : 2);
  for (int64_t s0 = 0; s0 < M; s0 += kAmxSliceRows) {
    Gemm g = g0;
    ASrc sl = src;
    g.out = static_cast<char*>(g0.out) + s0 * g0.ldc * out_esz;
    if (!src.quant && g0.a_scale) g.a_scale = g0.a_scale + s0;
    sl.x = static_cast<const char*>(src.x) + s0 * src.ldx * x_esz;
    run_amx_rows(g, n_pad, std::min(kAmxSliceRows, M - s0), num_threads, sl);
  }
}

// Rows from which the int8 GEMM runs on AMX (when active): below, the VNNI tiles (M = 1-7 is
// decode, bound by reading the weight).
// Measured on a 2-core Xeon with AMX: AMX 1.2-1.3x VNNI at M = 4-8 on 768 x 768 and 384 x 1536, even
// at M = 4 x 4096 x 4096 (memory-bound there), 1.6-3.4x from M = 16 up.
constexpr int64_t kAmxMinRows = 8;

void run_tiles(const Gemm& g0, int64_t n_pad, int64_t M, int num_threads, const ASrc& src) {
  if (M >= kAmxMinRows && amx_active()) return run_amx(g0, n_pad, M, num_threads, src);
  const int64_t panels = n_pad / kPanel;
  const int64_t kblocks = div_up(g0.kq, kKcq), kc = div_up(g0.kq, kblocks);
  const int nt = std::max(1, num_threads);
  // Rows per chunk: the chunk's u8 activations (all of K) stay in L2 while every column tile passes.
  const int64_t mc_max = std::max<int64_t>(4 * kMR, kAChunkBytes / g0.lda_u / kMR * kMR);
  // Partition: every thread gets the same work to a row or a panel, so none waits at the end.
  //  - col: every thread takes all rows and an equal run of panels. For few rows (a row split would
  //    leave each thread too few row tiles), and when M fits one chunk while the weight outgrows L2:
  //    the weight, the big operand then, is read once in all instead of once per thread.
  //  - row: rows split evenly (to the row) and all panels; each thread chunks its own rows.
  const bool col = panels >= nt && (div_up(M, kMR) < 2 * nt ||
                              (M <= mc_max && panels >= int64_t(kNB) * nt && n_pad * g0.k_pad > (2 << 20)));
  // At most one thread per 64-column tile (col) or row tile (row): a tiny product (the decode shape
  // M = 1, N = 64) runs on the calling thread, with no pool wake-up at all (0.7 us a call, not 14).
  const int64_t tr = col ? 1 : std::min<int64_t>(nt, div_up(M, kMR)),
                tc = col ? std::min<int64_t>(nt, div_up(panels, kNB)) : 1;
  const int64_t rows_per = div_up(M, tr);
  const int64_t mc = round_up(div_up(rows_per, div_up(rows_per, mc_max)), kMR);
  // col: the threads fill disjoint rows of one shared buffer (rows claimed from a counter), then each
  // waits until every claimed row is done. A thread only ever waits on rows that another running
  // thread holds, so this cannot deadlock, also when parallel_for runs the items one after another
  // on one thread (that thread then claims every row itself).
  Gemm gs = g0;
  std::unique_ptr<uint8_t[]> abuf;
  std::unique_ptr<float[]> sbuf;
  std::atomic<int64_t> next{0}, done{0};
  if (col) {
    abuf.reset(new uint8_t[static_cast<size_t>(M * g0.lda_u)]);
    gs.au = abuf.get();
    gs.am0 = 0;
    if (src.quant) {
      sbuf.reset(new float[static_cast<size_t>(M)]);
      gs.a_scale = sbuf.get();
    }
  }
  parallel_for(tr * tc, nt, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t ir = i / tc, ic = i % tc;
      if (col) {
        constexpr int64_t kRows = 4;
        for (int64_t r; (r = next.fetch_add(kRows)) < M;) {
          const int64_t re = std::min(M, r + kRows);
          for (int64_t m = r; m < re; ++m) {
            const float sc = fill_row(src, m, gs.k_pad, abuf.get() + m * gs.lda_u);
            if (src.quant) sbuf[m] = sc;
          }
          done.fetch_add(re - r, std::memory_order_release);
        }
        while (done.load(std::memory_order_acquire) < M) _mm_pause();
      }
      run_part(gs, M * ir / tr, M * (ir + 1) / tr, panels * ic / tc, panels * (ic + 1) / tc, mc, kc,
               col ? nullptr : &src);
    }
  });
}

}  // namespace

namespace {
// The GEMM description of a packed weight (header: N, K, N_pad, K_pad; see int8_gemm.h). The u8
// operand rows (a + 128, see flip_row) are lda_u apart: k_pad rounded to 64 plus 64 bytes, so with
// K = 4096 the 6 rows of a tile do not sit 4 KiB apart in one L1 set (4 KiB aliasing).
Gemm packed_gemm(const int8_t* packed, const float* a_scale, const float* b_scale, const float* bias, void* out,
                 OutType out_dt, int64_t ldc, int64_t N, Act act, int64_t* n_pad) {
  int64_t hdr[5];
  std::memcpy(hdr, packed, sizeof(hdr));
  const int64_t k_pad = hdr[4];
  *n_pad = hdr[3];
  return Gemm{nullptr, round_up(k_pad, 64) + 64, k_pad, k_pad / 4, packed + kPackHeader,
              reinterpret_cast<const int32_t*>(packed + kPackHeader + *n_pad * k_pad),
              a_scale, b_scale, bias, out, out_dt, ldc, N, 0, act};
}
}  // namespace

void int8_gemm_packed(const int8_t* a, int64_t lda, const int8_t* packed, const float* a_scale,
                      const float* b_scale, const float* bias, void* out, OutType out_dt, int64_t ldc, int64_t M,
                      int64_t N, int64_t K, int num_threads) {
  int64_t n_pad;
  const Gemm g = packed_gemm(packed, a_scale, b_scale, bias, out, out_dt, ldc, N, Act::None, &n_pad);
  run_tiles(g, n_pad, M, num_threads, ASrc{a, DType::F32, lda, K, false});
}

namespace {
constexpr int64_t kW8Prefetch = 16384;  // bytes of weight stream prefetched ahead in w8_panel

// Weight-only: for MR rows and one 16-column panel, fp32 FMAs of x against the int8 weight
// widened in registers. acc[r][j] lane (c, kk) holds column 4j + c's partial sum for k % 4 == kk.
template <int MR>
void w8_panel(const float* xf, int64_t k_pad, const int8_t* panel, int64_t kq, float (*res)[16]) {
  __m512 acc[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_ps();
  // One sum per output vector over the k groups in order, for every MR: a column's sum order is then
  // the same here (batches, M = 1 leftovers) as in w8_row_4panels (M = 1).
  for (int64_t q = 0; q < kq; ++q) {
    const int8_t* bp = panel + q * 64;
    // Every line of the stream 16 KiB ahead (panels are contiguous, so this runs into the next panel
    // and past the matrix end, harmlessly: prefetches never fault). M = 1 decode streams the weight
    // from DRAM; one line 1 KiB ahead left a single thread at ~20 GB/s, while a whole 12-layer decode
    // step (100 MB, 2 threads, Zen 5) went from 52 to 77 GB/s at 12-16 KiB (8 KiB: 70, 32 KiB: 72).
    _mm_prefetch(reinterpret_cast<const char*>(bp) + kW8Prefetch, _MM_HINT_T0);
    for (int j = 0; j < 4; ++j) {
      const __m512 w =
          _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bp + 16 * j))));
      for (int r = 0; r < MR; ++r)
        acc[r][j] = _mm512_fmadd_ps(w, _mm512_broadcast_f32x4(_mm_loadu_ps(xf + r * k_pad + 4 * q)), acc[r][j]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < 4; ++j) {
      alignas(64) float t[16];
      _mm512_store_ps(t, acc[r][j]);
      for (int c = 0; c < 4; ++c) res[r][4 * j + c] = (t[4 * c] + t[4 * c + 1]) + (t[4 * c + 2] + t[4 * c + 3]);
    }
}

// M = 1 over four panels at once: four weight streams per thread instead of one (on an Intel Xeon VM,
// 4096 x 11008, 45 MB cold: 19 GB/s with one stream, 23-26 with four; two read 72-79% of the
// bandwidth where four read 88%). 16 accumulator chains. Each column is summed exactly as
// w8_panel sums it (one running sum over k groups, the same lane reduction), so its bits do
// not depend on which kernel took its panel: not on the thread count, N, fusing weights or M.
void w8_row_4panels(const float* xf, const int8_t* panel, int64_t ps, int64_t kq, float (*res)[16]) {
  __m512 acc[4][4];
  for (auto& a : acc)
    for (auto& v : a) v = _mm512_setzero_ps();
  for (int64_t q = 0; q < kq; ++q) {
    const __m512 xv = _mm512_broadcast_f32x4(_mm_loadu_ps(xf + 4 * q));
    for (int pn = 0; pn < 4; ++pn) {
      const int8_t* bp = panel + pn * ps + q * 64;
      _mm_prefetch(reinterpret_cast<const char*>(bp) + kW8Prefetch, _MM_HINT_T0);
      for (int j = 0; j < 4; ++j) {
        const __m512 w =
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bp + 16 * j))));
        acc[pn][j] = _mm512_fmadd_ps(w, xv, acc[pn][j]);
      }
    }
  }
  for (int pn = 0; pn < 4; ++pn)
    for (int j = 0; j < 4; ++j) {
      alignas(64) float t[16];
      _mm512_store_ps(t, acc[pn][j]);
      for (int c = 0; c < 4; ++c) res[pn][4 * j + c] = (t[4 * c] + t[4 * c + 1]) + (t[4 * c + 2] + t[4 * c + 3]);
    }
}

// Weight-only from M = kW8BlockedMinM rows on: w8_panel widens the weight again for every 4 rows, so a
// prefill of M rows pays the int8 -> fp32 conversion M / 4 times and runs 4-row tiles that are bound
// by it (8 conversion uops per 16 FMAs). Here each thread widens a panel once into an fp32 copy (16
// columns x k_pad, L2-resident: 36 KiB at K = 576) and then runs 6-row tiles over it: 24 FMAs per 4
// weight loads and 6 broadcasts, no conversions. The products and their order per column are
// w8_panel's (exact int8 -> fp32 widening, one running sum per output vector over k groups in
// order, the same lane reduction), so the bits are the same as every other w8 path.
constexpr int64_t kW8BlockedMinM = 6;

// panel (16 columns x k_pad int8, packed order) -> wf (kq x 64 floats, the same order). The panel
// streams from DRAM when the weights do not fit the caches (a decode step's batch of rows, an LM
// head): the same software prefetch as w8_panel's, or the widening waits on every line.
void w8_widen_panel(const int8_t* panel, int64_t kq, float* wf) {
  for (int64_t q = 0; q < kq; ++q) {
    const int8_t* bp = panel + q * 64;
    _mm_prefetch(reinterpret_cast<const char*>(bp) + kW8Prefetch, _MM_HINT_T0);
    for (int j = 0; j < 4; ++j)
      _mm512_store_ps(wf + 64 * q + 16 * j, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
                                                 _mm_loadu_si128(reinterpret_cast<const __m128i*>(bp + 16 * j)))));
  }
}

template <int MR>
void w8f_tile(const float* xf, int64_t k_pad, const float* wf, int64_t kq, float (*res)[16]) {
  __m512 acc[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t q = 0; q < kq; ++q) {
    const float* wq = wf + q * 64;
    const __m512 w0 = _mm512_load_ps(wq), w1 = _mm512_load_ps(wq + 16), w2 = _mm512_load_ps(wq + 32),
                 w3 = _mm512_load_ps(wq + 48);
    for (int r = 0; r < MR; ++r) {
      const __m512 xv = _mm512_broadcast_f32x4(_mm_loadu_ps(xf + r * k_pad + 4 * q));
      acc[r][0] = _mm512_fmadd_ps(w0, xv, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(w1, xv, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(w2, xv, acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(w3, xv, acc[r][3]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < 4; ++j) {
      alignas(64) float t[16];
      _mm512_store_ps(t, acc[r][j]);
      for (int c = 0; c < 4; ++c) res[r][4 * j + c] = (t[4 * c] + t[4 * c + 1]) + (t[4 * c + 2] + t[4 * c + 3]);
    }
}

void w8f_rows(const float* xf, int64_t k_pad, const float* wf, int64_t kq, int64_t mr, float (*res)[16]) {
  switch (mr) {
    case 1: return w8f_tile<1>(xf, k_pad, wf, kq, res);
    case 2: return w8f_tile<2>(xf, k_pad, wf, kq, res);
    case 3: return w8f_tile<3>(xf, k_pad, wf, kq, res);
    case 4: return w8f_tile<4>(xf, k_pad, wf, kq, res);
    case 5: return w8f_tile<5>(xf, k_pad, wf, kq, res);
    default: return w8f_tile<6>(xf, k_pad, wf, kq, res);
  }
}

// One fp32 panel buffer per thread, grown as needed (64-byte aligned).
float* w8_panel_buffer(int64_t floats) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < floats + 16) buf.resize(static_cast<size_t>(floats + 16));
  const uintptr_t p = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<float*>((p + 63) & ~uintptr_t(63));
}
}  // namespace

void int8_w8_linear_packed(const void* x, DType x_dt, int64_t ldx, const int8_t* packed, const float* b_scale,
                           const float* bias, void* out, OutType out_dt, int64_t ldc, int64_t M, int64_t N,
                           int64_t K, int num_threads) {
  int64_t hdr[5];
  std::memcpy(hdr, packed, sizeof(hdr));
  const int64_t n_pad = hdr[3], k_pad = hdr[4], kq = k_pad / 4;
  const int8_t* panels = packed + kPackHeader;
  // x (M, K) -> xf (rows, k_pad) fp32 a block of rows at a time (w8_block_rows), zero padded: the
  // tail multiplies zero weights. Each output element's arithmetic does not depend on the blocking.
  const int64_t rows = w8_block_rows(M, k_pad);
  std::vector<float> xf(static_cast<size_t>(rows * k_pad));
  for (int64_t r0 = 0; r0 < M; r0 += rows) {
    const int64_t mb = std::min(rows, M - r0);
    for (int64_t m = 0; m < mb; ++m)
      for (int64_t k = 0; k < k_pad; k += 16) {
        const __mmask16 mk = k < K ? tail_mask(K - k) : __mmask16(0);
        _mm512_mask_storeu_ps(xf.data() + m * k_pad + k, tail_mask(k_pad - k),
                              load_act(x, x_dt, (r0 + m) * ldx + k, mk));
      }
    parallel_for(n_pad / kPanel, num_threads, [&](int64_t p0, int64_t p1) {
      float res[4][16];
      const auto finish = [&](int64_t p, int64_t r, const float* v) {
        const int64_t n = p * kPanel;
        const __mmask16 mk = tail_mask(N - n);
        __m512 f = _mm512_mul_ps(_mm512_loadu_ps(v), _mm512_maskz_loadu_ps(mk, b_scale + n));
        if (bias) f = _mm512_add_ps(f, _mm512_maskz_loadu_ps(mk, bias + n));
        store_out(out, out_dt, (r0 + r) * ldc + n, mk, f);
      };
      int64_t p = p0;
      if (M >= kW8BlockedMinM) {  // M, not mb: the kernel a call runs does not depend on the blocking
        float* wf = w8_panel_buffer(kq * 64);
        for (; p < p1; ++p) {
          w8_widen_panel(panels + p * kPanel * k_pad, kq, wf);  // once per block (1020 rows at K = 1024)
          float tile[6][16];
          for (int64_t m0 = 0; m0 < mb; m0 += 6) {
            const int64_t mr = std::min<int64_t>(6, mb - m0);
            w8f_rows(xf.data() + m0 * k_pad, k_pad, wf, kq, mr, tile);
            for (int64_t r = 0; r < mr; ++r) finish(p, m0 + r, tile[r]);
          }
        }
        return;
      }
      if (M == 1)
        for (; p + 4 <= p1; p += 4) {
          w8_row_4panels(xf.data(), panels + p * kPanel * k_pad, kPanel * k_pad, kq, res);
          for (int pn = 0; pn < 4; ++pn) finish(p + pn, 0, res[pn]);
        }
      for (; p < p1; ++p) {
        for (int64_t m0 = 0; m0 < mb; m0 += 4) {
          const int64_t mr = std::min<int64_t>(4, mb - m0);
          const float* xr = xf.data() + m0 * k_pad;
          const int8_t* pb = panels + p * kPanel * k_pad;
          switch (mr) {
            case 1: w8_panel<1>(xr, k_pad, pb, kq, res); break;
            case 2: w8_panel<2>(xr, k_pad, pb, kq, res); break;
            case 3: w8_panel<3>(xr, k_pad, pb, kq, res); break;
            default: w8_panel<4>(xr, k_pad, pb, kq, res); break;
          }
          for (int64_t r = 0; r < mr; ++r) finish(p, m0 + r, res[r]);
        }
      }
    }, std::max<int64_t>(1, 8192 / std::max<int64_t>(k_pad, 1)));
  }
}

// Dynamic per-token quantization (see quant_row).
void quantize_per_token(const void* x, DType x_dt, int64_t M, int64_t K, int64_t ldx, int8_t* q, float* scale,
                        int num_threads) {
  parallel_for(M, num_threads, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) scale[m] = quant_row(x, x_dt, m * ldx, (m + 1) * ldx, K, K, q + m * K, false);
  }, std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)));
}

// W8A8 linear, fused: per-token quantization of each row chunk into the u8 operand buffer (a thread's
// own, or the one the threads share; see run_tiles), then that chunk's tiles; the same results as quantize_per_token
// followed by int8_gemm_packed, bit for bit (the same quant_row, tiles and epilogue).
void int8_w8a8_linear_packed(const void* x, DType x_dt, int64_t ldx, const int8_t* packed, const float* b_scale,
                             const float* bias, void* out, OutType out_dt, int64_t ldc, int64_t M, int64_t N,
                             int64_t K, int num_threads, Act act) {
  int64_t n_pad;
  const Gemm g = packed_gemm(packed, nullptr, b_scale, bias, out, out_dt, ldc, N, act, &n_pad);
  run_tiles(g, n_pad, M, num_threads, ASrc{x, x_dt, ldx, K, true});
}

// Probes: a register-only vpdpbusd loop (16 independent chains hide the latency) and a streaming read.
double probe_vnni_loop(int64_t iters) {
  __m512i acc[16];
  for (auto& v : acc) v = _mm512_setzero_si512();
  const __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(1);
  for (int64_t i = 0; i < iters; ++i)
    for (auto& v : acc) v = dpbusd(v, a, b);
  __m512i s = acc[0];
  for (int j = 1; j < 16; ++j) s = _mm512_add_epi32(s, acc[j]);
  volatile int32_t sink = _mm512_reduce_add_epi32(s);
  (void)sink;
  return static_cast<double>(iters) * 16 * 64 * 2;
}

// AMX: 4 accumulator tiles, each tdpbusd 16 x 16 x 64 multiply-adds; tile operands loaded once.
SLIMRT_AMX double probe_amx_loop(int64_t iters) {
  alignas(64) uint8_t ones[1024];
  std::memset(ones, 1, sizeof(ones));
  alignas(64) int32_t out[256];
  amx_configure();
  _tile_loadd(4, ones, 64);
  _tile_loadd(5, ones, 64);
  _tile_loadd(6, ones, 64);
  _tile_loadd(7, ones, 64);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t i = 0; i < iters; ++i) {
    _tile_dpbusd(0, 4, 6);
    _tile_dpbusd(1, 4, 7);
    _tile_dpbusd(2, 5, 6);
    _tile_dpbusd(3, 5, 7);
  }
  _tile_stored(0, out, 64);
  SLIMRT_MEMORY_BARRIER();
  volatile int32_t sink = out[0];
  (void)sink;
  _tile_release();
  return static_cast<double>(iters) * 4 * 16 * 16 * 64 * 2;
}

uint64_t probe_read(const uint8_t* p, int64_t n) {
  __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
  int64_t i = 0;
  // Every line prefetched kW8Prefetch bytes ahead, as the weight-only kernel streams its weight: the
  // bound must be the best this machine reads, not what the hardware prefetchers reach alone.
  for (; i + 256 <= n; i += 256) {
    for (int l = 0; l < 4; ++l) _mm_prefetch(reinterpret_cast<const char*>(p + i + kW8Prefetch + 64 * l), _MM_HINT_T0);
    s0 = _mm512_add_epi64(s0, _mm512_loadu_si512(p + i));
    s1 = _mm512_add_epi64(s1, _mm512_loadu_si512(p + i + 64));
    s2 = _mm512_add_epi64(s2, _mm512_loadu_si512(p + i + 128));
    s3 = _mm512_add_epi64(s3, _mm512_loadu_si512(p + i + 192));
  }
  return static_cast<uint64_t>(
      _mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(s0, s1), _mm512_add_epi64(s2, s3))));
}

}  // namespace avx512
}  // namespace slimrt
