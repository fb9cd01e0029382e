// slimrt._C: argument hand-off from Python to the torch-free kernels. No math here.
// Tensors cross as (data pointer, sizes, strides); the Python wrappers in slimrt/ops/cpu.py check
// dtypes and devices, the kernel entry points check sizes and strides and throw on bad ones.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cpu_features.h"
#include "int8_gemm/int8_gemm.h"
#include "lowrank_matmul/lowrank_matmul.h"

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
    return d;
  });

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
  // probe_int8_peak: int8 ops/s of a register-only vpdpbusd loop on num_threads threads.
  m.def("probe_int8_peak", [](int nt, double seconds) {
    py::gil_scoped_release nogil;
    return probe_int8_peak_ops(nt, seconds);
  }, py::arg("num_threads"), py::arg("seconds") = 0.2);
  // probe_read_bandwidth: bytes/s streaming a buffer of nbytes (make it > L3), best of `passes`.
  m.def("probe_read_bandwidth", [](int64_t nbytes, int nt, int passes) {
    py::gil_scoped_release nogil;
    return probe_read_bandwidth(nbytes, nt, passes);
  }, py::arg("nbytes"), py::arg("num_threads"), py::arg("passes") = 5);
  // ---- lowrank_matmul (issue 5) ----
  // lowrank_matmul: y (M, N) = (x (M, K) @ vt (K, R)) @ ut (R, N) + bias, fused; vt = v^T, ut = u^T.
  m.def("lowrank_matmul", [](uintptr_t x, int64_t ldx, uintptr_t vt, int64_t ldvt, uintptr_t ut, int64_t ldut,
                             uintptr_t bias, uintptr_t y, int64_t ldy, int dt, int64_t M, int64_t K, int64_t R,
                             int64_t N, int nt) {
    py::gil_scoped_release nogil;
    lowrank_matmul(ptr<const void>(x), ldx, ptr<const void>(vt), ldvt, ptr<const void>(ut), ldut,
                   ptr<const float>(bias), ptr<void>(y), ldy, static_cast<DType>(dt), M, K, R, N, nt);
  });
}
