#include "cpu_features.h"

#include <atomic>

#include "common.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#define SLIMRT_X86 1
#endif

namespace slimrt {
namespace {

#ifdef SLIMRT_X86
// xgetbv via inline asm: _xgetbv needs -mxsave, and this file is built for baseline x86-64.
uint64_t read_xcr0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#ifdef SLIMRT_X86
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27);
  const bool avx = c & (1u << 28);
  const bool fma = c & (1u << 12);
  if (!osxsave || !avx) return f;
  const uint64_t xcr0 = read_xcr0();
  const bool ymm_state = (xcr0 & 0x6) == 0x6;      // SSE + AVX state
  const bool zmm_state = (xcr0 & 0xe6) == 0xe6;    // + opmask, ZMM_Hi256, Hi16_ZMM
  if (__get_cpuid_max(0, nullptr) < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & (1u << 5);
  const bool avx512f = b & (1u << 16), avx512dq = b & (1u << 17);
  const bool avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
  const bool avx512vnni = c & (1u << 11);
  f.avx2 = ymm_state && avx2 && fma;
  f.avx512 = f.avx2 && zmm_state && avx512f && avx512dq && avx512bw && avx512vl && avx512vnni;
  unsigned a1, b1, c1, d1;
  __cpuid_count(7, 1, a1, b1, c1, d1);
  f.avx512_bf16 = f.avx512 && (a1 & (1u << 5));
  f.avx_vnni = ymm_state && (a1 & (1u << 4));
  // AMX: CPUID.7.0:EDX bit 24 AMX-TILE, bit 25 AMX-INT8; XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA).
  const bool amx_cpu = (d & (1u << 24)) && (d & (1u << 25));
  const bool tile_state = (xcr0 & (3ull << 17)) == (3ull << 17);
  f.amx_int8 = f.avx512 && amx_cpu && tile_state;
#endif
  return f;
}

std::atomic<int> g_active{-1};
std::atomic<int> g_amx{1};  // the AMX switch: on unless set_amx(false)

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect();
  return f;
}

Isa best_isa() {
  const auto& f = cpu_features();
  if (f.avx512) return Isa::Avx512;
  if (f.avx2) return Isa::Avx2;
  return Isa::Scalar;
}

Isa active_isa() {
  int v = g_active.load(std::memory_order_relaxed);
  if (v < 0) {
    v = static_cast<int>(best_isa());
    g_active.store(v, std::memory_order_relaxed);
  }
  return static_cast<Isa>(v);
}

void set_isa(Isa isa) {
  const auto& f = cpu_features();
  SLIMRT_CHECK(isa != Isa::Avx512 || f.avx512,
               "isa 'avx512' is not available on this CPU (needs AVX-512 F/BW/VL/DQ + VNNI enabled by the OS)");
  SLIMRT_CHECK(isa != Isa::Avx2 || f.avx2, "isa 'avx2' is not available on this CPU (needs AVX2 + FMA enabled by the OS)");
  g_active.store(static_cast<int>(isa), std::memory_order_relaxed);
}

bool amx_available() {
  // Linux lets a process use the 8 KiB tile data state only after asking for it (else the first tile
  // instruction faults): arch_prctl(ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18). Asked
  // once, on first need: a granted permission enlarges every signal frame of the process.
  static const bool granted = [] {
    if (!cpu_features().amx_int8) return false;
#if defined(SLIMRT_X86) && defined(__linux__)
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
    return false;
#endif
  }();
  return granted;
}

bool amx_enabled() { return g_amx.load(std::memory_order_relaxed) != 0; }

bool amx_active() {
  return amx_enabled() && active_isa() == Isa::Avx512 && cpu_features().amx_int8 && amx_available();
}

void set_amx(bool on) {
  SLIMRT_CHECK(!on || amx_available(),
               "AMX is not available on this CPU (needs AMX-TILE + AMX-INT8 with the tile state enabled "
               "by the OS and granted to this process)");
  g_amx.store(on ? 1 : 0, std::memory_order_relaxed);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    default: return "scalar";
  }
}

std::vector<std::string> available_isas() {
  std::vector<std::string> out{"scalar"};
  if (cpu_features().avx2) out.push_back("avx2");
  if (cpu_features().avx512) out.push_back("avx512");
  return out;
}

}  // namespace slimrt
