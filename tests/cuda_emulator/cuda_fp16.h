// Host stand-in for CUDA's __half: IEEE binary16 storage, conversions with round-to-nearest-even.

#pragma once

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <cstring>

struct __half {
  uint16_t x;
};

inline float __half2float(__half h) {
  const uint32_t sign = uint32_t(h.x & 0x8000) << 16, exponent = (h.x >> 10) & 31, mantissa = h.x & 1023;
  uint32_t bits;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float v = float(mantissa) * 5.9604644775390625e-8f;
    return sign ? -v : v;
  }
  if (exponent == 31) bits = sign | 0x7f800000u | (mantissa << 13);  // infinity or NaN
  else bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline __half __float2half_rn(float f) {
  __half r;
  if (std::isnan(f)) {
    r.x = 0x7fff;
    return r;
  }
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const float a = std::fabs(f);
  if (a >= 65520.0f) {  // rounds to infinity
    r.x = sign | 0x7c00;
    return r;
  }
  int e;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1)
  const int quantum = std::max(e - 11, -24);  // 11 significant bits; subnormals below 2^-14
  const double v = std::ldexp(std::nearbyint(std::ldexp(double(a), -quantum)), quantum);  // ties to even
  if (v == 0) {
    r.x = sign;
    return r;
  }
  int e2;
  std::frexp(v, &e2);
  const int biased = e2 - 1 + 15;
  if (biased <= 0) {  // subnormal
    r.x = sign | uint16_t(std::ldexp(v, 24));
    return r;
  }
  if (biased >= 31) {
    r.x = sign | 0x7c00;
    return r;
  }
  r.x = sign | uint16_t(biased << 10) | uint16_t(uint16_t(std::ldexp(v, -(e2 - 1) + 10)) - 1024);
  return r;
}
