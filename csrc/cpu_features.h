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
  // AMX-TILE + AMX-INT8 with the tile state enabled by the OS (XCR0 bits 17, 18). Linux also wants
  // the process to ask for the tile data state before the first tile instruction: amx_available()
  // asks (once, only when AMX is about to be used). Used by the avx512 int8 GEMM.
  bool amx_int8 = false;
};

// CPUID + XGETBV, computed once. CPUID alone is not enough: a VM or OS may not enable
// the wide register state, and then any wide instruction faults.
const CpuFeatures& cpu_features();

Isa best_isa();
Isa active_isa();
// Forces a path; throws std::invalid_argument if this CPU cannot run it.
void set_isa(Isa isa);
const char* isa_name(Isa isa);
// AMX tiles for the int8 GEMM inside the avx512 path, on by default where available:
//   amx_available(): cpu_features().amx_int8 and the OS granted this process the tile state (the
//                    first call asks: Linux arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA));
//   amx_active():    AMX not switched off, the avx512 path active and amx_available() (so the
//                    permission is only asked for when a GEMM would use AMX);
//   amx_enabled():   the switch (true unless set_amx(false));
//   set_amx(true) throws std::invalid_argument where AMX is not available.
bool amx_available();
bool amx_active();
bool amx_enabled();
void set_amx(bool on);
std::vector<std::string> available_isas();

}  // namespace slimrt
