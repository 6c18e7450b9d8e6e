// Winograd F(2x2, 3x3) for stride-1, dilation-1, 3x3 correlations on the CPU.
//
//   out[n, co, r, c] = sum_{ci, kh, kw} in[n, ci, r - pt + kh, c - pl + kw] * w[co, ci, kh, kw]
//
// (zero outside the input). Each 2x2 block of outputs ("tile") is computed from a 4x4 block
// of the input as  Y = A^T [ (G w G^T) . (B^T d B) ] A  (Lavin & Gray, 2015): the elementwise
// product over the 16 transformed positions e becomes 16 independent GEMMs over channels,
//   M[e] (tiles x Cout) = V[e] (tiles x Cin) @ U[e] (Cin x Cout),
// so a tile costs 16 multiply-adds per channel pair instead of 36: 2.25x fewer FLOPs than
// im2col + GEMM. The transformed operands are stored channels-innermost (V[e][tile][channel]),
// so that the transforms run as SIMD loops over channels, whatever the width of the image.
// The transforms use only 0, +-1 and +-1/2, so the rounding error stays within a small
// multiple of the direct convolution's. A NaN or Inf input reaches the whole 2x2 tile whose
// 4x4 block holds it (a direct conv spreads it over the receptive field only).
//
// Used by the fused conv block for its forward (3x3, stride 1) and for the input gradient of
// that conv, which is itself a stride-1 3x3 correlation of the conv-output gradient with the
// flipped, transposed weights.

#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "blas.h"
#include "transpose.h"
#include "vectorize.h"

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

namespace fusedops {
namespace winograd {

// U[e][i][o] = (G g G^T)[e] for the 3x3 filter g of output channel o and input channel i,
//   G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]].
// flip_transpose = false: w is (out_ch, in_ch, 3, 3) and g = w[o, i].
// flip_transpose = true:  w is (in_ch, out_ch, 3, 3) and g = w[i, o] rotated by 180 degrees
//                         (the filter of the input gradient of a stride-1 conv).
template <typename T>
void transform_weights(const T* w, int64_t out_ch, int64_t in_ch, bool flip_transpose, T* U) {
  const T half = T(0.5);
  // In parallel over output channels: it runs before the convolution's own parallel loop.
  at::parallel_for(0, out_ch, std::max<int64_t>(1, 4096 / std::max<int64_t>(in_ch, 1)), [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      for (int64_t i = 0; i < in_ch; ++i) {
        T g[3][3];
        for (int kh = 0; kh < 3; ++kh)
          for (int kw = 0; kw < 3; ++kw)
            g[kh][kw] = flip_transpose ? w[((i * out_ch + o) * 3 + 2 - kh) * 3 + 2 - kw]
                                       : w[((o * in_ch + i) * 3 + kh) * 3 + kw];
        T gg[4][3];  // G g
        for (int c = 0; c < 3; ++c) {
          gg[0][c] = g[0][c];
          gg[1][c] = half * (g[0][c] + g[1][c] + g[2][c]);
          gg[2][c] = half * (g[0][c] - g[1][c] + g[2][c]);
          gg[3][c] = g[2][c];
        }
        for (int r = 0; r < 4; ++r) {  // (G g) G^T
          const T u[4] = {gg[r][0], half * (gg[r][0] + gg[r][1] + gg[r][2]), half * (gg[r][0] - gg[r][1] + gg[r][2]),
                          gg[r][2]};
          for (int c = 0; c < 4; ++c) U[((r * 4 + c) * in_ch + i) * out_ch + o] = u[c];
        }
      }
    }
  });
}

// A stack of input images: element (n, c, h, w) at p[n*sn + c*sc + h*sh + w*sw], H x W of
// them in range, read with top/left zero padding pt/pl (any amount at bottom/right).
template <typename T>
struct Source {
  const T* p;
  int64_t sn, sc, sh, sw;
  int64_t H, W, pt, pl;
};

// Output rows [r0, r1) x columns [0, W) of a stack of images: element (n, c, r, col) at
// p[n*sn + c*sc + (r - r0)*sh + col].
template <typename T>
struct Sink {
  T* p;
  int64_t sn, sc, sh;
  int64_t r0, r1, W;
};

// Memory a thread reuses from call to call: grows, never shrinks, and is not initialised
// (every user writes what it reads; zeroing and re-faulting a fresh buffer per task cost
// several percent of a forward).
template <typename T>
class Scratch {
 public:
  T* get(int64_t n) {
    if (n > size_) {
      data_.reset(new T[n]);  // default-initialised: no fill
      size_ = n;
    }
    return data_.get();
  }

 private:
  std::unique_ptr<T[]> data_;
  int64_t size_ = 0;
};

// The buffers of conv3x3_tiles and weight_grad3x3: a caller keeps one per thread.
template <typename T>
struct Workspace {
  Scratch<T> V, M, rows, out, staged;
};

// The input rows of `images` images that tiles of output rows [r0, r0 + 2 * tile_rows) read,
// copied channels innermost into `buf` (element (n, h, w, c) at ((n * rows + h) * W + w) * C + c)
// when `in` is not channels innermost already; returns the Source to read instead (the same
// rows and zero padding). Each channel's rows are read as one run (the prefetcher follows it),
// where a tile row's gather would read a short piece of every channel's plane per input row.
template <typename T>
FUSEDOPS_VECTORIZE Source<T> channels_innermost(const Source<T>& in, int64_t images, int64_t channels, int64_t r0,
                                                int64_t tile_rows, Scratch<T>& buf) {
  if (in.sc == 1) return in;
  const int64_t h0 = std::clamp<int64_t>(r0 - in.pt, 0, in.H);
  const int64_t h1 = std::clamp<int64_t>(r0 + 2 * tile_rows + 2 - in.pt, h0, in.H);
  const int64_t rows = h1 - h0, C = channels, W = in.W;
  T* out = buf.get(std::max<int64_t>(images * rows * W * C, 1));
  const bool planes = in.sw == 1 && in.sh == W;  // each channel's rows are one run (NCHW)
  for (int64_t n = 0; n < images && planes; ++n)
    transpose::matrix(in.p + n * in.sn + h0 * in.sh, in.sc, C, rows * W, out + n * rows * W * C, C);
  for (int64_t n = 0; n < images && !planes; ++n)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t h = 0; h < rows; ++h) {
        const T* s = in.p + n * in.sn + c * in.sc + (h0 + h) * in.sh;
        T* d = out + (n * rows + h) * W * C + c;
        for (int64_t w = 0; w < W; ++w) d[w * C] = s[w * in.sw];
      }
  // Staged row h is input row h0 + h: the top padding grows by h0.
  return Source<T>{out, rows * W * C, 1, W * C, C, rows, W, in.pt + h0, in.pl};
}

// Tiles per GEMM batch: keeps V and M (16 x tiles x channels each) within the L2 cache
// (measured on mnist conv2: 64 and 256 were slower).
constexpr int64_t kTilesPerBatch = 128;

// A batch of tiles: the (image, tile row) pairs [L0, L1) of a grid of TR tile rows x TC tile
// columns per image, tile (n, ty, tx) covering output rows r0 + 2ty + {0, 1}, columns 2tx + {0, 1}.
struct Batch {
  int64_t r0, TR, TC, L0, L1;
  int64_t tiles() const { return (L1 - L0) * TC; }
};

// Input transform: V[e][t][c] = (B^T d B)[e] for every tile t of the batch and channel c, d the
// 4x4 input block at rows r0 + 2ty - pt, columns 2tx - pl (zero outside the input);
// B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]. `ves` is the stride between positions e.
// The four input rows of a tile row are first gathered channels-innermost into `rows`.
template <typename T>
FUSEDOPS_VECTORIZE void input_transform(const Source<T>& in, int64_t channels, const Batch& b, T* V, int64_t ves,
                                        Scratch<T>& row_buf) {
  const int64_t span = 2 * b.TC + 2;  // input columns read by one tile row
  const int64_t C = channels, rs = span * C;
  T* const rows = row_buf.get(4 * rs);
  // Columns j in [lo, hi) read input column j - pl; the rest is padding.
  const int64_t lo = std::clamp<int64_t>(in.pl, 0, span), hi = std::clamp<int64_t>(in.W + in.pl, lo, span);
  for (int64_t L = b.L0; L < b.L1; ++L) {
    const int64_t n = L / b.TR, ty = L % b.TR;
    // The next tile row of the same image starts two input rows lower: keep the two it shares.
    const bool shares = L > b.L0 && ty > 0;
    if (shares) std::copy(rows + 2 * rs, rows + 4 * rs, rows);
    for (int64_t i = shares ? 2 : 0; i < 4; ++i) {
      T* row = rows + i * rs;
      const int64_t ih = b.r0 + 2 * ty - in.pt + i;
      if (ih < 0 || ih >= in.H) {
        std::fill(row, row + rs, T(0));
        continue;
      }
      std::fill(row, row + lo * C, T(0));
      std::fill(row + hi * C, row + rs, T(0));
      const T* src = in.p + n * in.sn + ih * in.sh;
      if (in.sc == 1 && in.sw == C) {  // channels-innermost rows: one copy
        std::copy(src + (lo - in.pl) * C, src + (hi - in.pl) * C, row + lo * C);
      } else if (in.sc == 1) {  // channels innermost, columns apart: one copy per column
        for (int64_t j = lo; j < hi; ++j) std::copy(src + (j - in.pl) * in.sw, src + (j - in.pl) * in.sw + C, row + j * C);
      } else {
        for (int64_t c = 0; c < C; ++c) {
          const T* s = src + c * in.sc;
          for (int64_t j = lo; j < hi; ++j) row[j * C + c] = s[(j - in.pl) * in.sw];
        }
      }
    }
    for (int64_t tx = 0; tx < b.TC; ++tx) {
      const T* __restrict d = rows + 2 * tx * C;  // d[i][j][c] = d[i * rs + j * C + c]
      T* __restrict v = V + ((L - b.L0) * b.TC + tx) * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        T t[4][4];  // B^T d
        for (int64_t j = 0; j < 4; ++j) {
          const T d0 = d[j * C + c], d1 = d[rs + j * C + c], d2 = d[2 * rs + j * C + c], d3 = d[3 * rs + j * C + c];
          t[0][j] = d0 - d2;
          t[1][j] = d1 + d2;
          t[2][j] = d2 - d1;
          t[3][j] = d1 - d3;
        }
        for (int64_t r = 0; r < 4; ++r) {  // (B^T d) B
          v[(r * 4 + 0) * ves + c] = t[r][0] - t[r][2];
          v[(r * 4 + 1) * ves + c] = t[r][1] + t[r][2];
          v[(r * 4 + 2) * ves + c] = t[r][2] - t[r][1];
          v[(r * 4 + 3) * ves + c] = t[r][1] - t[r][3];
        }
      }
    }
  }
}

// The 16 GEMMs of one batch of tiles, one BLAS call each (blas::gemm_row_major), on row-major
// matrices e = 0..15 at a + e * a_step, b + e * b_step, c + e * c_step:
// C[e] (m x n) = op(A[e]) B[e] [+ C[e] when accumulate], op(A) = A (m x k, leading dimension
// lda) or, with trans_a, A^T (A stored k x m). (at::bmm on these blobs cost as much again as
// its GEMMs in dispatcher calls and `select`s of each matrix at these sizes.)
template <typename T>
void gemm16(bool trans_a, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, int64_t a_step, const T* b,
            int64_t ldb, int64_t b_step, bool accumulate, T* c, int64_t ldc, int64_t c_step) {
  for (int64_t e = 0; e < 16; ++e)
    blas::gemm_row_major(trans_a, false, m, n, k, a + e * a_step, lda, b + e * b_step, ldb, accumulate, c + e * c_step,
                         ldc);
}

// Strides between the 16 transformed positions, padded by one cache line: a multiple of 4 KiB
// would map all 16 streams of the transforms onto the same L1 cache sets.
inline int64_t position_stride(int64_t channels, int64_t tiles) { return channels * tiles + 16; }

// Output transform of one tile and channel: its 2x2 outputs y00, y01, y10, y11 (row-major)
// from the 16 products m[e * mes + co], Y = A^T m A, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]].
template <typename T>
FUSEDOPS_ALWAYS_INLINE inline void output_transform(const T* __restrict m, int64_t mes, int64_t co, T& y00, T& y01,
                                                    T& y10, T& y11) {
  T s[2][4];  // A^T m
  for (int64_t j = 0; j < 4; ++j) {
    const T m0 = m[(0 + j) * mes + co], m1 = m[(4 + j) * mes + co];
    const T m2 = m[(8 + j) * mes + co], m3 = m[(12 + j) * mes + co];
    s[0][j] = m0 + m1 + m2;
    s[1][j] = m1 - m2 - m3;
  }
  y00 = s[0][0] + s[0][1] + s[0][2];
  y01 = s[0][1] - s[0][2] - s[0][3];
  y10 = s[1][0] + s[1][1] + s[1][2];
  y11 = s[1][1] - s[1][2] - s[1][3];
}

// Writes each output tile to a Sink (the epilogue of conv3x3).
template <typename T>
struct SinkWriter {
  static constexpr bool kTakesProducts = false;
  const Sink<T>& out;
  // The 2x2 outputs y[0..3][co] (row-major in the tile) of the out_ch channels at output row r
  // and column col.
  void operator()(int64_t n, int64_t r, int64_t col, int64_t out_ch, const T* const* y, bool second_row,
                  bool second_col) const {
    T* base = out.p + n * out.sn + (r - out.r0) * out.sh + col;
    for (int64_t co = 0; co < out_ch; ++co) {
      T* p = base + co * out.sc;
      p[0] = y[0][co];
      if (second_col) p[1] = y[1][co];
      if (second_row) {
        p[out.sh] = y[2][co];
        if (second_col) p[out.sh + 1] = y[3][co];
      }
    }
  }
};

// Writes each output tile channels innermost: output (n, r, col) of channel co at
// p[((n * rows + r - r0) * W + col) * channels + co], for rows [r0, r0 + rows).
template <typename T>
struct ChannelsInnermostWriter {
  static constexpr bool kTakesProducts = false;
  T* p;
  int64_t r0, rows, W, channels;
  void operator()(int64_t n, int64_t r, int64_t col, int64_t out_ch, const T* const* y, bool second_row,
                  bool second_col) const {
    T* base = p + ((n * rows + r - r0) * W + col) * channels;
    copy(y[0], out_ch, base);
    if (second_col) copy(y[1], out_ch, base + channels);
    if (second_row) {
      copy(y[2], out_ch, base + W * channels);
      if (second_col) copy(y[3], out_ch, base + (W + 1) * channels);
    }
  }
  // A loop the caller's clone vectorises (std::copy of a few dozen elements was a memmove call).
  static FUSEDOPS_ALWAYS_INLINE inline void copy(const T* __restrict from, int64_t count, T* __restrict to) {
#pragma omp simd
    for (int64_t i = 0; i < count; ++i) to[i] = from[i];
  }
};

// The 3x3 correlation of `images` images of `in` (in_ch channels) with the filters whose
// transform is U (16 x in_ch x out_ch), for output rows [out.r0, out.r1) x columns [0, out.W):
// each 2x2 output tile goes to epi(n, r, col, out_ch, y, second_row, second_col) with y[i][co]
// its output i (row-major in the tile) of channel co (the tile's top-left output is (r, col);
// second_row / second_col say whether its second row / column is inside). SinkWriter writes
// the tiles (not accumulated) to `out` (conv3x3 below). An Epilogue with kTakesProducts gets
// epi(n, r, col, out_ch, m, mes) instead, the tile's 16 products m[e * mes + co], and runs
// output_transform itself (fused with what it does next, with no 2x2 tile stored).
// Single-threaded: callers parallelise over images and groups. `out.p` is not used by this
// function itself.
template <typename T, typename Epilogue>
FUSEDOPS_VECTORIZE void conv3x3_tiles(const Source<T>& input, int64_t images, int64_t in_ch, const T* U,
                                      int64_t out_ch, const Sink<T>& out, const Epilogue& epi, Workspace<T>& ws) {
  const int64_t TR = (out.r1 - out.r0 + 1) / 2, TC = (out.W + 1) / 2;
  const int64_t row_tiles = images * TR;  // (image, tile row) pairs
  const int64_t rows_per_batch = std::max<int64_t>(1, kTilesPerBatch / TC);
  const Source<T> in = channels_innermost(input, images, in_ch, out.r0, TR, ws.staged);
  T* const Y = ws.out.get(4 * out_ch);

  for (int64_t L0 = 0; L0 < row_tiles; L0 += rows_per_batch) {
    const Batch batch{out.r0, TR, TC, L0, std::min(L0 + rows_per_batch, row_tiles)};
    const int64_t tiles = batch.tiles();
    const int64_t ves = position_stride(in_ch, tiles), mes = position_stride(out_ch, tiles);
    T* const V = ws.V.get(16 * ves);
    T* const M = ws.M.get(16 * mes);
    input_transform(in, in_ch, batch, V, ves, ws.rows);
    // M[e] (tiles x out_ch) = V[e] (tiles x in_ch) U[e] (in_ch x out_ch)
    gemm16(false, tiles, out_ch, in_ch, V, in_ch, ves, U, out_ch, in_ch * out_ch, false, M, out_ch, mes);
    // Output transform: Y = A^T m A, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]].
    for (int64_t L = batch.L0; L < batch.L1; ++L) {
      const int64_t n = L / TR, ty = L % TR, r = out.r0 + 2 * ty;
      const bool second_row = r + 1 < out.r1;
      for (int64_t tx = 0; tx < TC; ++tx) {
        const T* __restrict m = M + ((L - batch.L0) * TC + tx) * out_ch;
        const int64_t col = 2 * tx;
        const bool second_col = col + 1 < out.W;
        T* __restrict y00 = Y;
        T* __restrict y01 = y00 + out_ch;
        T* __restrict y10 = y01 + out_ch;
        T* __restrict y11 = y10 + out_ch;
        if constexpr (Epilogue::kTakesProducts) {  // it runs the output transform itself
          epi(n, r, col, out_ch, m, mes);
        } else {
#pragma omp simd
          for (int64_t co = 0; co < out_ch; ++co) output_transform(m, mes, co, y00[co], y01[co], y10[co], y11[co]);
          const T* const y[4] = {y00, y01, y10, y11};
          epi(n, r, col, out_ch, y, second_row, second_col);
        }
      }
    }
  }
}

template <typename T>
void conv3x3(const Source<T>& in, int64_t images, int64_t in_ch, const T* U, int64_t out_ch, const Sink<T>& out,
             Workspace<T>& ws) {
  conv3x3_tiles(in, images, in_ch, U, out_ch, out, SinkWriter<T>{out}, ws);
}

// The weight gradient of the correlation above. With Y = A^T [U . V] A per tile and
// U = G g G^T, the chain rule gives  dL/dg = G^T [ sum_t (A dY_t A^T) . V_t ] G,  so
//   S[e] (out_ch x in_ch) += sum_t D[e][t, :]^T V[e][t, :],   D[e][t][co] = (A dY_t A^T)[e],
// 16 GEMMs over the tiles, and weight_grad_from_sums turns S into the 3x3 gradients.
// `grad` is the output gradient (rows [0, H) x columns [0, W) of `out_ch` channels, pt = pl = 0);
// S (16 x out_ch x in_ch) is accumulated into.
template <typename T>
FUSEDOPS_VECTORIZE void weight_grad3x3(const Source<T>& input, const Source<T>& grad, int64_t images, int64_t in_ch,
                                       int64_t out_ch, T* S, Workspace<T>& ws) {
  const int64_t TR = (grad.H + 1) / 2, TC = (grad.W + 1) / 2;
  const int64_t row_tiles = images * TR;
  const int64_t rows_per_batch = std::max<int64_t>(1, kTilesPerBatch / TC);
  const int64_t rs = 2 * TC * out_ch;  // one gathered gradient row: 2 * TC columns x out_ch
  const Source<T> in = channels_innermost(input, images, in_ch, 0, TR, ws.staged);
  T* const grows = ws.out.get(2 * rs);

  for (int64_t L0 = 0; L0 < row_tiles; L0 += rows_per_batch) {
    const Batch batch{0, TR, TC, L0, std::min(L0 + rows_per_batch, row_tiles)};
    const int64_t tiles = batch.tiles();
    const int64_t ves = position_stride(in_ch, tiles), des = position_stride(out_ch, tiles);
    T* const V = ws.V.get(16 * ves);
    T* const D = ws.M.get(16 * des);
    input_transform(in, in_ch, batch, V, ves, ws.rows);
    // D[e][t][co] = (A d A^T)[e], d the 2x2 gradient block (zero outside),
    // A = [[1, 0], [1, 1], [1, -1], [0, -1]]. The block's two rows are gathered first.
    for (int64_t L = batch.L0; L < batch.L1; ++L) {
      const int64_t n = L / TR, ty = L % TR;
      for (int64_t i = 0; i < 2; ++i) {
        T* row = grows + i * rs;
        const int64_t r = 2 * ty + i;
        if (r >= grad.H) {
          std::fill(row, row + rs, T(0));
          continue;
        }
        std::fill(row + grad.W * out_ch, row + rs, T(0));
        const T* src = grad.p + n * grad.sn + r * grad.sh;
        if (grad.sc == 1) {  // channels innermost already: one copy per column
          for (int64_t c = 0; c < grad.W; ++c) std::copy(src + c * grad.sw, src + c * grad.sw + out_ch, row + c * out_ch);
        } else {
          for (int64_t co = 0; co < out_ch; ++co) {
            const T* g = src + co * grad.sc;
            for (int64_t c = 0; c < grad.W; ++c) row[c * out_ch + co] = g[c * grad.sw];
          }
        }
      }
      for (int64_t tx = 0; tx < TC; ++tx) {
        const T* __restrict g = grows + 2 * tx * out_ch;
        T* __restrict d = D + ((L - batch.L0) * TC + tx) * out_ch;
#pragma omp simd
        for (int64_t co = 0; co < out_ch; ++co) {
          const T a = g[co], bb = g[out_ch + co], cc = g[rs + co], dd = g[rs + out_ch + co];
          const T z[4][2] = {{a, bb}, {a + cc, bb + dd}, {a - cc, bb - dd}, {-cc, -dd}};  // A d
          for (int64_t r = 0; r < 4; ++r) {  // (A d) A^T
            d[(r * 4 + 0) * des + co] = z[r][0];
            d[(r * 4 + 1) * des + co] = z[r][0] + z[r][1];
            d[(r * 4 + 2) * des + co] = z[r][0] - z[r][1];
            d[(r * 4 + 3) * des + co] = -z[r][1];
          }
        }
      }
    }
    // S[e] (out_ch x in_ch) += D[e]^T (D[e]: tiles x out_ch) V[e] (tiles x in_ch)
    gemm16(true, out_ch, in_ch, tiles, D, out_ch, des, V, in_ch, ves, true, S, in_ch, out_ch * in_ch);
  }
}

// dw[o][i] (3x3) (+)= G^T S[:, o, i] G for the sums S (16 x out_ch x in_ch) of weight_grad3x3;
// G^T = [[1, 1/2, 1/2, 0], [0, 1/2, -1/2, 0], [0, 1/2, 1/2, 1]].
template <typename T>
void weight_grad_from_sums(const T* S, int64_t out_ch, int64_t in_ch, T* dw) {
  const T half = T(0.5);
  for (int64_t o = 0; o < out_ch; ++o) {
    for (int64_t i = 0; i < in_ch; ++i) {
      T s[4][4], h[3][4];
      for (int e = 0; e < 16; ++e) s[e / 4][e % 4] = S[(e * out_ch + o) * in_ch + i];
      for (int c = 0; c < 4; ++c) {  // G^T s
        h[0][c] = s[0][c] + half * (s[1][c] + s[2][c]);
        h[1][c] = half * (s[1][c] - s[2][c]);
        h[2][c] = half * (s[1][c] + s[2][c]) + s[3][c];
      }
      T* out = dw + (o * in_ch + i) * 9;
      for (int r = 0; r < 3; ++r) {  // (G^T s) G
        out[r * 3 + 0] = h[r][0] + half * (h[r][1] + h[r][2]);
        out[r * 3 + 1] = half * (h[r][1] - h[r][2]);
        out[r * 3 + 2] = half * (h[r][1] + h[r][2]) + h[r][3];
      }
    }
  }
}

}  // namespace winograd
}  // namespace fusedops
