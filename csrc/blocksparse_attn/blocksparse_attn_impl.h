// The SIMD kernel body, written once over a vector-traits struct `Vec` (W floats per register).
// Included by blocksparse_attn_avx512.cpp / _avx2.cpp INSIDE their own namespace after defining
// Vec, so every instantiation is compiled with that file's -m flags only. No include guard.
//
// Prefill (any Lq): one task = up to QT query rows of one (b, h, query block). Q is loaded once,
// pre-multiplied by scale * log2(e) so the softmax runs in base 2. For each listed key block, in
// chunks of up to KC keys: S = Q K^T (a register-tiled GEMM against K^T packed once per kv head),
// the token rule only if the chunk is partial, the online-softmax update of (m, l), and
// O = O * alpha + P V. Per chunk: 2 * rows * keys * D FMAs for QK and PV against ~keys * D * 8 bytes
// of K/V, so a 64-row tile is compute-bound.
// Decode (Lq <= 8, one query block): the rows of the GQA group share each K/V load, the listed
// keys are split over threads, and each thread's partial (m, l, O) is merged at the end:
// 2 * keys * D * bytes of K/V read once, the memory-bound path.

using VT = typename Vec::T;
constexpr int W = Vec::W;
constexpr int64_t QT = 64;    // query rows per prefill task
constexpr int64_t KC = 128;   // keys per chunk (S tile width)
constexpr int64_t MAXR = 64;  // rows of one tile (QT, or a decode group)
constexpr float LOG2E = 1.4426950408889634f;
constexpr float NEG_INF = -std::numeric_limits<float>::infinity();

inline float ldf(const float* p) { return *p; }
inline float ldf(const uint16_t* p) { return bf16_to_f32(*p); }
inline void stf(float* p, float x) { *p = x; }
inline void stf(uint16_t* p, float x) { *p = f32_to_bf16(x); }

// Per-thread scratch for up to `rows` query rows, reused across the tasks a thread runs. Left
// uninitialised: every element is written before it is read (a decode call is a few microseconds
// of work, so zero-filling ~100 KB per thread would show).
struct Work {
  std::unique_ptr<float[]> q_, s_, o_, vbuf_;
  float *q, *s, *o, *vbuf;
  float m[MAXR], l[MAXR], alpha[MAXR];
  int64_t pos[MAXR];       // key position of each row's query
  const uint8_t* tok[MAXR];  // each row's token-mask row, or null
  int64_t D, Dp;
  Work(int64_t D_, int64_t Dp_, int64_t rows, bool need_vbuf)
      : q_(new float[rows * D_]), s_(new float[rows * KC]), o_(new float[rows * Dp_]),
        vbuf_(need_vbuf ? new float[KC * Dp_] : nullptr), D(D_), Dp(Dp_) {
    q = q_.get(), s = s_.get(), o = o_.get(), vbuf = vbuf_.get();
  }
  void reset(int64_t R) {
    for (int64_t r = 0; r < R; ++r) m[r] = NEG_INF, l[r] = 0.f;
    std::fill(o, o + R * Dp, 0.f);
  }
};

// Threads worth waking for `flop` of work: about 0.5 MFLOP (tens of microseconds) per thread, so
// a short decode step does not pay a pool wake-up that costs more than the step.
inline int threads_for(double flop, int num_threads, double per_thread = 5e5) {
  return static_cast<int>(std::max(1.0, std::min<double>(num_threads, flop / per_thread)));
}

// S (RT x CC*W) = Q (RT x D) . Kt (D x CC*W), Kt with row stride ldk.
template <int RT, int CC>
inline void micro_qk(const float* q, int64_t D, const float* kt, int64_t ldk, float* s) {
  VT acc[RT][CC];
  for (int r = 0; r < RT; ++r)
    for (int c = 0; c < CC; ++c) acc[r][c] = Vec::zero();
  for (int64_t d = 0; d < D; ++d) {
    VT kv[CC];
    for (int c = 0; c < CC; ++c) kv[c] = Vec::load(kt + d * ldk + c * W);
    for (int r = 0; r < RT; ++r) {
      const VT qb = Vec::set1(q[r * D + d]);
      for (int c = 0; c < CC; ++c) acc[r][c] = Vec::fma(qb, kv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < RT; ++r)
    for (int c = 0; c < CC; ++c) Vec::store(s + r * KC + c * W, acc[r][c]);
}

template <int RT>
inline void qk_rows(const float* q, int64_t D, const float* kt, int64_t ldk, float* s, int64_t ncols) {
  int64_t c = 0;
  for (; c + 2 * W <= ncols; c += 2 * W) micro_qk<RT, 2>(q, D, kt + c, ldk, s + c);
  for (; c < ncols; c += W) micro_qk<RT, 1>(q, D, kt + c, ldk, s + c);
}

// S[r, :ncols] for R rows against packed K^T (prefill).
inline void qk_packed(const Work& w, int64_t R, const float* kt, int64_t ldk, float* s, int64_t ncols) {
  const int64_t D = w.D;
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) qk_rows<4>(w.q + r * D, D, kt, ldk, s + r * KC, ncols);
  for (; r < R; ++r) qk_rows<1>(w.q + r * D, D, kt, ldk, s + r * KC, ncols);
}

// S[r, jj] = q_r . k_{j0+jj} reading K rows directly (decode: few rows, no packing). Keys go four
// at a time: one accumulator per key, the four reduced together (Vec::hsum4), a quarter of the
// shuffles of reducing each dot product alone; the K rows stay in L1 across the R query rows.
template <typename TE>
inline void qk_direct(const Work& w, int64_t R, const TE* k, int64_t ldk, int64_t n, float* s) {
  const int64_t D = w.D, Dv = D / W * W;
  const float* q = w.q;
  int64_t jj = 0;
  for (; jj + 4 <= n; jj += 4) {
    const TE* kj[4] = {k + jj * ldk, k + (jj + 1) * ldk, k + (jj + 2) * ldk, k + (jj + 3) * ldk};
    for (int64_t r = 0; r < R; ++r) {
      const float* qr = q + r * D;
      VT acc[4] = {Vec::zero(), Vec::zero(), Vec::zero(), Vec::zero()};
      for (int64_t d = 0; d < Dv; d += W) {
        const VT qv = Vec::load(qr + d);
        for (int t = 0; t < 4; ++t) acc[t] = Vec::fma(qv, Vec::load(kj[t] + d), acc[t]);
      }
      float dots[4];
      Vec::hsum4(acc[0], acc[1], acc[2], acc[3], dots);
      for (int t = 0; t < 4; ++t) {
        for (int64_t d = Dv; d < D; ++d) dots[t] += qr[d] * ldf(kj[t] + d);
        s[r * KC + jj + t] = dots[t];
      }
    }
  }
  for (; jj < n; ++jj) {
    const TE* kj = k + jj * ldk;
    for (int64_t r = 0; r < R; ++r) {
      VT acc = Vec::zero();
      for (int64_t d = 0; d < Dv; d += W) acc = Vec::fma(Vec::load(q + r * D + d), Vec::load(kj + d), acc);
      float x = Vec::hsum(acc);
      for (int64_t d = Dv; d < D; ++d) x += q[r * D + d] * ldf(kj + d);
      s[r * KC + jj] = x;
    }
  }
}

// O (RT x DC*W) = O * alpha + P (RT x n) . V (n x DC*W), V with row stride ldv.
template <int RT, int DC>
inline void micro_pv(const float* p, int64_t n, const float* v, int64_t ldv, float* o, int64_t ldo,
                     const float* alpha) {
  VT acc[RT][DC];
  for (int r = 0; r < RT; ++r)
    for (int c = 0; c < DC; ++c) acc[r][c] = Vec::mul(Vec::load(o + r * ldo + c * W), Vec::set1(alpha[r]));
  for (int64_t j = 0; j < n; ++j) {
    VT vv[DC];
    for (int c = 0; c < DC; ++c) vv[c] = Vec::load(v + j * ldv + c * W);
    for (int r = 0; r < RT; ++r) {
      const VT pb = Vec::set1(p[r * KC + j]);
      for (int c = 0; c < DC; ++c) acc[r][c] = Vec::fma(pb, vv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < RT; ++r)
    for (int c = 0; c < DC; ++c) Vec::store(o + r * ldo + c * W, acc[r][c]);
}

// One row (decode without a GQA group): two accumulator sets over even/odd keys, so the FMA
// chain per output vector is half as long (latency, not throughput, bounds a single row).
template <int DC>
inline void micro_pv_1row(const float* p, int64_t n, const float* v, int64_t ldv, float* o, float alpha) {
  VT acc0[DC], acc1[DC];
  for (int c = 0; c < DC; ++c) acc0[c] = Vec::mul(Vec::load(o + c * W), Vec::set1(alpha)), acc1[c] = Vec::zero();
  int64_t j = 0;
  for (; j + 2 <= n; j += 2) {
    const VT p0 = Vec::set1(p[j]), p1 = Vec::set1(p[j + 1]);
    for (int c = 0; c < DC; ++c) {
      acc0[c] = Vec::fma(p0, Vec::load(v + j * ldv + c * W), acc0[c]);
      acc1[c] = Vec::fma(p1, Vec::load(v + (j + 1) * ldv + c * W), acc1[c]);
    }
  }
  if (j < n) {
    const VT p0 = Vec::set1(p[j]);
    for (int c = 0; c < DC; ++c) acc0[c] = Vec::fma(p0, Vec::load(v + j * ldv + c * W), acc0[c]);
  }
  for (int c = 0; c < DC; ++c) Vec::store(o + c * W, Vec::add(acc0[c], acc1[c]));
}

template <int RT>
inline void pv_rows(const float* p, int64_t n, const float* v, int64_t ldv, float* o, int64_t Dp, const float* alpha) {
  int64_t d = 0;
  if (RT == 1) {
    for (; d + 4 * W <= Dp; d += 4 * W) micro_pv_1row<4>(p, n, v + d, ldv, o + d, alpha[0]);
    switch ((Dp - d) / W) {
      case 3: micro_pv_1row<3>(p, n, v + d, ldv, o + d, alpha[0]); break;
      case 2: micro_pv_1row<2>(p, n, v + d, ldv, o + d, alpha[0]); break;
      case 1: micro_pv_1row<1>(p, n, v + d, ldv, o + d, alpha[0]); break;
      default: break;
    }
    return;
  }
  for (; d + 4 * W <= Dp; d += 4 * W) micro_pv<RT, 4>(p, n, v + d, ldv, o + d, Dp, alpha);
  switch ((Dp - d) / W) {
    case 3: micro_pv<RT, 3>(p, n, v + d, ldv, o + d, Dp, alpha); break;
    case 2: micro_pv<RT, 2>(p, n, v + d, ldv, o + d, Dp, alpha); break;
    case 1: micro_pv<RT, 1>(p, n, v + d, ldv, o + d, Dp, alpha); break;
    default: break;
  }
}

// V rows are fp32 with Dp (multiple of W) readable columns; columns >= D are zero or ignored.
inline void pv(Work& w, int64_t R, int64_t n, const float* v, int64_t ldv) {
  const int64_t Dp = w.Dp;
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) pv_rows<4>(w.s + r * KC, n, v, ldv, w.o + r * Dp, Dp, w.alpha + r);
  for (; r < R; ++r) pv_rows<1>(w.s + r * KC, n, v, ldv, w.o + r * Dp, Dp, w.alpha + r);
}

// Applies the token rule to one row of a partial chunk: S[jj] = -inf where key j0 + jj is not
// allowed. The rule is two key intervals per query (the globals [0, g) and the band around p, both
// cut at p when causal), so the loops below are branch-free compares the compiler vectorises;
// bsa_allowed is the same rule pair by pair.
inline void mask_row(const BsaArgs& a, int64_t p, const uint8_t* tok, int64_t j0, int64_t n, float* sr) {
  const int64_t big = std::numeric_limits<int64_t>::max() / 4;
  const int64_t top = a.causal ? p : big;  // last allowed key
  int64_t lo1 = 0, hi1 = top;              // [lo1, hi1]: the band (everything without a window)
  int64_t hi0 = -1;                        // [0, hi0]: global keys
  if (a.window > 0 && p >= a.num_global) {
    lo1 = p - a.window + 1;
    hi1 = std::min(top, p + a.window - 1);
    hi0 = std::min(top, a.num_global - 1);
  }
  // Shift to chunk coordinates and clamp to [-1, n] so the compares stay in 32-bit range.
  auto rel = [&](int64_t x) { return static_cast<int32_t>(std::max<int64_t>(-1, std::min<int64_t>(n, x - j0))); };
  const int32_t l1 = rel(lo1), h1 = rel(hi1), h0 = rel(hi0), nn = static_cast<int32_t>(n);
  for (int32_t jj = 0; jj < nn; ++jj) {
    const bool ok = (jj >= l1 && jj <= h1) || jj <= h0;
    sr[jj] = ok ? sr[jj] : NEG_INF;
  }
  if (tok)
    for (int32_t jj = 0; jj < nn; ++jj) sr[jj] = tok[j0 + jj] ? sr[jj] : NEG_INF;
}

// Masks a partial chunk, then the online-softmax update: S becomes P in place, alpha is set.
inline void softmax_update(const BsaArgs& a, Work& w, int64_t R, int64_t j0, int64_t n, bool full) {
  const int64_t ncols = div_up(n, W) * W;
  for (int64_t r = 0; r < R; ++r) {
    float* sr = w.s + r * KC;
    for (int64_t jj = n; jj < ncols; ++jj) sr[jj] = NEG_INF;
    if (!full) mask_row(a, w.pos[r], w.tok[r], j0, n, sr);
    VT mx = Vec::set1(NEG_INF);
    for (int64_t c = 0; c < ncols; c += W) mx = Vec::max(mx, Vec::load(sr + c));
    const float m_new = std::max(w.m[r], Vec::hmax(mx));
    if (m_new == NEG_INF) {  // nothing allowed in this row yet: P = 0, O and l unchanged
      // ... unless the max was blind to a NaN score (NaN in q or k): then the row must be NaN.
      for (int64_t jj = 0; jj < n; ++jj)
        if (std::isnan(sr[jj])) w.l[r] = std::numeric_limits<float>::quiet_NaN();
      w.alpha[r] = 1.f;
      for (int64_t c = 0; c < ncols; c += W) Vec::store(sr + c, Vec::zero());
      continue;
    }
    w.alpha[r] = std::exp2(w.m[r] - m_new);
    const VT mv = Vec::set1(m_new);
    VT sum = Vec::zero();
    for (int64_t c = 0; c < ncols; c += W) {
      const VT p = Vec::exp2(Vec::sub(Vec::load(sr + c), mv));
      Vec::store(sr + c, p);
      sum = Vec::add(sum, p);
    }
    w.l[r] = w.l[r] * w.alpha[r] + Vec::hsum(sum);
    w.m[r] = m_new;
  }
}

// Whether the token rule allows every pair of rows [0, R) x keys [j0, j0 + n) (then no masking).
inline bool chunk_full(const BsaArgs& a, const Work& w, int64_t R, int64_t j0, int64_t n) {
  if (a.token_mask) return false;
  int64_t pmin = w.pos[0], pmax = w.pos[0];
  for (int64_t r = 1; r < R; ++r) pmin = std::min(pmin, w.pos[r]), pmax = std::max(pmax, w.pos[r]);
  const int64_t j1 = j0 + n - 1;
  if (a.causal && j1 > pmin) return false;
  if (a.window > 0) {
    const bool global = j1 < a.num_global || pmax < a.num_global;
    const bool band = pmax - j0 < a.window && j1 - pmin < a.window;
    if (!global && !band) return false;
  }
  return true;
}

// Loads R query rows (pointers rows[r]) into w.q, scaled to base-2 logits.
template <typename TE>
inline void load_q(Work& w, int64_t R, const TE* const* rows, float scale) {
  const float c = scale * LOG2E;
  for (int64_t r = 0; r < R; ++r)
    for (int64_t d = 0; d < w.D; ++d) w.q[r * w.D + d] = ldf(rows[r] + d) * c;
}

// Converts n rows of V (row stride ldv) into w.vbuf as fp32 with Dp columns, zero-padded.
template <typename TE>
inline void pack_v_chunk(Work& w, const TE* v, int64_t ldv, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    float* dst = w.vbuf + j * w.Dp;
    for (int64_t d = 0; d < w.D; ++d) dst[d] = ldf(v + j * ldv + d);
    for (int64_t d = w.D; d < w.Dp; ++d) dst[d] = 0.f;
  }
}

template <typename TE>
inline void write_out(const Work& w, int64_t R, TE* const* out_rows) {
  for (int64_t r = 0; r < R; ++r) {
    const float l = w.l[r];
    const bool any = l > 0.f || std::isnan(l);
    const float inv = any ? 1.f / l : 0.f;
    for (int64_t d = 0; d < w.D; ++d) stf(out_rows[r] + d, any ? w.o[r * w.Dp + d] * inv : 0.f);
  }
}

// Runs fn(task) for task in [0, n) on num_threads threads, handing tasks out one at a time so
// uneven tasks (causal masks: later query blocks list more keys) balance.
inline void dynamic_for(int64_t n, int num_threads, const std::function<void(int64_t)>& fn) {
  if (n <= 0) return;
  std::atomic<int64_t> next{0};
  const int nt = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, n)));
  parallel_for(nt, nt, [&](int64_t, int64_t) {
    for (int64_t t; (t = next.fetch_add(1)) < n;) fn(t);
  });
}

template <typename TE>
void prefill(const BsaArgs& a, int num_threads) {
  const int64_t D = a.D, Dp = div_up(D, W) * W, bs = a.block_size, group = a.Hq / a.Hkv;
  const int64_t nqb = div_up(a.Lq, bs), sub = div_up(std::min(bs, a.Lq), QT);  // row tiles per query block
  const int64_t Lkp = div_up(a.Lk, W) * W + W;  // packed K^T row length: column loads never run past it
  const TE* q = static_cast<const TE*>(a.q);
  const TE* k = static_cast<const TE*>(a.k);
  const TE* v = static_cast<const TE*>(a.v);
  // K^T packed once per (b, kv head): kt[(b * Hkv + hk) * D * Lkp + d * Lkp + j], fp32, zero tail.
  // Costs Lk * D per kv head, against Lq * listed * D * 2 FMAs of attention work.
  // V needs its own fp32 copy only for bf16 or a D that is not a multiple of W.
  const bool v_direct = std::is_same<TE, float>::value && D == Dp;
  // Both buffers are fully written below (tails included). They live in a per-calling-thread cache
  // that only grows: a fresh multi-MB allocation per call costs page faults comparable to the
  // packing itself. The cache holds the largest K (and V) seen, in fp32.
  const int64_t kt_size = a.B * a.Hkv * D * Lkp, vp_size = v_direct ? 0 : a.B * a.Hkv * a.Lk * Dp;
  thread_local std::unique_ptr<float[]> cache;
  thread_local int64_t cache_size = 0;
  if (cache_size < kt_size + vp_size) {
    cache.reset();
    cache.reset(new float[kt_size + vp_size]);
    cache_size = kt_size + vp_size;
  }
  float* const kt = cache.get();
  float* const vp = kt + kt_size;
  constexpr int64_t PK = 256;  // keys per packing task
  const int64_t npk = div_up(a.Lk, PK);
  // Pack only the 256-key chunks some listed block touches, so a very sparse mask does not pay
  // for packing the whole cache (work stays proportional to the listed blocks). Columns of an
  // unpacked neighbour read past a block's end land in S's tail, which is set to -inf.
  std::vector<uint8_t> used(static_cast<size_t>(a.B * a.Hkv * npk), 0);
  for (int64_t b = 0; b < a.B; ++b)
    for (int64_t h = 0; h < a.Hq; ++h)
      for (int64_t qb = 0; qb < nqb; ++qb) {
        const int32_t cnt = a.kv_num_blocks[b * a.sn[0] + h * a.sn[1] + qb * a.sn[2]];
        const int32_t* idx = a.kv_indices + b * a.si[0] + h * a.si[1] + qb * a.si[2];
        uint8_t* u = used.data() + (b * a.Hkv + h / group) * npk;
        const int64_t lk = bsa_lk(a, b);
        for (int32_t c = 0; c < cnt; ++c) {
          const int64_t j0 = static_cast<int64_t>(idx[c]) * bs, j1 = std::min(lk, j0 + bs);
          if (j0 >= j1) continue;  // varlen: a block past this sequence's end
          for (int64_t ch = j0 / PK; ch <= (j1 - 1) / PK; ++ch) u[ch] = 1;
        }
      }
  std::vector<int64_t> pack_tasks;
  for (int64_t t = 0; t < a.B * a.Hkv * npk; ++t)
    if (used[t]) pack_tasks.push_back(t);
  const double pack_work = 8.0 * static_cast<double>(pack_tasks.size()) * PK * D;
  dynamic_for(static_cast<int64_t>(pack_tasks.size()), threads_for(pack_work, num_threads), [&](int64_t i) {
    const int64_t t = pack_tasks[i];
    const int64_t c = t % npk, bh = t / npk, b = bh / a.Hkv, hk = bh % a.Hkv;
    const int64_t lk = bsa_lk(a, b), j0 = c * PK, j1 = std::min(lk, j0 + PK);
    float* dst = kt + bh * D * Lkp;
    const TE* src = k + b * a.sk[0] + hk * a.sk[1] + bsa_row0(a, b) * a.sk[2];
    const int64_t ldk = a.sk[2], ldt = Lkp;  // locals: the stores below cannot alias them
    // Transpose in 16-key strips: 16 rows read along d, 16 contiguous floats written per d.
    for (int64_t js = j0; js < j1; js += 16) {
      const int64_t je = std::min(j1, js + 16);
      for (int64_t d = 0; d < D; ++d)
        for (int64_t j = js; j < je; ++j) dst[d * ldt + j] = ldf(src + j * ldk + d);
    }
    if (j1 == lk)
      for (int64_t d = 0; d < D; ++d) std::fill(dst + d * Lkp + lk, dst + (d + 1) * Lkp, 0.f);
    if (!v_direct) {
      const TE* vs = v + b * a.sv[0] + hk * a.sv[1] + bsa_row0(a, b) * a.sv[2];
      float* vd = vp + bh * a.Lk * Dp;
      for (int64_t j = j0; j < j1; ++j) {
        for (int64_t d = 0; d < D; ++d) vd[j * Dp + d] = ldf(vs + j * a.sv[2] + d);
        for (int64_t d = D; d < Dp; ++d) vd[j * Dp + d] = 0.f;
      }
    }
  });

  const int64_t ntasks = a.B * a.Hq * nqb * sub;
  std::atomic<int64_t> next_work{0};
  // One unit per thread; each thread then pulls tasks (dynamic balance) with its own scratch.
  const int nt = threads_for(4.0 * a.Lq * a.Hq * a.B * std::min(a.Lk, a.max_kb * bs) * D, num_threads);
  parallel_for(std::min<int64_t>(nt, ntasks), nt, [&](int64_t, int64_t) {
    Work w(D, Dp, std::min({QT, bs, a.Lq}), false);
    const TE* qrows[MAXR];
    TE* orows[MAXR];
    for (;;) {
      const int64_t t = next_work.fetch_add(1);
      if (t >= ntasks) break;
      // Heaviest first: the last query blocks of a causal mask list the most keys.
      const int64_t rt = t % sub, rest = t / sub, qb = nqb - 1 - rest % nqb, bh = rest / nqb;
      const int64_t b = bh / a.Hq, h = bh % a.Hq, hk = h / group;
      const int64_t lq = bsa_lq(a, b), lk = bsa_lk(a, b), r0 = bsa_row0(a, b), off = lk - lq;
      const int64_t i0 = qb * bs + rt * QT, i1 = std::min({lq, (qb + 1) * bs, i0 + QT});
      if (i0 >= i1) continue;
      const int64_t R = i1 - i0;
      for (int64_t r = 0; r < R; ++r) {
        const int64_t i = i0 + r;
        qrows[r] = q + b * a.sq[0] + h * a.sq[1] + (r0 + i) * a.sq[2];
        orows[r] = static_cast<TE*>(a.out) + b * a.so[0] + h * a.so[1] + (r0 + i) * a.so[2];
        w.pos[r] = off + i;
        w.tok[r] = a.token_mask ? a.token_mask + b * a.st[0] + h * a.st[1] + i * a.st[2] : nullptr;
      }
      load_q(w, R, qrows, a.scale);
      w.reset(R);
      const int32_t cnt = a.kv_num_blocks[b * a.sn[0] + h * a.sn[1] + qb * a.sn[2]];
      const int32_t* idx = a.kv_indices + b * a.si[0] + h * a.si[1] + qb * a.si[2];
      const float* ktb = kt + (b * a.Hkv + hk) * D * Lkp;
      for (int32_t c = 0; c < cnt; ++c) {
        const int64_t kb0 = static_cast<int64_t>(idx[c]) * bs, kb1 = std::min(lk, kb0 + bs);
        for (int64_t j0 = kb0; j0 < kb1; j0 += KC) {
          const int64_t n = std::min(KC, kb1 - j0);
          qk_packed(w, R, ktb + j0, Lkp, w.s, div_up(n, W) * W);
          softmax_update(a, w, R, j0, n, chunk_full(a, w, R, j0, n));
          if (v_direct)
            pv(w, R, n, reinterpret_cast<const float*>(v + b * a.sv[0] + hk * a.sv[1] + (r0 + j0) * a.sv[2]), a.sv[2]);
          else
            pv(w, R, n, vp + ((b * a.Hkv + hk) * a.Lk + j0) * Dp, Dp);
        }
      }
      write_out(w, R, orows);
    }
  });
}

// Decode: R = (heads sharing a mask row) x Lq rows per group; the group's listed keys are cut into
// units of <= KC keys and split over `nseg` segments so that even B * Hkv = 1 keeps every thread
// busy; segments write partial (m, l, O) that a final pass merges.
template <typename TE>
void decode(const BsaArgs& a, int num_threads) {
  const int64_t D = a.D, Dp = div_up(D, W) * W, bs = a.block_size, group = a.Hq / a.Hkv;
  const bool grouped = a.sn[1] == 0 && a.si[1] == 0 && group * a.Lq <= MAXR;
  const int64_t hpg = grouped ? group : 1, hh = grouped ? a.Hkv : a.Hq;  // heads per group, groups per batch
  const int64_t ngroups = a.B * hh, R = hpg * a.Lq, cpb = div_up(bs, KC), off = a.Lk - a.Lq;
  const TE* q = static_cast<const TE*>(a.q);
  const TE* k = static_cast<const TE*>(a.k);
  const TE* v = static_cast<const TE*>(a.v);
  const bool v_direct = std::is_same<TE, float>::value && D == Dp;
  int64_t max_units = 0;
  for (int64_t g = 0; g < ngroups; ++g) {
    const int64_t b = g / hh, h = (g % hh) * hpg;
    max_units = std::max<int64_t>(max_units, a.kv_num_blocks[b * a.sn[0] + h * a.sn[1]] * cpb);
  }
  // Enough segments for about two per thread, each at least 4 units (512 keys) long.
  // Decode streams K/V once (memory-bound): a second thread pays off from ~2 MFLOP (a 512-key
  // cache over 8 heads), below that the pool wake-up costs more than it saves.
  num_threads = threads_for(4.0 * R * ngroups * max_units * KC * D, num_threads, 2e6);
  int64_t nseg = num_threads == 1 ? 1 : std::max<int64_t>(1, std::min(div_up(2 * num_threads, ngroups), max_units / 4));
  const int64_t ntasks = ngroups * nseg;
  std::vector<float> pm, pl, po;
  if (nseg > 1) {
    pm.resize(static_cast<size_t>(ntasks * R));
    pl.resize(static_cast<size_t>(ntasks * R));
    po.resize(static_cast<size_t>(ntasks * R * Dp));
  }
  auto row_head = [&](int64_t g, int64_t r) { return (g % hh) * hpg + r / a.Lq; };
  std::atomic<int64_t> next{0};
  parallel_for(std::min<int64_t>(num_threads, ntasks), num_threads, [&](int64_t, int64_t) {
    Work w(D, Dp, R, !v_direct);
    const TE* qrows[MAXR];
    TE* orows[MAXR];
    for (;;) {
      const int64_t t = next.fetch_add(1);
      if (t >= ntasks) break;
      const int64_t g = t / nseg, seg = t % nseg, b = g / hh, h0 = row_head(g, 0), hk = h0 / group;
      for (int64_t r = 0; r < R; ++r) {
        const int64_t h = row_head(g, r), i = r % a.Lq;
        qrows[r] = q + b * a.sq[0] + h * a.sq[1] + i * a.sq[2];
        orows[r] = static_cast<TE*>(a.out) + b * a.so[0] + h * a.so[1] + i * a.so[2];
        w.pos[r] = off + i;
        w.tok[r] = a.token_mask ? a.token_mask + b * a.st[0] + h * a.st[1] + i * a.st[2] : nullptr;
      }
      load_q(w, R, qrows, a.scale);
      w.reset(R);
      const int64_t cnt = a.kv_num_blocks[b * a.sn[0] + h0 * a.sn[1]];
      const int32_t* idx = a.kv_indices + b * a.si[0] + h0 * a.si[1];
      const int64_t units = cnt * cpb, u0 = units * seg / nseg, u1 = units * (seg + 1) / nseg;
      const TE* kb = k + b * a.sk[0] + hk * a.sk[1];
      const TE* vb = v + b * a.sv[0] + hk * a.sv[1];
      for (int64_t u = u0; u < u1; ++u) {
        const int64_t blk0 = static_cast<int64_t>(idx[u / cpb]) * bs;
        const int64_t j0 = blk0 + (u % cpb) * KC, j1 = std::min({a.Lk, blk0 + bs, j0 + KC});
        if (j0 >= j1) continue;
        const int64_t n = j1 - j0;
        qk_direct(w, R, kb + j0 * a.sk[2], a.sk[2], n, w.s);
        softmax_update(a, w, R, j0, n, chunk_full(a, w, R, j0, n));
        if (v_direct) {
          pv(w, R, n, reinterpret_cast<const float*>(vb + j0 * a.sv[2]), a.sv[2]);
        } else {
          pack_v_chunk(w, vb + j0 * a.sv[2], a.sv[2], n);
          pv(w, R, n, w.vbuf, Dp);
        }
      }
      if (nseg == 1) {
        write_out(w, R, orows);
      } else {
        std::copy(w.m, w.m + R, pm.begin() + t * R);
        std::copy(w.l, w.l + R, pl.begin() + t * R);
        std::copy(w.o, w.o + R * Dp, po.begin() + t * R * Dp);
      }
    }
  });
  if (nseg == 1) return;
  // Merge: m = max_s m_s, l = sum_s l_s 2^(m_s - m), O = sum_s O_s 2^(m_s - m), out = O / l.
  parallel_for(ngroups, num_threads, [&](int64_t g0, int64_t g1) {
    std::vector<float> o(static_cast<size_t>(Dp));
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t b = g / hh;
      for (int64_t r = 0; r < R; ++r) {
        float m = NEG_INF;
        for (int64_t s = 0; s < nseg; ++s) m = std::max(m, pm[(g * nseg + s) * R + r]);
        float l = 0.f;
        for (int64_t s = 0; s < nseg; ++s)  // a NaN row in any segment makes the whole row NaN
          if (std::isnan(pl[(g * nseg + s) * R + r])) l = std::numeric_limits<float>::quiet_NaN();
        std::fill(o.begin(), o.end(), 0.f);
        if (m != NEG_INF && !std::isnan(l)) {
          for (int64_t s = 0; s < nseg; ++s) {
            const int64_t t = g * nseg + s;
            const float wgt = std::exp2(pm[t * R + r] - m);
            if (wgt == 0.f) continue;
            l += pl[t * R + r] * wgt;
            const float* os = po.data() + (t * R + r) * Dp;
            for (int64_t d = 0; d < D; ++d) o[d] += os[d] * wgt;
          }
        }
        const int64_t h = row_head(g, r), i = r % a.Lq;
        TE* out = static_cast<TE*>(a.out) + b * a.so[0] + h * a.so[1] + i * a.so[2];
        const bool any = l > 0.f || std::isnan(l);
        for (int64_t d = 0; d < D; ++d) stf(out + d, any ? o[d] / l : 0.f);
      }
    }
  });
}

template <typename TE>
void run(const BsaArgs& a, int num_threads) {
  if (a.cu_seqlens == nullptr && a.Lq <= 8 && a.Lq <= a.block_size)
    decode<TE>(a, num_threads);
  else
    prefill<TE>(a, num_threads);
}

inline void run_dtype(const BsaArgs& a, int num_threads) {
  if (a.dt == DType::F32)
    run<float>(a, num_threads);
  else
    run<uint16_t>(a, num_threads);
}
