// decode_step's small per-token kernels, one set per ISA (decode_step.cpp picks by active_isa()).
//   attend_head: out (D,) = softmax(scale * q . k[j], j < L) @ v   with q (D,), k, v (L, D) row-major;
//                scores (L,) scratch.
//   activation:  a (n,) = silu(g) * u (SiluGated) | gelu_tanh(g) | gelu_erf(g)   (u unused unless gated)
//   rms_norm:    y (n,) = x * rsqrt(mean(x^2) + eps) * w   (w null: no scale); y may alias x.
//   argmax:      index of the first maximum of x (n,), NaN counting as the maximum (torch.argmax).
#pragma once

#include <cstdint>

#include "decode_step/decode_step.h"

namespace slimrt {

#define SLIMRT_DECODE_ISA_DECLS                                                                              \
  void attend_head(const float* q, const float* k, const float* v, int64_t L, int64_t D, float scale,       \
                   float* scores, float* out);                                                              \
  void activation(ActKind kind, const float* g, const float* u, float* a, int64_t n);                      \
  void rms_norm(const float* x, const float* w, float* y, int64_t n, float eps);                           \
  int64_t argmax(const float* x, int64_t n);

namespace portable { SLIMRT_DECODE_ISA_DECLS }
namespace avx512 { SLIMRT_DECODE_ISA_DECLS }

}  // namespace slimrt
