// Tangent of the fused conv block at fixed offsets on the CPU (the "cpp" backend's
// native_conv_block_jvp): the forward-mode derivative of the block and, as the adjoint of
// its backward, the double backward's gradient with respect to grad_output.
//
//   out[n, c, ph, pw] = 0 where offsets[n, c, ph, pw] < 0 (ReLU off), else, at the conv
//   position (oh, ow) of the window's max,
//     tb[c] + sum_{ci, kh, kw} tx[n, g*Cg + ci, ih, iw] * w[c, ci, kh, kw]
//                             + x[n, g*Cg + ci, ih, iw] * tw[c, ci, kh, kw]
//   with ih = oh*sh - pt + kh*dh, iw = ow*sw - pl + kw*dw (0 outside the input).
//
// One dot product of length Cin/groups * KH * KW per output, at the one conv position the
// output depends on: the conv output itself is never formed. Tasks are (image, channel)
// pairs; inputs are read through their strides (any layout).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>

#include "../conv_checks.h"
#include "cpu_checks.h"

namespace fusedops {
namespace {

// A tensor's data and element strides, or null when the tangent is absent.
template <typename T>
struct View4 {
  const T* p = nullptr;
  int64_t s[4] = {0, 0, 0, 0};
  explicit View4(const std::optional<at::Tensor>& t) {
    if (!t.has_value() || !t->defined()) return;
    p = t->const_data_ptr<T>();
    for (int d = 0; d < t->dim(); ++d) s[d] = t->stride(d);
  }
};

template <typename T, typename OffT>
void jvp_kernel(const Geometry& g, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offsets,
                const std::optional<at::Tensor>& tx_t, const std::optional<at::Tensor>& tw_t,
                const std::optional<at::Tensor>& tb_t, at::Tensor& out) {
  const View4<T> x(input), w(weight), tx(tx_t), tw(tw_t), tb(tb_t), y(out);
  const View4<OffT> o(offsets);
  T* yp = out.mutable_data_ptr<T>();
  at::parallel_for(0, g.N * g.Cout, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / g.Cout, c = task % g.Cout, grp = c / g.Coutg;
      for (int64_t ph = 0; ph < g.PH; ++ph) {
        for (int64_t pw = 0; pw < g.PW; ++pw) {
          const int64_t off = o.p[n * o.s[0] + c * o.s[1] + ph * o.s[2] + pw * o.s[3]];
          T acc = T(0);
          if (off >= 0) {
            const int64_t oh = ph * g.psh - g.pph + (off / g.PKW) * g.pdh;
            const int64_t ow = pw * g.psw - g.ppw + (off % g.PKW) * g.pdw;
            if (tb.p) acc = tb.p[c * tb.s[0]];
            for (int64_t ci = 0; ci < g.Cg; ++ci) {
              const int64_t ch = grp * g.Cg + ci;
              for (int64_t kh = 0; kh < g.KH; ++kh) {
                const int64_t ih = oh * g.sh - g.pt + kh * g.dh;
                if (ih < 0 || ih >= g.H) continue;
                for (int64_t kw = 0; kw < g.KW; ++kw) {
                  const int64_t iw = ow * g.sw - g.pl + kw * g.dw;
                  if (iw < 0 || iw >= g.W) continue;
                  const int64_t xi = n * x.s[0] + ch * x.s[1] + ih * x.s[2] + iw * x.s[3];
                  const int64_t wi = c * w.s[0] + ci * w.s[1] + kh * w.s[2] + kw * w.s[3];
                  if (tx.p) acc += tx.p[n * tx.s[0] + ch * tx.s[1] + ih * tx.s[2] + iw * tx.s[3]] * w.p[wi];
                  if (tw.p) acc += x.p[xi] * tw.p[c * tw.s[0] + ci * tw.s[1] + kh * tw.s[2] + kw * tw.s[3]];
                }
              }
            }
          }
          yp[n * y.s[0] + c * y.s[1] + ph * y.s[2] + pw * y.s[3]] = acc;
        }
      }
    }
  });
}

std::optional<at::Tensor> checked_tangent(const std::optional<at::Tensor>& t, const char* name,
                                          const at::Tensor& input) {
  if (!t.has_value() || !t->defined()) return std::nullopt;
  check_float_cpu(*t, name, input);
  return input.scalar_type() == at::kBFloat16 ? std::optional(to_float(*t)) : t;
}

at::Tensor conv_block_jvp_cpu(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offsets,
                              const std::optional<at::Tensor>& input_tangent,
                              const std::optional<at::Tensor>& weight_tangent,
                              const std::optional<at::Tensor>& bias_tangent, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                              at::IntArrayRef pool_kernel_size, at::IntArrayRef pool_stride,
                              at::IntArrayRef pool_padding, at::IntArrayRef pool_dilation) {
  FUSEDOPS_NO_AUTOCAST;
  check_cpu_dtype(input);
  check_float_cpu(input, "input", input);
  check_float_cpu(weight, "weight", input);
  TORCH_CHECK(offsets.device().is_cpu(), "offsets must be a CPU tensor, got ", offsets.device());
  const Geometry g = make_jvp_geometry(input, weight, offsets, input_tangent, weight_tangent, bias_tangent, stride,
                                       padding, dilation, groups, pool_kernel_size, pool_stride, pool_padding,
                                       pool_dilation);
  const auto tx = checked_tangent(input_tangent, "input_tangent", input);
  const auto tw = checked_tangent(weight_tangent, "weight_tangent", input);
  const auto tb = checked_tangent(bias_tangent, "bias_tangent", input);
  // bfloat16 runs the float32 kernel on float32 copies and is rounded back, as the forward.
  const bool bf16 = input.scalar_type() == at::kBFloat16;
  const at::Tensor x = bf16 ? to_float(input) : input, w = bf16 ? to_float(weight) : weight;
  at::Tensor out = at::empty({g.N, g.Cout, g.PH, g.PW}, x.options().memory_format(output_format(input)));
  if (out.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_block_jvp_cpu", [&] {
      FUSEDOPS_DISPATCH_OFFSETS(offsets.scalar_type(),
                                [&] { jvp_kernel<scalar_t, OffT>(g, x, w, offsets, tx, tw, tb, out); })
    });
  }
  return bf16 ? out.to(at::kBFloat16) : out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedops, CPU, m) { m.impl("native_conv_block_jvp", &conv_block_jvp_cpu); }

}  // namespace fusedops
