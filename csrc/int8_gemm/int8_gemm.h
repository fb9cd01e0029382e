// int8 GEMM family: dynamic per-token quantization, the W8A8 GEMM, weight packing and the
// weight-only (float activations x int8 weights) linear.
//
//   quantize_per_token: x (M, K) fp32|bf16, row stride ldx  ->  q (M, K) int8 (row stride K),
//                       scale (M,) fp32;  scale = amax/127, q = round_half_even(x * (127/amax)).
//                       amax == 0 -> scale 0, q 0.  amax NaN/Inf -> scale NaN, q 0 (never an
//                       undefined float->int cast).
//   int8_gemm:          out[m, n] = float(sum_k a[m, k] * b[n, k]) * a_scale[m] * b_scale[n] + bias[n]
//                       a (M, K) int8 row stride lda, b (N, K) int8 row stride ldb (nn.Linear
//                       layout), the sum exact in int32. out fp32|bf16 row stride ldc; or with
//                       out_dt == I32 the raw int32 accumulator (scales and bias must be null).
//                       `b_packed` (from int8_pack_weight) replaces b when non-null.
//   int8_w8_linear:     out[m, n] = (sum_k x[m, k] * float(b[n, k])) * b_scale[n] + bias[n], fp32
//                       accumulation; x fp32|bf16. The M=1 decode path: memory-bound on b.
//
// Packed weight layout (identical for every ISA, so SLIMRT_ISA may differ between the process
// that packs and the one that runs):
//   bytes [0, 64)            header: int64 {magic, N, K, N_pad, K_pad, 0, 0, 0}
//   bytes [64, 64+N_pad*K_pad)  panels of 16 output columns; panel p, k-group g (4 k's) is 64
//                            bytes at 64 + p*16*K_pad + g*64, byte (col j, kk) at j*4 + kk. This is
//                            the VNNI operand order: one zmm load = 16 columns x 4 k.
//   then int32 comp[N_pad]   128 * sum_k b[n, k], for the u8 x s8 trick (a + 128 as u8).
//   then kPackSlack zero bytes (the AMX kernel reads whole 64-k tiles past K_pad; they meet u8 zeros).
//   16 consecutive k groups of a panel are also one AMX weight tile (16 rows x 64 bytes).
//   N_pad = round_up(N, 16), K_pad = round_up(K, 4); padding is zero.
#pragma once

#include <algorithm>
#include <cstdint>

#include "common.h"

namespace slimrt {

enum class OutType : int { F32 = 0, BF16 = 1, I32 = 2 };

// Epilogue activation of the W8A8 linear, applied in fp32 after the bias, before the output cast:
//   Gelu: 0.5 x (1 + erf(x / sqrt 2)); GeluTanh: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)));
//   Relu: max(x, 0) (NaN stays NaN); Silu: x / (1 + e^-x).
enum class Act : int { None = 0, Gelu = 1, GeluTanh = 2, Relu = 3, Silu = 4 };
float act_scalar(float x, Act act);

constexpr int64_t kPackMagic = 0x3150384d49'4c53LL;  // "SLIM8P1"
constexpr int64_t kPackHeader = 64;
constexpr int64_t kPanel = 16;  // output columns per panel
// Zero bytes after the comp vector: the AMX kernel's last tile of a panel reads whole 64-k steps,
// up to (64 - 4) / 4 groups x 64 bytes past the last panel's end (see run_amx).
constexpr int64_t kPackSlack = 1024;

// The weight-only paths convert x to fp32 a block of rows at a time, not all of it: a whole-x copy
// held up to twice the input (a 4.3 GB bf16 x peaked at 12.8 GB). A 4 MiB block keeps the copy in
// L2/L3 and re-streams the weight once per block (N K bytes against >= 4 MiB / 4 x N K FMAs: noise).
constexpr int64_t kW8BlockBytes = int64_t(4) << 20;
// Rows per block for fp32 rows of row_floats floats: a multiple of 12 (the 4-row and the 6-row tiles
// group the rows as a whole-x pass does; the bits do not depend on it either), at least 12, at most M.
inline int64_t w8_block_rows(int64_t M, int64_t row_floats) {
  const int64_t rows = std::max<int64_t>(12, kW8BlockBytes / (4 * std::max<int64_t>(row_floats, 1)) / 12 * 12);
  return std::min(rows, std::max<int64_t>(M, 1));
}

int64_t int8_packed_size(int64_t N, int64_t K);
// w (N, K) int8 row stride ldw -> packed (int8_packed_size(N, K) bytes).
void int8_pack_weight(const int8_t* w, int64_t ldw, int64_t N, int64_t K, int8_t* packed, int num_threads);
// Throws unless `packed` (nbytes long) is a packed weight of exactly (N, K).
void int8_check_packed(const int8_t* packed, int64_t nbytes, int64_t N, int64_t K);

void quantize_per_token(const void* x, DType x_dt, int64_t M, int64_t K, int64_t ldx, int8_t* q,
                        float* scale, int num_threads);

void int8_gemm(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, const int8_t* b_packed,
               const float* a_scale, const float* b_scale, const float* bias, void* out, OutType out_dt,
               int64_t ldc, int64_t M, int64_t N, int64_t K, int num_threads);

void int8_w8_linear(const void* x, DType x_dt, int64_t ldx, const int8_t* b, int64_t ldb, const int8_t* b_packed,
                    const float* b_scale, const float* bias, void* out, OutType out_dt, int64_t ldc, int64_t M,
                    int64_t N, int64_t K, int num_threads);

// int8_w8a8_linear: quantize_per_token(x) into a scratch buffer, then int8_gemm: one call from
// Python on the decode path instead of two plus two tensor allocations.
void int8_w8a8_linear(const void* x, DType x_dt, int64_t ldx, const int8_t* b, int64_t ldb, const int8_t* b_packed,
                      const float* b_scale, const float* bias, void* out, OutType out_dt, int64_t ldc, int64_t M,
                      int64_t N, int64_t K, int num_threads, Act act = Act::None);

// Per-ISA paths. The scalar path reads b unpacked; the vector paths read the packed layout.
namespace ref {
void quantize_per_token(const void* x, DType x_dt, int64_t M, int64_t K, int64_t ldx, int8_t* q,
                        float* scale, int num_threads);
void int8_gemm(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, const float* a_scale,
               const float* b_scale, const float* bias, void* out, OutType out_dt, int64_t ldc,
               int64_t M, int64_t N, int64_t K, int num_threads);
void int8_w8_linear(const void* x, DType x_dt, int64_t ldx, const int8_t* b, int64_t ldb, const float* b_scale,
                    const float* bias, void* out, OutType out_dt, int64_t ldc, int64_t M, int64_t N, int64_t K,
                    int num_threads);
}  // namespace ref

#define SLIMRT_INT8_ISA_DECLS                                                                              \
  void quantize_per_token(const void* x, DType x_dt, int64_t M, int64_t K, int64_t ldx, int8_t* q,      \
                          float* scale, int num_threads);                                              \
  void int8_gemm_packed(const int8_t* a, int64_t lda, const int8_t* packed, const float* a_scale,       \
                        const float* b_scale, const float* bias, void* out, OutType out_dt, int64_t ldc, \
                        int64_t M, int64_t N, int64_t K, int num_threads);                             \
  void int8_w8_linear_packed(const void* x, DType x_dt, int64_t ldx, const int8_t* packed,              \
                             const float* b_scale, const float* bias, void* out, OutType out_dt,        \
                             int64_t ldc, int64_t M, int64_t N, int64_t K, int num_threads);

namespace avx2 { SLIMRT_INT8_ISA_DECLS }
namespace avx512 { SLIMRT_INT8_ISA_DECLS }

// Machine probes (csrc/int8_gemm/probes_*.cpp): the int8 roofline the benchmarks compare against.
// Register-only vpdpbusd loop: int8 ops/s (2 per multiply-add) on num_threads threads.
double probe_int8_peak_ops(int num_threads, double seconds);
// Register-only AMX tdpbusd loop (4 independent 16 x 16 accumulator tiles), where the CPU has AMX.
double probe_amx_peak_ops(int num_threads, double seconds);
// Streaming read of nbytes (> L3) per pass: bytes/s on num_threads threads.
double probe_read_bandwidth(int64_t nbytes, int num_threads, int passes);
namespace avx512 {
// Fused quantize_per_token + int8_gemm_packed (float out): x is read once, the quantized chunk stays in L2.
void int8_w8a8_linear_packed(const void* x, DType x_dt, int64_t ldx, const int8_t* packed, const float* b_scale,
                             const float* bias, void* out, OutType out_dt, int64_t ldc, int64_t M, int64_t N,
                             int64_t K, int num_threads, Act act);
double probe_vnni_loop(int64_t iters);  // returns int8 ops done
double probe_amx_loop(int64_t iters);   // returns int8 ops done (AMX only)
uint64_t probe_read(const uint8_t* p, int64_t n);
}  // namespace avx512
namespace avx2 {
uint64_t probe_read(const uint8_t* p, int64_t n);
}  // namespace avx2

}  // namespace slimrt
