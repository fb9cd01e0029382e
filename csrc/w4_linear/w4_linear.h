// w4 family: int4 weights in groups along K times int8 activations quantized per group
// (python/slimrt/ops/reference_w4.py is the spec; every path here matches it bit for bit).
//
//   w4_linear:  x (M, K) fp32|bf16 row stride ldx  ->  out (M, N) fp32|bf16 row stride ldc
//     x_q, x_s  = per (row, group of G) symmetric int8: x_s = amax / 127, x_q = rne(x * ((1/amax) * 127))
//     isum      = sum_{k in g} (code[n, k] - zero[n, g]) * x_q[m, k]            exact in int32
//     acc[m, n] = sum over g in order of float(isum) * (scale[n, g] * x_s[m, g])  each op rounded (no FMA)
//     out       = acc + bias[n]
//
// Row-major (checkpoint) form, read by the scalar path:
//   w_q4 (N, ng * G / 2) u8: byte j of row n = code k=2j (low nibble) | code k=2j+1 (high nibble);
//   scale (N, ng) IEEE fp16 bits; zero (N, ng) u8 in [0, 15], or null for 8 everywhere. ng = ceil(K / G).
//
// Packed layout (the vector paths; identical for every ISA, built once per module by w4_pack_weight):
//   bytes [0, 64)   header: int64 {magic, N, K, N_pad, G, ng, panel_bytes, 0}
//   then N_pad / 16 panels of 16 output columns, panel_bytes each:
//     ng x 16 fp16 scales (group g's 16 columns at g * 32), then ng x 16 u8 zero points (at
//     ng * 32 + g * 16), zero padded to meta = round_up(48 ng, 64) bytes;
//     then ng * G / 8 chunks of 64 bytes: chunk (g, c) holds k = gG + 8c .. gG + 8c + 7 of the 16 columns,
//     byte (column j, b) at j * 4 + b = code k0 + b (low nibble) | code k0 + 4 + b (high nibble).
//     So one zmm load, masked to low nibbles, is the VNNI u8 operand "16 columns x 4 k" (k0 .. k0+3),
//     and its high nibbles the next 4 k. Padding columns have scale 0, zero 0, codes 0.
//   panel_bytes = meta + ng * 8 * G.
// Bytes per weight: 1/2 + 3 / G (fp16 scale + u8 zero per group): 0.547 at G = 64 (llama.cpp Q4_0: 0.5625).
#pragma once

#include <cstdint>

#include "common.h"
#include "int8_gemm/int8_gemm.h"

namespace slimrt {

constexpr int64_t kW4Magic = 0x3150344d494c53LL;  // "SLIM4P1"

int64_t w4_num_groups(int64_t K, int64_t G);
int64_t w4_panel_bytes(int64_t K, int64_t G);
int64_t w4_packed_size(int64_t N, int64_t K, int64_t G);
void w4_pack_weight(const uint8_t* w_q4, const uint16_t* scale, const uint8_t* zero, int64_t N, int64_t K, int64_t G,
                    uint8_t* packed, int num_threads);
// Throws unless `packed` (nbytes long) is a packed (N, K) weight of group size G.
void w4_check_packed(const uint8_t* packed, int64_t nbytes, int64_t N, int64_t K, int64_t G);

// out (M, N) = the w4 linear above. The scalar path reads (w_q4, scale, zero); the vector paths
// read `packed` (packed on the fly from the row-major form when null).
void w4_linear(const void* x, DType x_dt, int64_t ldx, const uint8_t* w_q4, const uint16_t* scale,
               const uint8_t* zero, const uint8_t* packed, const float* bias, void* out, OutType out_dt, int64_t ldc,
               int64_t M, int64_t N, int64_t K, int64_t G, int num_threads);

// The quantized activations every path reads: q (M, ng * G) int8 (zero past K), scale (M, ng) fp32 and
// sum (M, ng) int32 = sum of the group's q (for the zero points: sum (c - z) q = sum c q - z sum q).
struct W4Act {
  const int8_t* q;
  const float* scale;
  const int32_t* sum;
  int64_t M, ng, G;
};
void w4_quantize_act(const void* x, DType x_dt, int64_t ldx, int64_t M, int64_t K, int64_t G, int8_t* q,
                     float* scale, int32_t* sum, int num_threads);

// What the packed-weight kernels (AVX-512, AVX2) read: the quantized activations, the panels after
// the header (meta bytes of scales and zero points, then the codes, panel_bytes each), the output.
struct W4PackedArgs {
  W4Act a;
  const uint8_t* panels;
  int64_t panel_bytes, meta, N;
  const float* bias;
  void* out;
  OutType out_dt;
  int64_t ldc;
};

namespace ref {
void w4_linear(const W4Act& a, const uint8_t* w_q4, const uint16_t* scale, const uint8_t* zero, const float* bias,
               void* out, OutType out_dt, int64_t ldc, int64_t N, int num_threads);
float fp16_to_f32(uint16_t h);
}  // namespace ref
namespace avx512 {
// One group of w4_quantize_act; false (nothing written) where only the scalar rule is exact (tiny amax).
bool w4_quantize_group(const void* x, DType x_dt, int64_t off, int64_t kn, int64_t G, int8_t* q, float* scale,
                       int32_t* sum);
void w4_linear_packed(const W4Act& a, const uint8_t* packed, const float* bias, void* out, OutType out_dt,
                      int64_t ldc, int64_t N, int num_threads);
}
namespace avx2 {
void w4_linear_packed(const W4Act& a, const uint8_t* packed, const float* bias, void* out, OutType out_dt,
                      int64_t ldc, int64_t N, int num_threads);
}

}  // namespace slimrt
