// Entry point: validate, then pick the ISA path.
#include "blocksparse_attn/blocksparse_attn.h"

#include "cpu_features.h"

namespace slimrt {

namespace {
void check_layout(const BsaArgs& a) {
  const int64_t nqb = div_up(a.Lq, a.block_size), nkb = div_up(a.Lk, a.block_size);
  // Broadcast (stride 0) dims are checked once.
  const int64_t nb = (a.sn[0] == 0 && a.si[0] == 0) ? 1 : a.B;
  const int64_t nh = (a.sn[1] == 0 && a.si[1] == 0) ? 1 : a.Hq;
  for (int64_t b = 0; b < nb; ++b)
    for (int64_t h = 0; h < nh; ++h)
      for (int64_t qb = 0; qb < nqb; ++qb) {
        const int32_t cnt = a.kv_num_blocks[b * a.sn[0] + h * a.sn[1] + qb * a.sn[2]];
        SLIMRT_CHECK(cnt >= 0 && cnt <= a.max_kb, "block_sparse_attention: kv_num_blocks[" << b << ", " << h << ", "
                                                     << qb << "] = " << cnt << " is outside [0, maxKB=" << a.max_kb << "]");
        const int32_t* idx = a.kv_indices + b * a.si[0] + h * a.si[1] + qb * a.si[2];
        for (int32_t t = 0; t < cnt; ++t) {
          SLIMRT_CHECK(idx[t] >= 0 && idx[t] < nkb, "block_sparse_attention: kv_indices[" << b << ", " << h << ", " << qb
                                                       << ", " << t << "] = " << idx[t] << " is out of range (expected [0, "
                                                       << nkb << "))");
          SLIMRT_CHECK(t == 0 || idx[t] > idx[t - 1],
                       "block_sparse_attention: kv_indices[" << b << ", " << h << ", " << qb << "] is "
                                                             << (idx[t] == idx[t - 1] ? "duplicated" : "not sorted ascending")
                                                             << " (" << idx[t - 1] << " then " << idx[t]
                                                             << "); the listed key blocks must be strictly increasing");
        }
      }
}
}  // namespace

void block_sparse_attention(const BsaArgs& a, int num_threads) {
  SLIMRT_CHECK(a.B >= 0 && a.Hq >= 0 && a.Hkv >= 0 && a.Lq >= 0 && a.Lk >= 0 && a.D >= 0,
               "block_sparse_attention: negative size B=" << a.B << " Hq=" << a.Hq << " Hkv=" << a.Hkv << " Lq=" << a.Lq
                                                          << " Lk=" << a.Lk << " D=" << a.D);
  SLIMRT_CHECK(a.D <= 256, "block_sparse_attention: head dim D=" << a.D << " is larger than the supported 256");
  SLIMRT_CHECK(a.block_size >= 1, "block_sparse_attention: block_size=" << a.block_size << " must be >= 1");
  SLIMRT_CHECK(a.window >= 0 && a.num_global >= 0, "block_sparse_attention: window and num_global must be >= 0");
  SLIMRT_CHECK(a.max_kb >= 0, "block_sparse_attention: negative maxKB=" << a.max_kb);
  SLIMRT_CHECK(a.dt == DType::F32 || a.dt == DType::BF16, "block_sparse_attention: dtype must be float32 or bfloat16");
  if (a.B == 0 || a.Hq == 0 || a.Lq == 0 || a.D == 0) return;
  SLIMRT_CHECK(a.Hkv > 0 && a.Hq % a.Hkv == 0,
               "block_sparse_attention: Hq=" << a.Hq << " is not a multiple of Hkv=" << a.Hkv);
  SLIMRT_CHECK(a.kv_num_blocks && (a.kv_indices || a.max_kb == 0), "block_sparse_attention: missing mask arrays");
  if (a.cu_seqlens) {
    SLIMRT_CHECK(a.Lq == a.Lk && a.token_mask == nullptr,
                 "block_sparse_attention: varlen mode needs Lq == Lk and no token_mask");
    SLIMRT_CHECK(a.cu_seqlens[0] == 0, "varlen_attention: cu_seqlens[0] = " << a.cu_seqlens[0] << " must be 0");
    for (int64_t b = 0; b < a.B; ++b) {
      const int64_t len = a.cu_seqlens[b + 1] - a.cu_seqlens[b];
      SLIMRT_CHECK(len >= 0 && len <= a.Lq, "varlen_attention: sequence " << b << " has length " << len
                                                << " (cu_seqlens must be non-decreasing, lengths <= " << a.Lq << ")");
    }
  }
  check_layout(a);
  switch (active_isa()) {
    case Isa::Avx512:
      avx512::block_sparse_attention(a, num_threads);
      break;
    case Isa::Avx2:
      avx2::block_sparse_attention(a, num_threads);
      break;
    default:
      ref::block_sparse_attention(a, num_threads);
  }
}

}  // namespace slimrt
