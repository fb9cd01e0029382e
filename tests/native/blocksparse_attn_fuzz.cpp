// Randomised differential test of the block-sparse attention kernels under ASan + UBSan,
// independent of Python: every SIMD path against the scalar path on exact-size allocations
// (any over-read past q/k/v/out/mask trips ASan), fp32 and bf16, per-head masks, token masks,
// causal/window/global rules, decode (Lq <= 8) and prefill shapes. Build and run from the repo root:
//
//   S=csrc; F="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -std=c++17 -I$S"
//   g++ $F -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx512bf16 -mfma -mavx2 -mf16c \
//       -c $S/blocksparse_attn/blocksparse_attn_avx512.cpp -o /tmp/d.o
//   g++ $F -mavx2 -mfma -mf16c -c $S/blocksparse_attn/blocksparse_attn_avx2.cpp -o /tmp/c.o
//   g++ $F tests/native/blocksparse_attn_fuzz.cpp $S/blocksparse_attn/blocksparse_attn.cpp \
//       $S/blocksparse_attn/blocksparse_attn_ref.cpp $S/parallel.cpp $S/cpu_features.cpp /tmp/c.o /tmp/d.o \
//       -o /tmp/bsa_fuzz -lpthread && /tmp/bsa_fuzz     # needs an AVX-512 CPU; prints runs=600 fails=0
#include <cstdio>
#include <random>
#include <vector>
#include <cmath>
#include "blocksparse_attn/blocksparse_attn.h"
#include "cpu_features.h"
using namespace slimrt;
int main() {
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> U(-1, 1);
  int fails = 0, runs = 0, varlen_runs = 0;
  for (int it = 0; it < 300; ++it) {
    int64_t B = 1 + rng() % 2, Hkv = 1 + rng() % 2, G = 1 + rng() % 3, Hq = Hkv * G;
    int64_t Lq = 1 + rng() % 70, Lk = 1 + rng() % 300, D = 1 + rng() % 80, bs = 1 + rng() % 40;
    if (rng() % 3 == 0) Lq = 1 + rng() % 8;
    if (rng() % 3 == 0) Lk = Lq;  // self-attention shapes (and varlen candidates)
    bool bf = rng() % 2;
    int64_t nqb = div_up(Lq, bs), nkb = div_up(Lk, bs);
    // exact-size allocations so ASan sees any over-read
    std::vector<float> qf(B * Hq * Lq * D), kf(B * Hkv * Lk * D), vf(B * Hkv * Lk * D);
    for (auto& x : qf) x = U(rng); for (auto& x : kf) x = U(rng); for (auto& x : vf) x = U(rng);
    std::vector<uint16_t> qb(qf.size()), kb(kf.size()), vb(vf.size());
    for (size_t i = 0; i < qf.size(); ++i) qb[i] = f32_to_bf16(qf[i]);
    for (size_t i = 0; i < kf.size(); ++i) kb[i] = f32_to_bf16(kf[i]), vb[i] = f32_to_bf16(vf[i]);
    bool per_head = rng() % 2;
    int64_t Hm = per_head ? Hq : 1;
    std::vector<int32_t> cnt(B * Hm * nqb), idx(B * Hm * nqb * nkb);
    for (int64_t r = 0; r < B * Hm * nqb; ++r) {
      int c = 0;
      for (int64_t kb_ = 0; kb_ < nkb; ++kb_) if (rng() % 2) idx[r * nkb + c++] = kb_;
      cnt[r] = c;
    }
    bool use_tok = rng() % 4 == 0;
    std::vector<uint8_t> tok(use_tok ? B * Hm * Lq * Lk : 1);
    for (auto& t : tok) t = rng() % 3 != 0;
    BsaArgs a{};
    a.q = bf ? (const void*)qb.data() : qf.data(); a.k = bf ? (const void*)kb.data() : kf.data(); a.v = bf ? (const void*)vb.data() : vf.data();
    a.dt = bf ? DType::BF16 : DType::F32;
    a.B = B; a.Hq = Hq; a.Hkv = Hkv; a.Lq = Lq; a.Lk = Lk; a.D = D;
    a.sq[0] = Hq * Lq * D; a.sq[1] = Lq * D; a.sq[2] = D;
    a.sk[0] = a.sv[0] = Hkv * Lk * D; a.sk[1] = a.sv[1] = Lk * D; a.sk[2] = a.sv[2] = D;
    a.kv_num_blocks = cnt.data(); a.sn[0] = Hm * nqb; a.sn[1] = per_head ? nqb : 0; a.sn[2] = 1;
    a.kv_indices = idx.data(); a.si[0] = Hm * nqb * nkb; a.si[1] = per_head ? nqb * nkb : 0; a.si[2] = nkb; a.max_kb = nkb;
    if (B == 1) { a.sn[0] = 0; a.si[0] = 0; }
    a.block_size = bs; a.causal = rng() % 2; a.window = rng() % 3 ? 0 : 1 + rng() % 20; a.num_global = rng() % 3;
    a.token_mask = use_tok ? tok.data() : nullptr; a.st[0] = B == 1 ? 0 : Hm * Lq * Lk; a.st[1] = per_head ? Lq * Lk : 0; a.st[2] = Lk;
    a.scale = 0.3f;
    a.so[0] = Hq * Lq * D; a.so[1] = Lq * D; a.so[2] = D;
    // Varlen mode (packed sequences): B sequences of random length <= Lq laid out (T, H, D) in the same
    // buffers, every key block listed for every query block (the pattern varlen_attention uses).
    std::vector<int64_t> cu(B + 1, 0);
    std::vector<int32_t> all_idx(nkb), all_cnt(1, static_cast<int32_t>(nkb));
    if (Lq == Lk && !use_tok && Lq > 8 && rng() % 3 == 0) {
      for (int64_t b = 0; b < B; ++b) cu[b + 1] = cu[b] + rng() % (Lq + 1);
      for (int64_t i = 0; i < nkb; ++i) all_idx[i] = static_cast<int32_t>(i);
      a.cu_seqlens = cu.data();
      a.sq[0] = a.sk[0] = a.sv[0] = a.so[0] = 0;
      a.sq[1] = a.so[1] = D; a.sq[2] = a.so[2] = Hq * D;
      a.sk[1] = a.sv[1] = D; a.sk[2] = a.sv[2] = Hkv * D;
      a.kv_num_blocks = all_cnt.data(); a.kv_indices = all_idx.data();
      a.sn[0] = a.sn[1] = a.sn[2] = a.si[0] = a.si[1] = a.si[2] = 0;
      ++varlen_runs;
    }
    size_t n = B * Hq * Lq * D;
    std::vector<float> o_ref_f(n), o_f(n); std::vector<uint16_t> o_ref_b(n), o_b(n);
    a.out = bf ? (void*)o_ref_b.data() : o_ref_f.data();
    set_isa(Isa::Scalar); block_sparse_attention(a, 2);
    for (Isa isa : {Isa::Avx2, Isa::Avx512}) {
      a.out = bf ? (void*)o_b.data() : o_f.data();
      set_isa(isa); block_sparse_attention(a, 2);
      double err = 0;
      for (size_t i = 0; i < n; ++i) {
        float x = bf ? bf16_to_f32(o_b[i]) : o_f[i], y = bf ? bf16_to_f32(o_ref_b[i]) : o_ref_f[i];
        err = std::max(err, (double)std::fabs(x - y));
      }
      ++runs;
      if (err > (bf ? 2e-2 : 1e-5)) { ++fails; printf("mismatch it=%d isa=%d err=%g B%ld Hq%ld Hkv%ld Lq%ld Lk%ld D%ld bs%ld bf%d\n", it, (int)isa, err, B, Hq, Hkv, Lq, Lk, D, bs, bf); }
    }
  }
  printf("runs=%d (varlen cases %d) fails=%d\n", runs, varlen_runs, fails);
  return fails != 0;
}
