// Portable scalar path: one query row at a time, one key at a time, online softmax in fp32.
// The fallback on any CPU and the path `SLIMRT_ISA=scalar` forces; written for clarity, not speed.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "blocksparse_attn/blocksparse_attn.h"
#include "parallel.h"

namespace slimrt {
namespace ref {

namespace {
inline float ld(const void* base, DType dt, int64_t i) {
  return dt == DType::F32 ? static_cast<const float*>(base)[i] : bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
}
}  // namespace

void block_sparse_attention(const BsaArgs& a, int num_threads) {
  const int64_t bs = a.block_size, nqb = div_up(a.Lq, bs), group = a.Hq / a.Hkv, D = a.D;
  // One task per (b, h, query block).
  parallel_for(a.B * a.Hq * nqb, num_threads, [&](int64_t t0, int64_t t1) {
    std::vector<float> q(D), o(D);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t qb = t % nqb, h = (t / nqb) % a.Hq, b = t / (nqb * a.Hq), hk = h / group;
      const int32_t cnt = a.kv_num_blocks[b * a.sn[0] + h * a.sn[1] + qb * a.sn[2]];
      const int32_t* idx = a.kv_indices + b * a.si[0] + h * a.si[1] + qb * a.si[2];
      const int64_t lq = bsa_lq(a, b), lk = bsa_lk(a, b), r0 = bsa_row0(a, b);
      const int64_t off = lk - lq;  // query i sits at key position off + i
      const int64_t kbase = b * a.sk[0] + hk * a.sk[1] + r0 * a.sk[2], vbase = b * a.sv[0] + hk * a.sv[1] + r0 * a.sv[2];
      for (int64_t i = qb * bs; i < std::min(lq, (qb + 1) * bs); ++i) {
        const int64_t qrow = b * a.sq[0] + h * a.sq[1] + (r0 + i) * a.sq[2];
        for (int64_t d = 0; d < D; ++d) q[d] = ld(a.q, a.dt, qrow + d) * a.scale;
        const uint8_t* tok = a.token_mask ? a.token_mask + b * a.st[0] + h * a.st[1] + i * a.st[2] : nullptr;
        const int64_t p = off + i;
        float m = -std::numeric_limits<float>::infinity(), l = 0.f;
        std::fill(o.begin(), o.end(), 0.f);
        for (int32_t c = 0; c < cnt; ++c) {
          const int64_t j0 = static_cast<int64_t>(idx[c]) * bs, j1 = std::min(lk, j0 + bs);
          for (int64_t j = j0; j < j1; ++j) {
            if (!bsa_allowed(a, p, j, tok)) continue;
            float s = 0.f;
            for (int64_t d = 0; d < D; ++d) s += q[d] * ld(a.k, a.dt, kbase + j * a.sk[2] + d);
            const float m_new = std::isnan(s) ? s : std::fmax(m, s);
            const float alpha = std::exp(m - m_new), pj = std::exp(s - m_new);
            l = l * alpha + pj;
            for (int64_t d = 0; d < D; ++d) o[d] = o[d] * alpha + pj * ld(a.v, a.dt, vbase + j * a.sv[2] + d);
            m = m_new;
          }
        }
        const int64_t orow = b * a.so[0] + h * a.so[1] + (r0 + i) * a.so[2];
        for (int64_t d = 0; d < D; ++d) {
          const float r = l > 0.f || std::isnan(l) ? o[d] / l : 0.f;
          if (a.dt == DType::F32)
            static_cast<float*>(a.out)[orow + d] = r;
          else
            static_cast<uint16_t*>(a.out)[orow + d] = f32_to_bf16(r);
        }
      }
    }
  });
}

}  // namespace ref
}  // namespace slimrt
