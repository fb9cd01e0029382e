// The fused low-rank algorithm, written once over a SIMD traits type S and included by each
// ISA's translation unit (lowrank_matmul_avx2.cpp, lowrank_matmul_avx512.cpp), which compiles it
// with its own -m flags. Everything here is a template on S or sits in an anonymous namespace, so
// no inline function compiled with wide instructions can be shared with the baseline code (ODR).
//
// S provides: W (floats per vector), MR (rows per micro-tile), NV (vectors per micro-tile row),
// V, zero, bcast, fma, add, load/load_n (fp32), load_bf16/load_bf16_n, store/store_n (fp32),
// store_bf16_n, and bf16_row (widen a bf16 row into fp32).
//
// Micro-tile: C[MR, NV*W] += A[MR, d] @ B[d, NV*W] as "broadcast A[i, k], FMA with the row B[k, :]";
// MR*NV accumulators live in registers over the whole depth.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include "lowrank_matmul/lowrank_matmul.h"
#include "parallel.h"

namespace slimrt {
namespace {

constexpr int64_t kKc = 256;       // depth block of phase A: a (kKc x NR) fp32 panel is 32 KB (L1-ish)
constexpr int64_t kTileRows = 64;  // row tile: (64 x R) fp32 h stays in L2 for R up to ~2-4K
// From this many rows on, each (depth x NR) weight panel is first copied into a contiguous fp32
// buffer: the copy costs 1/rows of the FMAs, and it saves a TLB miss per k-step (consecutive rows
// of v^T / u^T are 4R / 4N bytes apart) and the bf16 widening in the inner loop.
constexpr int64_t kPackRows = 8;

inline int64_t lr_min(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t lr_max(int64_t a, int64_t b) { return a > b ? a : b; }
inline int64_t lr_div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Growable per-thread scratch (kept across calls: the pool threads persist, so no page faults per call).
struct Buf {
  float* p = nullptr;
  int64_t cap = 0;
  ~Buf() { std::free(p); }
  float* get(int64_t n) {
    if (n > cap) {
      std::free(p);
      const int64_t bytes = ((lr_max(n, 16) * 4 + 63) / 64) * 64;
      p = static_cast<float*>(std::aligned_alloc(64, static_cast<size_t>(bytes)));
      if (p == nullptr) {
        cap = 0;
        throw std::bad_alloc();
      }
      cap = n;
    }
    return p;
  }
};
thread_local Buf tls_h, tls_x, tls_pack;

enum Epi { kStore = 0, kAccum = 1, kOutF32 = 2, kOutBF16 = 3 };

// C[mr, ncols] (=, +=) A[mr, :depth] @ B[:depth, ncols]; ncols <= NV*W (FULL: == NV*W).
// Output: kStore/kAccum write fp32 `out` (row stride ldo); kOutF32/kOutBF16 add bias and write y.
template <class S, class TB, int MR, int NV, bool FULL, int EPI>
void micro(const float* A, int64_t lda, const TB* B, int64_t ldb, int64_t depth, int ncols,
           void* out, int64_t ldo, const float* bias) {
  constexpr int W = S::W;
  using V = typename S::V;
  V acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = S::zero();
  int nj[NV];
  for (int j = 0; j < NV; ++j) nj[j] = FULL ? W : static_cast<int>(lr_max(0, lr_min(W, ncols - j * W)));
  for (int64_t k = 0; k < depth; ++k) {
    const TB* b = B + k * ldb;
    V bv[NV];
    for (int j = 0; j < NV; ++j) bv[j] = FULL ? S::load(b + j * W) : S::load_n(b + j * W, nj[j]);
    for (int i = 0; i < MR; ++i) {
      const V a = S::bcast(A + i * lda + k);
      for (int j = 0; j < NV; ++j) acc[i][j] = S::fma(a, bv[j], acc[i][j]);
    }
  }
  for (int j = 0; j < NV; ++j) {
    if (nj[j] == 0) continue;
    V bj = S::zero();
    if (EPI >= kOutF32 && bias) bj = FULL ? S::load(bias + j * W) : S::load_n(bias + j * W, nj[j]);
    for (int i = 0; i < MR; ++i) {
      V c = acc[i][j];
      if (EPI == kStore || EPI == kAccum || EPI == kOutF32) {
        float* o = static_cast<float*>(out) + i * ldo + j * W;
        if (EPI == kAccum) c = S::add(c, FULL ? S::load(o) : S::load_n(o, nj[j]));
        if (EPI == kOutF32) c = S::add(c, bj);
        if (FULL)
          S::store(o, c);
        else
          S::store_n(o, c, nj[j]);
      } else {
        S::store_bf16_n(static_cast<uint16_t*>(out) + i * ldo + j * W, S::add(c, bj), nj[j]);
      }
    }
  }
}

// Runtime mr (1..S::MR) and full/tail dispatch onto the compile-time micro-tiles.
template <class S, class TB, int NV, int EPI, int MR = S::MR>
void micro_any(int mr, bool full, const float* A, int64_t lda, const TB* B, int64_t ldb, int64_t depth, int ncols,
               void* out, int64_t ldo, const float* bias) {
  if constexpr (MR > 1) {
    if (mr < MR) return micro_any<S, TB, NV, EPI, MR - 1>(mr, full, A, lda, B, ldb, depth, ncols, out, ldo, bias);
  }
  if (full)
    micro<S, TB, MR, NV, true, EPI>(A, lda, B, ldb, depth, ncols, out, ldo, bias);
  else
    micro<S, TB, MR, NV, false, EPI>(A, lda, B, ldb, depth, ncols, out, ldo, bias);
}

// dst (depth x NV*W) fp32 = src[:depth, :nc] (row stride ld), zero-padded to the full panel width.
template <class S, class TB, int NV>
void pack_panel(const TB* src, int64_t ld, int64_t depth, int nc, float* dst) {
  constexpr int W = S::W;
  for (int64_t k = 0; k < depth; ++k) {
    const TB* s = src + k * ld;
    float* d = dst + k * (W * NV);
    for (int j = 0; j < NV; ++j) {
      const int nj = static_cast<int>(lr_max(0, lr_min(W, nc - j * W)));
      S::store(d + j * W, nj == W ? S::load(s + j * W) : S::load_n(s + j * W, nj));
    }
  }
}

// Phase A: h[rows, c0:c1] = x[rows, :K] @ vt[:, c0:c1], fp32, depth blocked by kKc so that a
// (kKc x NR) panel of vt is reused from L1 by every micro-tile of rows.
template <class S, class TB, int NV, int MRX = S::MR>
void phase_a(const void* x, int64_t ldx, bool x_bf16, int64_t rows, int64_t K, const TB* vt, int64_t ldvt,
             int64_t c0, int64_t c1, float* h, int64_t ldh) {
  constexpr int64_t NR = S::W * NV;
  if (K == 0) {
    for (int64_t m = 0; m < rows; ++m) std::memset(h + m * ldh + c0, 0, static_cast<size_t>(c1 - c0) * 4);
    return;
  }
  for (int64_t kb = 0; kb < K; kb += kKc) {
    const int64_t kd = lr_min(kKc, K - kb);
    const float* A;
    int64_t lda;
    if (x_bf16) {  // widen this (rows x kd) block of x once; every panel below reuses it
      float* xs = tls_x.get(rows * kd);
      for (int64_t m = 0; m < rows; ++m)
        S::bf16_row(static_cast<const uint16_t*>(x) + m * ldx + kb, xs + m * kd, kd);
      A = xs;
      lda = kd;
    } else {
      A = static_cast<const float*>(x) + kb;
      lda = ldx;
    }
    for (int64_t c = c0; c < c1; c += NR) {
      const int nc = static_cast<int>(lr_min(NR, c1 - c));
      const TB* b = vt + kb * ldvt + c;
      const float* bp = nullptr;
      if (rows >= kPackRows) {
        float* buf = tls_pack.get(kd * NR);
        pack_panel<S, TB, NV>(b, ldvt, kd, nc, buf);
        bp = buf;
      }
      for (int64_t m = 0; m < rows; m += MRX) {
        const int mr = static_cast<int>(lr_min(MRX, rows - m));
        float* hm = h + m * ldh + c;
        if (bp && kb == 0)
          micro_any<S, float, NV, kStore, MRX>(mr, nc == NR, A + m * lda, lda, bp, NR, kd, nc, hm, ldh, nullptr);
        else if (bp)
          micro_any<S, float, NV, kAccum, MRX>(mr, nc == NR, A + m * lda, lda, bp, NR, kd, nc, hm, ldh, nullptr);
        else if (kb == 0)
          micro_any<S, TB, NV, kStore, MRX>(mr, nc == NR, A + m * lda, lda, b, ldvt, kd, nc, hm, ldh, nullptr);
        else
          micro_any<S, TB, NV, kAccum, MRX>(mr, nc == NR, A + m * lda, lda, b, ldvt, kd, nc, hm, ldh, nullptr);
      }
    }
  }
}

// Phase B: y[rows, c0:c1] = h[rows, :R] @ ut[:, c0:c1] + bias, rounded to y's dtype once.
template <class S, class TB, int NV, int MRX = S::MR>
void phase_b(const float* h, int64_t ldh, int64_t rows, int64_t R, const TB* ut, int64_t ldut, int64_t c0,
             int64_t c1, const float* bias, void* y, int64_t ldy, bool y_bf16) {
  constexpr int64_t NR = S::W * NV;
  for (int64_t c = c0; c < c1; c += NR) {
    const int nc = static_cast<int>(lr_min(NR, c1 - c));
    const float* bc = bias ? bias + c : nullptr;
    const float* bp = nullptr;
    if (rows >= kPackRows) {
      float* buf = tls_pack.get(R * NR);
      pack_panel<S, TB, NV>(ut + c, ldut, R, nc, buf);
      bp = buf;
    }
    for (int64_t m = 0; m < rows; m += MRX) {
      const int mr = static_cast<int>(lr_min(MRX, rows - m));
      const float* hm = h + m * ldh;
      uint16_t* yb = static_cast<uint16_t*>(y) + m * ldy + c;
      float* yf = static_cast<float*>(y) + m * ldy + c;
      if (bp && y_bf16)
        micro_any<S, float, NV, kOutBF16, MRX>(mr, nc == NR, hm, ldh, bp, NR, R, nc, yb, ldy, bc);
      else if (bp)
        micro_any<S, float, NV, kOutF32, MRX>(mr, nc == NR, hm, ldh, bp, NR, R, nc, yf, ldy, bc);
      else if (y_bf16)
        micro_any<S, TB, NV, kOutBF16, MRX>(mr, nc == NR, hm, ldh, ut + c, ldut, R, nc, yb, ldy, bc);
      else
        micro_any<S, TB, NV, kOutF32, MRX>(mr, nc == NR, hm, ldh, ut + c, ldut, R, nc, yf, ldy, bc);
    }
  }
}

// Few rows (decode, small batches): one row tile, parallel over the columns of each product, so
// every weight byte is read once per call. h (M x R) is shared between the two phases. NV vectors
// per micro-tile row: wide for M <= 2, where the FMA chains would otherwise be latency-bound.
template <class S, class TB, int NV, int MRX>
void run_columns(const void* x, int64_t ldx, const TB* vt, int64_t ldvt, const TB* ut, int64_t ldut,
                 const float* bias, void* y, int64_t ldy, bool bf16, int64_t M, int64_t K, int64_t R, int64_t N,
                 int nt) {
  constexpr int64_t NR = S::W * NV;
  float* h = tls_h.get(M * R);
  parallel_for(lr_div_up(R, NR), nt, [&](int64_t p0, int64_t p1) {
    phase_a<S, TB, NV, MRX>(x, ldx, bf16, M, K, vt, ldvt, p0 * NR, lr_min(R, p1 * NR), h, R);
  });
  parallel_for(lr_div_up(N, NR), nt, [&](int64_t p0, int64_t p1) {
    phase_b<S, TB, NV, MRX>(h, R, M, R, ut, ldut, p0 * NR, lr_min(N, p1 * NR), bias, y, ldy, bf16);
  });
}

template <class S, class TB>
void run_typed(const void* x, int64_t ldx, const TB* vt, int64_t ldvt, const TB* ut, int64_t ldut,
               const float* bias, void* y, int64_t ldy, bool bf16, int64_t M, int64_t K, int64_t R, int64_t N,
               int nt) {
  const size_t esz = bf16 ? 2 : 4;
  if (M <= 2) return run_columns<S, TB, S::NV_WIDE, 2>(x, ldx, vt, ldvt, ut, ldut, bias, y, ldy, bf16, M, K, R, N, nt);
  if (M <= kTileRows) return run_columns<S, TB, S::NV, S::MR>(x, ldx, vt, ldvt, ut, ldut, bias, y, ldy, bf16, M, K, R, N, nt);
  // Many rows: parallel over row tiles; each tile runs both products back to back, so its
  // (mt x R) h is written and read in cache and never reaches memory.
  const int64_t mt = lr_max(2 * S::MR, lr_min(kTileRows / S::MR * S::MR, lr_div_up(lr_div_up(M, nt), S::MR) * S::MR));
  parallel_for(lr_div_up(M, mt), nt, [&](int64_t t0, int64_t t1) {
    float* h = tls_h.get(mt * R);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t m0 = t * mt, rows = lr_min(mt, M - m0);
      const void* xt = static_cast<const char*>(x) + static_cast<size_t>(m0 * ldx) * esz;
      void* yt = static_cast<char*>(y) + static_cast<size_t>(m0 * ldy) * esz;
      phase_a<S, TB, S::NV>(xt, ldx, bf16, rows, K, vt, ldvt, 0, R, h, R);
      phase_b<S, TB, S::NV>(h, R, rows, R, ut, ldut, 0, N, bias, yt, ldy, bf16);
    }
  });
}

template <class S>
void run(const void* x, int64_t ldx, const void* vt, int64_t ldvt, const void* ut, int64_t ldut, const float* bias,
         void* y, int64_t ldy, DType dt, int64_t M, int64_t K, int64_t R, int64_t N, int nt) {
  if (dt == DType::F32)
    run_typed<S, float>(x, ldx, static_cast<const float*>(vt), ldvt, static_cast<const float*>(ut), ldut, bias, y,
                        ldy, false, M, K, R, N, nt);
  else
    run_typed<S, uint16_t>(x, ldx, static_cast<const uint16_t*>(vt), ldvt, static_cast<const uint16_t*>(ut), ldut,
                           bias, y, ldy, true, M, K, R, N, nt);
}

}  // namespace
}  // namespace slimrt
