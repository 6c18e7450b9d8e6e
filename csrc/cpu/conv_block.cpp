// Fused Conv2d + bias + ReLU + MaxPool2d on the CPU: the "cpp" backend.
//
// Forward. Work is split into tasks (image n, group g, band of pooled rows). A task
// gathers the conv-output rows its pool windows read (im2col of those rows into a
// thread-local buffer `col`, K x M with K = Cin/groups * KH * KW and M = rows * OW), runs one
// GEMM  tile (Cout/groups x M) = W_g (Cout/groups x K) @ col, and the epilogue reduces
// bias + ReLU + max over each pool window straight from the tile, writing only the pooled
// value and the window offset of its max (or -1 when the ReLU is off). The conv output
// never exists beyond one band of one image.
//
// Direct path (<= 16 input channels per group, stride-1 columns: a CNN's first layers; see
// direct_conv.h). The band tile comes from a direct convolution on register tiles instead of
// im2col + GEMM; with MaxPool2d(2) (whole windows) bias + ReLU + max run on the registers and
// no band tile is stored.
//
// Winograd path (3x3 kernel, stride 1, dilation 1, >= 8 input and output channels per group:
// the bulk of a CNN's layers). The band tile comes from Winograd F(2x2, 3x3) (winograd.h)
// instead of im2col + GEMM, 2.25x fewer multiply-adds; a task then covers several small
// images so that the 16 GEMMs have enough columns. With MaxPool2d(2) (whole windows) each
// 2x2 output tile is one pool window, so bias + ReLU + max run in the output transform and no
// band tile is stored. The backward rebuilds each image's whole conv-output gradient
// (channels innermost) and gets both grad_input (a Winograd correlation with the flipped,
// transposed filters) and grad_weight (Winograd's weight-gradient GEMMs) from it, without
// im2col or col2im.
//
// Max rule (torch's max_pool2d on the CPU): taps in row-major window order, a tap replaces
// the max when it is larger or NaN; so the first of equal maxima wins and NaN propagates.
// A window wholly in padding gives -inf, as torch does.
//
// Backward (im2col path). Tasks are (image, group) so that each task owns its slice of
// grad_input; within a task, bands are processed in order: the band's conv-output gradient
// `dtile` is rebuilt from the pooled gradient and the offsets (a scatter; overlapping windows
// add), then
//   grad_weight_g += dtile @ col^T             (per-thread partial sums, reduced at the end)
//   grad_input    += col2im(W_g^T @ dtile)
// and grad_bias sums the pooled gradients whose ReLU was on. Deterministic for a fixed
// thread count.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../conv_checks.h"
#include "blas.h"
#include "cpu_checks.h"
#include "direct_conv.h"
#include "pool_rows.h"
#include "relu_rows.h"
#include "vectorize.h"
#include "transpose.h"
#include "winograd.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

namespace fusedops {
namespace {

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
int64_t band_rows(const Geometry& g) {
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

// The fused epilogue of a Winograd tile that is one MaxPool2d(2) window: for every channel c
// at once, the tile's output transform, then mx[c] = max of ReLU(y[i][c] + bias[c]) over its
// four outputs in window order (larger or NaN replaces, so the first max wins and NaN
// propagates) and at[c] = its window offset, or -1 when the ReLU is off. Writes the window
// (n, pooled row r / 2 - p0, pooled column col / 2) of a task's channels-innermost staging
// buffers (rows x PW windows per image); the odd last column, outside every window, is dropped.
template <typename T>
struct PoolTileEpilogue {
  static constexpr bool kTakesProducts = true;
  const T* bias;
  T* mx;
  int32_t* at;
  int64_t p0, rows, PW;

  FUSEDOPS_ALWAYS_INLINE void operator()(int64_t n, int64_t r, int64_t col, int64_t channels, const T* __restrict m,
                                         int64_t mes) const {
    const int64_t pw = col / 2;
    if (pw >= PW) return;
    const int64_t base = ((n * rows + r / 2 - p0) * PW + pw) * channels;
    T* __restrict best = mx + base;
    int32_t* __restrict where = at + base;
    // Written without arrays, inner loops or short-circuit operators: GCC vectorises it then.
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      T a0, a1, a2, a3;
      winograd::output_transform(m, mes, c, a0, a1, a2, a3);
      const T bc = bias[c];
      a0 += bc;
      a1 += bc;
      a2 += bc;
      a3 += bc;
      const bool n0 = is_nan(a0), n1 = is_nan(a1), n2 = is_nan(a2), n3 = is_nan(a3);
      a0 = (a0 > T(0)) | n0 ? a0 : T(0);  // ReLU, NaN kept
      a1 = (a1 > T(0)) | n1 ? a1 : T(0);
      a2 = (a2 > T(0)) | n2 ? a2 : T(0);
      a3 = (a3 > T(0)) | n3 ? a3 : T(0);
      const bool t1 = (a1 > a0) | n1;
      T mv = t1 ? a1 : a0;
      int32_t k = t1 ? 1 : 0;
      const bool t2 = (a2 > mv) | n2;
      mv = t2 ? a2 : mv;
      k = t2 ? 2 : k;
      const bool t3 = (a3 > mv) | n3;
      mv = t3 ? a3 : mv;
      k = t3 ? 3 : k;
      best[c] = mv;
      where[c] = (mv > T(0)) | is_nan(mv) ? k : -1;
    }
  }
};

// Writes the pooled outputs of `images` images staged channels innermost, mx[(n * rows * cols
// + q) * channels + c] for the pooled position q (row-major over rows x cols) of image n, and
// their offsets `at` (the same layout), to y[n * ys[0] + c * ys[1] + row * ys[2] + col * ys[3]]
// and to o at the same index: block transposes where the rows of each channel are one run
// (NCHW), element by element otherwise.
template <typename T, typename OffT>
FUSEDOPS_VECTORIZE void write_pooled(const T* mx, const int32_t* at, int64_t images, int64_t rows, int64_t cols,
                                     int64_t channels, T* y, OffT* o, const std::array<int64_t, 4>& ys) {
  const int64_t count = rows * cols;
  for (int64_t n = 0; n < images; ++n) {
    const T* m = mx + n * count * channels;
    const int32_t* a = at + n * count * channels;
    if (ys[3] == 1 && ys[2] == cols) {
      transpose::matrix(m, channels, count, channels, y + n * ys[0], ys[1]);
      transpose::matrix(a, channels, count, channels, o + n * ys[0], ys[1]);
      continue;
    }
    for (int64_t q = 0; q < count; ++q) {
      const int64_t to = n * ys[0] + (q / cols) * ys[2] + (q % cols) * ys[3];
      if (ys[1] == 1) {  // channels innermost (channels_last): a run per position
        T* __restrict yq = y + to;
        OffT* __restrict oq = o + to;
        for (int64_t c = 0; c < channels; ++c) {
          yq[c] = m[q * channels + c];
          oq[c] = static_cast<OffT>(a[q * channels + c]);
        }
        continue;
      }
      for (int64_t c = 0; c < channels; ++c) {
        y[to + c * ys[1]] = m[q * channels + c];
        o[to + c * ys[1]] = static_cast<OffT>(a[q * channels + c]);
      }
    }
  }
}

// Offsets of the pool taps in a band tile with rows of OW elements, in window order.
std::vector<int64_t> pool_tap_deltas(const Geometry& g) {
  std::vector<int64_t> delta;
  for (int64_t kh = 0; kh < g.PKH; ++kh)
    for (int64_t kw = 0; kw < g.PKW; ++kw) delta.push_back(kh * g.pdh * g.OW + kw * g.pdw);
  return delta;
}

// Same-size integer view of a float, for branch-free selects.
template <typename T>
using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
template <typename T>
inline Bits<T> to_bits(T v) {
  Bits<T> b;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
inline T from_bits(Bits<T> b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

// Pooled rows at least this wide are reduced a tap at a time across the row (SIMD).
constexpr int64_t kWideRow = 32;

// Max over each pool window of pooled rows [p0, p1) of one channel, from the band's
// ReLU'd conv rows `t` (starting at conv row r0); writes the value and the window offset.
// Windows wholly inside the conv output are reduced with branch-free selects: a pool tap at
// a time across a wide pooled row (vectorisable), window by window on short rows; windows
// that reach outside one by one with bounds checks.
template <typename T, typename OffT>
FUSEDOPS_VECTORIZE void pool_epilogue(const Geometry& g, const T* t, int64_t r0, int64_t p0, int64_t p1, T* y, OffT* o,
                                      const std::array<int64_t, 4>& ys, const std::vector<int64_t>& tap_delta,
                                      std::vector<T>& best_row, std::vector<int32_t>& where_row) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  if (g.whole_pool2x2()) {
    for (int64_t ph = p0; ph < p1; ++ph) {
      const T* a0 = t + (2 * ph - r0) * g.OW;
      pool_rows::pool2x2_row<T, OffT>(a0, a0 + g.OW, g.PW, y + ph * ys[2], o + ph * ys[2], ys[3]);
    }
    return;
  }
  // Pooled columns [lo, hi) have windows inside [0, OW).
  const int64_t lo = std::min<int64_t>((g.ppw + g.psw - 1) / g.psw, g.PW);
  const int64_t last = g.OW - 1 - (g.PKW - 1) * g.pdw + g.ppw;
  const int64_t hi = std::max<int64_t>(lo, last < 0 ? 0 : std::min<int64_t>(g.PW, last / g.psw + 1));
  best_row.resize(g.PW);
  where_row.resize(g.PW);
  T* best = best_row.data();
  int32_t* where = where_row.data();
  const auto store = [&](int64_t ph, int64_t pw, T v, int64_t at) {
    const int64_t yi = ph * ys[2] + pw * ys[3];
    y[yi] = v;
    o[yi] = static_cast<OffT>(v > T(0) || is_nan(v) ? at : -1);
  };
  const auto one_window = [&](int64_t ph, int64_t pw) {
    const int64_t rs = ph * g.psh - g.pph, qs = pw * g.psw - g.ppw;
    T m = neg_inf;
    int64_t at = -1;
    for (int64_t kh = 0; kh < g.PKH; ++kh) {
      const int64_t r = rs + kh * g.pdh;
      if (r < 0 || r >= g.OH) continue;
      for (int64_t kw = 0; kw < g.PKW; ++kw) {
        const int64_t q = qs + kw * g.pdw;
        if (q < 0 || q >= g.OW) continue;
        const T v = t[(r - r0) * g.OW + q];
        if (v > m || is_nan(v)) {
          m = v;
          at = kh * g.PKW + kw;
        }
      }
    }
    store(ph, pw, m, at);
  };
  for (int64_t ph = p0; ph < p1; ++ph) {
    const int64_t rs = ph * g.psh - g.pph;
    const bool rows_inside = rs >= 0 && rs + (g.PKH - 1) * g.pdh < g.OH;
    if (!rows_inside || hi == lo) {
      for (int64_t pw = 0; pw < g.PW; ++pw) one_window(ph, pw);
      continue;
    }
    if (hi - lo < kWideRow) {  // short rows: window by window, taps at precomputed offsets
      for (int64_t pw = 0; pw < lo; ++pw) one_window(ph, pw);
      // A ReLU'd value is >= 0 or NaN, so the first tap always replaces -inf. The selects are
      // bit masks (written as selects they compiled to branches, which random data
      // mispredicts), and kLanes windows are reduced side by side: their dependency chains
      // then overlap instead of running one after the other.
      constexpr int64_t kLanes = 8;
      const int64_t taps = static_cast<int64_t>(tap_delta.size());
      const T* row = t + (rs - r0) * g.OW - g.ppw;
      for (int64_t pw0 = lo; pw0 < hi; pw0 += kLanes) {
        const int64_t lanes = std::min(kLanes, hi - pw0);
        Bits<T> mb[kLanes];
        Bits<T> at[kLanes];
        T m[kLanes];
        for (int64_t u = 0; u < kLanes; ++u) {
          m[u] = u < lanes ? row[(pw0 + u) * g.psw] : T(0);
          mb[u] = to_bits(m[u]);
          at[u] = 0;
        }
        for (int64_t k = 1; k < taps; ++k) {
          const int64_t d = tap_delta[k];
          for (int64_t u = 0; u < kLanes; ++u) {
            const T v = u < lanes ? row[(pw0 + u) * g.psw + d] : T(0);
            const Bits<T> take = static_cast<Bits<T>>(0) - static_cast<Bits<T>>((v > m[u]) | is_nan(v));
            mb[u] = (to_bits(v) & take) | (mb[u] & ~take);
            at[u] = (static_cast<Bits<T>>(k) & take) | (at[u] & ~take);
            m[u] = from_bits<T>(mb[u]);
          }
        }
        for (int64_t u = 0; u < lanes; ++u) store(ph, pw0 + u, m[u], static_cast<int64_t>(at[u]));
      }
      for (int64_t pw = hi; pw < g.PW; ++pw) one_window(ph, pw);
      continue;
    }
    std::fill(best + lo, best + hi, neg_inf);
    std::fill(where + lo, where + hi, -1);
    for (int64_t kh = 0; kh < g.PKH; ++kh) {
      for (int64_t kw = 0; kw < g.PKW; ++kw) {
        const T* row = t + (rs + kh * g.pdh - r0) * g.OW + kw * g.pdw - g.ppw;
        const int32_t tap = static_cast<int32_t>(kh * g.PKW + kw);
        const int64_t step = g.psw;
        for (int64_t pw = lo; pw < hi; ++pw) {  // larger or NaN replaces: first max wins, NaN propagates
          const T v = row[pw * step];
          const bool take = (v > best[pw]) | is_nan(v);
          best[pw] = take ? v : best[pw];
          where[pw] = take ? tap : where[pw];
        }
      }
    }
    for (int64_t pw = 0; pw < lo; ++pw) one_window(ph, pw);
    for (int64_t pw = lo; pw < hi; ++pw) store(ph, pw, best[pw], where[pw]);
    for (int64_t pw = hi; pw < g.PW; ++pw) one_window(ph, pw);
  }
}

// bias + ReLU (NaN kept) over a band tile of conv rows [r0, r0 + M / OW) of one image, then
// the pool epilogue (or, without a pool, a copy of the tile with offset 0 / -1).
template <typename T, typename OffT>
FUSEDOPS_VECTORIZE void band_epilogue(const Geometry& g, T* tile, int64_t M, int64_t r0, int64_t p0, int64_t p1, const T* b,
                   int64_t grp, T* y, OffT* o, const std::array<int64_t, 4>& ys,
                   const std::vector<int64_t>& tap_delta, std::vector<T>& best_row,
                   std::vector<int32_t>& where_row) {
  for (int64_t cg = 0; cg < g.Coutg; ++cg) {
    const int64_t c = grp * g.Coutg + cg;
    T* t = tile + cg * M;
    const T bc = b ? b[c] : T(0);
    T* yc = y + c * ys[1];
    OffT* oc = o + c * ys[1];
    if (!g.pool) {  // conv row r is output row r; rows that follow each other in y are one run
      const int64_t run = ys[2] == g.OW * ys[3] ? p1 - p0 : 1;
      for (int64_t r = p0; r < p1; r += run)
        relu_rows::bias_relu_row<T, OffT>(t + (r - r0) * g.OW, run * g.OW, bc, yc + r * ys[2], oc + r * ys[2], ys[3]);
      continue;
    }
    for (int64_t i = 0; i < M; ++i) {  // vectorisable
      const T v = t[i] + bc;
      t[i] = (v > T(0)) | is_nan(v) ? v : T(0);
    }
    pool_epilogue<T, OffT>(g, t, r0, p0, p1, yc, oc, ys, tap_delta, best_row, where_row);
  }
}

template <typename T, typename OffT>
void forward_kernel(const Geometry& g, const at::Tensor& input, const at::Tensor& weight,
                    const std::optional<at::Tensor>& bias, at::Tensor& out, at::Tensor& offsets) {
  const T* x = input.const_data_ptr<T>();
  const std::array<int64_t, 4> xs{input.stride(0), input.stride(1), input.stride(2), input.stride(3)};
  const T* w = weight.const_data_ptr<T>();
  const T* b = bias.has_value() ? bias->const_data_ptr<T>() : nullptr;
  T* y = out.mutable_data_ptr<T>();
  OffT* o = offsets.mutable_data_ptr<OffT>();
  const std::array<int64_t, 4> ys{out.stride(0), out.stride(1), out.stride(2), out.stride(3)};
  // First layers (few input channels per group): a direct convolution instead of im2col + GEMM
  // (direct_conv.h), on the weights of every group transposed to its layout.
  const bool direct = direct_conv::applies(g);
  const int64_t tile_co = direct_conv::tile_channels(g), co_pad = direct_conv::padded_channels(g, tile_co);
  std::vector<T> wt(direct ? g.G * g.K * co_pad : 0);
  for (int64_t grp = 0; direct && grp < g.G; ++grp)
    direct_conv::transpose_weights(g, w + grp * g.Coutg * g.K, wt.data() + grp * g.K * co_pad, co_pad);
  const int64_t band = direct ? direct_conv::band_rows(g) : band_rows(g);
  const int64_t bands = (g.PH + band - 1) / band;
  // Winograd: the transformed filters of every group, and several small images per task so
  // that the 16 GEMMs have enough columns.
  std::vector<T> U(g.winograd ? 16 * g.Cout * g.Cg : 0);
  int64_t images = 1;
  if (g.winograd) {
    for (int64_t grp = 0; grp < g.G; ++grp)
      winograd::transform_weights(w + grp * g.Coutg * g.K, g.Coutg, g.Cg, false, U.data() + grp * 16 * g.Coutg * g.Cg);
    const auto [r0, r1] = g.conv_rows(0, std::min(band, g.PH));
    const int64_t tiles = std::max<int64_t>(1, (r1 - r0 + 1) / 2 * ((g.OW + 1) / 2));
    const int64_t spread = (g.N + 2 * at::get_num_threads() - 1) / (2 * at::get_num_threads());
    images = std::clamp<int64_t>(winograd::kTilesPerBatch / tiles, 1, std::max<int64_t>(spread, 1));
  }
  const int64_t chunks = (g.N + images - 1) / images;
  const std::vector<int64_t> tap_delta = pool_tap_deltas(g);
  // MaxPool2d(2) over whole windows: its windows are exactly the Winograd output tiles (the
  // bands start at even conv rows), so the pool runs in the output transform.
  const bool pool_on_tiles = g.winograd && g.whole_pool2x2();
  const std::vector<T> zeros(pool_on_tiles && !b ? g.Cout : 0, T(0));
  const T* bias_or_zero = b ? b : zeros.data();

  at::parallel_for(0, chunks * g.G * bands, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> col, tile, best_row, padded;
    std::vector<int32_t> where_row;
    winograd::Workspace<T> ws;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n0 = task / (g.G * bands) * images, grp = (task / bands) % g.G, p0 = (task % bands) * band;
      const int64_t n1 = std::min(n0 + images, g.N), p1 = std::min(p0 + band, g.PH);
      const auto [r0, r1] = g.conv_rows(p0, p1);
      const int64_t M = std::max<int64_t>(r1 - r0, 0) * g.OW;
      const winograd::Source<T> src{x + n0 * xs[0] + grp * g.Cg * xs[1], xs[0], xs[1], xs[2], xs[3],
                                    g.H, g.W, g.pt, g.pl};
      const T* Ug = U.data() + grp * 16 * g.Coutg * g.Cg;
      const T* wg = direct ? wt.data() + grp * g.K * co_pad : nullptr;  // the direct path's weights
      if (M > 0 && pool_on_tiles) {  // each 2x2 Winograd tile is one pool window: no band tile at all
        // The task's pooled outputs are staged channels innermost, (image, pooled row, column,
        // channel), then written out one channel's run at a time: stored straight from each tile,
        // every element would start a new cache line of an NCHW output.
        const int64_t prows = p1 - p0, outputs = (n1 - n0) * prows * g.PW;
        best_row.resize(outputs * g.Coutg);
        where_row.resize(outputs * g.Coutg);
        const PoolTileEpilogue<T> pool_tile{bias_or_zero + grp * g.Coutg, best_row.data(), where_row.data(), p0,
                                            prows, g.PW};
        winograd::conv3x3_tiles(src, n1 - n0, g.Cg, Ug, g.Coutg, winograd::Sink<T>{nullptr, 0, 0, 0, r0, r1, g.OW},
                                pool_tile, ws);
        const int64_t to = n0 * ys[0] + grp * g.Coutg * ys[1] + p0 * ys[2];
        write_pooled(best_row.data(), where_row.data(), n1 - n0, prows, g.PW, g.Coutg, y + to, o + to, ys);
        continue;
      }
      if constexpr (std::is_same_v<OffT, int8_t>) {  // (MaxPool2d(2)'s 4-tap windows have int8 offsets)
        if (M > 0 && direct && g.whole_pool2x2()) {  // pooled in registers: no band tile
          for (int64_t n = n0; n < n1; ++n) {
            T* yn = y + n * ys[0] + grp * g.Coutg * ys[1];
            OffT* on = o + n * ys[0] + grp * g.Coutg * ys[1];
            if (tile_co == direct_conv::kCoAvx2)
              direct_conv::conv_pool2x2_rows<T, OffT, direct_conv::kCoAvx2>(g, x, xs, n, grp, p0, p1, wg, b, yn, on, ys,
                                                                            padded);
            else
              direct_conv::conv_pool2x2_rows<T, OffT, direct_conv::kCo>(g, x, xs, n, grp, p0, p1, wg, b, yn, on, ys,
                                                                        padded);
          }
          continue;
        }
      }
      tile.resize((n1 - n0) * g.Coutg * M);
      if (M > 0 && g.winograd) {
        const winograd::Sink<T> dst{tile.data(), g.Coutg * M, M, g.OW, r0, r1, g.OW};
        winograd::conv3x3(src, n1 - n0, g.Cg, Ug, g.Coutg, dst, ws);
      }
      for (int64_t n = n0; n < n1; ++n) {
        T* t = tile.data() + (n - n0) * g.Coutg * M;
        if (M > 0 && direct) {
          if (tile_co == direct_conv::kCoAvx2)
            direct_conv::conv_rows<T, direct_conv::kCoAvx2>(g, x, xs, n, grp, r0, r1, wg, t, padded);
          else
            direct_conv::conv_rows<T, direct_conv::kCo>(g, x, xs, n, grp, r0, r1, wg, t, padded);
        } else if (M > 0 && !g.winograd) {
          col.resize(g.K * M);
          im2col(g, x, xs, n, grp, r0, r1, col.data());
          matmul<T>(false, false, g.Coutg, M, g.K, w + grp * g.Coutg * g.K, g.K, col.data(), M, false, t, M);
        }
        band_epilogue<T, OffT>(g, t, M, r0, p0, p1, b, grp, y + n * ys[0], o + n * ys[0], ys, tap_delta, best_row,
                               where_row);
      }
    }
  });
}

// Adds the pooled gradient of pooled rows [p0, p1) of image n, group grp into `dtile`, the
// conv-output gradient of conv rows [r0, r0 + M / OW) (element (cg, position) at
// cg * cs + position * ps: Coutg x M with cs = M, ps = 1, or M x Coutg), through the offsets
// (overlapping windows add; a window whose ReLU was off adds nothing; whole MaxPool2d(2)
// windows in a Coutg x M tile are written by pool_rows::unpool2x2_row); adds the bias gradient
// into db (when not null). Returns whether any window passed a gradient.
template <typename T, typename OffT>
bool unpool(const Geometry& g, const T* go, const std::array<int64_t, 4>& gs, const OffT* o,
            const std::array<int64_t, 4>& os, int64_t n, int64_t grp, int64_t p0, int64_t p1, int64_t r0, int64_t M,
            const std::vector<int64_t>& tap_delta, T* dtile, int64_t cs, int64_t ps, T* db) {
  bool any = false;
  const bool whole_windows = ps == 1 && g.whole_pool2x2();  // tile rows are conv rows
  const bool unpooled_rows = ps == 1 && !g.pool;             // tile row r - r0 is output row r
  // Without a pool, rows that follow each other in both the gradient and the offsets are one run.
  const int64_t run = unpooled_rows && gs[2] == g.PW * gs[3] && os[2] == g.PW * os[3] ? p1 - p0 : 1;
  for (int64_t cg = 0; cg < g.Coutg; ++cg) {
    const int64_t c = grp * g.Coutg + cg;
    T bsum = T(0);
    for (int64_t ph = p0; ph < p1; ph += unpooled_rows ? run : 1) {
      const OffT* orow = o + n * os[0] + c * os[1] + ph * os[2];
      const T* grow = go + n * gs[0] + c * gs[1] + ph * gs[2];
      if (unpooled_rows) {
        T* d = dtile + cg * cs + (ph - r0) * g.OW;
        any |= relu_rows::relu_grad_row(grow, gs[3], orow, os[3], run * g.PW, d, bsum);
        continue;
      }
      if (whole_windows) {
        T* d0 = dtile + cg * cs + (2 * ph - r0) * g.OW;
        any |= pool_rows::unpool2x2_row(grow, gs[3], orow, os[3], g.PW, d0, d0 + g.OW, bsum);
        continue;
      }
      // tile index of tap 0 of window (ph, pw) is base + pw * psw (it may lie outside the
      // tile for windows in the padding, but the max's tap never does)
      const int64_t base = (ph * g.psh - g.pph - r0) * g.OW - g.ppw;
      for (int64_t pw = 0; pw < g.PW; ++pw) {
        const int64_t off = orow[pw * os[3]];
        if (off < 0) continue;
        const T gv = grow[pw * gs[3]];
        dtile[cg * cs + (base + pw * g.psw + tap_delta[off]) * ps] += gv;
        bsum += gv;
        any = true;
      }
    }
    if (db) db[c] += bsum;
  }
  return any;
}

template <typename T, typename OffT>
void backward_kernel(const Geometry& g, const at::Tensor& grad_out, const at::Tensor& input,
                     const at::Tensor& weight, const at::Tensor& offsets, std::array<bool, 3> mask,
                     at::Tensor& grad_input, at::Tensor& grad_weight, at::Tensor& grad_bias) {
  const T* go = grad_out.const_data_ptr<T>();
  const std::array<int64_t, 4> gs{grad_out.stride(0), grad_out.stride(1), grad_out.stride(2), grad_out.stride(3)};
  const OffT* o = offsets.const_data_ptr<OffT>();
  const std::array<int64_t, 4> os{offsets.stride(0), offsets.stride(1), offsets.stride(2), offsets.stride(3)};
  const T* x = input.const_data_ptr<T>();
  const std::array<int64_t, 4> xs{input.stride(0), input.stride(1), input.stride(2), input.stride(3)};
  const T* w = weight.const_data_ptr<T>();
  T* dx = mask[0] ? grad_input.mutable_data_ptr<T>() : nullptr;
  const int64_t band = band_rows(g);
  const int64_t threads = at::get_num_threads();
  // Per-thread partial sums of grad_weight and grad_bias, reduced in thread order below.
  // (Winograd: the 16 x Coutg x Cg tile sums per group, turned into grad_weight at the end.)
  const int64_t dw_size = g.winograd ? 16 * g.Cout * g.Cg : g.Cout * g.K;
  std::vector<T> dw_parts(mask[1] ? threads * dw_size : 0, T(0));
  std::vector<T> db_parts(mask[2] ? threads * g.Cout : 0, T(0));
  // Winograd path: the input gradient is the stride-1 correlation of the whole image's
  // conv-output gradient with the flipped, transposed filters (top/left padding 2 - pt/pl),
  // computed for several small images at once; grad_weight stays an im2col GEMM.
  const bool wino_dx = g.winograd && mask[0];
  std::vector<T> U(wino_dx ? 16 * g.Cout * g.Cg : 0);
  for (int64_t grp = 0; wino_dx && grp < g.G; ++grp)
    winograd::transform_weights(w + grp * g.Coutg * g.K, g.Cg, g.Coutg, true, U.data() + grp * 16 * g.Cg * g.Coutg);
  int64_t images = 1;
  if (g.winograd) {
    const int64_t tiles = std::max<int64_t>(1, (g.H + 1) / 2 * ((g.W + 1) / 2));
    const int64_t spread = (g.N + 2 * threads - 1) / (2 * threads);
    images = std::clamp<int64_t>(winograd::kTilesPerBatch / tiles, 1, std::max<int64_t>(spread, 1));
  }
  const int64_t chunks = (g.N + images - 1) / images;
  const std::vector<int64_t> tap_delta = pool_tap_deltas(g);
  // First layers (direct path, MaxPool2d(2)) without an input gradient: the weight gradient
  // from each pooled gradient at its max's conv position (direct_conv.h), no un-pooled tile.
  const bool direct_dw = direct_conv::weight_grad_applies<T>(g) && mask[1] && !mask[0];

  at::parallel_for(0, chunks * g.G, 1, [&](int64_t begin, int64_t end) {
    const int64_t tid = at::get_thread_num();
    T* db = mask[2] ? db_parts.data() + tid * g.Cout : nullptr;
    T* dwg_all = mask[1] ? dw_parts.data() + tid * dw_size : nullptr;
    std::vector<T> col, dtile, dcol, planes, staged_dx;
    winograd::Workspace<T> ws;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n0 = task / g.G * images, grp = task % g.G, n1 = std::min(n0 + images, g.N);
      T* dwg = dwg_all ? dwg_all + grp * (dw_size / g.G) : nullptr;
      if (g.winograd) {
        const int64_t M = g.OH * g.OW, per_image = g.Coutg * M;
        bool any = false;
        if (g.whole_pool2x2() || !g.pool) {
          // Un-pooled a row of windows at a time into a Coutg x M tile (pool_rows::unpool2x2_row,
          // or relu_rows::relu_grad_row without a pool: vectorised along the row), then
          // block-transposed channels innermost: scattering each pooled gradient straight into
          // the channels-innermost tile ran one element at a time.
          dtile.resize((n1 - n0) * per_image);
          planes.resize(per_image);
          if (g.pool && (g.OH != 2 * g.PH || g.OW != 2 * g.PW))  // conv-output edges no window covers
            std::fill(planes.begin(), planes.end(), T(0));
          for (int64_t n = n0; n < n1; ++n) {
            any |= unpool(g, go, gs, o, os, n, grp, 0, g.PH, 0, M, tap_delta, planes.data(), M, 1, db);
            transpose::matrix_vectorized(planes.data(), M, g.Coutg, M, dtile.data() + (n - n0) * per_image, g.Coutg);
          }
        } else {
          dtile.assign((n1 - n0) * per_image, T(0));
          for (int64_t n = n0; n < n1; ++n)
            any |= unpool(g, go, gs, o, os, n, grp, 0, g.PH, 0, M, tap_delta, dtile.data() + (n - n0) * per_image, 1,
                          g.Coutg, db);
        }
        if (!any) {  // no gradient reaches these images: their grad_input is zero
          for (int64_t n = n0; n < n1 && dx; ++n)
            for (int64_t c = grp * g.Cg; c < (grp + 1) * g.Cg; ++c)
              std::fill(dx + (n * g.C + c) * g.H * g.W, dx + (n * g.C + c + 1) * g.H * g.W, T(0));
          continue;
        }
        if (mask[1]) {
          const winograd::Source<T> xsrc{x + n0 * xs[0] + grp * g.Cg * xs[1], xs[0], xs[1], xs[2], xs[3],
                                         g.H, g.W, g.pt, g.pl};
          const winograd::Source<T> gsrc{dtile.data(), per_image, 1, g.OW * g.Coutg, g.Coutg, g.OH, g.OW, 0, 0};
          winograd::weight_grad3x3(xsrc, gsrc, n1 - n0, g.Cg, g.Coutg, dwg, ws);
        }
        if (wino_dx) {
          const winograd::Source<T> src{dtile.data(), per_image, 1, g.OW * g.Coutg, g.Coutg, g.OH, g.OW, 2 - g.pt,
                                        2 - g.pl};
          // Written channels innermost, then block-transposed into dx (NCHW): stored straight
          // from each tile, every element would start a new cache line of dx.
          const int64_t HW = g.H * g.W;
          staged_dx.resize((n1 - n0) * HW * g.Cg);
          const winograd::Sink<T> dst{nullptr, 0, 0, 0, 0, g.H, g.W};
          winograd::conv3x3_tiles(src, n1 - n0, g.Coutg, U.data() + grp * 16 * g.Cg * g.Coutg, g.Cg, dst,
                                  winograd::ChannelsInnermostWriter<T>{staged_dx.data(), 0, g.H, g.W, g.Cg}, ws);
          for (int64_t n = n0; n < n1; ++n)
            transpose::matrix_vectorized(staged_dx.data() + (n - n0) * HW * g.Cg, g.Cg, HW, g.Cg,
                                         dx + (n * g.C + grp * g.Cg) * HW, HW);
        }
        continue;
      }
      const int64_t n = n0;
      if constexpr (std::is_same_v<OffT, int8_t>) {  // (MaxPool2d(2)'s 4-tap windows have int8 offsets)
        if (direct_dw) {
          direct_conv::weight_grad_pool2x2<T, OffT>(g, x, xs, n, grp, go, gs, o, os, dwg, db, col, dcol);
          continue;
        }
      }
      for (int64_t p0 = 0; p0 < g.PH; p0 += band) {
        const int64_t p1 = std::min(p0 + band, g.PH);
        const auto [r0, r1] = g.conv_rows(p0, p1);
        const int64_t M = std::max<int64_t>(r1 - r0, 0) * g.OW;
        dtile.assign(g.Coutg * M, T(0));
        const bool any = unpool(g, go, gs, o, os, n, grp, p0, p1, r0, M, tap_delta, dtile.data(), M, 1, db);
        if (!any || M == 0 || !(mask[0] || mask[1])) continue;
        if (mask[1]) {
          col.resize(g.K * M);
          im2col(g, x, xs, n, grp, r0, r1, col.data());
          matmul<T>(false, true, g.Coutg, g.K, M, dtile.data(), M, col.data(), M, true, dwg, g.K);
        }
        if (mask[0]) {
          dcol.resize(g.K * M);
          matmul<T>(true, false, g.K, M, g.Coutg, w + grp * g.Coutg * g.K, g.K, dtile.data(), M, false,
                    dcol.data(), M);
          col2im_add(g, dcol.data(), n, grp, r0, r1, dx);
        }
      }
    }
  });
  if (mask[1]) {
    for (int64_t t = 1; t < threads; ++t)
      for (int64_t i = 0; i < dw_size; ++i) dw_parts[i] += dw_parts[t * dw_size + i];
    T* dw = grad_weight.mutable_data_ptr<T>();
    if (g.winograd) {
      for (int64_t grp = 0; grp < g.G; ++grp)
        winograd::weight_grad_from_sums(dw_parts.data() + grp * 16 * g.Coutg * g.Cg, g.Coutg, g.Cg,
                                        dw + grp * g.Coutg * g.K);
    } else {
      std::copy(dw_parts.begin(), dw_parts.begin() + dw_size, dw);
    }
  }
  if (mask[2]) {
    T* db = grad_bias.mutable_data_ptr<T>();
    std::fill(db, db + g.Cout, T(0));
    for (int64_t t = 0; t < threads; ++t)
      for (int64_t c = 0; c < g.Cout; ++c) db[c] += db_parts[t * g.Cout + c];
  }
}

std::tuple<at::Tensor, at::Tensor> conv_block_forward_cpu(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef pool_kernel_size, at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
    at::IntArrayRef pool_dilation, bool pool_ceil_mode) {
  FUSEDOPS_NO_AUTOCAST;
  check_cpu_dtype(input);
  check_float_cpu(input, "input", input);
  check_float_cpu(weight, "weight", input);
  if (input.scalar_type() == at::kBFloat16) {
    if (bias.has_value() && bias->defined()) check_float_cpu(*bias, "bias", input);
    auto [out, offsets] = conv_block_forward_cpu(
        to_float(input), to_float(weight), bias.has_value() && bias->defined() ? std::optional(to_float(*bias)) : bias,
        stride, padding, dilation, groups, pool_kernel_size, pool_stride, pool_padding, pool_dilation, pool_ceil_mode);
    return {out.to(at::kBFloat16), offsets};
  }
  Geometry g = make_geometry(input, weight, stride, padding, dilation, groups, pool_kernel_size, pool_stride,
                             pool_padding, pool_dilation, pool_ceil_mode);
  std::optional<at::Tensor> b;
  if (bias.has_value() && bias->defined()) {
    check_float_cpu(*bias, "bias", input);
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == g.Cout, "bias must have shape (", g.Cout, ",), got ",
                bias->sizes());
    b = bias->contiguous();
  }
  const auto fmt = output_format(input);
  at::Tensor out = at::empty({g.N, g.Cout, g.PH, g.PW}, input.options().memory_format(fmt));
  at::Tensor offsets = at::empty({g.N, g.Cout, g.PH, g.PW}, input.options().dtype(offsets_dtype(g)).memory_format(fmt));
  if (out.numel() == 0) return {out, offsets};
  const at::Tensor w = weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv_block_forward_cpu", [&] {
    FUSEDOPS_DISPATCH_OFFSETS(offsets.scalar_type(), [&] { forward_kernel<scalar_t, OffT>(g, input, w, b, out, offsets); })
  });
  return {out, offsets};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_block_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offsets,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef pool_kernel_size, at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
    at::IntArrayRef pool_dilation, std::array<bool, 3> output_mask) {
  FUSEDOPS_NO_AUTOCAST;
  check_cpu_dtype(input);
  check_float_cpu(input, "input", input);
  check_float_cpu(weight, "weight", input);
  check_float_cpu(grad_output, "grad_output", input);
  if (input.scalar_type() == at::kBFloat16) {
    auto grads = conv_block_backward_cpu(to_float(grad_output), to_float(input), to_float(weight), offsets, stride,
                                         padding, dilation, groups, pool_kernel_size, pool_stride, pool_padding,
                                         pool_dilation, output_mask);
    return {std::get<0>(grads).to(at::kBFloat16), std::get<1>(grads).to(at::kBFloat16),
            std::get<2>(grads).to(at::kBFloat16)};
  }
  const Geometry g = make_backward_geometry(grad_output, input, weight, offsets, stride, padding, dilation, groups,
                                            pool_kernel_size, pool_stride, pool_padding, pool_dilation);
  // The Winograd path writes every element of grad_input; the im2col path accumulates into it.
  at::Tensor gi, gw, gb;
  bool flows;  // (not a structured binding: the kernel lambda captures these)
  std::tie(gi, gw, gb, flows) = allocate_conv_block_grads(g, input.options(), output_mask, !g.winograd);
  if (flows) {
    const at::Tensor w = weight.contiguous();
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "conv_block_backward_cpu", [&] {
      FUSEDOPS_DISPATCH_OFFSETS(offsets.scalar_type(), [&] {
        backward_kernel<scalar_t, OffT>(g, grad_output, input, w, offsets, output_mask, gi, gw, gb);
      })
    });
  }
  gi = in_input_format(gi, input);
  return {gi, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedops, CPU, m) {
  m.impl("native_conv_block_forward", &conv_block_forward_cpu);
  m.impl("native_conv_block_backward", &conv_block_backward_cpu);
}

}  // namespace fusedops
