// Portable scalar path of w4_linear: reads the row-major (checkpoint) form; the fallback on any CPU
// and the path SLIMRT_ISA=scalar forces.
#include <algorithm>
#include <cmath>

#include "parallel.h"
#include "w4_linear/w4_linear.h"

namespace slimrt {
namespace ref {

// IEEE half -> float, exact for every value (normals, subnormals, inf, NaN).
float fp16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t e = (h >> 10) & 0x1f, f = h & 0x3ff;
  uint32_t u;
  if (e == 0x1f) {
    u = sign | 0x7f800000u | (f << 13);
  } else if (e != 0) {
    u = sign | ((e + 112) << 23) | (f << 13);
  } else if (f == 0) {
    u = sign;
  } else {  // subnormal: f * 2^-24, exact in fp32
    float v = static_cast<float>(f) * 5.9604644775390625e-8f;
    std::memcpy(&u, &v, 4);
    u |= sign;
  }
  float out;
  std::memcpy(&out, &u, 4);
  return out;
}

void w4_linear(const W4Act& a, const uint8_t* w_q4, const uint16_t* scale, const uint8_t* zero, const float* bias,
               void* out, OutType out_dt, int64_t ldc, int64_t N, int num_threads) {
  const int64_t ng = a.ng, G = a.G, kp = ng * G;
  parallel_for(N, num_threads, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* row = w_q4 + n * (kp / 2);
      for (int64_t m = 0; m < a.M; ++m) {
        const int8_t* q = a.q + m * kp;
        float acc = 0.f;
        for (int64_t g = 0; g < ng; ++g) {
          const int32_t z = zero ? zero[n * ng + g] : 8;
          int32_t isum = 0;
          for (int64_t i = 0; i < G; i += 2) {
            const uint8_t byte = row[(g * G + i) / 2];
            isum += ((byte & 15) - z) * q[g * G + i] + ((byte >> 4) - z) * q[g * G + i + 1];
          }
          const float s = fp16_to_f32(scale[n * ng + g]) * a.scale[m * ng + g];
          const float t = static_cast<float>(isum) * s;
          acc = acc + t;
        }
        if (bias) acc = acc + bias[n];
        if (out_dt == OutType::F32) static_cast<float*>(out)[m * ldc + n] = acc;
        else static_cast<uint16_t*>(out)[m * ldc + n] = f32_to_bf16(acc);
      }
    }
  }, std::max<int64_t>(1, 4096 / std::max<int64_t>(kp, 1)));
}

}  // namespace ref
}  // namespace slimrt
