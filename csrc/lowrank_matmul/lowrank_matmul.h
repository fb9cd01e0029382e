// Low-rank (factorized) linear, fused: y = (x @ v^T) @ u^T + bias.
//
//   x  (M, K) fp32|bf16, row stride ldx (unit stride in K)
//   vt (K, R) = v^T, row stride ldvt, unit stride in R     } factors in x's dtype, in the
//   ut (R, N) = u^T, row stride ldut, unit stride in N     } "kernel layout" (see below)
//   bias (N,) fp32 or null;  y (M, N) in x's dtype, row stride ldy.
//
// h = x @ vt is an (M, R) fp32 intermediate that never leaves the cache: a tile of rows of x flows
// through both products before the next tile starts. Accumulation is fp32; a bf16 y is rounded to
// nearest even once, at the end (bf16 factors and activations are widened exactly).
//
// Kernel layout: with v^T and u^T row-major, both products are "broadcast one element of the left
// operand, FMA a contiguous vector of the right one", so no per-call packing or horizontal sums are
// needed. nn.LowRankLinear keeps its factors stored this way (u = ut.T, v = vt.T views).
//
// Napkin math: 2 M R (K + N) FLOPs instead of 2 M N K; weight bytes R (K + N) instead of N K.
#pragma once

#include <cstdint>

#include "common.h"

namespace slimrt {

void lowrank_matmul(const void* x, int64_t ldx, const void* vt, int64_t ldvt, const void* ut, int64_t ldut,
                    const float* bias, void* y, int64_t ldy, DType dt, int64_t M, int64_t K, int64_t R,
                    int64_t N, int num_threads);

#define SLIMRT_LOWRANK_DECL                                                                             \
  void lowrank_matmul(const void* x, int64_t ldx, const void* vt, int64_t ldvt, const void* ut,        \
                      int64_t ldut, const float* bias, void* y, int64_t ldy, DType dt, int64_t M,       \
                      int64_t K, int64_t R, int64_t N, int num_threads);

namespace ref { SLIMRT_LOWRANK_DECL }
namespace avx2 { SLIMRT_LOWRANK_DECL }
namespace avx512 { SLIMRT_LOWRANK_DECL }

#undef SLIMRT_LOWRANK_DECL

}  // namespace slimrt
