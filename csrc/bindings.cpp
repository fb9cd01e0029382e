// slimrt._C: argument hand-off from Python to the torch-free kernels. No math here.
// Tensors cross as (data pointer, sizes, strides); the Python wrappers in slimrt/ops/cpu.py check
// dtypes and devices, the kernel entry points check sizes and strides and throw on bad ones.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cpu_features.h"
#include "parallel.h"
#include "int8_gemm/int8_gemm.h"
#include "lowrank_matmul/lowrank_matmul.h"
#include "blocksparse_attn/blocksparse_attn.h"  // block-sparse attention
#include "decode_step/decode_step.h"  // whole-step batch-1 decode
#include "w4_linear/w4_linear.h"  // int4 weights

namespace py = pybind11;
using namespace slimrt;

namespace {
template <typename T>
T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

Isa parse_isa(const std::string& s) {
  if (s == "scalar") return Isa::Scalar;
  if (s == "avx2") return Isa::Avx2;
  if (s == "avx512") return Isa::Avx512;
  throw std::invalid_argument("unknown isa '" + s + "'; expected one of scalar, avx2, avx512");
}
}  // namespace

// The operand pointers and dtype of a BsaArgs (block_sparse_attention and varlen_attention).
static BsaArgs bsa_operands(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, int dt) {
  BsaArgs a{};
  a.q = ptr<const void>(q);
  a.k = ptr<const void>(k);
  a.v = ptr<const void>(v);
  a.out = ptr<void>(out);
  a.dt = static_cast<DType>(dt);
  return a;
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "slimrt native CPU kernels (torch-free)";

  // ISA selection: detected once from CPUID + XGETBV; set_isa forces a path.
  m.def("best_isa", [] { return std::string(isa_name(best_isa())); });
  m.def("active_isa", [] { return std::string(isa_name(active_isa())); });
  m.def("set_isa", [](const std::string& s) { set_isa(parse_isa(s)); }, py::arg("isa"));
  m.def("available_isas", &available_isas);
  m.def("cpu_features", [] {
    const auto& f = cpu_features();
    py::dict d;
    d["avx2"] = f.avx2;
    d["avx512"] = f.avx512;
    d["avx512_bf16"] = f.avx512_bf16;
    d["avx_vnni"] = f.avx_vnni;
    d["amx_int8"] = f.amx_int8;
    return d;
  });
  // AMX tiles for the avx512 int8 GEMM: on by default where the CPU and OS offer them.
  // Threading: the kernels' parallel loops run on the OpenMP runtime that `anchor` (torch's
  // libtorch_cpu) uses, so torch ops and slimrt kernels share one team of threads; else own pool.
  m.def("use_openmp_runtime", &use_openmp_runtime, py::arg("anchor"));
  m.def("use_own_pool", &use_own_pool);
  m.def("parallel_runtime", &parallel_runtime);
  m.def("parallel_runtime_path", &parallel_runtime_path);
  m.def("amx_available", &amx_available);
  m.def("amx_active", &amx_active);
  m.def("amx_enabled", &amx_enabled);
  m.def("set_amx", &set_amx, py::arg("on"));

  // quantize_per_token: x (M, K) fp32|bf16 -> q (M, K) int8, scale (M,) fp32.
  m.def("quantize_per_token",
        [](uintptr_t x, int x_dt, int64_t M, int64_t K, int64_t ldx, uintptr_t q, uintptr_t scale, int nt) {
          py::gil_scoped_release nogil;
          quantize_per_token(ptr<const void>(x), static_cast<DType>(x_dt), M, K, ldx, ptr<int8_t>(q),
                             ptr<float>(scale), nt);
        });
  // int8_gemm: out (M, N) = (a (M, K) @ b (N, K)^T) * a_scale * b_scale + bias; b_packed (or 0) replaces b.
  m.def("int8_gemm", [](uintptr_t a, int64_t lda, uintptr_t b, int64_t ldb, uintptr_t b_packed, uintptr_t a_scale,
                        uintptr_t b_scale, uintptr_t bias, uintptr_t out, int out_dt, int64_t ldc, int64_t M, int64_t N,
                        int64_t K, int nt) {
    py::gil_scoped_release nogil;
    int8_gemm(ptr<const int8_t>(a), lda, ptr<const int8_t>(b), ldb, ptr<const int8_t>(b_packed),
              ptr<const float>(a_scale), ptr<const float>(b_scale), ptr<const float>(bias), ptr<void>(out),
              static_cast<OutType>(out_dt), ldc, M, N, K, nt);
  });

  // ---- int8 family: weight packing, weight-only linear, machine probes ----
  // int8_packed_size: bytes of the packed form of an (N, K) weight (layout in int8_gemm.h).
  m.def("int8_packed_size", &int8_packed_size, py::arg("N"), py::arg("K"));
  // int8_pack_weight: w (N, K) int8 row stride ldw -> packed blob.
  m.def("int8_pack_weight", [](uintptr_t w, int64_t ldw, int64_t N, int64_t K, uintptr_t packed, int nt) {
    py::gil_scoped_release nogil;
    int8_pack_weight(ptr<const int8_t>(w), ldw, N, K, ptr<int8_t>(packed), nt);
  });
  // int8_check_packed: throws ValueError unless the blob is a packed (N, K) weight.
  m.def("int8_check_packed", [](uintptr_t packed, int64_t nbytes, int64_t N, int64_t K) {
    int8_check_packed(ptr<const int8_t>(packed), nbytes, N, K);
  });
  // int8_w8_linear: out (M, N) = (x (M, K) float @ float(b (N, K))^T) * b_scale + bias.
  m.def("int8_w8_linear", [](uintptr_t x, int x_dt, int64_t ldx, uintptr_t b, int64_t ldb, uintptr_t b_packed,
                             uintptr_t b_scale, uintptr_t bias, uintptr_t out, int out_dt, int64_t ldc, int64_t M,
                             int64_t N, int64_t K, int nt) {
    py::gil_scoped_release nogil;
    int8_w8_linear(ptr<const void>(x), static_cast<DType>(x_dt), ldx, ptr<const int8_t>(b), ldb,
                   ptr<const int8_t>(b_packed), ptr<const float>(b_scale), ptr<const float>(bias), ptr<void>(out),
                   static_cast<OutType>(out_dt), ldc, M, N, K, nt);
  });
  // int8_w8a8_linear: quantize_per_token(x) then int8_gemm, in one call (the W8A8 decode path).
  // act: the epilogue activation (Act in int8_gemm.h: 0 none, 1 gelu, 2 gelu_tanh, 3 relu, 4 silu).
  m.def("int8_w8a8_linear", [](uintptr_t x, int x_dt, int64_t ldx, uintptr_t b, int64_t ldb, uintptr_t b_packed,
                               uintptr_t b_scale, uintptr_t bias, uintptr_t out, int out_dt, int64_t ldc, int64_t M,
                               int64_t N, int64_t K, int nt, int act) {
    py::gil_scoped_release nogil;
    int8_w8a8_linear(ptr<const void>(x), static_cast<DType>(x_dt), ldx, ptr<const int8_t>(b), ldb,
                     ptr<const int8_t>(b_packed), ptr<const float>(b_scale), ptr<const float>(bias), ptr<void>(out),
                     static_cast<OutType>(out_dt), ldc, M, N, K, nt, static_cast<Act>(act));
  }, py::arg("x"), py::arg("x_dt"), py::arg("ldx"), py::arg("b"), py::arg("ldb"), py::arg("b_packed"),
     py::arg("b_scale"), py::arg("bias"), py::arg("out"), py::arg("out_dt"), py::arg("ldc"), py::arg("M"),
     py::arg("N"), py::arg("K"), py::arg("nt"), py::arg("act") = 0);
  // ---- w4 family (csrc/w4_linear/w4_linear.h) ----
  // w4_packed_size: bytes of the packed form of an (N, K) int4 weight of group size G.
  m.def("w4_packed_size", &w4_packed_size, py::arg("N"), py::arg("K"), py::arg("G"));
  // w4_pack_weight: (w_q4 (N, ng G / 2) u8, scale (N, ng) fp16, zero (N, ng) u8 or 0) -> packed blob.
  m.def("w4_pack_weight", [](uintptr_t w_q4, uintptr_t scale, uintptr_t zero, int64_t N, int64_t K, int64_t G,
                             uintptr_t packed, int nt) {
    py::gil_scoped_release nogil;
    w4_pack_weight(ptr<const uint8_t>(w_q4), ptr<const uint16_t>(scale), ptr<const uint8_t>(zero), N, K, G,
                   ptr<uint8_t>(packed), nt);
  });
  // w4_check_packed: throws ValueError unless the blob is a packed (N, K) weight of group size G.
  m.def("w4_check_packed", [](uintptr_t packed, int64_t nbytes, int64_t N, int64_t K, int64_t G) {
    w4_check_packed(ptr<const uint8_t>(packed), nbytes, N, K, G);
  });
  // w4_linear: out (M, N) = x (M, K) float with int8 per-group activations times the int4 weight.
  m.def("w4_linear", [](uintptr_t x, int x_dt, int64_t ldx, uintptr_t w_q4, uintptr_t scale, uintptr_t zero,
                        uintptr_t packed, uintptr_t bias, uintptr_t out, int out_dt, int64_t ldc, int64_t M, int64_t N,
                        int64_t K, int64_t G, int nt) {
    py::gil_scoped_release nogil;
    w4_linear(ptr<const void>(x), static_cast<DType>(x_dt), ldx, ptr<const uint8_t>(w_q4), ptr<const uint16_t>(scale),
              ptr<const uint8_t>(zero), ptr<const uint8_t>(packed), ptr<const float>(bias), ptr<void>(out),
              static_cast<OutType>(out_dt), ldc, M, N, K, G, nt);
  });
  // probe_int8_peak: int8 ops/s of a register-only vpdpbusd loop on num_threads threads.
  m.def("probe_int8_peak", [](int nt, double seconds) {
    py::gil_scoped_release nogil;
    return probe_int8_peak_ops(nt, seconds);
  }, py::arg("num_threads"), py::arg("seconds") = 0.2);
  // probe_amx_peak: the same for a register-only AMX tdpbusd loop (ValueError without AMX).
  m.def("probe_amx_peak", [](int nt, double seconds) {
    py::gil_scoped_release nogil;
    return probe_amx_peak_ops(nt, seconds);
  }, py::arg("num_threads"), py::arg("seconds") = 0.2);
  // probe_read_bandwidth: bytes/s streaming a buffer of nbytes (make it > L3), best of `passes`.
  m.def("probe_read_bandwidth", [](int64_t nbytes, int nt, int passes) {
    py::gil_scoped_release nogil;
    return probe_read_bandwidth(nbytes, nt, passes);
  }, py::arg("nbytes"), py::arg("num_threads"), py::arg("passes") = 5);
  // ---- lowrank_matmul ----
  // lowrank_matmul: y (M, N) = (x (M, K) @ vt (K, R)) @ ut (R, N) + bias, fused; vt = v^T, ut = u^T.
  m.def("lowrank_matmul", [](uintptr_t x, int64_t ldx, uintptr_t vt, int64_t ldvt, uintptr_t ut, int64_t ldut,
                             uintptr_t bias, uintptr_t y, int64_t ldy, int dt, int64_t M, int64_t K, int64_t R,
                             int64_t N, int nt) {
    py::gil_scoped_release nogil;
    lowrank_matmul(ptr<const void>(x), ldx, ptr<const void>(vt), ldvt, ptr<const void>(ut), ldut,
                   ptr<const float>(bias), ptr<void>(y), ldy, static_cast<DType>(dt), M, K, R, N, nt);
  });
  // ---- block-sparse attention ----
  // block_sparse_attention: out (B, Hq, Lq, D) = softmax attention over the listed key blocks + token rule.
  // sizes = (B, Hq, Hkv, Lq, Lk, D); *_st = element strides of (b, h, l|query block); mask arrays
  // expanded to (B, Hq, ...) through their strides.
  m.def("block_sparse_attention",
        [](uintptr_t q, std::vector<int64_t> q_st, uintptr_t k, std::vector<int64_t> k_st, uintptr_t v,
           std::vector<int64_t> v_st, uintptr_t out, int dt, std::vector<int64_t> sizes, uintptr_t kvn,
           std::vector<int64_t> kvn_st, uintptr_t kvi, std::vector<int64_t> kvi_st, int64_t max_kb,
           int64_t block_size, bool causal, int64_t window, int64_t num_global, uintptr_t tok,
           std::vector<int64_t> tok_st, float scale, int nt) {
          if (sizes.size() != 6 || q_st.size() != 3 || k_st.size() != 3 || v_st.size() != 3 || kvn_st.size() != 3 ||
              kvi_st.size() != 3 || tok_st.size() != 3)
            throw std::invalid_argument("block_sparse_attention: sizes needs 6 entries and each stride list 3");
          BsaArgs a = bsa_operands(q, k, v, out, dt);
          a.B = sizes[0], a.Hq = sizes[1], a.Hkv = sizes[2], a.Lq = sizes[3], a.Lk = sizes[4], a.D = sizes[5];
          for (int i = 0; i < 3; ++i) {
            a.sq[i] = q_st[i], a.sk[i] = k_st[i], a.sv[i] = v_st[i];
            a.sn[i] = kvn_st[i], a.si[i] = kvi_st[i], a.st[i] = tok_st[i];
          }
          a.kv_num_blocks = ptr<const int32_t>(kvn);
          a.kv_indices = ptr<const int32_t>(kvi);
          a.max_kb = max_kb;
          a.block_size = block_size;
          a.causal = causal;
          a.window = window;
          a.num_global = num_global;
          a.token_mask = ptr<const uint8_t>(tok);
          a.scale = scale;
          a.so[0] = a.Hq * a.Lq * a.D, a.so[1] = a.Lq * a.D, a.so[2] = a.D;  // out is contiguous
          py::gil_scoped_release nogil;
          block_sparse_attention(a, nt);
        });
  // ---- varlen attention (packed sequences, no padding) ----
  // varlen_attention: q (T, Hq, D), k and v (T, Hkv, D) with element strides (token, head) given, unit
  // stride in D; out (T, Hq, D) likewise; sequence b is tokens [cu[b], cu[b+1]) of cu (B + 1) int64.
  // Dense (or causal) attention within each sequence, through the block-sparse prefill kernel with
  // every key block listed.
  m.def("varlen_attention",
        [](uintptr_t q, std::vector<int64_t> q_st, uintptr_t k, std::vector<int64_t> k_st, uintptr_t v,
           std::vector<int64_t> v_st, uintptr_t out, std::vector<int64_t> o_st, int dt, uintptr_t cu, int64_t B,
           int64_t Hq, int64_t Hkv, int64_t max_len, int64_t D, int64_t block_size, bool causal, float scale,
           int nt) {
          if (q_st.size() != 2 || k_st.size() != 2 || v_st.size() != 2 || o_st.size() != 2)
            throw std::invalid_argument("varlen_attention: each stride list needs 2 entries (token, head)");
          if (block_size < 1) throw std::invalid_argument("varlen_attention: block_size must be >= 1");
          const int64_t nkb = div_up(std::max<int64_t>(max_len, 0), block_size);
          std::vector<int32_t> idx(static_cast<size_t>(std::max<int64_t>(nkb, 1)));
          for (int64_t i = 0; i < nkb; ++i) idx[i] = static_cast<int32_t>(i);
          const int32_t cnt = static_cast<int32_t>(nkb);
          BsaArgs a = bsa_operands(q, k, v, out, dt);
          a.B = B, a.Hq = Hq, a.Hkv = Hkv, a.Lq = max_len, a.Lk = max_len, a.D = D;
          a.sq[0] = 0, a.sq[1] = q_st[1], a.sq[2] = q_st[0];
          a.sk[0] = 0, a.sk[1] = k_st[1], a.sk[2] = k_st[0];
          a.sv[0] = 0, a.sv[1] = v_st[1], a.sv[2] = v_st[0];
          a.so[0] = 0, a.so[1] = o_st[1], a.so[2] = o_st[0];
          a.kv_num_blocks = &cnt;  // every query block lists every key block: strides 0
          a.kv_indices = idx.data();
          a.max_kb = nkb;
          a.block_size = block_size;
          a.causal = causal;
          a.scale = scale;
          a.cu_seqlens = ptr<const int64_t>(cu);
          py::gil_scoped_release nogil;
          block_sparse_attention(a, nt);
        });

  // ---- decode_step: a whole batch-1 decode step in one call (csrc/decode_step/decode_step.h) ----
  // A linear crosses as (w, packed, scale, bias, N, K, smooth) (int8), or with (group, q4, scale16, zero)
  // appended for int4 weights (group > 0): pointers as ints, 0 for none.
  using LinTuple = py::tuple;
  auto to_lin = [](const LinTuple& t) {
    SLIMRT_CHECK(t.size() == 7 || t.size() == 11, "decode_step: a linear is a tuple of 7 (int8) or 11 (w4) values, got "
                                                       << t.size());
    W8Linear l;
    l.w = ptr<const int8_t>(t[0].cast<uintptr_t>());
    l.packed = ptr<const int8_t>(t[1].cast<uintptr_t>());
    l.scale = ptr<const float>(t[2].cast<uintptr_t>());
    l.bias = ptr<const float>(t[3].cast<uintptr_t>());
    l.N = t[4].cast<int64_t>();
    l.K = t[5].cast<int64_t>();
    l.smooth = ptr<const float>(t[6].cast<uintptr_t>());
    if (t.size() == 11) {
      l.group = t[7].cast<int64_t>();
      l.q4 = ptr<const uint8_t>(t[8].cast<uintptr_t>());
      l.scale16 = ptr<const uint16_t>(t[9].cast<uintptr_t>());
      l.zero = ptr<const uint8_t>(t[10].cast<uintptr_t>());
    }
    return l;
  };
  py::class_<DecodePlan>(m, "DecodePlan")
      .def(py::init([](int64_t hidden, int64_t head_dim, int64_t rot_dim, int64_t vocab, int norm, int act,
                       float eps) {
             DecodeConfig c;
             c.hidden = hidden, c.head_dim = head_dim, c.rot_dim = rot_dim, c.vocab = vocab;
             c.norm = static_cast<NormKind>(norm), c.act = static_cast<ActKind>(act), c.eps = eps;
             return new DecodePlan(c);
           }),
           py::arg("hidden"), py::arg("head_dim"), py::arg("rot_dim"), py::arg("vocab"), py::arg("norm"), py::arg("act"), py::arg("eps"))
      .def("add_layer",
           [to_lin](DecodePlan& p, uintptr_t ln1_w, uintptr_t ln1_b, const LinTuple& qkv, int64_t n_heads,
                    int64_t n_kv_heads, uintptr_t q_norm, uintptr_t k_norm, float attn_scale, const LinTuple& o,
                    uintptr_t ln2_w, uintptr_t ln2_b, const LinTuple& up, const LinTuple& down) {
             DecodeLayer l;
             l.ln1_w = ptr<const float>(ln1_w), l.ln1_b = ptr<const float>(ln1_b);
             l.qkv = to_lin(qkv), l.n_heads = n_heads, l.n_kv_heads = n_kv_heads;
             l.q_norm = ptr<const float>(q_norm), l.k_norm = ptr<const float>(k_norm), l.attn_scale = attn_scale;
             l.o = to_lin(o), l.ln2_w = ptr<const float>(ln2_w), l.ln2_b = ptr<const float>(ln2_b);
             l.up = to_lin(up), l.down = to_lin(down);
             p.add_layer(l);
           })
      .def("set_head", [to_lin](DecodePlan& p, uintptr_t embed, uintptr_t norm_w, uintptr_t norm_b,
                                const LinTuple& lm_head) {
        p.set_head(ptr<const float>(embed), ptr<const float>(norm_w), ptr<const float>(norm_b), to_lin(lm_head));
      })
      .def_property_readonly("num_layers", &DecodePlan::num_layers);
  py::class_<DecodeSession>(m, "DecodeSession")
      .def(py::init([](const DecodePlan& plan, const std::vector<uintptr_t>& k, const std::vector<uintptr_t>& v,
                       int64_t max_len, uintptr_t cos, uintptr_t sin, uintptr_t pos_embed,
                       const std::vector<int64_t>& pads) {
             std::vector<float*> kp, vp;
             for (uintptr_t a : k) kp.push_back(ptr<float>(a));
             for (uintptr_t a : v) vp.push_back(ptr<float>(a));
             return new DecodeSession(plan, kp, vp, max_len, ptr<const float>(cos), ptr<const float>(sin),
                                      ptr<const float>(pos_embed), pads);
           }),
           py::keep_alive<1, 2>())
      .def("step", [](DecodeSession& s, uintptr_t token, int64_t slot, uintptr_t logits, uintptr_t argmax, int nt) {
        py::gil_scoped_release nogil;
        s.step(ptr<const int64_t>(token), slot, ptr<float>(logits), ptr<int64_t>(argmax), nt);
      })
      .def("forward", [](DecodeSession& s, uintptr_t tokens, int64_t T, int64_t start, uintptr_t logits,
                         uintptr_t argmax, int nt) {
        py::gil_scoped_release nogil;
        s.forward(ptr<const int64_t>(tokens), T, start, ptr<float>(logits), ptr<int64_t>(argmax), nt);
      })
      .def("run_rows", [](DecodeSession& s, uintptr_t tokens, uintptr_t rows, uintptr_t slots, int64_t n,
                          uintptr_t out, int64_t n_out, uintptr_t logits, uintptr_t argmax, int nt) {
        py::gil_scoped_release nogil;
        s.run_rows(ptr<const int64_t>(tokens), ptr<const int64_t>(rows), ptr<const int64_t>(slots), n,
                   ptr<const int64_t>(out), n_out, ptr<float>(logits), ptr<int64_t>(argmax), nt);
      })
      .def_property_readonly("batch", &DecodeSession::batch)
      .def_property_readonly("max_len", &DecodeSession::max_len);
}
