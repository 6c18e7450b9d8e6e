// Matrix transposition between a channels-innermost layout and a channel-planes layout (NCHW
// <-> NHWC pieces), in 8 x 8 blocks of 4-byte elements held in vector registers.
//
//   dst[j * dst_stride + i] = D(src[i * src_stride + j])   for i < rows, j < cols,
//
// both matrices with unit inner stride. A scalar copy of this pattern either reads or writes
// one element per cache line and runs at about one element per cycle; a block is read as 8
// rows of 8 and written as 8 columns of 8 after 24 shuffles. Inline into FUSEDOPS_VECTORIZE
// callers, so that each of their clones gets its own vector code.

#pragma once

#include "vectorize.h"

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace fusedops {
namespace transpose {

#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define FUSEDOPS_HAS_SHUFFLEVECTOR 1
#else
#define FUSEDOPS_HAS_SHUFFLEVECTOR 0
#endif

#if FUSEDOPS_HAS_SHUFFLEVECTOR
// (A class member, not an alias template: GCC drops the attribute on a dependent alias.)
template <typename E>
struct Vec8Of {
  typedef E type __attribute__((vector_size(8 * sizeof(E))));
};
template <typename E>
using Vec8 = typename Vec8Of<E>::type;

// Transposes the 8 x 8 block at src (row stride ss) into dst (row stride ds), converting
// each element to D.
template <typename S, typename D>
FUSEDOPS_ALWAYS_INLINE inline void block8x8(const S* src, int64_t ss, D* dst, int64_t ds) {
  using V = Vec8<S>;
  V r[8];
  for (int i = 0; i < 8; ++i) std::memcpy(&r[i], src + i * ss, sizeof(V));
  V t[8], u[8];
  for (int i = 0; i < 8; i += 2) {  // interleave row pairs
    t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4) {  // then pairs of pairs
    u[i] = __builtin_shufflevector(t[i], t[i + 2], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 1] = __builtin_shufflevector(t[i], t[i + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    u[i + 2] = __builtin_shufflevector(t[i + 1], t[i + 3], 0, 1, 8, 9, 4, 5, 12, 13);
    u[i + 3] = __builtin_shufflevector(t[i + 1], t[i + 3], 2, 3, 10, 11, 6, 7, 14, 15);
  }
  for (int j = 0; j < 4; ++j) {  // then the two halves: column j and column j + 4
    const V lo = __builtin_shufflevector(u[j], u[j + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    const V hi = __builtin_shufflevector(u[j], u[j + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    if constexpr (std::is_same_v<S, D>) {
      std::memcpy(dst + j * ds, &lo, sizeof(V));
      std::memcpy(dst + (j + 4) * ds, &hi, sizeof(V));
    } else {
      const Vec8<D> lo_d = __builtin_convertvector(lo, Vec8<D>), hi_d = __builtin_convertvector(hi, Vec8<D>);
      std::memcpy(dst + j * ds, &lo_d, sizeof(lo_d));
      std::memcpy(dst + (j + 4) * ds, &hi_d, sizeof(hi_d));
    }
  }
}
#endif

template <typename S, typename D>
FUSEDOPS_ALWAYS_INLINE inline void matrix(const S* src, int64_t src_stride, int64_t rows, int64_t cols, D* dst,
                                          int64_t dst_stride) {
  int64_t i0 = 0, j0 = 0;
#if FUSEDOPS_HAS_SHUFFLEVECTOR
  if constexpr (sizeof(S) == 4) {
    for (; i0 + 8 <= rows; i0 += 8) {
      for (int64_t j = 0; j + 8 <= cols; j += 8)
        block8x8(src + i0 * src_stride + j, src_stride, dst + j * dst_stride + i0, dst_stride);
    }
    j0 = cols - cols % 8;
  }
#endif
  // What the blocks left: the last rows % 8 rows, and the last cols % 8 columns of the others.
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = i < i0 ? j0 : 0; j < cols; ++j) dst[j * dst_stride + i] = static_cast<D>(src[i * src_stride + j]);
}

// matrix() as a function of its own, compiled for each vector ISA: for callers that are not
// FUSEDOPS_VECTORIZE themselves.
template <typename S, typename D>
FUSEDOPS_VECTORIZE void matrix_vectorized(const S* src, int64_t src_stride, int64_t rows, int64_t cols, D* dst,
                                          int64_t dst_stride) {
  matrix(src, src_stride, rows, cols, dst, dst_stride);
}

}  // namespace transpose
}  // namespace fusedops
