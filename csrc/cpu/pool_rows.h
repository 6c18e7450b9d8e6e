// MaxPool2d(2) row kernels of the cpp conv block (2x2 windows, stride 2, no padding or dilation,
// every window inside the conv output): the forward's max over each window of two conv rows
// (pool2x2_row) and the backward's un-pool of one row of windows (unpool2x2_row).
//
// Both are written on explicit vectors (GCC/Clang vector extensions). GCC 12 does not
// auto-vectorise them (a window's taps are interleaved pairs: it reports "no vectype" for the
// loads) and compiles branches, which mispredict on real data (~20 cycles per window). Here a
// step handles L windows: even and odd columns split (or merged) by shuffles, the max rule's
// selects lane-wise; the last (fewer than L) windows run the same step on zero-padded copies.
//
// Vector width: 32 bytes (8 float or 4 double lanes), one register in the AVX2 and AVX-512
// clones (FUSEDOPS_VECTORIZE), which every x86-64 CPU since 2013 takes. Measured with 16-byte
// vectors instead: mnist conv1's forward 0.74 -> 1.0-1.2 ms. The price: GCC compiles the
// 32-byte compares and selects of the baseline (SSE2) clone lane by lane, 3-4x slower than a
// scalar loop, on CPUs without AVX2.

#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "vectorize.h"

namespace fusedops {
namespace pool_rows {

// 32-byte vectors of T and the shuffles the row kernels need. (low_bytes takes each lane's
// first byte as its lowest: little-endian, as every target of these kernels is.)
#if defined(__BYTE_ORDER__)
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "RowVec::low_bytes assumes little-endian lanes");
#endif
template <typename T>
struct RowVec;
template <>
struct RowVec<float> {
  typedef float type __attribute__((vector_size(32)));
  // Even / odd elements of the 16 in (a, b).
  static type even(type a, type b) { return __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14); }
  static type odd(type a, type b) { return __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15); }
  // The first / last 8 of a0 b0 a1 b1 a2 b2 ... (the inverse of even / odd).
  static type zip_lo(type a, type b) { return __builtin_shufflevector(a, b, 0, 8, 1, 9, 2, 10, 3, 11); }
  static type zip_hi(type a, type b) { return __builtin_shufflevector(a, b, 4, 12, 5, 13, 6, 14, 7, 15); }
  // The low byte of each lane of k (a compare-result vector holding int8 offsets): one
  // shuffle, where a conversion compiles to an extract per lane.
  typedef int8_t bytes __attribute__((vector_size(8)));
  static bytes low_bytes(decltype(type{} > type{}) k) {
    typedef int8_t all_bytes __attribute__((vector_size(32)));
    const all_bytes b = reinterpret_cast<all_bytes>(k);
    return __builtin_shufflevector(b, b, 0, 4, 8, 12, 16, 20, 24, 28);
  }
};
template <>
struct RowVec<double> {
  typedef double type __attribute__((vector_size(32)));
  static type even(type a, type b) { return __builtin_shufflevector(a, b, 0, 2, 4, 6); }
  static type odd(type a, type b) { return __builtin_shufflevector(a, b, 1, 3, 5, 7); }
  static type zip_lo(type a, type b) { return __builtin_shufflevector(a, b, 0, 4, 1, 5); }
  static type zip_hi(type a, type b) { return __builtin_shufflevector(a, b, 2, 6, 3, 7); }
  typedef int8_t bytes __attribute__((vector_size(4)));
  static bytes low_bytes(decltype(type{} > type{}) k) {
    typedef int8_t all_bytes __attribute__((vector_size(32)));
    const all_bytes b = reinterpret_cast<all_bytes>(k);
    return __builtin_shufflevector(b, b, 0, 8, 16, 24);
  }
};

// dst[0, count) = src[0, count) for count < 2L: pieces of L, L/2, ..., 1 elements, each a copy of
// constant size (one or two moves) where a copy of `count` elements is a library call (memmove,
// about as slow as the whole step on a short row: mnist conv2's 7-window rows are all tail).
template <typename T, int64_t L>
FUSEDOPS_ALWAYS_INLINE inline void copy_short(T* __restrict dst, const T* __restrict src, int64_t count) {
  int64_t i = 0;
  for (int64_t piece = L; piece >= 1; piece /= 2) {
    if (count - i >= piece) {
      std::memcpy(dst + i, src + i, piece * sizeof(T));
      i += piece;
    }
  }
}

// The end of a row kernel that passes gradients: adds the lane-wise partial sums of what passed
// into bsum, lanes in order, and returns whether any lane passed one.
template <typename V, typename I, typename T>
FUSEDOPS_ALWAYS_INLINE inline bool finish_passed(const V& passed, const I& on_any, T& bsum) {
  constexpr int64_t L = sizeof(V) / sizeof(T);
  for (int64_t i = 0; i < L; ++i) bsum += passed[i];
  bool any = false;
  for (int64_t i = 0; i < L; ++i) any |= on_any[i] != 0;
  return any;
}

// The L MaxPool2d(2) windows of 2L columns of two conv rows (r0a r0b: the first row's
// columns, r1a r1b: the second's): m = each window's max (taps in window order: row 0 even and
// odd column, row 1 even and odd; a tap replaces the max when larger or NaN, so the first of
// equal maxima wins and NaN propagates), k = its tap, or -1 when the ReLU is off (m <= 0). The
// rows may be ReLU'd or not (then the caller applies the ReLU to m): where m > 0 the ReLU changes
// no tap that could be the max.
template <typename T>
FUSEDOPS_ALWAYS_INLINE inline void window_max(typename RowVec<T>::type r0a, typename RowVec<T>::type r0b,
                                              typename RowVec<T>::type r1a, typename RowVec<T>::type r1b,
                                              typename RowVec<T>::type& m,
                                              decltype(typename RowVec<T>::type{} > typename RowVec<T>::type{})& k) {
  using V = typename RowVec<T>::type;
  using I = decltype(V{} > V{});
  const V v0 = RowVec<T>::even(r0a, r0b), v1 = RowVec<T>::odd(r0a, r0b);
  const V v2 = RowVec<T>::even(r1a, r1b), v3 = RowVec<T>::odd(r1a, r1b);
  const I t1 = (v1 > v0) | (v1 != v1);
  m = t1 ? v1 : v0;
  k = t1 & 1;
  const I t2 = (v2 > m) | (v2 != v2);
  m = t2 ? v2 : m;
  k = t2 ? 2 : k;
  const I t3 = (v3 > m) | (v3 != v3);
  m = t3 ? v3 : m;
  k = t3 ? 3 : k;
  k = ((m > T(0)) | (m != m)) ? k : -1;
}

// MaxPool2d(2) over one pooled row whose windows read conv rows a0 and a1 (ReLU'd: >= 0 or NaN,
// at least 2 * windows elements each): y[pw * ys] = the max of window pw (taps in window order
// a0[2pw], a0[2pw+1], a1[2pw], a1[2pw+1]; a tap replaces the max when larger or NaN, so the first
// of equal maxima wins and NaN propagates), o[pw * ys] its tap, or -1 when the ReLU is off.
template <typename T, typename OffT>
FUSEDOPS_VECTORIZE void pool2x2_row(const T* __restrict a0, const T* __restrict a1, int64_t windows, T* __restrict y,
                                    OffT* __restrict o, int64_t ys) {
  using V = typename RowVec<T>::type;
  using I = decltype(V{} > V{});  // lane-wise compare results: 0 or -1
  constexpr int64_t L = sizeof(V) / sizeof(T);
  // Windows [pw, pw + n), n <= L, whose 2L columns start at r0 and r1.
  const auto step = [&](const T* r0, const T* r1, int64_t pw, int64_t n) {
    V r0a, r0b, r1a, r1b;
    std::memcpy(&r0a, r0, sizeof(V));
    std::memcpy(&r0b, r0 + L, sizeof(V));
    std::memcpy(&r1a, r1, sizeof(V));
    std::memcpy(&r1b, r1 + L, sizeof(V));
    V m;
    I k;
    window_max<T>(r0a, r0b, r1a, r1b, m, k);
    if (ys == 1 && n == L) {
      std::memcpy(y + pw, &m, sizeof(V));
      if constexpr (std::is_same_v<OffT, int8_t>) {
        const typename RowVec<T>::bytes kb = RowVec<T>::low_bytes(k);
        std::memcpy(o + pw, &kb, sizeof(kb));
      } else {
        for (int64_t i = 0; i < L; ++i) o[pw + i] = static_cast<OffT>(k[i]);
      }
    } else {
      for (int64_t i = 0; i < n; ++i) {
        y[(pw + i) * ys] = m[i];
        o[(pw + i) * ys] = static_cast<OffT>(k[i]);
      }
    }
  };
  int64_t pw = 0;
  for (; pw + L <= windows; pw += L) step(a0 + 2 * pw, a1 + 2 * pw, pw, L);
  if (pw < windows) {
    const int64_t n = windows - pw;
    T c0[2 * L] = {}, c1[2 * L] = {};
    copy_short<T, L>(c0, a0 + 2 * pw, 2 * n);
    copy_short<T, L>(c1, a1 + 2 * pw, 2 * n);
    step(c0, c1, pw, n);
  }
}

// The un-pool of one pooled row of windows that cover conv rows d0 and d1 (contiguous, at least
// 2 * windows elements each), written rather than added (the windows do not overlap): each
// window's four conv-output gradients at once, the tap its offset names getting the pooled
// gradient, the others 0 (all four when the offset is -1). g[pw * gstride] and off[pw * ostride]
// are the row's pooled gradients and offsets. Adds the gradients that passed into bsum (lane-wise
// partial sums, then the lanes in order) and returns whether any did.
template <typename T, typename OffT>
FUSEDOPS_VECTORIZE bool unpool2x2_row(const T* __restrict g, int64_t gstride, const OffT* __restrict off,
                                      int64_t ostride, int64_t windows, T* __restrict d0, T* __restrict d1, T& bsum) {
  using V = typename RowVec<T>::type;
  using I = decltype(V{} > V{});
  constexpr int64_t L = sizeof(V) / sizeof(T);
  V passed = {};
  I on_any = {};
  // Windows [pw, pw + n), n <= L: their 2L columns of both rows go to e0 and e1.
  const auto step = [&](int64_t pw, int64_t n, T* e0, T* e1) {
    V gv = {};
    I k;
    for (int64_t i = 0; i < L; ++i) {
      gv[i] = i < n ? g[(pw + i) * gstride] : T(0);
      k[i] = i < n ? off[(pw + i) * ostride] : -1;
    }
    const V zero = {};
    const V s0 = k == 0 ? gv : zero, s1 = k == 1 ? gv : zero, s2 = k == 2 ? gv : zero, s3 = k == 3 ? gv : zero;
    const I on = k >= 0;
    passed += on ? gv : zero;
    on_any |= on;
    const V r0a = RowVec<T>::zip_lo(s0, s1), r0b = RowVec<T>::zip_hi(s0, s1);
    const V r1a = RowVec<T>::zip_lo(s2, s3), r1b = RowVec<T>::zip_hi(s2, s3);
    std::memcpy(e0, &r0a, sizeof(V));
    std::memcpy(e0 + L, &r0b, sizeof(V));
    std::memcpy(e1, &r1a, sizeof(V));
    std::memcpy(e1 + L, &r1b, sizeof(V));
  };
  int64_t pw = 0;
  for (; pw + L <= windows; pw += L) step(pw, L, d0 + 2 * pw, d1 + 2 * pw);
  if (pw < windows) {
    const int64_t n = windows - pw;
    T e0[2 * L], e1[2 * L];
    step(pw, n, e0, e1);
    copy_short<T, L>(d0 + 2 * pw, e0, 2 * n);
    copy_short<T, L>(d1 + 2 * pw, e1, 2 * n);
  }
  return finish_passed(passed, on_any, bsum);
}

}  // namespace pool_rows
}  // namespace fusedops
