// Entry points of the w4 family: validate, pack, quantize the activations, pick the ISA path.
// Built for baseline x86-64: nothing wide runs here.
#include "w4_linear/w4_linear.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "cpu_features.h"
#include "parallel.h"

namespace slimrt {

int64_t w4_num_groups(int64_t K, int64_t G) { return div_up(K, G); }

int64_t w4_panel_bytes(int64_t K, int64_t G) {
  const int64_t ng = w4_num_groups(K, G);
  return round_up(48 * ng, 64) + ng * 8 * G;
}

int64_t w4_packed_size(int64_t N, int64_t K, int64_t G) {
  return 64 + round_up(N, 16) / 16 * w4_panel_bytes(K, G);
}

namespace {
void check_g(const char* op, int64_t N, int64_t K, int64_t G) {
  SLIMRT_CHECK(G == 32 || G == 64 || G == 128, op << ": group size " << G << " is not 32, 64 or 128");
  SLIMRT_CHECK(N >= 0 && K >= 0, op << ": negative size N=" << N << " K=" << K);
}

void check_header(const uint8_t* packed, int64_t N, int64_t K, int64_t G) {
  int64_t h[8];
  std::memcpy(h, packed, sizeof(h));
  SLIMRT_CHECK(h[0] == kW4Magic && h[1] == N && h[2] == K && h[4] == G,
               "w_packed is not a packed (" << N << ", " << K << ") w4 weight of group size " << G << " (header N="
                                            << h[1] << " K=" << h[2] << " G=" << h[4]
                                            << "); repack it with w4_pack_weight");
}
}  // namespace

void w4_pack_weight(const uint8_t* w_q4, const uint16_t* scale, const uint8_t* zero, int64_t N, int64_t K, int64_t G,
                    uint8_t* packed, int num_threads) {
  check_g("w4_pack_weight", N, K, G);
  const int64_t ng = w4_num_groups(K, G), pb = w4_panel_bytes(K, G), meta = round_up(48 * ng, 64);
  const int64_t n_pad = round_up(N, 16), row_bytes = ng * G / 2;
  const int64_t hdr[8] = {kW4Magic, N, K, n_pad, G, ng, pb, 0};
  std::memcpy(packed, hdr, sizeof(hdr));
  parallel_for(n_pad / 16, num_threads, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      uint8_t* dst = packed + 64 + p * pb;
      std::memset(dst, 0, static_cast<size_t>(pb));
      for (int64_t j = 0; j < 16; ++j) {
        const int64_t n = p * 16 + j;
        if (n >= N) break;
        const uint8_t* row = w_q4 + n * row_bytes;
        for (int64_t g = 0; g < ng; ++g) {
          std::memcpy(dst + g * 32 + j * 2, scale + n * ng + g, 2);
          dst[ng * 32 + g * 16 + j] = zero ? zero[n * ng + g] : 8;
        }
        // Chunk c (8 k from k0 = 8c): byte j*4 + b = code(k0 + b) | code(k0 + 4 + b) << 4. In the row-major
        // form k0 + b sits in byte (k0 + b) / 2, nibble (k0 + b) % 2.
        for (int64_t c = 0; c < ng * G / 8; ++c) {
          uint8_t* d = dst + meta + c * 64 + j * 4;
          const uint8_t* s = row + c * 4;  // the 4 bytes holding k0 .. k0 + 7
          const uint8_t code[8] = {uint8_t(s[0] & 15), uint8_t(s[0] >> 4), uint8_t(s[1] & 15), uint8_t(s[1] >> 4),
                                   uint8_t(s[2] & 15), uint8_t(s[2] >> 4), uint8_t(s[3] & 15), uint8_t(s[3] >> 4)};
          for (int b = 0; b < 4; ++b) d[b] = static_cast<uint8_t>(code[b] | (code[4 + b] << 4));
        }
      }
    }
  }, std::max<int64_t>(1, (256 << 10) / std::max<int64_t>(1, pb)));
}

void w4_check_packed(const uint8_t* packed, int64_t nbytes, int64_t N, int64_t K, int64_t G) {
  check_g("w4_check_packed", N, K, G);
  SLIMRT_CHECK(nbytes == w4_packed_size(N, K, G), "w_packed has " << nbytes << " bytes, expected "
                                                     << w4_packed_size(N, K, G) << " for a (" << N << ", " << K
                                                     << ") w4 weight of group size " << G);
  check_header(packed, N, K, G);
}

// One group of x per call: the rule of reference_w4.quantize_per_group (quantize_per_token's, per group).
// Shared by every ISA path, so the quantized activations are the same bits whichever runs.
void w4_quantize_act(const void* x, DType x_dt, int64_t ldx, int64_t M, int64_t K, int64_t G, int8_t* q,
                     float* scale, int32_t* sum, int num_threads) {
  const int64_t ng = w4_num_groups(K, G), kp = ng * G;
  const bool wide = active_isa() == Isa::Avx512;
  parallel_for(M, num_threads, [&](int64_t m0, int64_t m1) {
    std::vector<float> xf(static_cast<size_t>(G));
    for (int64_t m = m0; m < m1; ++m) {
      for (int64_t g = 0; g < ng; ++g) {
        const int64_t k0 = g * G, kn = std::min(G, K - k0);
        if (wide && avx512::w4_quantize_group(x, x_dt, m * ldx + k0, kn, G, q + m * kp + k0, scale + m * ng + g,
                                              sum + m * ng + g))
          continue;
        float amax = 0.f;
        bool finite = true;
        for (int64_t i = 0; i < kn; ++i) {
          const int64_t k = m * ldx + k0 + i;
          const float v = x_dt == DType::F32 ? static_cast<const float*>(x)[k]
                                             : bf16_to_f32(static_cast<const uint16_t*>(x)[k]);
          xf[i] = v;
          if (!std::isfinite(v)) finite = false;
          amax = std::fmax(amax, std::fabs(v));
        }
        int8_t* qg = q + m * kp + k0;
        std::memset(qg, 0, static_cast<size_t>(G));
        int32_t s = 0;
        if (!finite || amax == 0.f) {
          scale[m * ng + g] = finite ? 0.f : NAN;
        } else {
          const float inv = (1.f / amax) * 127.f;  // as torch forms 127 / amax
          scale[m * ng + g] = amax / 127.f;
          for (int64_t i = 0; i < kn; ++i) {
            const float r = std::fmin(127.f, std::fmax(-127.f, std::nearbyint(xf[i] * inv)));  // round half even
            qg[i] = xf[i] == 0.f ? 0 : static_cast<int8_t>(r);  // inv = +inf (tiny amax): zeros stay 0
            s += qg[i];
          }
        }
        sum[m * ng + g] = s;
      }
    }
  }, std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)));
}

void w4_linear(const void* x, DType x_dt, int64_t ldx, const uint8_t* w_q4, const uint16_t* scale,
               const uint8_t* zero, const uint8_t* packed, const float* bias, void* out, OutType out_dt, int64_t ldc,
               int64_t M, int64_t N, int64_t K, int64_t G, int num_threads) {
  check_g("w4_linear", N, K, G);
  SLIMRT_CHECK(M >= 0, "w4_linear: negative size M=" << M);
  SLIMRT_CHECK(M <= 1 || ldx >= K, "w4_linear: x row stride " << ldx << " < K=" << K);
  SLIMRT_CHECK(M <= 1 || ldc >= N, "w4_linear: out row stride " << ldc << " < N=" << N);
  SLIMRT_CHECK(out_dt != OutType::I32, "w4_linear: the output is float");
  if (packed) check_header(packed, N, K, G);
  if (M == 0 || N == 0) return;
  if (K == 0) {  // the empty sum: bias (or 0); an empty weight may have no storage at all
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        const float v = bias ? bias[n] : 0.f;
        if (out_dt == OutType::F32) static_cast<float*>(out)[m * ldc + n] = v;
        else static_cast<uint16_t*>(out)[m * ldc + n] = f32_to_bf16(v);
      }
    return;
  }
  const int64_t ng = w4_num_groups(K, G);
  // (M, ng * G) int8 activations, (M, ng) scales and sums; default-initialized (every byte is written).
  std::unique_ptr<int8_t[]> q(new int8_t[static_cast<size_t>(std::max<int64_t>(M * ng * G, 1))]);
  std::unique_ptr<float[]> xs(new float[static_cast<size_t>(std::max<int64_t>(M * ng, 1))]);
  std::unique_ptr<int32_t[]> xsum(new int32_t[static_cast<size_t>(std::max<int64_t>(M * ng, 1))]);
  w4_quantize_act(x, x_dt, ldx, M, K, G, q.get(), xs.get(), xsum.get(), num_threads);
  const W4Act a{q.get(), xs.get(), xsum.get(), M, ng, G};
  const Isa isa = active_isa();
  if (isa == Isa::Scalar) {
    SLIMRT_CHECK(w_q4 != nullptr && scale != nullptr, "w4_linear: the scalar path needs the row-major weight");
    return ref::w4_linear(a, w_q4, scale, zero, bias, out, out_dt, ldc, N, num_threads);
  }
  std::vector<uint8_t> tmp;
  if (!packed) {
    SLIMRT_CHECK(w_q4 != nullptr && scale != nullptr, "w4_linear: neither a packed nor a row-major weight");
    tmp.resize(static_cast<size_t>(w4_packed_size(N, K, G)));
    w4_pack_weight(w_q4, scale, zero, N, K, G, tmp.data(), num_threads);
    packed = tmp.data();
  }
  if (isa == Isa::Avx512) avx512::w4_linear_packed(a, packed, bias, out, out_dt, ldc, N, num_threads);
  else avx2::w4_linear_packed(a, packed, bias, out, out_dt, ldc, N, num_threads);
}

}  // namespace slimrt
