// Argument checks of the fused conv block's kernel ops and the facts derived from them
// (geometry, offsets dtype, output memory format), shared by the CPU and CUDA bindings.
// The error messages name the argument and what was expected.

#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>
#include <tuple>

#include "conv_geometry.h"

namespace fusedops {

inline void check_pair(at::IntArrayRef v, const char* name, int64_t minimum, size_t len = 2) {
  TORCH_CHECK_VALUE(v.size() == len, name, " must have ", len, " elements, got ", v.size());
  for (auto x : v) TORCH_CHECK_VALUE(x >= minimum, name, " must be at least ", minimum, ", got ", v);
}

inline Geometry make_geometry(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                       at::IntArrayRef pool_kernel_size, at::IntArrayRef pool_stride,
                       at::IntArrayRef pool_padding, at::IntArrayRef pool_dilation, bool ceil_mode) {
  TORCH_CHECK_VALUE(input.dim() == 4, "input must be 4-D (N, C, H, W), got ", input.dim(), "-D");
  TORCH_CHECK_VALUE(weight.dim() == 4, "weight must be 4-D (Cout, Cin/groups, KH, KW), got ", weight.dim(), "-D");
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0, 4);
  check_pair(dilation, "dilation", 1);
  TORCH_CHECK_VALUE(groups >= 1, "groups must be positive, got ", groups);
  Geometry g{};
  g.N = input.size(0); g.C = input.size(1); g.H = input.size(2); g.W = input.size(3);
  g.Cout = weight.size(0); g.Cg = weight.size(1); g.KH = weight.size(2); g.KW = weight.size(3);
  g.G = groups;
  TORCH_CHECK_VALUE(g.Cout % groups == 0, "weight has ", g.Cout, " output channels, which groups=", groups,
              " does not divide");
  TORCH_CHECK_VALUE(g.C == g.Cg * groups, "input has ", g.C, " channels but weight expects ", g.Cg * groups,
              " (groups=", groups, ")");
  g.Coutg = g.Cout / groups;
  g.K = g.Cg * g.KH * g.KW;
  g.sh = stride[0]; g.sw = stride[1]; g.pt = padding[0]; g.pl = padding[2];
  g.dh = dilation[0]; g.dw = dilation[1];
  int64_t ph = g.H + padding[0] + padding[1], pw = g.W + padding[2] + padding[3];
  int64_t kh = g.dh * (g.KH - 1) + 1, kw = g.dw * (g.KW - 1) + 1;
  TORCH_CHECK_VALUE(ph >= kh && pw >= kw, "padded input size (", ph, " x ", pw,
              ") is smaller than the dilated kernel size (", kh, " x ", kw, ")");
  g.OH = (ph - kh) / g.sh + 1;
  g.OW = (pw - kw) / g.sw + 1;
  g.pool = !pool_kernel_size.empty();
  if (g.pool) {
    check_pair(pool_kernel_size, "pool_kernel_size", 1);
    check_pair(pool_stride, "pool_stride", 1);
    check_pair(pool_padding, "pool_padding", 0);
    check_pair(pool_dilation, "pool_dilation", 1);
    g.PKH = pool_kernel_size[0]; g.PKW = pool_kernel_size[1];
    g.psh = pool_stride[0]; g.psw = pool_stride[1];
    g.pph = pool_padding[0]; g.ppw = pool_padding[1];
    g.pdh = pool_dilation[0]; g.pdw = pool_dilation[1];
    TORCH_CHECK_VALUE(g.pph <= g.PKH / 2 && g.ppw <= g.PKW / 2,
                "pool_padding must be at most half of pool_kernel_size, got ", pool_padding, " and ",
                pool_kernel_size);
    g.PH = pool_out_size(g.OH, g.PKH, g.psh, g.pph, g.pdh, ceil_mode);
    g.PW = pool_out_size(g.OW, g.PKW, g.psw, g.ppw, g.pdw, ceil_mode);
    TORCH_CHECK_VALUE(g.PH >= 1 && g.PW >= 1, "the conv output (", g.OH, " x ", g.OW,
                ") is too small for the pool: pool output size would be (", g.PH, " x ", g.PW, ")");
  } else {  // no pooling: a 1x1 window per conv output
    g.PKH = g.PKW = g.psh = g.psw = g.pdh = g.pdw = 1;
    g.pph = g.ppw = 0;
    g.PH = g.OH;
    g.PW = g.OW;
  }
  g.winograd = g.KH == 3 && g.KW == 3 && g.sh == 1 && g.sw == 1 && g.dh == 1 && g.dw == 1 &&
               g.Cg >= kWinogradMinChannels && g.Coutg >= kWinogradMinChannels;
  return g;
}

// int8 offsets for windows of up to 127 elements, then int16, then int32.
inline at::ScalarType offsets_dtype(const Geometry& g) {
  const int64_t window = g.PKH * g.PKW;
  return window <= 127 ? at::kChar : window <= 32767 ? at::kShort : at::kInt;
}

// channels_last when the input is channels_last-contiguous but not NCHW-contiguous (as in Python).
inline at::MemoryFormat output_format(const at::Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast) ? at::MemoryFormat::ChannelsLast
                                                                                 : at::MemoryFormat::Contiguous;
}

// The geometry of a call that gets the block's output size from a tensor of that shape
// (`pooled`: grad_output in the backward, offsets in the tangent), checking `offsets` against
// it. ceil_mode only changes the output size, so it is taken from there: checked against the
// ceil-mode size, the larger of the two (without pooling it must be the conv output's size).
inline Geometry make_pooled_geometry(const at::Tensor& pooled, const char* pooled_name, const at::Tensor& input,
                                     const at::Tensor& weight, const at::Tensor& offsets, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                     at::IntArrayRef pool_kernel_size, at::IntArrayRef pool_stride,
                                     at::IntArrayRef pool_padding, at::IntArrayRef pool_dilation) {
  Geometry g = make_geometry(input, weight, stride, padding, dilation, groups, pool_kernel_size, pool_stride,
                             pool_padding, pool_dilation, true);
  TORCH_CHECK_VALUE(pooled.dim() == 4 && pooled.size(0) == g.N && pooled.size(1) == g.Cout, pooled_name,
              " must have shape (", g.N, ", ", g.Cout, ", PH, PW), got ", pooled.sizes());
  if (g.pool) {
    g.PH = pooled.size(2);
    g.PW = pooled.size(3);
  }
  TORCH_CHECK_VALUE(offsets.sizes() == pooled.sizes(), "offsets must have the shape of ", pooled_name, " ",
              pooled.sizes(), ", got ", offsets.sizes());
  TORCH_CHECK_TYPE(offsets.scalar_type() == offsets_dtype(g), "offsets must have dtype ", offsets_dtype(g), ", got ",
              offsets.scalar_type());
  TORCH_CHECK_VALUE(pooled.size(2) == g.PH && pooled.size(3) == g.PW &&
                  g.PH <= pool_out_size(g.OH, g.PKH, g.psh, g.pph, g.pdh, true) &&
                  g.PW <= pool_out_size(g.OW, g.PKW, g.psw, g.ppw, g.pdw, true),
              pooled_name, "'s spatial size ", pooled.sizes().slice(2), " does not fit the conv output (", g.OH,
              " x ", g.OW, ")");
  return g;
}

// The geometry of a backward call, checking grad_output and offsets against it.
inline Geometry make_backward_geometry(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                                       const at::Tensor& offsets, at::IntArrayRef stride, at::IntArrayRef padding,
                                       at::IntArrayRef dilation, int64_t groups, at::IntArrayRef pool_kernel_size,
                                       at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
                                       at::IntArrayRef pool_dilation) {
  return make_pooled_geometry(grad_output, "grad_output", input, weight, offsets, stride, padding, dilation, groups,
                              pool_kernel_size, pool_stride, pool_padding, pool_dilation);
}

// A tangent of the block's tangent op, when given, has the shape of its primal.
inline void check_tangent_shape(const std::optional<at::Tensor>& tangent, const char* name, at::IntArrayRef shape) {
  if (tangent.has_value() && tangent->defined())
    TORCH_CHECK_VALUE(tangent->sizes() == shape, name, " must have shape ", shape, ", got ", tangent->sizes());
}

// The geometry of a tangent call (native_conv_block_jvp): the output size comes from the
// offsets, and each tangent given has its primal's shape.
inline Geometry make_jvp_geometry(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offsets,
                                  const std::optional<at::Tensor>& input_tangent,
                                  const std::optional<at::Tensor>& weight_tangent,
                                  const std::optional<at::Tensor>& bias_tangent, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                  at::IntArrayRef pool_kernel_size, at::IntArrayRef pool_stride,
                                  at::IntArrayRef pool_padding, at::IntArrayRef pool_dilation) {
  TORCH_CHECK_VALUE(offsets.dim() == 4, "offsets must be 4-D (N, Cout, PH, PW), got ", offsets.dim(), "-D");
  Geometry g = make_pooled_geometry(offsets, "offsets", input, weight, offsets, stride, padding, dilation, groups,
                                    pool_kernel_size, pool_stride, pool_padding, pool_dilation);
  check_tangent_shape(input_tangent, "input_tangent", input.sizes());
  check_tangent_shape(weight_tangent, "weight_tangent", weight.sizes());
  check_tangent_shape(bias_tangent, "bias_tangent", {g.Cout});
  return g;
}

// The backward's outputs, allocated: grad_input (zero-filled when `zero_input`, for kernels
// that accumulate into it; NCHW-contiguous), grad_weight, grad_bias; an unrequested one is an
// empty tensor. When no gradient can flow (no image, or an empty grad_output) all three are
// zero and the caller launches nothing: the returned flag is false.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, bool> allocate_conv_block_grads(
    const Geometry& g, const at::TensorOptions& options, std::array<bool, 3> output_mask, bool zero_input) {
  const bool flows = g.N > 0 && g.PH > 0 && g.PW > 0;
  const auto make = [&](bool wanted, at::IntArrayRef shape, bool zero) {
    if (!wanted) return at::empty({0}, options);
    return zero || !flows ? at::zeros(shape, options) : at::empty(shape, options);
  };
  return {make(output_mask[0], {g.N, g.C, g.H, g.W}, zero_input), make(output_mask[1], {g.Cout, g.Cg, g.KH, g.KW}, false),
          make(output_mask[2], {g.Cout}, false), flows};
}

// grad_input in the memory format of the input (the kernels write it NCHW-contiguous).
inline at::Tensor in_input_format(const at::Tensor& grad_input, const at::Tensor& input) {
  return grad_input.numel() > 0 && output_format(input) == at::MemoryFormat::ChannelsLast
             ? grad_input.contiguous(at::MemoryFormat::ChannelsLast)
             : grad_input;
}

}  // namespace fusedops
