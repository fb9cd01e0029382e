// AVX-512 versions of decode_step's small kernels (see decode_step_impl.h); only reached after
// decode_step.cpp checked active_isa(). exp is the Cephes expf polynomial (~2 ulp) with scalef for 2^n.
#include <immintrin.h>

#include <cmath>

#include "decode_step/decode_step_impl.h"
#include "simd/vmath_avx512.h"

namespace slimrt {
namespace avx512 {
namespace {

inline __mmask16 tail(int64_t n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1); }
using simd::exp16;

}  // namespace

void attend_head(const float* q, const float* k, const float* v, int64_t L, int64_t D, float scale, float* scores,
                 float* out) {
  // scores: one q . k[j] per key (D/16 FMAs + a horizontal sum).
  __m512 mx = _mm512_set1_ps(-INFINITY);
  int64_t j = 0;
  for (; j < L; ++j) {
    __m512 acc = _mm512_setzero_ps();
    const float* kj = k + j * D;
    for (int64_t d = 0; d < D; d += 16) {
      const __mmask16 m = tail(D - d);
      acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + d), _mm512_maskz_loadu_ps(m, kj + d), acc);
    }
    scores[j] = _mm512_reduce_add_ps(acc) * scale;
  }
  for (j = 0; j < L; j += 16)
    mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail(L - j), scores + j));
  const __m512 vmax = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
  __m512 vsum = _mm512_setzero_ps();
  for (j = 0; j < L; j += 16) {
    const __mmask16 m = tail(L - j);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, scores + j), vmax));
    _mm512_mask_storeu_ps(scores + j, m, e);
    vsum = _mm512_add_ps(vsum, _mm512_maskz_mov_ps(m, e));
  }
  const float inv = 1.f / _mm512_reduce_add_ps(vsum);
  for (int64_t d = 0; d < D; d += 16) {
    const __mmask16 m = tail(D - d);
    __m512 acc = _mm512_setzero_ps();
    for (j = 0; j < L; ++j)
      acc = _mm512_fmadd_ps(_mm512_set1_ps(scores[j] * inv), _mm512_maskz_loadu_ps(m, v + j * D + d), acc);
    _mm512_mask_storeu_ps(out + d, m, acc);
  }
}

void activation(ActKind kind, const float* g, const float* u, float* a, int64_t n) {
  if (kind == ActKind::GeluErf) return portable::activation(kind, g, u, a, n);  // no vector erf here
  const __m512 one = _mm512_set1_ps(1.f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail(n - i);
    const __m512 x = _mm512_maskz_loadu_ps(m, g + i);
    __m512 y;
    if (kind == ActKind::SiluGated) {
      const __m512 s = _mm512_div_ps(x, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
      y = _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, u + i));
    } else {  // 0.5 x (1 + tanh(t)), tanh(t) = 1 - 2 / (exp(2t) + 1)
      const __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
      const __m512 t = _mm512_mul_ps(_mm512_set1_ps(0.7978845608028654f),
                                     _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), x3, x));
      const __m512 e = exp16(_mm512_add_ps(t, t));
      const __m512 th = _mm512_sub_ps(one, _mm512_div_ps(_mm512_set1_ps(2.f), _mm512_add_ps(e, one)));
      y = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_add_ps(one, th));
    }
    _mm512_mask_storeu_ps(a + i, m, y);
  }
}

void rms_norm(const float* x, const float* w, float* y, int64_t n, float eps) {
  __m512 ss = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 v = _mm512_maskz_loadu_ps(tail(n - i), x + i);
    ss = _mm512_fmadd_ps(v, v, ss);
  }
  const __m512 r = _mm512_set1_ps(1.f / std::sqrt(_mm512_reduce_add_ps(ss) / static_cast<float>(n) + eps));
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail(n - i);
    __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), r);
    if (w) v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(m, w + i));
    _mm512_mask_storeu_ps(y + i, m, v);
  }
}

int64_t argmax(const float* x, int64_t n) {
  __m512 mx = _mm512_set1_ps(-INFINITY);
  __mmask16 nan = 0;
  for (int64_t i = 0; i < n && !nan; i += 16) {
    const __m512 v = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail(n - i), x + i);
    nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    mx = _mm512_max_ps(mx, v);
  }
  if (nan) return portable::argmax(x, n);  // the first NaN
  const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 eq = _mm512_mask_cmp_ps_mask(tail(n - i), _mm512_maskz_loadu_ps(tail(n - i), x + i), m, _CMP_EQ_OQ);
    if (eq) return i + __builtin_ctz(eq);
  }
  return 0;  // n == 0 or every element -inf
}

}  // namespace avx512
}  // namespace slimrt
