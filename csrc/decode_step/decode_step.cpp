// decode_step: see decode_step.h. The linears go through int8_w8_linear (ISA dispatch, packed
// weights); everything else is small (C = 768: a few microseconds per layer) and runs on the calling
// thread, except attention, which is split over heads. The small kernels have a portable and an
// AVX-512 version (decode_step_impl.h): at 1 thread the portable attention and SiLU cost 0.72 and
// 0.16 ms per 12-layer Llama-style step, the AVX-512 ones 0.13 and 0.006 ms.
#include "decode_step/decode_step.h"

#include <algorithm>
#include <cmath>

#include "cpu_features.h"
#include "decode_step/decode_step_impl.h"
#include "int8_gemm/int8_gemm.h"
#include "w4_linear/w4_linear.h"
#include "parallel.h"

namespace slimrt {
namespace {

constexpr int64_t kWarmUs = 1000;

void check_linear(const char* what, const W8Linear& l, int64_t n, int64_t k) {
  if (l.group) {
    SLIMRT_CHECK(l.packed != nullptr || (l.q4 != nullptr && l.scale16 != nullptr),
                 "decode_step: " << what << " has no w4 weight");
    SLIMRT_CHECK(l.N == n && l.K == k,
                 "decode_step: " << what << " is (" << l.N << ", " << l.K << "), expected (" << n << ", " << k << ")");
    if (l.packed)
      w4_check_packed(reinterpret_cast<const uint8_t*>(l.packed), w4_packed_size(n, k, l.group), n, k, l.group);
    return;
  }
  SLIMRT_CHECK(l.packed != nullptr || l.w != nullptr, "decode_step: " << what << " has no weight");
  SLIMRT_CHECK(l.scale != nullptr, "decode_step: " << what << " has no scale");
  SLIMRT_CHECK(l.N == n && l.K == k,
               "decode_step: " << what << " is (" << l.N << ", " << l.K << "), expected (" << n << ", " << k << ")");
  if (l.packed) int8_check_packed(l.packed, int8_packed_size(n, k), n, k);
}

// y (M, N) = x (M, K) W^T: the same kernel call as the eager Int8Linear's w8 path (W4Linear's w4_linear),
// so the same bits. A smoothing vector scales x in place first (x * smooth in fp32, as the eager module
// does): every input the step passes is a scratch row block that nothing reads after its linear.
void linear(const W8Linear& l, float* x, float* y, int64_t M, int num_threads) {
  if (l.smooth)
    for (int64_t r = 0; r < M; ++r)
      for (int64_t k = 0; k < l.K; ++k) x[r * l.K + k] *= l.smooth[k];
  if (l.group)
    return w4_linear(x, DType::F32, l.K, l.q4, l.scale16, l.zero, reinterpret_cast<const uint8_t*>(l.packed), l.bias,
                     y, OutType::F32, l.N, M, l.N, l.K, l.group, num_threads);
  int8_w8_linear(x, DType::F32, l.K, l.w, l.K, l.packed, l.scale, l.bias, y, OutType::F32, l.N, M, l.N, l.K,
                 num_threads);
}

// RMSNorm (b null) or LayerNorm of x (n,) into y; y may alias x. LayerNorm sums in double: within
// fp32 rounding of PyTorch's result, whatever order its vectorized reduction adds in.
void norm(bool wide, NormKind kind, const float* x, const float* w, const float* b, float* y, int64_t n, float eps) {
  if (kind == NormKind::RMS) return wide ? avx512::rms_norm(x, w, y, n, eps) : portable::rms_norm(x, w, y, n, eps);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i];
  const float mean = static_cast<float>(s / n);
  double v = 0;
  for (int64_t i = 0; i < n; ++i) v += static_cast<double>(x[i] - mean) * (x[i] - mean);
  const float r = 1.f / std::sqrt(static_cast<float>(v / n) + eps);
  for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * r * w[i] + b[i];
}

// x (D,) in place: x[:rot] = x[:rot] * cos + rot(x[:rot]) * sin, rot(x)[i] = x[(i + rot/2) % rot].
void rope(float* x, const float* cos, const float* sin, int64_t rot, float* tmp) {
  const int64_t half = rot / 2;
  std::copy(x, x + rot, tmp);
  for (int64_t i = 0; i < rot; ++i) x[i] = tmp[i] * cos[i] + tmp[(i + half) % rot] * sin[i];
}

}  // namespace

// Portable versions (any x86-64; the AVX-512 ones are in decode_step_avx512.cpp).
namespace portable {
namespace {
// exp(x) to ~2 ulp (Cephes expf: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial, 2^n in the exponent
// bits), written with no call so the loops below vectorize: libm's expf is a call per
// element, ~120 us per 12-layer step in SiLU alone. x below -87.3 gives 0, above 88.7 +inf.
inline float exp_fast(float x) {
  const float xc = std::isnan(x) ? 0.f : std::min(std::max(x, -87.3f), 88.7f);  // no NaN -> int cast
  const float n = (xc * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round to nearest
  const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float y = p * scale;
  return std::isnan(x) ? x : x > 88.7f ? INFINITY : (x < -87.3f ? 0.f : y);
}

}  // namespace

// a (I,) = act(g) [* u]: SiLU-gated, tanh GELU (tanh(y) = 1 - 2 / (exp(2y) + 1)), or erf GELU.
void activation(ActKind kind, const float* g, const float* u, float* a, int64_t n) {
  switch (kind) {
    case ActKind::SiluGated:
      for (int64_t i = 0; i < n; ++i) a[i] = g[i] / (1.f + exp_fast(-g[i])) * u[i];
      return;
    case ActKind::GeluTanh:  // HF gelu_new / gelu_pytorch_tanh
      for (int64_t i = 0; i < n; ++i) {
        const float x = g[i], y = 0.7978845608028654f * (x + 0.044715f * (x * x * x));
        a[i] = 0.5f * x * (2.f - 2.f / (exp_fast(2.f * y) + 1.f));
      }
      return;
    case ActKind::GeluErf:
      for (int64_t i = 0; i < n; ++i) a[i] = 0.5f * g[i] * (1.f + std::erf(g[i] * 0.7071067811865476f));
      return;
  }
}

namespace {
// sum_d a[d] b[d] in 8 independent lanes (vectorizes; one serial add chain would cost ~4 cycles a term).
inline float dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int64_t d = 0;
  for (; d + 8 <= n; d += 8)
    for (int u = 0; u < 8; ++u) acc[u] += a[d + u] * b[d + u];
  float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
  for (; d < n; ++d) s += a[d] * b[d];
  return s;
}

}  // namespace

void attend_head(const float* q, const float* k, const float* v, int64_t L, int64_t D, float scale, float* scores,
                 float* out) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < L; ++j) {
    scores[j] = dot(q, k + j * D, D) * scale;
    mx = std::max(mx, scores[j]);
  }
  for (int64_t j = 0; j < L; ++j) scores[j] = exp_fast(scores[j] - mx);
  float sum = 0.f;
  for (int64_t j = 0; j < L; ++j) sum += scores[j];
  const float inv = 1.f / sum;
  std::fill(out, out + D, 0.f);
  for (int64_t j = 0; j < L; ++j) {
    const float pj = scores[j] * inv;
    for (int64_t d = 0; d < D; ++d) out[d] += pj * v[j * D + d];
  }
}

void rms_norm(const float* x, const float* w, float* y, int64_t n, float eps) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float r = 1.f / std::sqrt(static_cast<float>(ss / n) + eps);
  for (int64_t i = 0; i < n; ++i) y[i] = w ? (x[i] * r) * w[i] : x[i] * r;
}

int64_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(x[i])) return i;
    if (x[i] > x[best]) best = i;
  }
  return best;
}

}  // namespace portable

DecodePlan::DecodePlan(const DecodeConfig& cfg) : cfg_(cfg) {
  SLIMRT_CHECK(cfg.hidden > 0 && cfg.head_dim > 0 && cfg.vocab > 0,
               "DecodePlan: hidden, head_dim and vocab must be > 0");
  SLIMRT_CHECK(cfg.rot_dim >= 0 && cfg.rot_dim <= cfg.head_dim && cfg.rot_dim % 2 == 0,
               "DecodePlan: rot_dim=" << cfg.rot_dim << " must be even and in [0, head_dim=" << cfg.head_dim << "]");
  SLIMRT_CHECK(static_cast<int>(cfg.norm) >= 0 && static_cast<int>(cfg.norm) <= 1, "DecodePlan: unknown norm kind");
  SLIMRT_CHECK(static_cast<int>(cfg.act) >= 0 && static_cast<int>(cfg.act) <= 2, "DecodePlan: unknown activation");
}

void DecodePlan::add_layer(const DecodeLayer& l) {
  const int64_t C = cfg_.hidden, D = cfg_.head_dim, I = l.down.K;
  const bool layer_norm = cfg_.norm == NormKind::Layer;
  SLIMRT_CHECK(l.ln1_w && l.ln2_w && (!layer_norm || (l.ln1_b && l.ln2_b)), "decode_step: a layer norm is missing");
  SLIMRT_CHECK(l.n_heads > 0 && l.n_kv_heads > 0 && l.n_heads % l.n_kv_heads == 0,
               "decode_step: n_heads=" << l.n_heads << " must be a positive multiple of n_kv_heads=" << l.n_kv_heads);
  SLIMRT_CHECK((l.q_norm == nullptr) == (l.k_norm == nullptr), "decode_step: q_norm and k_norm go together");
  check_linear("qkv", l.qkv, (l.n_heads + 2 * l.n_kv_heads) * D, C);
  check_linear("o", l.o, C, l.n_heads * D);
  SLIMRT_CHECK(I > 0, "decode_step: the MLP has width 0");
  check_linear("up", l.up, cfg_.act == ActKind::SiluGated ? 2 * I : I, C);
  check_linear("down", l.down, C, I);
  layers_.push_back(l);
}

void DecodePlan::set_head(const float* embed, const float* norm_w, const float* norm_b, const W8Linear& lm_head) {
  SLIMRT_CHECK(embed && norm_w && (cfg_.norm == NormKind::RMS || norm_b),
               "decode_step: embedding or final norm missing");
  check_linear("lm_head", lm_head, cfg_.vocab, cfg_.hidden);
  embed_ = embed;
  norm_w_ = norm_w;
  norm_b_ = norm_b;
  lm_head_ = lm_head;
  has_head_ = true;
}

DecodeSession::DecodeSession(const DecodePlan& plan, const std::vector<float*>& k_cache,
                             const std::vector<float*>& v_cache, int64_t max_len, const float* cos, const float* sin,
                             const float* pos_embed, const std::vector<int64_t>& pads)
    : plan_(plan), k_cache_(k_cache), v_cache_(v_cache), max_len_(max_len), cos_(cos), sin_(sin),
      pos_embed_(pos_embed), batch_(static_cast<int64_t>(pads.size())), pads_(pads) {
  const DecodeConfig& c = plan.cfg_;
  SLIMRT_CHECK(plan.has_head_ && !plan.layers_.empty(), "DecodeSession: the plan has no layers or no head");
  SLIMRT_CHECK(static_cast<int64_t>(k_cache.size()) == plan.num_layers() &&
                   static_cast<int64_t>(v_cache.size()) == plan.num_layers(),
               "DecodeSession: " << k_cache.size() << " k and " << v_cache.size() << " v caches for "
                                 << plan.num_layers() << " layers");
  for (int64_t i = 0; i < plan.num_layers(); ++i)
    SLIMRT_CHECK(k_cache[i] && v_cache[i], "DecodeSession: layer " << i << " has a null cache");
  SLIMRT_CHECK(max_len > 0, "DecodeSession: max_len=" << max_len << " must be > 0");
  SLIMRT_CHECK(batch_ >= 1, "DecodeSession: pads must list one left padding per batch row (got none)");
  for (int64_t b = 0; b < batch_; ++b)
    SLIMRT_CHECK(pads[b] >= 0 && pads[b] < max_len, "DecodeSession: row " << b << "'s left padding " << pads[b]
                                                                           << " is outside [0, " << max_len << ")");
  SLIMRT_CHECK(c.rot_dim > 0 ? (cos && sin) : pos_embed != nullptr,
               "DecodeSession: " << (c.rot_dim > 0 ? "rope cos/sin tables" : "pos_embed") << " missing");
  int64_t heads = 0;
  for (const DecodeLayer& l : plan.layers_) heads = std::max(heads, l.n_heads);
  ensure_rows(1);
  scores_.resize(heads * max_len + c.head_dim);  // + one head_dim of rope scratch
}

// Queries t < T at slots start + t attend to slots [0, start + t] (causal over the new rows).
// Row r's query (cache row b, slot s) attends to its keys at slots [kv0, s].
void DecodeSession::attention(const DecodeLayer& l, int64_t layer, const std::vector<Row>& rows, int num_threads) {
  const int64_t D = plan_.cfg_.head_dim, H = l.n_heads, Hkv = l.n_kv_heads, group = H / Hkv;
  const int64_t R = static_cast<int64_t>(rows.size()), ldq = l.qkv.N, ldo = H * D;
  const float scale = l.attn_scale;
  const auto attend = active_isa() == Isa::Avx512 ? avx512::attend_head : portable::attend_head;
  parallel_for(H * R, num_threads, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t h = i / R, r = i % R;
      const Row& row = rows[r];
      const int64_t off = ((row.b * Hkv + h / group) * max_len_ + row.kv0) * D;
      attend(qkv_.data() + r * ldq + h * D, k_cache_[layer] + off, v_cache_[layer] + off, row.slot - row.kv0 + 1, D,
             scale, scores_.data() + h * max_len_, att_.data() + r * ldo + h * D);
    }
  }, R);  // whole heads per chunk: two chunks never share a head's scores row
}

void DecodeSession::ensure_rows(int64_t R) {
  if (R <= rows_) return;
  const DecodeConfig& c = plan_.cfg_;
  int64_t qkv = 0, att = 0, mlp = 0, inter = 0;
  for (const DecodeLayer& l : plan_.layers_) {
    qkv = std::max(qkv, l.qkv.N);
    att = std::max(att, l.n_heads * c.head_dim);
    mlp = std::max(mlp, l.up.N);
    inter = std::max(inter, l.down.K);
  }
  x_.resize(R * c.hidden);
  h_.resize(R * c.hidden);
  tmp_.resize(R * c.hidden);
  qkv_.resize(R * qkv);
  att_.resize(R * att);
  mlp_.resize(R * mlp);
  act_.resize(R * inter);
  rows_ = R;
}

void DecodeSession::step(const int64_t* tokens, int64_t slot, float* logits, int64_t* argmax, int num_threads) {
  SLIMRT_CHECK(slot >= 0 && slot < max_len_, "decode_step: slot " << slot << " is outside [0, " << max_len_ << ")");
  std::vector<Row> rows(batch_);
  for (int64_t b = 0; b < batch_; ++b) {
    SLIMRT_CHECK(slot >= pads_[b], "decode_step: slot " << slot << " is inside row " << b << "'s left padding");
    rows[b] = Row{b, slot, pads_[b]};
  }
  std::vector<int64_t> out(batch_);
  for (int64_t b = 0; b < batch_; ++b) out[b] = b;
  run(tokens, rows, out, logits, argmax, num_threads);
}

void DecodeSession::forward(const int64_t* tokens, int64_t T, int64_t start, float* logits, int64_t* argmax,
                            int num_threads) {
  SLIMRT_CHECK(batch_ == 1 && pads_[0] == 0, "decode_step: forward (the prefill) runs one unpadded row, this "
                                             "session has " << batch_ << " rows");
  SLIMRT_CHECK(T >= 1, "decode_step: " << T << " tokens; need at least 1");
  SLIMRT_CHECK(start >= 0 && start + T <= max_len_,
               "decode_step: slot " << start + T - 1 << " is outside [0, " << max_len_ << ")");
  std::vector<Row> rows(T);
  for (int64_t t = 0; t < T; ++t) rows[t] = Row{0, start + t, 0};
  run(tokens, rows, {T - 1}, logits, argmax, num_threads);
}

void DecodeSession::run_rows(const int64_t* tokens, const int64_t* rows, const int64_t* slots, int64_t n,
                             const int64_t* out, int64_t n_out, float* logits, int64_t* argmax, int num_threads) {
  SLIMRT_CHECK(n >= 1, "decode_step: run_rows got " << n << " tokens; need at least 1");
  SLIMRT_CHECK(tokens != nullptr && rows != nullptr && slots != nullptr,
               "decode_step: run_rows: tokens, rows and slots must not be null");
  SLIMRT_CHECK(n_out >= 0 && n_out <= n, "decode_step: run_rows: n_out=" << n_out << " is outside [0, n=" << n << "]");
  SLIMRT_CHECK(n_out == 0 || (out != nullptr && logits != nullptr),
               "decode_step: run_rows: out and logits must not be null when n_out > 0");
  std::vector<Row> rs(n);
  std::vector<int64_t> keys(n);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t b = rows[i], s = slots[i];
    SLIMRT_CHECK(b >= 0 && b < batch_, "decode_step: run_rows: rows[" << i << "]=" << b << " is outside [0, "
                                                                      << batch_ << ")");
    SLIMRT_CHECK(s >= 0 && s < max_len_, "decode_step: run_rows: slots[" << i << "]=" << s << " is outside [0, "
                                                                         << max_len_ << ")");
    SLIMRT_CHECK(s >= pads_[b], "decode_step: run_rows: slots[" << i << "]=" << s << " is inside row " << b
                                                                << "'s left padding");
    rs[i] = Row{b, s, pads_[b]};
    keys[i] = b * max_len_ + s;
  }
  std::sort(keys.begin(), keys.end());
  const auto dup = std::adjacent_find(keys.begin(), keys.end());
  SLIMRT_CHECK(dup == keys.end(), "decode_step: run_rows: row " << *dup / max_len_ << " slot " << *dup % max_len_
                                                                << " appears twice in one call");
  std::vector<int64_t> outs(out, out + n_out);
  for (int64_t j = 0; j < n_out; ++j)
    SLIMRT_CHECK(outs[j] >= 0 && outs[j] < n, "decode_step: run_rows: out[" << j << "]=" << outs[j]
                                                                             << " is outside [0, n=" << n << ")");
  run(tokens, rs, outs, logits, argmax, num_threads);
}

void DecodeSession::run(const int64_t* tokens, const std::vector<Row>& rows, const std::vector<int64_t>& out,
                        float* logits, int64_t* argmax, int num_threads) {
  const DecodePlan& p = plan_;
  const DecodeConfig& c = p.cfg_;
  const int64_t C = c.hidden, D = c.head_dim, R = static_cast<int64_t>(rows.size());
  SLIMRT_CHECK(tokens != nullptr && (logits != nullptr || out.empty()),
               "decode_step: tokens and logits must not be null");
  for (int64_t r = 0; r < R; ++r)
    SLIMRT_CHECK(tokens[r] >= 0 && tokens[r] < c.vocab,
                 "decode_step: token " << tokens[r] << " is outside [0, " << c.vocab << ")");
  ensure_rows(R);
  const bool wide = active_isa() == Isa::Avx512;
  float* x = x_.data();  // (R, C) residual stream
  float* h = h_.data();  // (R, C) normed
  for (int64_t r = 0; r < R; ++r) {
    const float* e = p.embed_ + tokens[r] * C;
    if (c.rot_dim > 0) {
      std::copy(e, e + C, x + r * C);
    } else {
      const float* pe = pos_embed_ + (rows[r].b * max_len_ + rows[r].slot) * C;
      for (int64_t i = 0; i < C; ++i) x[r * C + i] = e[i] + pe[i];
    }
  }
  float* rope_tmp = scores_.data() + scores_.size() - D;
  for (int64_t li = 0; li < p.num_layers(); ++li) {
    // Workers spin between this layer's kernels (and, after the last layer, into the runner's
    // sampling and the next step) instead of sleeping: see parallel_keep_warm. A layer takes
    // ~0.1-0.3 ms at R = 1, so the deadline is refreshed well before it runs out.
    parallel_keep_warm(kWarmUs);
    const DecodeLayer& l = p.layers_[li];
    const int64_t H = l.n_heads, Hkv = l.n_kv_heads, ldq = l.qkv.N, I = l.down.K;
    for (int64_t r = 0; r < R; ++r) norm(wide, c.norm, x + r * C, l.ln1_w, l.ln1_b, h + r * C, C, c.eps);
    linear(l.qkv, h, qkv_.data(), R, num_threads);  // (R, (H + 2 Hkv) D)
    for (int64_t r = 0; r < R; ++r) {
      float* q = qkv_.data() + r * ldq;
      float* k = q + H * D;
      const float* v = k + Hkv * D;
      if (l.q_norm) {
        for (int64_t hh = 0; hh < H; ++hh)
          norm(wide, NormKind::RMS, q + hh * D, l.q_norm, nullptr, q + hh * D, D, c.eps);
        for (int64_t hh = 0; hh < Hkv; ++hh)
          norm(wide, NormKind::RMS, k + hh * D, l.k_norm, nullptr, k + hh * D, D, c.eps);
      }
      const Row& row = rows[r];
      if (c.rot_dim > 0) {  // the tables hold each row's own positions (left padding excluded)
        const float* cs = cos_ + (row.b * max_len_ + row.slot) * c.rot_dim;
        const float* sn = sin_ + (row.b * max_len_ + row.slot) * c.rot_dim;
        for (int64_t hh = 0; hh < H; ++hh) rope(q + hh * D, cs, sn, c.rot_dim, rope_tmp);
        for (int64_t hh = 0; hh < Hkv; ++hh) rope(k + hh * D, cs, sn, c.rot_dim, rope_tmp);
      }
      for (int64_t hh = 0; hh < Hkv; ++hh) {
        const int64_t off = ((row.b * Hkv + hh) * max_len_ + row.slot) * D;
        std::copy(k + hh * D, k + (hh + 1) * D, k_cache_[li] + off);
        std::copy(v + hh * D, v + (hh + 1) * D, v_cache_[li] + off);
      }
    }
    attention(l, li, rows, num_threads);  // (R, H D)
    linear(l.o, att_.data(), tmp_.data(), R, num_threads);
    for (int64_t i = 0; i < R * C; ++i) x[i] += tmp_[i];
    for (int64_t r = 0; r < R; ++r) norm(wide, c.norm, x + r * C, l.ln2_w, l.ln2_b, h + r * C, C, c.eps);
    linear(l.up, h, mlp_.data(), R, num_threads);  // (R, 2I) or (R, I)
    for (int64_t r = 0; r < R; ++r) {
      const float* g = mlp_.data() + r * l.up.N;
      (wide ? avx512::activation : portable::activation)(c.act, g, g + I, act_.data() + r * I, I);
    }
    linear(l.down, act_.data(), tmp_.data(), R, num_threads);
    for (int64_t i = 0; i < R * C; ++i) x[i] += tmp_[i];
  }
  parallel_keep_warm(kWarmUs);
  // Logits only for the rows that sample (every row of a batched decode step, the last of a prefill).
  const int64_t n_out = static_cast<int64_t>(out.size());
  if (n_out == 0) return;
  for (int64_t j = 0; j < n_out; ++j) norm(wide, c.norm, x + out[j] * C, p.norm_w_, p.norm_b_, h + j * C, C, c.eps);
  linear(p.lm_head_, h, logits, n_out, num_threads);
  const auto amax = wide ? avx512::argmax : portable::argmax;
  if (argmax)
    for (int64_t r = 0; r < n_out; ++r) argmax[r] = amax(logits + r * c.vocab, c.vocab);
  parallel_keep_warm(kWarmUs);
}

}  // namespace slimrt
