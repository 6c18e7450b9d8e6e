// The "cpp" backend's conv-block backward on the CPU (the forward, its paths and its max
// rule: conv_block_forward.cpp; the im2col and GEMMs both use: im2col_gemm.h).
//
// Backward (im2col path). Tasks are (image, group) so that each task owns its slice of
// grad_input; within a task, bands are processed in order: the band's conv-output gradient
// `dtile` is rebuilt from the pooled gradient and the offsets (a scatter; overlapping windows
// add), then
//   grad_weight_g += dtile @ col^T             (per-thread partial sums, reduced at the end)
//   grad_input    += col2im(W_g^T @ dtile)
// and grad_bias sums the pooled gradients whose ReLU was on. Deterministic for a fixed
// thread count.
//
// Winograd path (the layers conv_block_forward.cpp describes with its forward): the backward
// rebuilds each image's whole conv-output gradient (channels innermost) and gets both
// grad_input (a Winograd correlation with the flipped, transposed filters) and grad_weight
// (Winograd's weight-gradient GEMMs) from it, without im2col or col2im.

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
#include "transpose.h"
#include "winograd.h"

#include <algorithm>
#include <array>
#include <tuple>
#include <type_traits>
#include <vector>

namespace fusedops {
namespace {

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
  const int64_t band = im2col_gemm::band_rows(g);
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
  const std::vector<int64_t> tap_delta = im2col_gemm::pool_tap_deltas(g);
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
          im2col_gemm::im2col(g, x, xs, n, grp, r0, r1, col.data());
          im2col_gemm::matmul<T>(false, true, g.Coutg, g.K, M, dtile.data(), M, col.data(), M, true, dwg, g.K);
        }
        if (mask[0]) {
          dcol.resize(g.K * M);
          im2col_gemm::matmul<T>(true, false, g.K, M, g.Coutg, w + grp * g.Coutg * g.K, g.K, dtile.data(), M, false,
                                 dcol.data(), M);
          im2col_gemm::col2im_add(g, dcol.data(), n, grp, r0, r1, dx);
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
  m.impl("native_conv_block_backward", &conv_block_backward_cpu);
}

}  // namespace fusedops
