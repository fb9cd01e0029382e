// Shared helpers for the torch-free kernel library.
#pragma once

#include <cstdint>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>

namespace slimrt {

// A failed check throws std::invalid_argument, which pybind11 turns into ValueError.
// Kernels never abort(): a bad shape reaching C++ is the caller's bug, reported as such.
#define SLIMRT_CHECK(cond, msg)                                        \
  do {                                                                 \
    if (!(cond)) {                                                     \
      std::ostringstream slimrt_oss_;                                  \
      slimrt_oss_ << msg;                                              \
      throw std::invalid_argument(slimrt_oss_.str());                  \
    }                                                                  \
  } while (0)

inline int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return div_up(a, b) * b; }

// bf16 <-> fp32 bit helpers (bf16 is the top half of an IEEE fp32).
inline float bf16_to_f32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even, as torch does
  return static_cast<uint16_t>(u >> 16);
}

// Element types crossing the binding, as plain codes (no torch dependency).
enum class DType : int { F32 = 0, BF16 = 1 };

}  // namespace slimrt
