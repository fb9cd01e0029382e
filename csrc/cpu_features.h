// CPU feature detection: the one place that decides which instruction set the kernels use.
#pragma once

#include <string>
#include <vector>

namespace slimrt {

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

struct CpuFeatures {
  bool avx2 = false;         // AVX2 + FMA, with YMM state enabled by the OS
  bool avx512 = false;       // AVX-512 F/BW/VL/DQ + VNNI, with ZMM and opmask state enabled by the OS
  bool avx512_bf16 = false;  // AVX512_BF16 (only meaningful when avx512 is true)
  bool avx_vnni = false;     // VEX-encoded VNNI (informational)
};

// CPUID + XGETBV, computed once. CPUID alone is not enough: a VM or OS may not enable
// the wide register state, and then any wide instruction faults.
const CpuFeatures& cpu_features();

Isa best_isa();
Isa active_isa();
// Forces a path; throws std::invalid_argument if this CPU cannot run it.
void set_isa(Isa isa);
const char* isa_name(Isa isa);
std::vector<std::string> available_isas();

}  // namespace slimrt
