// Direct convolution of the cpp conv block's first layers (few input channels per group).
//
// With K = Cin/groups * KH * KW of 9-400, im2col + GEMM spends its time outside the
// arithmetic: the K x M im2col buffer is written and read once per band, and a GEMM with
// K = 27 runs far below BLAS's peak. Here a register tile of kTileCo output channels x kCols
// conv columns (two 32-byte vectors per channel and conv row) accumulates over (ci, kh, kw)
// straight from the input rows: per tap and conv row, two vector loads of consecutive input
// columns (stride 1), kTileCo weight broadcasts and 2 * kTileCo multiply-adds, so it is bound by
// the multiply-adds. The input rows a band reads are first copied with their zero padding (a
// few KB), so that the loops have no bounds checks and every column tile, the last one
// included, is whole.
//
// Three entry points: conv_rows (the band tile, for any pool or none), conv_pool2x2_rows
// (MaxPool2d(2): bias, ReLU and the window max on the registers, no band tile) and
// weight_grad_pool2x2 (a first layer's weight and bias gradients from the pooled gradient at
// each window's max, no un-pooled tile).
//
// Layouts: the band tile is Coutg x M with M = (r1 - r0) * OW (conv rows of OW elements, as
// the im2col path's GEMM writes it, so the same epilogue follows); the weights are given
// transposed and padded, wt[k * co_pad + co] for k = (ci * KH + kh) * KW + kw (zero for
// co >= Coutg; co_pad = padded_channels(g, kTileCo)), so that a tap's kTileCo weights are
// adjacent.

#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../conv_geometry.h"
#include "pool_rows.h"
#include "vectorize.h"

namespace fusedops {
namespace direct_conv {

// Output channels per register tile (the kernels' kTileCo). conv_pool2x2_rows keeps 4
// accumulators per channel: with 4 channels, 16, which the AVX2 clone (16 vector registers, one
// more needed for the weight) spilled, storing and reloading two accumulators on every tap (a
// store-to-load chain on each multiply-add). It takes 4 channels where the AVX-512 clones run
// (32 registers) and 3 on AVX2 (12 accumulators, no spill; measured in benchmarks/NOTES.md).
// conv_rows keeps 2 per channel and takes 4.
constexpr int64_t kCo = 4;
constexpr int64_t kCoAvx2 = 3;

// Tests set this to 3 or 4 to run either tile on any CPU; 0 (or anything else): chosen by the
// CPU.
inline std::atomic<int64_t> tile_channels_override{0};

// Output channels per register tile of this layer's direct convolution on this CPU: kCoAvx2
// or kCo (the only widths the callers instantiate).
inline int64_t tile_channels(const Geometry& g) {
  const int64_t pinned = tile_channels_override.load(std::memory_order_relaxed);
  if (pinned == kCoAvx2 || pinned == kCo) return pinned;
  return g.whole_pool2x2() && !vector_clones_avx512() ? kCoAvx2 : kCo;
}

// Up to this many input channels per group (and only stride-1 columns) take the direct path.
// Measured against im2col + GEMM (forward, batch 64, 2 threads, benchmarks/NOTES.md): faster
// at every width tried from 6 to 32 channels (5x5 and row-strided 3x3 kernels; LeNet's 6->16
// layer 0.50 -> 0.26 ms); kept to 16, where the im2col GEMM's reduction is still short.
constexpr int64_t kMaxChannels = 16;

// The weight-gradient shortcut (weight_grad_pool2x2) was measured on first layers only: up to
// this many input channels per group.
constexpr int64_t kMaxWeightGradChannels = 4;

// The direct path's layers: few input channels per group, stride 1 along the columns (the
// vector loads read consecutive input columns), on a CPU whose vector clones are the AVX2 or
// AVX-512 ones (the baseline clone of these loops ran at a twentieth of the AVX-512 one's
// speed, below im2col + BLAS).
inline bool applies(const Geometry& g) {
  return g.Cg <= kMaxChannels && g.sw == 1 && !g.winograd && vector_clones_fast();
}

// Pooled rows per band: a band tile of about 4K elements (16 KB in float32), which stays in
// L1 between the convolution that writes it and the epilogue that reads it.
inline int64_t band_rows(const Geometry& g) {
  const int64_t per_pooled_row = std::max<int64_t>(g.Coutg * g.OW * std::max<int64_t>(g.psh, 1), 1);
  return std::max<int64_t>(1, std::min<int64_t>(g.PH, 4096 / per_pooled_row));
}

// Coutg rounded up to whole register tiles of `tile` channels: the weight layout's co_pad.
inline int64_t padded_channels(const Geometry& g, int64_t tile) { return (g.Coutg + tile - 1) / tile * tile; }

// wt (K x co_pad, see above) from one group's weights w (Coutg x K, contiguous).
template <typename T>
void transpose_weights(const Geometry& g, const T* w, T* wt, int64_t co_pad) {
  std::fill(wt, wt + g.K * co_pad, T(0));
  for (int64_t co = 0; co < g.Coutg; ++co)
    for (int64_t k = 0; k < g.K; ++k) wt[k * co_pad + co] = w[co * g.K + k];
}

// The input rows [ih0, ih0 + rows) of image n, group grp, copied with their zero padding into
// `padded` (Cg x rows x width; column q is input column q - pl, zero outside the input). Also
// the im2col path's gather for short rows (im2col_gemm.h im2col_short).
template <typename T>
void copy_padded_rows(const Geometry& g, const T* x, const std::array<int64_t, 4>& xs, int64_t n, int64_t grp,
                      int64_t ih0, int64_t rows, int64_t width, std::vector<T>& padded) {
  padded.assign(g.Cg * rows * width, T(0));
  const int64_t lo = std::max<int64_t>(0, g.pl), hi = std::min<int64_t>(width, g.W + g.pl);  // in-bounds columns
  for (int64_t ci = 0; ci < g.Cg; ++ci) {
    const T* xc = x + n * xs[0] + (grp * g.Cg + ci) * xs[1];
    for (int64_t i = std::max<int64_t>(0, -ih0); i < std::min<int64_t>(rows, g.H - ih0); ++i) {
      const T* xr = xc + (ih0 + i) * xs[2];  // input column q - pl is padded column q
      T* dst = padded.data() + (ci * rows + i) * width;
      if (xs[3] == 1) {
        std::copy(xr + (lo - g.pl), xr + (hi - g.pl), dst + lo);
      } else {
        for (int64_t q = lo; q < hi; ++q) dst[q] = xr[(q - g.pl) * xs[3]];
      }
    }
  }
}

// Column tiles of kCols conv columns over OW columns: tile t starts at column t * kCols, except
// the last, which ends at OW (overlapping its neighbour, whose columns it recomputes to the
// same values) so that every store is whole; with OW < kCols one tile, stored in part.
inline int64_t tile_start(int64_t t, int64_t tiles, int64_t OW, int64_t kCols) {
  return t + 1 < tiles || OW < kCols ? t * kCols : OW - kCols;
}

// tile[cg][(r - r0) * OW + ow] = sum over (ci, kh, kw), in that order, of
// wt[(ci, kh, kw)][cg] * x[n, grp * Cg + ci, r * sh - pt + kh * dh, ow - pl + kw * dw]
// (0 outside the input), for conv rows [r0, r1) and every column ow (stride 1). No bias.
// kTileCo: tile_channels(g).
template <typename T, int64_t kTileCo>
FUSEDOPS_VECTORIZE void conv_rows(const Geometry& g, const T* x, const std::array<int64_t, 4>& xs, int64_t n,
                                  int64_t grp, int64_t r0, int64_t r1, const T* wt, T* tile, std::vector<T>& padded) {
  using V = typename pool_rows::RowVec<T>::type;
  constexpr int64_t kLanes = sizeof(V) / sizeof(T), kCols = 2 * kLanes;
  const auto load = [](const T* p) {
    V v;
    __builtin_memcpy(&v, p, sizeof(V));
    return v;
  };
  const int64_t M = (r1 - r0) * g.OW, co_pad = padded_channels(g, kTileCo);
  const int64_t rows = (r1 - 1 - r0) * g.sh + (g.KH - 1) * g.dh + 1;
  const int64_t tiles = (g.OW + kCols - 1) / kCols, width = std::max(g.OW, kCols) + (g.KW - 1) * g.dw;
  copy_padded_rows(g, x, xs, n, grp, r0 * g.sh - g.pt, rows, width, padded);
  for (int64_t r = r0; r < r1; ++r) {
    const T* band_row = padded.data() + (r - r0) * g.sh * width;  // input row of kh = 0, channel 0
    T* out_row = tile + (r - r0) * g.OW;
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t c0 = tile_start(t, tiles, g.OW, kCols), cols = std::min(kCols, g.OW - c0);
      for (int64_t cb = 0; cb < co_pad; cb += kTileCo) {
        V acc[kTileCo][2] = {};  // channel cb + j's first and second vector
        const T* wk = wt + cb;
        for (int64_t ci = 0; ci < g.Cg; ++ci) {
          for (int64_t kh = 0; kh < g.KH; ++kh) {
            const T* src = band_row + (ci * rows + kh * g.dh) * width + c0;
            for (int64_t kw = 0; kw < g.KW; ++kw, wk += co_pad) {
              const V a = load(src + kw * g.dw), b = load(src + kw * g.dw + kLanes);
#pragma GCC unroll 4
              for (int64_t j = 0; j < kTileCo; ++j) {
                const T w = wk[j];
                acc[j][0] += w * a;
                acc[j][1] += w * b;
              }
            }
          }
        }
#pragma GCC unroll 4
        for (int64_t j = 0; j < kTileCo; ++j) {  // unrolled, so that acc stays in registers
          if (cb + j >= g.Coutg) break;
          T* dst = out_row + (cb + j) * M + c0;
          if (cols == kCols) {
            __builtin_memcpy(dst, &acc[j][0], sizeof(V));
            __builtin_memcpy(dst + kLanes, &acc[j][1], sizeof(V));
          } else {  // OW < kCols: the valid columns only
            T part[kCols];
            __builtin_memcpy(part, &acc[j][0], sizeof(V));
            __builtin_memcpy(part + kLanes, &acc[j][1], sizeof(V));
            std::copy(part, part + cols, dst);
          }
        }
      }
    }
  }
}

// MaxPool2d(2) layers (g.whole_pool2x2()): the block's output for pooled rows [p0, p1) of
// image n, group grp, without a band tile. A register tile is kTileCo (tile_channels(g))
// channels x both conv rows of a pooled row x kCols conv columns (kCols / 2 windows); the
// bias, the window max (pool_rows::window_max) and the ReLU run on the registers, and the
// pooled values and offsets are stored: y[cg * ys[1] + ph * ys[2] + pw * ys[3]] (y, o at the
// image's group's first channel). The ReLU is applied to the window's max only: max and ReLU
// commute (NaN kept by both), and where the max is positive the ReLU changed no tap that could
// be the max, so the offset is the same; window_max marks the others -1.
template <typename T, typename OffT, int64_t kTileCo>
FUSEDOPS_VECTORIZE void conv_pool2x2_rows(const Geometry& g, const T* x, const std::array<int64_t, 4>& xs,
                                          int64_t n, int64_t grp, int64_t p0, int64_t p1, const T* wt, const T* bias,
                                          T* y, OffT* o, const std::array<int64_t, 4>& ys, std::vector<T>& padded) {
  using V = typename pool_rows::RowVec<T>::type;
  using I = decltype(V{} > V{});
  constexpr int64_t kLanes = sizeof(V) / sizeof(T), kCols = 2 * kLanes;
  using OffVec = typename pool_rows::RowVec<T>::bytes;  // one offset per window
  static_assert(std::is_same_v<OffT, int8_t>, "MaxPool2d(2) offsets are int8");
  const auto load = [](const T* p) {
    V v;
    __builtin_memcpy(&v, p, sizeof(V));
    return v;
  };
  const int64_t co_pad = padded_channels(g, kTileCo);
  const int64_t r0 = 2 * p0, rows = (2 * p1 - 1 - r0) * g.sh + (g.KH - 1) * g.dh + 1;
  // Conv columns [0, 2 * PW) in tiles of kCols (kLanes windows), placed as in conv_rows.
  const int64_t used = 2 * g.PW, tiles = (used + kCols - 1) / kCols;
  const int64_t width = std::max(used, kCols) + (g.KW - 1) * g.dw;
  copy_padded_rows(g, x, xs, n, grp, r0 * g.sh - g.pt, rows, width, padded);
  const bool unit_stride = ys[3] == 1;
  for (int64_t ph = p0; ph < p1; ++ph) {
    const T* row0 = padded.data() + (2 * ph - r0) * g.sh * width;  // input row of conv row 2 ph at kh = 0
    const T* row1 = row0 + g.sh * width;
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t c0 = tile_start(t, tiles, used, kCols), pw0 = c0 / 2, windows = std::min(kLanes, g.PW - pw0);
      for (int64_t cb = 0; cb < co_pad; cb += kTileCo) {
        // channel cb + j: conv row 2 ph's first and second vector, then conv row 2 ph + 1's
        V acc[kTileCo][4] = {};
        const T* wk = wt + cb;
        for (int64_t ci = 0; ci < g.Cg; ++ci) {
          for (int64_t kh = 0; kh < g.KH; ++kh) {
            const int64_t at = (ci * rows + kh * g.dh) * width + c0;
            for (int64_t kw = 0; kw < g.KW; ++kw, wk += co_pad) {
              const T* s0 = row0 + at + kw * g.dw;
              const T* s1 = row1 + at + kw * g.dw;
              const V u0 = load(s0), v0 = load(s0 + kLanes), u1 = load(s1), v1 = load(s1 + kLanes);
#pragma GCC unroll 4
              for (int64_t j = 0; j < kTileCo; ++j) {
                const T w = wk[j];
                acc[j][0] += w * u0;
                acc[j][1] += w * v0;
                acc[j][2] += w * u1;
                acc[j][3] += w * v1;
              }
            }
          }
        }
#pragma GCC unroll 4
        for (int64_t j = 0; j < kTileCo; ++j) {  // unrolled, so that acc stays in registers
          const int64_t cg = cb + j;
          if (cg >= g.Coutg) break;
          const T bc = bias ? bias[grp * g.Coutg + cg] : T(0);
          V m;
          I k;
          pool_rows::window_max<T>(acc[j][0] + bc, acc[j][1] + bc, acc[j][2] + bc, acc[j][3] + bc, m, k);
          m = ((m > T(0)) | (m != m)) ? m : V{};  // ReLU, keeping NaN
          T* yo = y + cg * ys[1] + ph * ys[2] + pw0 * ys[3];
          OffT* oo = o + cg * ys[1] + ph * ys[2] + pw0 * ys[3];
          if (unit_stride && windows == kLanes) {
            const OffVec kv = pool_rows::RowVec<T>::low_bytes(k);
            __builtin_memcpy(yo, &m, sizeof(V));
            __builtin_memcpy(oo, &kv, sizeof(OffVec));
          } else {
            for (int64_t l = 0; l < windows; ++l) {
              yo[l * ys[3]] = m[l];
              oo[l * ys[3]] = static_cast<OffT>(k[l]);
            }
          }
        }
      }
    }
  }
}

// Vectors of the K-contiguous patches (weight_grad_pool2x2): K rounded up to whole vectors.
template <typename T>
constexpr int64_t kPatchLanes = 32 / sizeof(T);
inline int64_t patch_stride(const Geometry& g, int64_t lanes) { return (g.K + lanes - 1) / lanes * lanes; }

// Vectors of K accumulated at once in weight_grad_pool2x2's registers.
constexpr int64_t kPatchChunk = 8;

// weight_grad_pool2x2 builds an image's patches at once: taken up to this many bytes of them
// (they stay in L2; on a 512x512 image, 239 MB of patches made it 4x slower than im2col).
constexpr int64_t kMaxPatchBytes = int64_t(1) << 20;

// Whether weight_grad_pool2x2 takes this layer (MaxPool2d(2), the direct path, patches that fit).
template <typename T>
bool weight_grad_applies(const Geometry& g) {
  return applies(g) && g.Cg <= kMaxWeightGradChannels && g.whole_pool2x2() &&
         4 * g.PH * g.PW * patch_stride(g, kPatchLanes<T>) * int64_t(sizeof(T)) <= kMaxPatchBytes;
}

// acc[v] (v < kVecs) += the pooled gradient of each pooled output of one channel (gc, oc: its
// gradient and offsets) times the patch of its max's conv position (patches of rows of
// cols_out positions, each ks elements, starting at element k0); the gradients that passed are
// added into bsum. A pooled output whose ReLU was off adds g * 0 through tap 0 (no branch on
// random data).
template <typename T, typename OffT, int64_t kVecs>
FUSEDOPS_ALWAYS_INLINE inline void accumulate_patches(const Geometry& g, const T* gc, const std::array<int64_t, 4>& gs,
                                                      const OffT* oc, const std::array<int64_t, 4>& os,
                                                      const T* patches, int64_t cols_out, int64_t ks,
                                                      typename pool_rows::RowVec<T>::type (&acc)[kPatchChunk], T& bsum) {
  using V = typename pool_rows::RowVec<T>::type;
  constexpr int64_t kLanes = kPatchLanes<T>;
  // Up to 4 vectors of K, adjacent windows add into two sets of sums: with one set, each sum's
  // multiply-adds wait on the one before (4 cycles' latency), at one per cycle.
  constexpr int64_t kSets = kVecs <= 4 ? 2 : 1;
  V part[kSets][kVecs] = {};
  T bpart[kSets] = {};
  for (int64_t ph = 0; ph < g.PH; ++ph) {
    const T* row = patches + 2 * ph * cols_out * ks;
    const auto add = [&](int64_t pw, V(&sums)[kVecs], T& bias_sum) FUSEDOPS_ALWAYS_INLINE {
      const int64_t t = oc[ph * os[2] + pw * os[3]];
      const T gv = t >= 0 ? gc[ph * gs[2] + pw * gs[3]] : T(0);
      const int64_t tap = t >= 0 ? t : 0;
      bias_sum += gv;
      const T* p = row + ((tap >> 1) * cols_out + 2 * pw + (tap & 1)) * ks;
#pragma GCC unroll 8
      for (int64_t v = 0; v < kVecs; ++v) {
        V pv;
        __builtin_memcpy(&pv, p + v * kLanes, sizeof(V));
        sums[v] += gv * pv;
      }
    };
    int64_t pw = 0;
    if constexpr (kSets == 2) {
      for (; pw + 1 < g.PW; pw += 2) {
        add(pw, part[0], bpart[0]);
        add(pw + 1, part[1], bpart[1]);
      }
    }
    for (; pw < g.PW; ++pw) add(pw, part[0], bpart[0]);
  }
#pragma GCC unroll 8
  for (int64_t v = 0; v < kVecs; ++v) {
    acc[v] += part[0][v];
    if constexpr (kSets == 2) acc[v] += part[1][v];
  }
  bsum += bpart[0];
  if constexpr (kSets == 2) bsum += bpart[1];
}

// Weight and bias gradients of a MaxPool2d(2) layer on the direct path (g.whole_pool2x2()) when
// no input gradient is wanted (a first layer), for image n, group grp, added into dw (Coutg x K,
// the group's rows) and db (indexed by channel; may be null).
//
// Each pooled output passes its gradient to one conv position, the tap its offset names (none
// when the offset is -1: the ReLU was off), so
//   dw[cg][k] += sum over pooled (ph, pw) of g[cg, ph, pw] * patch(2 ph + t / 2, 2 pw + t % 2)[k]
// with t the offset and patch(r, c) conv position (r, c)'s K input values (im2col's column).
// That is a quarter of the multiply-adds of the dense product with the un-pooled gradient
// (which im2col's GEMM computes). The patches of the image's conv rows [0, 2 PH) are built
// once, K-contiguous (`patches`, ks = patch_stride elements each; the lanes past K are
// accumulated but never stored, so they may hold anything), then each channel's row of dw is
// accumulated in vector registers over its pooled outputs in row-major order (for K of up to 4
// vectors, even and odd pooled columns into separate sums, added at the end), kPatchChunk
// vectors of K at a time. The order is fixed by the geometry: the result is deterministic.
template <typename T, typename OffT>
FUSEDOPS_VECTORIZE void weight_grad_pool2x2(const Geometry& g, const T* x, const std::array<int64_t, 4>& xs,
                                            int64_t n, int64_t grp, const T* go, const std::array<int64_t, 4>& gs,
                                            const OffT* o, const std::array<int64_t, 4>& os, T* dw, T* db,
                                            std::vector<T>& padded, std::vector<T>& patches) {
  using V = typename pool_rows::RowVec<T>::type;
  constexpr int64_t kLanes = kPatchLanes<T>;
  const int64_t ks = patch_stride(g, kLanes), rows_out = 2 * g.PH, cols_out = 2 * g.PW;
  const int64_t rows = (rows_out - 1) * g.sh + (g.KH - 1) * g.dh + 1, width = cols_out + (g.KW - 1) * g.dw;
  copy_padded_rows(g, x, xs, n, grp, -g.pt, rows, width, padded);
  // A kernel row of at most kLanes adjacent taps is copied as one vector: the lanes past KW
  // land where the next copy goes, or past K. Both buffers get a vector of slack.
  const bool row_vectors = g.dw == 1 && g.KW <= kLanes;
  padded.resize(padded.size() + kLanes);
  patches.resize(rows_out * cols_out * ks + kLanes);
  // The geometry in locals: the copies' stores may alias anything, so fields of g would be
  // reloaded after each one.
  const int64_t Cg = g.Cg, KH = g.KH, KW = g.KW, sh = g.sh, dh = g.dh, col_dilation = g.dw;
  const T* const pad = padded.data();
  T* const pat = patches.data();
  for (int64_t r = 0; r < rows_out; ++r) {
    for (int64_t c = 0; c < cols_out; ++c) {
      T* dst = pat + (r * cols_out + c) * ks;
      for (int64_t ci = 0; ci < Cg; ++ci)
        for (int64_t kh = 0; kh < KH; ++kh) {
          const T* src = pad + (ci * rows + r * sh + kh * dh) * width + c;
          if (row_vectors) {
            __builtin_memcpy(dst, src, sizeof(V));
            dst += KW;
          } else {
            for (int64_t kw = 0; kw < KW; ++kw) *dst++ = src[kw * col_dilation];
          }
        }
    }
  }
  for (int64_t cg = 0; cg < g.Coutg; ++cg) {
    const int64_t c = grp * g.Coutg + cg;
    const T* gc = go + n * gs[0] + c * gs[1];
    const OffT* oc = o + n * os[0] + c * os[1];
    T* dwc = dw + cg * g.K;
    for (int64_t k0 = 0; k0 < ks; k0 += kPatchChunk * kLanes) {
      const int64_t vecs = std::min(kPatchChunk, (ks - k0) / kLanes);
      V acc[kPatchChunk] = {};
      T bsum = T(0);
      const T* p0 = patches.data() + k0;
      switch (vecs) {
        case 1: accumulate_patches<T, OffT, 1>(g, gc, gs, oc, os, p0, cols_out, ks, acc, bsum); break;
        case 2: accumulate_patches<T, OffT, 2>(g, gc, gs, oc, os, p0, cols_out, ks, acc, bsum); break;
        case 3: accumulate_patches<T, OffT, 3>(g, gc, gs, oc, os, p0, cols_out, ks, acc, bsum); break;
        case 4: accumulate_patches<T, OffT, 4>(g, gc, gs, oc, os, p0, cols_out, ks, acc, bsum); break;
        case 5: accumulate_patches<T, OffT, 5>(g, gc, gs, oc, os, p0, cols_out, ks, acc, bsum); break;
        case 6: accumulate_patches<T, OffT, 6>(g, gc, gs, oc, os, p0, cols_out, ks, acc, bsum); break;
        case 7: accumulate_patches<T, OffT, 7>(g, gc, gs, oc, os, p0, cols_out, ks, acc, bsum); break;
        default: accumulate_patches<T, OffT, 8>(g, gc, gs, oc, os, p0, cols_out, ks, acc, bsum); break;
      }
      for (int64_t v = 0; v < vecs; ++v)
        for (int64_t l = 0; l < kLanes && k0 + v * kLanes + l < g.K; ++l) dwc[k0 + v * kLanes + l] += acc[v][l];
      if (db && k0 == 0) db[c] += bsum;
    }
  }
}

}  // namespace direct_conv
}  // namespace fusedops
