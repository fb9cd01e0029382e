// Entry points: validate, then pick the ISA path. Built for baseline x86-64: nothing wide runs here.
#include "int8_gemm/int8_gemm.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "cpu_features.h"
#include "parallel.h"

namespace slimrt {

namespace {
void check_common(const char* op, int64_t M, int64_t N, int64_t K) {
  SLIMRT_CHECK(M >= 0 && N >= 0 && K >= 0, op << ": negative size M=" << M << " N=" << N << " K=" << K);
}

// Zero-filled output for K == 0 (the empty sum), plus bias.
void fill_empty_k(const float* bias, void* out, OutType out_dt, int64_t ldc, int64_t M, int64_t N) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      const float v = bias ? bias[n] : 0.f;
      if (out_dt == OutType::F32) static_cast<float*>(out)[m * ldc + n] = v;
      else if (out_dt == OutType::BF16) static_cast<uint16_t*>(out)[m * ldc + n] = f32_to_bf16(v);
      else static_cast<int32_t*>(out)[m * ldc + n] = 0;
    }
}

// The caller checked the blob's byte count; the header must name this (N, K).
void check_header(const int8_t* packed, int64_t N, int64_t K) {
  int64_t hdr[3];
  std::memcpy(hdr, packed, sizeof(hdr));
  SLIMRT_CHECK(hdr[0] == kPackMagic && hdr[1] == N && hdr[2] == K,
               "w_packed is not a packed (" << N << ", " << K << ") weight (header N=" << hdr[1] << " K=" << hdr[2]
                                            << "); repack it with int8_pack_weight(w_q)");
}

// The pack must also hold this weight, not another one of the same (N, K) (or this one before an
// in-place change): the vector paths read only the pack and the scalar path only b, so a mismatch
// gives answers that depend on the ISA. kPackSamples elements of b, spread over the rows (the
// diagonal and the anti-diagonal of the (N, K) grid, and the last element), are compared with their
// slots in the panels. Independent int8 weights agree on an element with probability ~1/64, so
// another weight passes all samples with ~2^-200; partial in-place edits of a module's weight are
// caught exactly by Int8Linear's version check instead. Cost: 2 x 33 scattered loads, no divisions
// (~0.1 us warm; the unpacked weight is otherwise untouched on the vector paths, so up to ~33
// overlapped cache misses at M = 1 on a cold weight).
constexpr int64_t kPackSamples = 16;

void check_matches(const int8_t* b, int64_t ldb, const int8_t* packed, int64_t N, int64_t K) {
  if (b == nullptr || N == 0 || K == 0) return;
  int64_t hdr[5];
  std::memcpy(hdr, packed, sizeof(hdr));
  const int64_t k_pad = hdr[4];
  const int8_t* panels = packed + kPackHeader;
  auto slot = [&](int64_t n, int64_t k) {
    return panels[(n / kPanel) * kPanel * k_pad + (k >> 2) * 64 + (n % kPanel) * 4 + (k & 3)];
  };
  auto check = [&](int64_t n, int64_t k) {
    const int8_t want = b[n * ldb + k], got = slot(n, k);
    SLIMRT_CHECK(want == got, "w_packed was not packed from this w_q: w_q[" << n << ", " << k << "] = "
                                  << int(want) << " but the pack holds " << int(got)
                                  << "; repack it with int8_pack_weight(w_q)");
  };
  // i * N / kPackSamples with kPackSamples a power of two: a shift, and always < N.
  for (int64_t i = 0; i < kPackSamples; ++i) {
    const int64_t n = (i * N) / kPackSamples, k0 = (i * K) / kPackSamples,
                  k1 = ((kPackSamples - 1 - i) * K) / kPackSamples;
    check(n, k0);
    check(n, k1);
  }
  check(N - 1, K - 1);
}
}  // namespace

int64_t int8_packed_size(int64_t N, int64_t K) {
  const int64_t n_pad = round_up(N, kPanel), k_pad = round_up(K, 4);
  return kPackHeader + n_pad * k_pad + 4 * n_pad + kPackSlack;
}

void int8_pack_weight(const int8_t* w, int64_t ldw, int64_t N, int64_t K, int8_t* packed, int num_threads) {
  check_common("int8_pack_weight", 0, N, K);
  SLIMRT_CHECK(N <= 1 || ldw >= K, "int8_pack_weight: w row stride " << ldw << " < K=" << K);
  const int64_t n_pad = round_up(N, kPanel), k_pad = round_up(K, 4);
  int64_t hdr[8] = {kPackMagic, N, K, n_pad, k_pad, 0, 0, 0};
  std::memcpy(packed, hdr, sizeof(hdr));
  int8_t* panels = packed + kPackHeader;
  int32_t* comp = reinterpret_cast<int32_t*>(panels + n_pad * k_pad);
  parallel_for(n_pad / kPanel, num_threads, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      int8_t* dst = panels + p * kPanel * k_pad;
      std::memset(dst, 0, kPanel * k_pad);
      for (int64_t j = 0; j < kPanel; ++j) {
        const int64_t n = p * kPanel + j;
        uint32_t sum = 0;  // unsigned: wraps like the int32 hardware accumulator, never UB
        if (n < N) {
          const int8_t* src = w + n * ldw;
          // Whole k groups move as one 4-byte word (a byte at a time made loading a 135M-parameter
          // model spend seconds here); the tail group byte by byte.
          const int64_t whole = K / 4;
          for (int64_t g = 0; g < whole; ++g) std::memcpy(dst + g * 64 + j * 4, src + 4 * g, 4);
          for (int64_t k = 4 * whole; k < K; ++k) dst[(k >> 2) * 64 + j * 4 + (k & 3)] = src[k];
          for (int64_t k = 0; k < K; ++k) sum += static_cast<uint32_t>(static_cast<int32_t>(src[k]));
        }
        const uint32_t c = sum * 128u;
        std::memcpy(&comp[n], &c, 4);
      }
    }
  }, std::max<int64_t>(1, (256 << 10) / std::max<int64_t>(1, kPanel * k_pad)));  // >= 256 KiB a task: a small
                                                            // weight packs on one thread, no fork/join
  std::memset(comp + n_pad, 0, kPackSlack);
}

void int8_check_packed(const int8_t* packed, int64_t nbytes, int64_t N, int64_t K) {
  SLIMRT_CHECK(nbytes == int8_packed_size(N, K), "w_packed has " << nbytes << " bytes, expected "
                                                     << int8_packed_size(N, K) << " for a (" << N << ", " << K
                                                     << ") weight; repack it with int8_pack_weight(w_q)");
  check_header(packed, N, K);
}

void quantize_per_token(const void* x, DType x_dt, int64_t M, int64_t K, int64_t ldx, int8_t* q,
                        float* scale, int num_threads) {
  SLIMRT_CHECK(M >= 0 && K >= 0, "quantize_per_token: negative size M=" << M << " K=" << K);
  SLIMRT_CHECK(M <= 1 || ldx >= K, "quantize_per_token: row stride " << ldx << " < K=" << K);
  if (M == 0) return;
  switch (active_isa()) {
    case Isa::Avx512: return avx512::quantize_per_token(x, x_dt, M, K, ldx, q, scale, num_threads);
    case Isa::Avx2: return avx2::quantize_per_token(x, x_dt, M, K, ldx, q, scale, num_threads);
    default: return ref::quantize_per_token(x, x_dt, M, K, ldx, q, scale, num_threads);
  }
}

// The packed weight the SIMD paths read: b_packed itself, or b packed on the fly into tmp
// (O(N K), small next to the O(M N K) product for M >> 1; modules pack once instead).
static const int8_t* packed_or_pack(const int8_t* b, int64_t ldb, const int8_t* b_packed, int64_t N, int64_t K,
                                    std::vector<int8_t>& tmp, int num_threads) {
  if (b_packed) return b_packed;
  tmp.resize(int8_packed_size(N, K));
  int8_pack_weight(b, ldb, N, K, tmp.data(), num_threads);
  return tmp.data();
}

void int8_gemm(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, const int8_t* b_packed,
               const float* a_scale, const float* b_scale, const float* bias, void* out, OutType out_dt,
               int64_t ldc, int64_t M, int64_t N, int64_t K, int num_threads) {
  check_common("int8_gemm", M, N, K);
  SLIMRT_CHECK(M <= 1 || lda >= K, "int8_gemm: a row stride " << lda << " < K=" << K);
  SLIMRT_CHECK(b_packed || N <= 1 || ldb >= K, "int8_gemm: b row stride " << ldb << " < K=" << K);
  SLIMRT_CHECK(M <= 1 || ldc >= N, "int8_gemm: out row stride " << ldc << " < N=" << N);
  SLIMRT_CHECK(out_dt == OutType::I32 || (a_scale && b_scale), "int8_gemm: scales are required for a float output");
  if (b_packed) {
    check_header(b_packed, N, K);
    check_matches(b, ldb, b_packed, N, K);
  }
  if (M == 0 || N == 0) return;
  if (K == 0) return fill_empty_k(bias, out, out_dt, ldc, M, N);
  const Isa isa = active_isa();
  if (isa == Isa::Scalar) {
    SLIMRT_CHECK(b != nullptr, "int8_gemm: the scalar path needs the unpacked weight");
    return ref::int8_gemm(a, lda, b, ldb, a_scale, b_scale, bias, out, out_dt, ldc, M, N, K, num_threads);
  }
  std::vector<int8_t> tmp;
  b_packed = packed_or_pack(b, ldb, b_packed, N, K, tmp, num_threads);
  if (isa == Isa::Avx512)
    avx512::int8_gemm_packed(a, lda, b_packed, a_scale, b_scale, bias, out, out_dt, ldc, M, N, K, num_threads);
  else
    avx2::int8_gemm_packed(a, lda, b_packed, a_scale, b_scale, bias, out, out_dt, ldc, M, N, K, num_threads);
}

void int8_w8_linear(const void* x, DType x_dt, int64_t ldx, const int8_t* b, int64_t ldb, const int8_t* b_packed,
                    const float* b_scale, const float* bias, void* out, OutType out_dt, int64_t ldc, int64_t M,
                    int64_t N, int64_t K, int num_threads) {
  check_common("int8_weight_only_linear", M, N, K);
  SLIMRT_CHECK(M <= 1 || ldx >= K, "int8_weight_only_linear: x row stride " << ldx << " < K=" << K);
  SLIMRT_CHECK(b_packed || N <= 1 || ldb >= K, "int8_weight_only_linear: w row stride " << ldb << " < K=" << K);
  SLIMRT_CHECK(M <= 1 || ldc >= N, "int8_weight_only_linear: out row stride " << ldc << " < N=" << N);
  SLIMRT_CHECK(out_dt != OutType::I32, "int8_weight_only_linear: the output is float");
  if (b_packed) {
    check_header(b_packed, N, K);
    check_matches(b, ldb, b_packed, N, K);
  }
  if (M == 0 || N == 0) return;
  if (K == 0) return fill_empty_k(bias, out, out_dt, ldc, M, N);
  const Isa isa = active_isa();
  if (isa == Isa::Scalar) {
    SLIMRT_CHECK(b != nullptr, "int8_weight_only_linear: the scalar path needs the unpacked weight");
    return ref::int8_w8_linear(x, x_dt, ldx, b, ldb, b_scale, bias, out, out_dt, ldc, M, N, K, num_threads);
  }
  std::vector<int8_t> tmp;
  b_packed = packed_or_pack(b, ldb, b_packed, N, K, tmp, num_threads);
  if (isa == Isa::Avx512)
    avx512::int8_w8_linear_packed(x, x_dt, ldx, b_packed, b_scale, bias, out, out_dt, ldc, M, N, K, num_threads);
  else
    avx2::int8_w8_linear_packed(x, x_dt, ldx, b_packed, b_scale, bias, out, out_dt, ldc, M, N, K, num_threads);
}

float act_scalar(float x, Act act) {
  switch (act) {
    case Act::Gelu: return 0.5f * x * (1.f + std::erf(x * 0.70710678118654752f));
    case Act::GeluTanh: return 0.5f * x * (1.f + std::tanh(0.79788456080286536f * (x + 0.044715f * x * x * x)));
    case Act::Relu: return x > 0.f || std::isnan(x) ? x : 0.f;
    case Act::Silu: return x / (1.f + std::exp(-x));
    default: return x;
  }
}

void int8_w8a8_linear(const void* x, DType x_dt, int64_t ldx, const int8_t* b, int64_t ldb, const int8_t* b_packed,
                      const float* b_scale, const float* bias, void* out, OutType out_dt, int64_t ldc, int64_t M,
                      int64_t N, int64_t K, int num_threads, Act act) {
  check_common("int8_linear", M, N, K);
  SLIMRT_CHECK(out_dt != OutType::I32, "int8_linear: the output is float");
  SLIMRT_CHECK(static_cast<int>(act) >= 0 && static_cast<int>(act) <= 4, "int8_linear: unknown activation code "
                                                                            << static_cast<int>(act));
  if (M > 0 && N > 0 && K > 0 && active_isa() == Isa::Avx512) {
    // Fused path: the same checks (and messages) as quantize_per_token + int8_gemm below.
    SLIMRT_CHECK(M <= 1 || ldx >= K, "quantize_per_token: row stride " << ldx << " < K=" << K);
    SLIMRT_CHECK(b_packed || N <= 1 || ldb >= K, "int8_gemm: b row stride " << ldb << " < K=" << K);
    SLIMRT_CHECK(M <= 1 || ldc >= N, "int8_gemm: out row stride " << ldc << " < N=" << N);
    std::vector<int8_t> tmp;
    if (b_packed) {
      check_header(b_packed, N, K);
      check_matches(b, ldb, b_packed, N, K);
    } else {
      tmp.resize(int8_packed_size(N, K));
      int8_pack_weight(b, ldb, N, K, tmp.data(), num_threads);
      b_packed = tmp.data();
    }
    return avx512::int8_w8a8_linear_packed(x, x_dt, ldx, b_packed, b_scale, bias, out, out_dt, ldc, M, N, K,
                                           num_threads, act);
  }
  if (act != Act::None && M > 0 && N > 0) {
    // Other ISAs: the linear into fp32, then the activation and the output cast in one pass (the
    // reference's order: activation in fp32, before rounding to bf16).
    const bool direct = out_dt == OutType::F32;
    std::unique_ptr<float[]> tmp(direct ? nullptr : new float[static_cast<size_t>(M * N)]);
    float* y = direct ? static_cast<float*>(out) : tmp.get();
    const int64_t ldy = direct ? ldc : N;
    int8_w8a8_linear(x, x_dt, ldx, b, ldb, b_packed, b_scale, bias, y, OutType::F32, ldy, M, N, K, num_threads);
    parallel_for(M, num_threads, [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m)
        for (int64_t n = 0; n < N; ++n) {
          const float v = act_scalar(y[m * ldy + n], act);
          if (direct) y[m * ldy + n] = v;
          else static_cast<uint16_t*>(out)[m * ldc + n] = f32_to_bf16(v);
        }
    });
    return;
  }
  // (M, K) per-token int8 activations; default-initialized (quantize_per_token writes every byte).
  std::unique_ptr<int8_t[]> q(new int8_t[static_cast<size_t>(std::max<int64_t>(M * K, 1))]);
  std::unique_ptr<float[]> scale(new float[static_cast<size_t>(std::max<int64_t>(M, 1))]);
  if (K > 0) quantize_per_token(x, x_dt, M, K, ldx, q.get(), scale.get(), num_threads);
  int8_gemm(q.get(), K, b, ldb, b_packed, scale.get(), b_scale, bias, out, out_dt, ldc, M, N, K, num_threads);
}

}  // namespace slimrt
