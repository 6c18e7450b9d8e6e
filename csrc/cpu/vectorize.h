// FUSEDOPS_VECTORIZE: compile a hot loop function for AVX-512 and AVX2 as well as the baseline
// ISA, picking the best one the CPU has when the library loads (GCC function
// multi-versioning). The package is built once for every x86-64 machine, so -march=native is
// not an option; without this the auto-vectorised loops would be limited to SSE2.

#pragma once

// GCC 11 has no dispatcher for the arch=x86-64-v* levels, and Clang (14) does not multiversion
// function templates, so both build the baseline only.
#if defined(__x86_64__) && defined(__linux__) && !defined(__clang__) && __GNUC__ >= 12
#define FUSEDOPS_VECTORIZE __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define FUSEDOPS_HAS_CLONES 1
#else
#define FUSEDOPS_VECTORIZE
#define FUSEDOPS_HAS_CLONES 0
#endif

// Whether FUSEDOPS_VECTORIZE functions run an AVX2 (x86-64-v3) or AVX-512 clone on this CPU:
// built with the clones, and the CPU has AVX2 and FMA. Kernels written for 32-byte vector
// registers check it before taking a path that only wins there.
inline bool vector_clones_fast() {
#if FUSEDOPS_HAS_CLONES
  static const bool fast = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return fast;
#else
  return false;
#endif
}

// Whether FUSEDOPS_VECTORIZE functions run the AVX-512 (x86-64-v4) clone on this CPU (32 vector
// registers; the AVX2 clone has 16): the same test as the clones' dispatcher.
inline bool vector_clones_avx512() {
#if FUSEDOPS_HAS_CLONES
  static const bool avx512 = __builtin_cpu_supports("x86-64-v4");
  return avx512;
#else
  return false;
#endif
}

// Inlined into each caller, so that a helper of a FUSEDOPS_VECTORIZE function is compiled for
// each of the caller's clones (a plain inline helper may be emitted once, for the baseline).
#if defined(__GNUC__) || defined(__clang__)
#define FUSEDOPS_ALWAYS_INLINE __attribute__((always_inline))
#else
#define FUSEDOPS_ALWAYS_INLINE
#endif

// NaN test that the auto-vectoriser accepts: GCC 12 does not vectorise loops that test NaN
// as `v != v` ("no vectype"), but does with the unordered-compare builtin.
template <typename T>
inline bool is_nan(T v) {
#if defined(__GNUC__) || defined(__clang__)
  return __builtin_isunordered(v, v);
#else
  return v != v;
#endif
}
