// decode_step: one whole batch-1 decode step of a pre-norm decoder (Llama family, GPT-2 family) in
// one native call, for the runner's M = 1 hot loop.
//
// Why one call: at M = 1 a 12-layer step reads ~100 MB of int8 weights in ~1.3-2.5 ms, while the
// same step as ~200 eager PyTorch ops plus 85 linear calls from Python costs ~2-3 ms of dispatch
// on top. Here the only per-token Python work is one call.
//
// Per layer (x: (C,) fp32 residual stream; H query heads, Hkv key/value heads, D head_dim):
//   h   = norm1(x)                        RMSNorm: x * rsqrt(mean(x^2) + eps) * w
//                                         LayerNorm: (x - mean) * rsqrt(var + eps) * w + b
//   qkv = Wqkv h                          one int8 weight-only (or w4) linear, rows q (H*D), k, v (Hkv*D each)
//   q, k = qk_norm(q, k)                  optional per-head RMSNorm (Qwen3)
//   q, k = rope(q, k, slot)               optional: x*cos + rot(x)*sin over the first rot_dim dims,
//                                         rot(x)[i] = x[(i + rot/2) % rot], sin carrying the sign
//   cache_k[:, slot], cache_v[:, slot] = k, v
//   o_h = softmax(scale * q_h . K[g(h), :slot+1]) V[g(h), :slot+1], g(h) = h / (H / Hkv)
//   x  += Wo o
//   h   = norm2(x)
//   a   = silu(gate) * up  with [gate; up] = Wgu h   (gated MLP), or  a = act(Wfc h)
//   x  += Wdown a
// then logits (V,) = Wlm norm_f(x). Every linear is the int8_w8_linear kernel or, for int4 weights,
// w4_linear (a w4 body with an int8 head mixes them), bit for bit the eager path's call; the small ops (decode_step_impl.h: AVX-512 or portable fp32) round differently
// from PyTorch's in the last bits (tests compare against the eager forward with a tolerance).
// DecodeSession::forward runs T tokens at once (the prefill: every linear at M = T, causal attention);
// DecodeSession::run_rows runs any rows at their own slots (a server's continuous batching).
//
// Layouts: KV caches (Hkv, max_len, D) fp32 contiguous per layer (the runner's KVCache at B = 1);
// rope cos/sin (max_len, rot_dim) fp32; positional embedding (max_len, C) fp32; embedding (V, C).
#pragma once

#include <cstdint>
#include <vector>

#include "common.h"

namespace slimrt {

// One linear of the step: an Int8Linear run by int8_w8_linear (group == 0): y = ((x * smooth) . w[n]) *
// scale[n] + bias[n] (smooth: SmoothQuant's per-input-channel multiplier, or null); or a W4Linear run by
// w4_linear (group > 0: its group size; csrc/w4_linear/w4_linear.h).
struct W8Linear {
  const int8_t* w = nullptr;       // (N, K) row-major int8 (the scalar ISA path reads this)
  const int8_t* packed = nullptr;  // int8_pack_weight(w), or w4_pack_weight(...) (the vector paths read this)
  const float* scale = nullptr;    // (N,) (int8)
  const float* bias = nullptr;     // (N,) or null
  const float* smooth = nullptr;   // (K,) or null
  int64_t N = 0, K = 0;
  int64_t group = 0;               // 0: int8; 32 / 64 / 128: int4 of this group size
  const uint8_t* q4 = nullptr;     // w4 row-major form (the scalar path): codes, fp16 scales, zeros or null
  const uint16_t* scale16 = nullptr;
  const uint8_t* zero = nullptr;
};

enum class NormKind : int { RMS = 0, Layer = 1 };
enum class ActKind : int { SiluGated = 0, GeluTanh = 1, GeluErf = 2 };

struct DecodeConfig {
  int64_t hidden = 0;    // C
  int64_t head_dim = 0;  // D
  int64_t rot_dim = 0;   // RoPE dims (0: no RoPE, positions come from pos_embed)
  int64_t vocab = 0;     // V
  NormKind norm = NormKind::RMS;
  ActKind act = ActKind::SiluGated;
  float eps = 1e-6f;
};

struct DecodeLayer {
  const float* ln1_w = nullptr;
  const float* ln1_b = nullptr;  // LayerNorm only
  W8Linear qkv;
  int64_t n_heads = 0, n_kv_heads = 0;
  const float* q_norm = nullptr;  // (D,) or null
  const float* k_norm = nullptr;
  float attn_scale = 1.f;
  W8Linear o;
  const float* ln2_w = nullptr;
  const float* ln2_b = nullptr;
  W8Linear up;    // gated: [gate; up] (2I rows); else the first MLP linear (I rows)
  W8Linear down;  // (C, I); I may differ per layer (prune_ffn)
};

// The model: weights and shapes, immutable once built (shared by concurrent sessions).
class DecodePlan {
 public:
  explicit DecodePlan(const DecodeConfig& cfg);

  // Checks one layer's shapes against the config and appends it.
  void add_layer(const DecodeLayer& layer);
  // embed (V, C); final norm weight (and bias for LayerNorm); the LM head (V, C).
  void set_head(const float* embed, const float* norm_w, const float* norm_b, const W8Linear& lm_head);

  const DecodeConfig& config() const { return cfg_; }
  const std::vector<DecodeLayer>& layers() const { return layers_; }
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

 private:
  friend class DecodeSession;
  DecodeConfig cfg_;
  std::vector<DecodeLayer> layers_;
  const float* embed_ = nullptr;
  const float* norm_w_ = nullptr;
  const float* norm_b_ = nullptr;
  W8Linear lm_head_;
  bool has_head_ = false;
};

// One generate call: its caches and position tables, and the scratch of a step. Not thread-safe
// itself (one step at a time); separate sessions over one plan may run concurrently.
class DecodeSession {
 public:
  // B = pads.size() rows, row b left-padded by pads[b] slots (its keys start there). Each layer's
  // cache (B, Hkv, max_len, D); rope cos/sin (B, max_len, rot_dim) when rot_dim > 0, else pos_embed
  // (B, max_len, C): each row's table holds its own positions.
  DecodeSession(const DecodePlan& plan, const std::vector<float*>& k_cache, const std::vector<float*>& v_cache,
                int64_t max_len, const float* cos, const float* sin, const float* pos_embed,
                const std::vector<int64_t>& pads);
  // One token per row: tokens (B,) in [0, V) at slot in [pads[b], max_len) (row b attends to slots
  // [pads[b], slot]) -> logits (B, V), and when argmax is non-null each row's greedy next token
  // (torch.argmax of its logits) into argmax (B,). Every linear at M = B.
  void step(const int64_t* tokens, int64_t slot, float* logits, int64_t* argmax, int num_threads);
  // One unpadded row only (B = 1): T tokens at slots [start, start + T) (the prefill: each attends
  // to [0, its slot]), every linear at M = T -> logits (V,) (and argmax) of the last one.
  void forward(const int64_t* tokens, int64_t T, int64_t start, float* logits, int64_t* argmax, int num_threads);
  // Any mix of rows at their own slots, in one call (continuous batching: each cache row holds an
  // independent sequence). Token i goes into cache row rows[i] at slot slots[i] and attends to that
  // row's keys at [pads[row], slots[i]]: keys at earlier slots come from earlier calls or from this
  // one (every token's keys are written before any attends), so one call can decode one token of
  // some rows and prefill (a chunk of) the prompts of others. Every linear runs at M = n.
  // logits (n_out, V) (and argmax (n_out,) when non-null) for the tokens out[0..n_out); n_out may be 0
  // (a prefill chunk that ends no prompt), then logits may be null. A (row, slot) pair at most once.
  void run_rows(const int64_t* tokens, const int64_t* rows, const int64_t* slots, int64_t n, const int64_t* out,
                int64_t n_out, float* logits, int64_t* argmax, int num_threads);
  int64_t batch() const { return batch_; }
  int64_t max_len() const { return max_len_; }

 private:
  struct Row {
    int64_t b, slot, kv0;  // cache / table row, slot of this token, first key slot it attends to
  };
  // Logits for the tokens listed in ``out`` (indices into rows), in that order.
  void run(const int64_t* tokens, const std::vector<Row>& rows, const std::vector<int64_t>& out, float* logits,
           int64_t* argmax, int num_threads);
  void attention(const DecodeLayer& l, int64_t layer, const std::vector<Row>& rows, int num_threads);
  void ensure_rows(int64_t R);  // scratch for R rows

  const DecodePlan& plan_;
  std::vector<float*> k_cache_, v_cache_;
  int64_t max_len_;
  const float* cos_;
  const float* sin_;
  const float* pos_embed_;
  int64_t batch_;
  std::vector<int64_t> pads_;
  std::vector<float> x_, h_, qkv_, att_, tmp_, mlp_, act_, scores_;
  int64_t rows_ = 0;
};

}  // namespace slimrt
