// exp and erf for float32 written so that GCC's auto-vectoriser widens the loops that call
// them (no branches, no library calls): the smooth activations of the linear passes
// (linear.cpp) run 8 or 16 lanes at a time in the FUSEDOPS_VECTORIZE clones. A call of
// std::exp / std::erf in a loop keeps it scalar: glibc's vector variants need
// -ffast-math, which would also drop the NaN and infinity rules the passes keep.
//
// Accuracy, float32 (tests/test_vector_math.py checks the activations built on them against float64):
//   vexp:  relative error within 2 ulp where the result is a normal float; +inf past 88.73,
//          gradual underflow to 0 below -87.3; NaN in, NaN out.
//   verf:  absolute error within 1.5e-7 (Abramowitz and Stegun 7.1.26, as torch's own vectorised
//          erf); erf(+-inf) = +-1, erf(-0) = -0, NaN in, NaN out.
// Every function is inlined into its caller (FUSEDOPS_ALWAYS_INLINE), so each clone of a
// FUSEDOPS_VECTORIZE loop gets its own vector code.

#pragma once

#include <cstdint>

#include "vectorize.h"

namespace fusedops {

namespace vector_math_detail {

FUSEDOPS_ALWAYS_INLINE inline float from_bits(uint32_t u) {
  float f;
  __builtin_memcpy(&f, &u, sizeof(f));
  return f;
}

FUSEDOPS_ALWAYS_INLINE inline uint32_t to_bits(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, sizeof(f));
  return u;
}

// 2^e for -126 <= e <= 127, built in the exponent field.
FUSEDOPS_ALWAYS_INLINE inline float pow2(int32_t e) { return from_bits(static_cast<uint32_t>(e + 127) << 23); }

}  // namespace vector_math_detail

// exp(x): x = n ln2 + r with n = round(x / ln2) and |r| <= ln2 / 2 (ln2 in two parts, so r is
// exact), exp(r) by Cephes' degree-7 polynomial, and 2^n applied as two factors 2^h and
// 2^(n-h), each a normal float over the whole clamped range [-104, 89]: results below
// 2^-126 underflow gradually (the last multiply rounds them), results past the largest float
// become +inf (x is clamped to 89, whose exp overflows). The clamps keep NaN (a comparison
// with NaN is false), and NaN goes through the arithmetic.
FUSEDOPS_ALWAYS_INLINE inline float vexp(float x) {
  using namespace vector_math_detail;
  float xc = x < -104.0f ? -104.0f : x;
  xc = xc > 89.0f ? 89.0f : xc;
  // Round to nearest by the 1.5 * 2^23 shift: the sum's ulp is 1 (|x / ln2| < 2^22).
  constexpr float kShift = 12582912.0f;
  const float n = (xc * 1.44269504088896341f + kShift) - kShift;
  float r = xc - n * 0.693359375f;  // ln2's high part: n times it is exact
  r = r - n * -2.12194440e-4f;      // ln2 - 0.693359375
  const float p = ((((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r +
                     1.6666665459e-1f) * r + 5.0000001201e-1f) * r) * r + r + 1.0f;
  const int32_t ni = static_cast<int32_t>(n);  // NaN x: any value, the result is NaN through p
  const int32_t h = ni / 2;                     // |h|, |ni - h| <= 75: both factors normal
  return p * pow2(h) * pow2(ni - h);
}

// erf(x) = sign(x) (1 - t (a1 + a2 t + a3 t^2 + a4 t^3 + a5 t^4) exp(-x^2)), t = 1 / (1 + p |x|)
// (Abramowitz and Stegun 7.1.26, absolute error below 1.5e-7; torch's CPU erf for float
// vectors uses the same formula).
FUSEDOPS_ALWAYS_INLINE inline float verf(float x) {
  using namespace vector_math_detail;
  const uint32_t sign = to_bits(x) & 0x80000000u;
  const float a = from_bits(to_bits(x) ^ sign);
  const float t = 1.0f / (1.0f + 0.3275911f * a);
  const float poly = (((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f;
  const float y = 1.0f - poly * t * vexp(-a * a);
  return from_bits(to_bits(y) | sign);
}

}  // namespace fusedops
