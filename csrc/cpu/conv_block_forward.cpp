// Fused Conv2d + bias + ReLU + MaxPool2d on the CPU: the "cpp" backend's forward (its
// backward: conv_block_backward.cpp; the im2col and GEMMs both use: im2col_gemm.h).
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
// instead of im2col + GEMM, 2.25x fewer multiply-adds; a task then covers several small images
// so that the 16 GEMMs have enough columns. With MaxPool2d(2) (whole windows) each 2x2 output
// tile is one pool window, so bias + ReLU + max run in the output transform and no band tile is
// stored.
//
// Max rule (torch's max_pool2d on the CPU): taps in row-major window order, a tap replaces
// the max when it is larger or NaN; so the first of equal maxima wins and NaN propagates.
// A window wholly in padding gives -inf, as torch does.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../conv_checks.h"
#include "blas.h"
#include "cpu_checks.h"
#include "direct_conv.h"
#include "im2col_gemm.h"
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
  const int64_t band = direct ? direct_conv::band_rows(g) : im2col_gemm::band_rows(g);
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
  const std::vector<int64_t> tap_delta = im2col_gemm::pool_tap_deltas(g);
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
          im2col_gemm::im2col(g, x, xs, n, grp, r0, r1, col.data());
          im2col_gemm::matmul<T>(false, false, g.Coutg, M, g.K, w + grp * g.Coutg * g.K, g.K, col.data(), M, false, t,
                                 M);
        }
        band_epilogue<T, OffT>(g, t, M, r0, p0, p1, b, grp, y + n * ys[0], o + n * ys[0], ys, tap_delta, best_row,
                               where_row);
      }
    }
  });
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

}  // namespace

TORCH_LIBRARY_IMPL(fusedops, CPU, m) {
  m.impl("native_conv_block_forward", &conv_block_forward_cpu);
}

}  // namespace fusedops
