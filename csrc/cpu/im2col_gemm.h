// The im2col + GEMM machinery of the "cpp" conv block (conv_block_forward.cpp,
// conv_block_backward.cpp): BLAS and small in-register GEMMs, the band of conv-output rows a
// task covers, im2col of a band (forward and backward) and col2im (backward), the pool taps'
// offsets in a band.

#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include "../conv_geometry.h"
#include "blas.h"
#include "direct_conv.h"
#include "vectorize.h"

namespace fusedops {
namespace im2col_gemm {

// Row-major C (M x N) = op(A) (M x K) @ op(B) (K x N) [+ C when accumulate]: one BLAS call on
// the buffers (blas.h; at::mm on them viewed as tensors cost three tensors and a dispatch per
// call, 128 calls per backward of LeNet's 6->16 layer). Inside at::parallel_for the BLAS runs
// single-threaded. Full float32 whatever torch's float32 matmul precision (as the Winograd
// path's GEMMs).
//
// Products of at most kSmallGemm multiply-adds (a tiny layer, or the first bands of one) run
// in small_gemm below: the BLAS call's own set-up costs more than the arithmetic there, and
// that host time is what a small layer's call costs.
constexpr int64_t kSmallGemm = 1 << 15;

// 32-byte vectors (GCC/Clang vector extensions): one AVX2 register, two SSE2 ones.
template <typename T>
struct Vec32 {
  typedef T type __attribute__((vector_size(32)));
};

// C (m x n) = A (m x k) @ B (k x n) [+ C], B and C row-major, A's element (i, p) at
// a[i * a_rs + p * a_cs] (so A may be transposed). Register tiles of kRows rows x two
// vectors of C accumulate over the whole k in the order p = 0, 1, ..., as a plain loop
// would, so the result does not depend on the tiling.
template <typename T>
FUSEDOPS_VECTORIZE void small_gemm(int64_t m, int64_t n, int64_t k, const T* a, int64_t a_rs, int64_t a_cs,
                                   const T* b, int64_t ldb, bool accumulate, T* c, int64_t ldc) {
  using V = typename Vec32<T>::type;
  constexpr int64_t kLanes = 32 / sizeof(T), kCols = 2 * kLanes, kRows = 4;
  const auto load = [](const T* p) {
    V v;
    __builtin_memcpy(&v, p, sizeof(V));
    return v;
  };
  const auto store = [](T* p, V v) { __builtin_memcpy(p, &v, sizeof(V)); };
  int64_t j0 = 0;
  for (; j0 + kCols <= n; j0 += kCols) {
    int64_t i0 = 0;
    for (; i0 + kRows <= m; i0 += kRows) {
      V lo0 = {}, hi0 = {}, lo1 = {}, hi1 = {}, lo2 = {}, hi2 = {}, lo3 = {}, hi3 = {};
      T* c0 = c + i0 * ldc + j0;
      if (accumulate) {
        lo0 = load(c0), hi0 = load(c0 + kLanes), lo1 = load(c0 + ldc), hi1 = load(c0 + ldc + kLanes);
        lo2 = load(c0 + 2 * ldc), hi2 = load(c0 + 2 * ldc + kLanes);
        lo3 = load(c0 + 3 * ldc), hi3 = load(c0 + 3 * ldc + kLanes);
      }
      const T* ai = a + i0 * a_rs;
      for (int64_t p = 0; p < k; ++p) {
        const V blo = load(b + p * ldb + j0), bhi = load(b + p * ldb + j0 + kLanes);
        const T* ap = ai + p * a_cs;
        const T x0 = ap[0], x1 = ap[a_rs], x2 = ap[2 * a_rs], x3 = ap[3 * a_rs];
        lo0 += x0 * blo, hi0 += x0 * bhi, lo1 += x1 * blo, hi1 += x1 * bhi;
        lo2 += x2 * blo, hi2 += x2 * bhi, lo3 += x3 * blo, hi3 += x3 * bhi;
      }
      store(c0, lo0), store(c0 + kLanes, hi0), store(c0 + ldc, lo1), store(c0 + ldc + kLanes, hi1);
      store(c0 + 2 * ldc, lo2), store(c0 + 2 * ldc + kLanes, hi2);
      store(c0 + 3 * ldc, lo3), store(c0 + 3 * ldc + kLanes, hi3);
    }
    for (; i0 < m; ++i0) {  // the last rows, one at a time
      T* ci = c + i0 * ldc + j0;
      V lo = accumulate ? load(ci) : V{}, hi = accumulate ? load(ci + kLanes) : V{};
      for (int64_t p = 0; p < k; ++p) {
        const T x = a[i0 * a_rs + p * a_cs];
        lo += x * load(b + p * ldb + j0), hi += x * load(b + p * ldb + j0 + kLanes);
      }
      store(ci, lo), store(ci + kLanes, hi);
    }
  }
  if (j0 == n) return;
  for (int64_t i = 0; i < m; ++i) {  // the last columns (fewer than kCols)
    T* ci = c + i * ldc;
    if (!accumulate) std::fill(ci + j0, ci + n, T(0));
    for (int64_t p = 0; p < k; ++p) {
      const T x = a[i * a_rs + p * a_cs];
      const T* bp = b + p * ldb;
      for (int64_t j = j0; j < n; ++j) ci[j] += x * bp[j];
    }
  }
}

// C (m x n) = A (m x k) @ B^T [+ C] with A (m x k) and B (n x k) row-major: dot products of
// rows, 2 x 4 of them at a time, each accumulated in vector lanes over p (then summed across
// the lanes, and the last k % lanes products added in order).
template <typename T>
FUSEDOPS_VECTORIZE void small_gemm_nt(int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
                                      int64_t ldb, bool accumulate, T* c, int64_t ldc) {
  using V = typename Vec32<T>::type;
  constexpr int64_t kLanes = 32 / sizeof(T);
  const int64_t kv = k / kLanes * kLanes;
  const auto load = [](const T* p) {
    V v;
    __builtin_memcpy(&v, p, sizeof(V));
    return v;
  };
  const auto total = [&](V v, const T* ai, const T* bj) {
    T sum = T(0);
    for (int64_t l = 0; l < kLanes; ++l) sum += v[l];
    for (int64_t p = kv; p < k; ++p) sum += ai[p] * bj[p];
    return sum;
  };
  const auto put = [&](int64_t i, int64_t j, T v) { c[i * ldc + j] = accumulate ? c[i * ldc + j] + v : v; };
  int64_t i0 = 0;
  for (; i0 + 2 <= m; i0 += 2) {
    const T *a0 = a + i0 * lda, *a1 = a0 + lda;
    int64_t j0 = 0;
    for (; j0 + 4 <= n; j0 += 4) {
      const T *b0 = b + j0 * ldb, *b1 = b0 + ldb, *b2 = b1 + ldb, *b3 = b2 + ldb;
      V s00 = {}, s01 = {}, s02 = {}, s03 = {}, s10 = {}, s11 = {}, s12 = {}, s13 = {};
      for (int64_t p = 0; p < kv; p += kLanes) {
        const V x0 = load(a0 + p), x1 = load(a1 + p);
        const V y0 = load(b0 + p), y1 = load(b1 + p), y2 = load(b2 + p), y3 = load(b3 + p);
        s00 += x0 * y0, s01 += x0 * y1, s02 += x0 * y2, s03 += x0 * y3;
        s10 += x1 * y0, s11 += x1 * y1, s12 += x1 * y2, s13 += x1 * y3;
      }
      put(i0, j0, total(s00, a0, b0)), put(i0, j0 + 1, total(s01, a0, b1));
      put(i0, j0 + 2, total(s02, a0, b2)), put(i0, j0 + 3, total(s03, a0, b3));
      put(i0 + 1, j0, total(s10, a1, b0)), put(i0 + 1, j0 + 1, total(s11, a1, b1));
      put(i0 + 1, j0 + 2, total(s12, a1, b2)), put(i0 + 1, j0 + 3, total(s13, a1, b3));
    }
    for (; j0 < n; ++j0) {
      const T* bj = b + j0 * ldb;
      V s0 = {}, s1 = {};
      for (int64_t p = 0; p < kv; p += kLanes) {
        const V y = load(bj + p);
        s0 += load(a0 + p) * y, s1 += load(a1 + p) * y;
      }
      put(i0, j0, total(s0, a0, bj)), put(i0 + 1, j0, total(s1, a1, bj));
    }
  }
  for (; i0 < m; ++i0) {  // the last row
    const T* ai = a + i0 * lda;
    for (int64_t j = 0; j < n; ++j) {
      const T* bj = b + j * ldb;
      V s = {};
      for (int64_t p = 0; p < kv; p += kLanes) s += load(ai + p) * load(bj + p);
      put(i0, j, total(s, ai, bj));
    }
  }
}

template <typename T>
void matmul(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda,
            const T* b, int64_t ldb, bool accumulate, T* c, int64_t ldc) {
  if (m * n * k <= kSmallGemm) {
    if (trans_b) {
      if (!trans_a) return small_gemm_nt<T>(m, n, k, a, lda, b, ldb, accumulate, c, ldc);
      thread_local std::vector<T> bt;  // both transposed (not used by the kernels): B^T made explicit
      bt.resize(k * n);
      for (int64_t j = 0; j < n; ++j)
        for (int64_t p = 0; p < k; ++p) bt[p * n + j] = b[j * ldb + p];
      b = bt.data();
      ldb = n;
    }
    small_gemm<T>(m, n, k, a, trans_a ? 1 : lda, trans_a ? lda : 1, b, ldb, accumulate, c, ldc);
    return;
  }
  blas::gemm_row_major<T>(trans_a, trans_b, m, n, k, a, lda, b, ldb, accumulate, c, ldc);
}

// Pooled rows per band: keeps the band's im2col buffer near 64K elements.
inline int64_t band_rows(const Geometry& g) {
  int64_t rows_per_pooled = std::max<int64_t>(g.psh, 1);
  int64_t per_row = std::max<int64_t>(g.K * g.OW * rows_per_pooled, 1);
  return std::max<int64_t>(1, std::min<int64_t>(g.PH, 65536 / per_row));
}

// Conv-output rows shorter than this are gathered from a zero-padded copy of the input rows
// (im2col_short): per row, the bounds and library calls of the general gather cost more than
// the copy itself.
constexpr int64_t kLongRow = 32;

// im2col (below) for short conv rows: the input rows that conv rows [r0, r1) read, copied once
// with their zero padding into `padded` (Cg x rows x width), then every col row is a plain
// strided copy without bounds checks.
template <typename T>
FUSEDOPS_VECTORIZE void im2col_short(const Geometry& g, const T* x, std::array<int64_t, 4> xs, int64_t n, int64_t grp,
                                     int64_t r0, int64_t r1, T* col, std::vector<T>& padded) {
  const int64_t M = (r1 - r0) * g.OW;
  const int64_t ih0 = r0 * g.sh - g.pt, rows = (r1 - 1 - r0) * g.sh + (g.KH - 1) * g.dh + 1;
  const int64_t width = (g.OW - 1) * g.sw + (g.KW - 1) * g.dw + 1;  // input columns -pl .. width - pl - 1
  direct_conv::copy_padded_rows(g, x, xs, n, grp, ih0, rows, width, padded);
  for (int64_t ci = 0; ci < g.Cg; ++ci) {
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        T* dst = col + ((ci * g.KH + kh) * g.KW + kw) * M;
        const T* src = padded.data() + (ci * rows + kh * g.dh) * width + kw * g.dw;
        for (int64_t r = r0; r < r1; ++r) {
          const T* s = src + (r - r0) * g.sh * width;
          T* row = dst + (r - r0) * g.OW;
          for (int64_t ow = 0; ow < g.OW; ++ow) row[ow] = s[ow * g.sw];
        }
      }
    }
  }
}

// col[(ci, kh, kw), (r - r0) * OW + ow] = x[n, g*Cg + ci, r*sh - pt + kh*dh, ow*sw - pl + kw*dw] (0 outside)
template <typename T>
FUSEDOPS_VECTORIZE void im2col(const Geometry& g, const T* x, std::array<int64_t, 4> xs, int64_t n, int64_t grp, int64_t r0,
            int64_t r1, T* col) {
  if (g.OW < kLongRow) {
    thread_local std::vector<T> padded;
    im2col_short(g, x, xs, n, grp, r0, r1, col, padded);
    return;
  }
  const int64_t M = (r1 - r0) * g.OW;
  for (int64_t ci = 0; ci < g.Cg; ++ci) {
    const T* xc = x + n * xs[0] + (grp * g.Cg + ci) * xs[1];
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        T* dst = col + ((ci * g.KH + kh) * g.KW + kw) * M;
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t ih = r * g.sh - g.pt + kh * g.dh;
          T* row = dst + (r - r0) * g.OW;
          if (ih < 0 || ih >= g.H) {
            std::fill(row, row + g.OW, T(0));
            continue;
          }
          const T* xr = xc + ih * xs[2];
          const int64_t off = kw * g.dw - g.pl;
          if (g.sw == 1 && xs[3] == 1) {  // contiguous rows: copy the in-bounds span
            const int64_t lo = std::clamp<int64_t>(-off, 0, g.OW), hi = std::clamp<int64_t>(g.W - off, lo, g.OW);
            std::fill(row, row + lo, T(0));
            std::copy(xr + lo + off, xr + hi + off, row + lo);
            std::fill(row + hi, row + g.OW, T(0));
          } else {
            for (int64_t ow = 0; ow < g.OW; ++ow) {
              const int64_t iw = ow * g.sw + off;
              row[ow] = (iw >= 0 && iw < g.W) ? xr[iw * xs[3]] : T(0);
            }
          }
        }
      }
    }
  }
}

// col2im_add for short conv rows (the adjoint of im2col_short): every col row is added without
// bounds checks into a zero-padded buffer of the input rows conv rows [r0, r1) read, whose
// in-bounds part is then added to dx.
template <typename T>
FUSEDOPS_VECTORIZE void col2im_add_short(const Geometry& g, const T* dcol, int64_t n, int64_t grp, int64_t r0,
                                         int64_t r1, T* dx, std::vector<T>& padded) {
  const int64_t M = (r1 - r0) * g.OW;
  const int64_t ih0 = r0 * g.sh - g.pt, rows = (r1 - 1 - r0) * g.sh + (g.KH - 1) * g.dh + 1;
  const int64_t width = (g.OW - 1) * g.sw + (g.KW - 1) * g.dw + 1;
  padded.assign(g.Cg * rows * width, T(0));
  // kw outermost: the rows added with one kw land at the same column offsets, so a row's
  // vector loads meet earlier stores at exactly their addresses (forwarded); with kw innermost
  // the next kw's loads straddled the previous one's stores.
  for (int64_t ci = 0; ci < g.Cg; ++ci) {
    for (int64_t kw = 0; kw < g.KW; ++kw) {
      for (int64_t kh = 0; kh < g.KH; ++kh) {
        const T* src = dcol + ((ci * g.KH + kh) * g.KW + kw) * M;
        T* dst = padded.data() + (ci * rows + kh * g.dh) * width + kw * g.dw;
        for (int64_t r = r0; r < r1; ++r) {
          const T* row = src + (r - r0) * g.OW;
          T* d = dst + (r - r0) * g.sh * width;
          for (int64_t ow = 0; ow < g.OW; ++ow) d[ow * g.sw] += row[ow];
        }
      }
    }
  }
  const int64_t lo = std::max<int64_t>(0, g.pl), hi = std::min<int64_t>(width, g.W + g.pl);  // in-bounds columns
  for (int64_t ci = 0; ci < g.Cg; ++ci) {
    T* xc = dx + (n * g.C + grp * g.Cg + ci) * g.H * g.W;
    for (int64_t i = std::max<int64_t>(0, -ih0); i < std::min<int64_t>(rows, g.H - ih0); ++i) {
      T* xr = xc + (ih0 + i) * g.W - g.pl;
      const T* src = padded.data() + (ci * rows + i) * width;
      for (int64_t q = lo; q < hi; ++q) xr[q] += src[q];
    }
  }
}

// dx[n, g*Cg + ci, ih, iw] += dcol[(ci, kh, kw), (r - r0) * OW + ow]
template <typename T>
FUSEDOPS_VECTORIZE void col2im_add(const Geometry& g, const T* dcol, int64_t n, int64_t grp, int64_t r0, int64_t r1, T* dx) {
  if (g.OW < kLongRow) {
    thread_local std::vector<T> padded;
    col2im_add_short(g, dcol, n, grp, r0, r1, dx, padded);
    return;
  }
  const int64_t M = (r1 - r0) * g.OW;
  for (int64_t ci = 0; ci < g.Cg; ++ci) {
    T* xc = dx + (n * g.C + grp * g.Cg + ci) * g.H * g.W;
    for (int64_t kh = 0; kh < g.KH; ++kh) {
      for (int64_t kw = 0; kw < g.KW; ++kw) {
        const T* src = dcol + ((ci * g.KH + kh) * g.KW + kw) * M;
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t ih = r * g.sh - g.pt + kh * g.dh;
          if (ih < 0 || ih >= g.H) continue;
          const T* row = src + (r - r0) * g.OW;
          T* xr = xc + ih * g.W;
          for (int64_t ow = 0; ow < g.OW; ++ow) {
            const int64_t iw = ow * g.sw - g.pl + kw * g.dw;
            if (iw >= 0 && iw < g.W) xr[iw] += row[ow];
          }
        }
      }
    }
  }
}

// Offsets of the pool taps in a band tile with rows of OW elements, in window order.
inline std::vector<int64_t> pool_tap_deltas(const Geometry& g) {
  std::vector<int64_t> delta;
  for (int64_t kh = 0; kh < g.PKH; ++kh)
    for (int64_t kw = 0; kw < g.PKW; ++kw) delta.push_back(kh * g.pdh * g.OW + kw * g.pdw);
  return delta;
}

}  // namespace im2col_gemm
}  // namespace fusedops
