// exp and erf for float32 written so that GCC's auto-vectoriser widens the loops that call
// them (no branches, no library calls): the smooth activations of the linear passes
// (linear.cpp) run 8 or 16 lanes at a time in the FUSEDOPS_VECTORIZE clones. A call of
// std::exp / std::erf in a loop keeps it scalar: glibc's vector variants need
// -ffast-math, which would also drop the NaN and infinity rules the passes keep.
//
// Accuracy in float32, over all 2^32 inputs against the C library in double (measured with and
// without FMA contraction, which the x86-64-v3/v4 clones apply and the baseline does not):
//   vexp:  1.02 ulp where the result is a normal float; +inf past 88.73, gradual underflow to 0
//          below -87.3; NaN in, NaN out.
//   verf:  absolute error within 6.6e-7: Abramowitz and Stegun 7.1.26 (1.5e-7 in exact
//          arithmetic) evaluated in float32, as torch's vectorised GELU does; erf(+-inf) = +-1,
//          erf(-0) = -0, NaN in, NaN out. Not for relative accuracy near 0 (erf is used as
//          1 + erf).
// tests/test_vector_math.py checks the activations built on them against float64.
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
  // The clamps as bit masks: as selects (?:) GCC's jump threading split the loop at the clamped
  // constants, and the AVX2 clones stayed scalar.
  const uint32_t lo = 0u - static_cast<uint32_t>(x < -104.0f), hi = 0u - static_cast<uint32_t>(x > 89.0f);
  const float xc = from_bits((to_bits(x) & ~(lo | hi)) | (to_bits(-104.0f) & lo) | (to_bits(89.0f) & hi));
  // Round to nearest by the 1.5 * 2^23 shift: the sum's ulp is 1 (|x / ln2| < 2^22).
  constexpr float kShift = 12582912.0f;
  const float shifted = xc * 1.44269504088896341f + kShift;
  const float n = shifted - kShift;
  float r = xc - n * 0.693359375f;  // ln2's high part: n times it is exact
  r = r - n * -2.12194440e-4f;      // ln2 - 0.693359375
  const float p = ((((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r +
                     1.6666665459e-1f) * r + 5.0000001201e-1f) * r) * r + r + 1.0f;
  // n as an integer from the low bits of the shifted sum, not by a float-to-int conversion (UB
  // for NaN); for a NaN x any value, and the result is NaN through p.
  const int32_t ni = static_cast<int32_t>(to_bits(shifted) - to_bits(kShift));
  const int32_t h = ni / 2;  // |h|, |ni - h| <= 75: both factors normal
  return p * pow2(h) * pow2(ni - h);
}

// c ? a : b as bit operations: GCC's jump threading turns a float ?: in a loop into a branch
// (as it did with vexp's clamps), and the loop then stays scalar in the AVX2 clones.
FUSEDOPS_ALWAYS_INLINE inline float vselect(bool c, float a, float b) {
  using namespace vector_math_detail;
  const uint32_t m = 0u - static_cast<uint32_t>(c);
  return from_bits((to_bits(a) & m) | (to_bits(b) & ~m));
}

// erf(x) = sign(x) (1 - t (a1 + a2 t + a3 t^2 + a4 t^3 + a5 t^4) exp(-x^2)), t = 1 / (1 + p |x|)
// (Abramowitz and Stegun 7.1.26, as torch's vectorised GELU on the CPU), with exp(-x^2) given
// as g: GELU's derivative needs the same exponential for its second term, and one vexp is
// about a third of the derivative's work.
FUSEDOPS_ALWAYS_INLINE inline float verf_given_gauss(float x, float g) {
  using namespace vector_math_detail;
  const uint32_t sign = to_bits(x) & 0x80000000u;
  const float a = from_bits(to_bits(x) ^ sign);
  const float t = 1.0f / (1.0f + 0.3275911f * a);
  const float poly = (((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f;
  const float y = 1.0f - poly * t * g;
  return from_bits(to_bits(y) | sign);
}

// erf(x), as verf_given_gauss with g = exp(-x^2).
FUSEDOPS_ALWAYS_INLINE inline float verf(float x) { return verf_given_gauss(x, vexp(-x * x)); }

}  // namespace fusedops
