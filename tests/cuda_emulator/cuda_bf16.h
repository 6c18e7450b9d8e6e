// Host stand-in for CUDA's __nv_bfloat16: the upper half of a float, round-to-nearest-even.

#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
  uint16_t x;
};

inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t u = uint32_t(h.x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  __nv_bfloat16 r;
  if (std::isnan(f)) {
    r.x = 0x7fc0;
    return r;
  }
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fff + ((u >> 16) & 1);
  r.x = uint16_t(u >> 16);
  return r;
}
