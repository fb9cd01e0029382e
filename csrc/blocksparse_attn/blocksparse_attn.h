// Block-sparse attention: FlashAttention-style online softmax over the listed key blocks only.
//
//   out[b, h, i, :] = sum_j softmax_j(scale * q[b, h, i] . k[b, h / G, j]) v[b, h / G, j]
//
// over the keys j allowed for query i: j lies in one of the key blocks listed for i's query block
// (kv_indices[b, h, i / bs, :kv_num_blocks[b, h, i / bs]]) and passes the token rule, with query i
// at position p = Lk - Lq + i:
//   (!causal || j <= p) && (window == 0 || |p - j| < window || j < num_global || p < num_global)
//   && (!token_mask || token_mask[b, h, i, j]).
// G = Hq / Hkv (grouped-query attention). A query with no allowed key gets zeros.
// q (B, Hq, Lq, D), k and v (B, Hkv, Lk, D) fp32 or bf16, unit stride in D, other strides free;
// out (B, Hq, Lq, D) in the same dtype through its strides `so` (unit stride in D). Accumulation is fp32. The mask arrays are given
// expanded to (B, Hq, ...) through their strides (stride 0 = shared over that dim).
// Work is proportional to the listed blocks; the Lq x Lk score matrix is never materialised.
#pragma once

#include <cstdint>

#include "common.h"

namespace slimrt {

struct BsaArgs {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  DType dt;
  int64_t B, Hq, Hkv, Lq, Lk, D;
  int64_t sq[3], sk[3], sv[3];  // element strides of (b, h, l); d has stride 1
  const int32_t* kv_num_blocks;  // (B, Hq, nQB) via strides sn
  int64_t sn[3];
  const int32_t* kv_indices;  // (B, Hq, nQB, max_kb) via strides si, unit stride in the last dim
  int64_t si[3];
  int64_t max_kb;
  int64_t block_size;
  bool causal;
  int64_t window, num_global;
  const uint8_t* token_mask;  // optional bool (B, Hq, Lq, Lk) via strides st, unit stride in Lk
  int64_t st[3];
  float scale;
  int64_t so[3];  // out element strides of (b, h, l); d has stride 1
  // Varlen (packed) mode when non-null: cu_seqlens (B + 1) int64, sequence b is rows [cu[b], cu[b+1])
  // along the l strides of q, k, v and out (their b strides are unused), with Lq_b = Lk_b = its
  // length; Lq = Lk bound every length. Always the prefill kernel; no token_mask.
  const int64_t* cu_seqlens;
};

// Varlen-aware extents: the query / key count and the first row of batch entry b.
inline int64_t bsa_lq(const BsaArgs& a, int64_t b) { return a.cu_seqlens ? a.cu_seqlens[b + 1] - a.cu_seqlens[b] : a.Lq; }
inline int64_t bsa_lk(const BsaArgs& a, int64_t b) { return a.cu_seqlens ? a.cu_seqlens[b + 1] - a.cu_seqlens[b] : a.Lk; }
inline int64_t bsa_row0(const BsaArgs& a, int64_t b) { return a.cu_seqlens ? a.cu_seqlens[b] : 0; }

// Validates sizes and the block layout (counts in [0, max_kb], indices sorted, unique and in
// range), throwing std::invalid_argument naming the field; then runs the active ISA's kernel.
void block_sparse_attention(const BsaArgs& a, int num_threads);

// Token rule inside a partial block (see the header comment).
inline bool bsa_allowed(const BsaArgs& a, int64_t p, int64_t j, const uint8_t* tok_row) {
  if (a.causal && j > p) return false;
  if (a.window > 0) {
    const int64_t d = p >= j ? p - j : j - p;
    if (!(d < a.window || j < a.num_global || p < a.num_global)) return false;
  }
  return tok_row == nullptr || tok_row[j] != 0;
}

namespace ref {
void block_sparse_attention(const BsaArgs& a, int num_threads);
}
namespace avx2 {
void block_sparse_attention(const BsaArgs& a, int num_threads);
}
namespace avx512 {
void block_sparse_attention(const BsaArgs& a, int num_threads);
}

}  // namespace slimrt
