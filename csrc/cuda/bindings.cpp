// CUDA implementations of the fusedops::native_* kernel ops (schemas in csrc/fusedops.cpp):
// argument checks with messages that name the argument, the device guard, the current
// stream, scratch memory from torch's caching allocator, and a check of every launch
// (the launchers in kernels.h return the launch's cudaError_t).

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <array>
#include <atomic>
#include <cstdlib>
#include <limits>
#include <string>
#include <tuple>

#include "../conv_checks.h"
#include "../linear_checks.h"
#include "kernels.h"

namespace fusedops {
namespace {

// The kernels' element type for input; float32 multiplies on TF32 tensor cores when tf32.
cuda::DType dtype_of(const at::Tensor& input, bool tf32) {
  switch (input.scalar_type()) {
    case at::kFloat: return tf32 ? cuda::DType::Tf32 : cuda::DType::Float;
    case at::kDouble: return cuda::DType::Double;
    case at::kHalf: return cuda::DType::Half;
    case at::kBFloat16: return cuda::DType::BFloat16;
    default:
      TORCH_CHECK_TYPE(false, "the cuda backend supports float32, float64, float16 and bfloat16 input, got ",
                  input.scalar_type());
  }
}

// TF32 exactly when torch's own op would use it: cudnn.allow_tf32 for the conv block,
// cuda.matmul.allow_tf32 for linear.
cuda::DType conv_dtype_of(const at::Tensor& input) { return dtype_of(input, at::globalContext().allowTF32CuDNN()); }
cuda::DType linear_dtype_of(const at::Tensor& input) {
  return dtype_of(input, at::globalContext().allowTF32CuBLAS());
}

// The major compute capability of `device` (the kernels' cp.async and 16-bit / TF32 wmma paths
// need 8), queried from the runtime once per device.
int compute_capability_major(c10::DeviceIndex device) {
  static std::array<std::atomic<int>, 64> known{};  // 0: not queried yet
  const bool cached = device >= 0 && device < static_cast<c10::DeviceIndex>(known.size());
  int major = cached ? known[device].load(std::memory_order_relaxed) : 0;
  if (major > 0) return major;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  if (cached) known[device].store(major, std::memory_order_relaxed);
  return major;
}

// `t` is a CUDA tensor on input's device with input's dtype.
void check_like_input(const at::Tensor& t, const char* name, const at::Tensor& input) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.device() == input.device(), name, " is on ", t.device(), " but input is on ", input.device());
  TORCH_CHECK_TYPE(t.scalar_type() == input.scalar_type(), name, " has dtype ", t.scalar_type(), " but input has dtype ",
              input.scalar_type());
}

cuda::Strides4 strides_of(const at::Tensor& t) {
  return {{t.stride(0), t.stride(1), t.stride(2), t.stride(3)}};
}

at::Tensor workspace(size_t bytes, const at::Tensor& like) {
  return at::empty({static_cast<int64_t>(bytes)}, like.options().dtype(at::kByte));
}

std::optional<at::Tensor> checked_bias(const std::optional<at::Tensor>& bias, int64_t n, const at::Tensor& input) {
  if (!bias.has_value() || !bias->defined()) return std::nullopt;
  check_like_input(*bias, "bias", input);
  TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == n, "bias must have shape (", n, ",), got ", bias->sizes());
  return bias->contiguous();
}

// What the conv block's kernels read as its input, and whether over 16-byte channel runs:
// `can(x, strides)` says whether the channel-run kernels take an input (kernels.h
// conv_forward_channel_runs / conv_backward_channel_runs). The input itself where it has runs
// (channels_last, or contiguous channels at every pixel); else its channels_last copy where that
// has them (a dense NCHW input, a transposed or sliced one: one copy a call, as the Triton
// backend makes), or, where `read` is false (no kernel reads x: a backward without the weight
// gradient), no tensor and the copy's strides; else the input, for the tile kernels.
// FUSEDOPS_CUDA_CHANNEL_RUNS=0 turns runs off (read at each call, so that one process can time
// both engines).
struct ConvInput {
  at::Tensor x;  // undefined: not read
  cuda::Strides4 xs;
  bool runs;
  const void* data() const { return x.defined() ? x.const_data_ptr() : nullptr; }
};
template <typename Can>
ConvInput conv_input(const at::Tensor& input, const Geometry& g, bool read, const Can& can) {
  const ConvInput in_place{input, strides_of(input), false};
  const char* env = std::getenv("FUSEDOPS_CUDA_CHANNEL_RUNS");
  if (env && std::string(env) == "0") return in_place;
  if (can(input.const_data_ptr(), in_place.xs)) return {input, in_place.xs, true};
  // A dense channels_last copy's strides; a fresh allocation is 16-byte aligned (null stands for it).
  const cuda::Strides4 copy_strides{{g.H * g.W * g.C, 1, g.W * g.C, g.C}};
  if (!can(nullptr, copy_strides)) return in_place;
  if (!read) return {at::Tensor(), copy_strides, true};
  at::Tensor x = at::empty(input.sizes(), input.options().memory_format(at::MemoryFormat::ChannelsLast));
  x.copy_(input);
  if (can(x.const_data_ptr(), strides_of(x))) return {x, strides_of(x), true};
  return in_place;
}

Geometry checked_conv_geometry(Geometry g) {
  TORCH_CHECK_VALUE(g.G <= 65535, "the cuda backend supports groups up to 65535, got ", g.G);
  // The kernels keep coordinates inside an image in 32 bits (kernels.h).
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  TORCH_CHECK_VALUE(cuda::conv_coordinate_reach(g) < kMax && g.KH * g.KW < kMax,
                    "the cuda backend supports images whose height and width, padded, stay below 2^31, got ",
                    g.H, " x ", g.W);
  return g;
}

std::tuple<at::Tensor, at::Tensor> conv_block_forward_cuda(
    const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef pool_kernel_size, at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
    at::IntArrayRef pool_dilation, bool pool_ceil_mode) {
  const cuda::DType dtype = conv_dtype_of(input);
  check_like_input(input, "input", input);
  check_like_input(weight, "weight", input);
  const Geometry g = checked_conv_geometry(make_geometry(input, weight, stride, padding, dilation, groups,
                                                         pool_kernel_size, pool_stride, pool_padding, pool_dilation,
                                                         pool_ceil_mode));
  const auto b = checked_bias(bias, g.Cout, input);
  const c10::cuda::CUDAGuard guard(input.device());
  const auto fmt = output_format(input);
  at::Tensor out = at::empty({g.N, g.Cout, g.PH, g.PW}, input.options().memory_format(fmt));
  at::Tensor offsets = at::empty({g.N, g.Cout, g.PH, g.PW}, input.options().dtype(offsets_dtype(g)).memory_format(fmt));
  if (out.numel() == 0) return {out, offsets};
  // The channel-run forward reads the weight as (Cout, KH, KW, Cin/groups): no copy for a
  // channels_last weight (a module converted with .to(memory_format=torch.channels_last)); the
  // other forwards read it as (Cout, Cin/groups, KH, KW).
  const int cc = compute_capability_major(input.device().index());
  const ConvInput in = conv_input(input, g, true, [&](const void* x, cuda::Strides4 xs) {
    return cuda::conv_forward_channel_runs(dtype, g, x, xs, cc);
  });
  at::Tensor w, w_runs;
  if (in.runs) {
    w_runs = weight.permute({0, 2, 3, 1}).contiguous();
    if (reinterpret_cast<uintptr_t>(w_runs.const_data_ptr()) % 16 != 0) w_runs = w_runs.clone();
  } else {
    w = weight.contiguous();
  }
  C10_CUDA_CHECK(cuda::conv_block_forward(dtype, static_cast<int>(offsets.element_size()), g, in.data(), in.xs,
                                          w.defined() ? w.const_data_ptr() : nullptr,
                                          w_runs.defined() ? w_runs.const_data_ptr() : nullptr,
                                          b ? b->const_data_ptr() : nullptr,
                                          out.mutable_data_ptr(), offsets.mutable_data_ptr(), strides_of(out),
                                          c10::cuda::getCurrentCUDAStream().stream()));
  return {out, offsets};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_block_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offsets,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
    at::IntArrayRef pool_kernel_size, at::IntArrayRef pool_stride, at::IntArrayRef pool_padding,
    at::IntArrayRef pool_dilation, std::array<bool, 3> output_mask) {
  const cuda::DType dtype = conv_dtype_of(input);
  check_like_input(input, "input", input);
  check_like_input(weight, "weight", input);
  check_like_input(grad_output, "grad_output", input);
  TORCH_CHECK(offsets.device() == input.device(), "offsets is on ", offsets.device(), " but input is on ",
              input.device());
  const Geometry g = checked_conv_geometry(make_backward_geometry(grad_output, input, weight, offsets, stride, padding,
                                                                  dilation, groups, pool_kernel_size, pool_stride,
                                                                  pool_padding, pool_dilation));
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor gi, gw, gb;
  bool flows;
  std::tie(gi, gw, gb, flows) = allocate_conv_block_grads(g, input.options(), output_mask, false);
  if (flows) {
    // The channel-run backward (for the input or weight gradient; the bias gradient alone takes
    // the other) writes the input gradient channels_last and reads the weight, which only the
    // input gradient needs, as (groups, Cin/groups, KH, KW, Cout/groups); the other writes NCHW
    // and reads the weight as (Cout, Cin/groups, KH, KW).
    const int cc = compute_capability_major(input.device().index());
    // Only the weight gradient reads x: an input gradient alone needs no copy of it.
    const ConvInput in = output_mask[0] || output_mask[1]
                             ? conv_input(input, g, output_mask[1], [&](const void* x, cuda::Strides4 xs) {
                                 return cuda::conv_backward_channel_runs(dtype, g, x, xs, cc);
                               })
                             : ConvInput{input, strides_of(input), false};
    const bool runs = in.runs;
    at::Tensor w;
    if (output_mask[0]) {
      w = runs ? weight.reshape({g.G, g.Coutg, g.Cg, g.KH, g.KW}).permute({0, 2, 3, 4, 1}).contiguous()
               : weight.contiguous();
      if (runs && reinterpret_cast<uintptr_t>(w.const_data_ptr()) % 16 != 0) w = w.clone();
      if (runs) gi = at::empty_like(gi, at::MemoryFormat::ChannelsLast);
    }
    const at::Tensor ws =
        workspace(cuda::conv_block_backward_workspace(dtype, g, output_mask[0], output_mask[1], output_mask[2]), input);
    C10_CUDA_CHECK(cuda::conv_block_backward(
        dtype, static_cast<int>(offsets.element_size()), g, grad_output.const_data_ptr(), strides_of(grad_output),
        offsets.const_data_ptr(), strides_of(offsets), in.data(), in.xs,
        w.defined() ? w.const_data_ptr() : nullptr, runs, output_mask[0] ? gi.mutable_data_ptr() : nullptr,
        output_mask[1] ? gw.mutable_data_ptr() : nullptr, output_mask[2] ? gb.mutable_data_ptr() : nullptr,
        ws.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream().stream()));
    // The channel-run backward writes the input gradient channels_last, whatever the input's
    // layout (an NCHW one read from its copy, a channel slice in place): back to the input's format.
    if (runs && output_mask[0] && output_format(input) != at::MemoryFormat::ChannelsLast) gi = gi.contiguous();
  }
  gi = in_input_format(gi, input);
  return {gi, gw, gb};
}

std::optional<at::Tensor> checked_tangent(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& input) {
  if (!t.has_value() || !t->defined()) return std::nullopt;
  check_like_input(*t, name, input);
  return t;
}

at::Tensor conv_block_jvp_cuda(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offsets,
                               const std::optional<at::Tensor>& input_tangent,
                               const std::optional<at::Tensor>& weight_tangent,
                               const std::optional<at::Tensor>& bias_tangent, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                               at::IntArrayRef pool_kernel_size, at::IntArrayRef pool_stride,
                               at::IntArrayRef pool_padding, at::IntArrayRef pool_dilation) {
  const cuda::DType dtype = conv_dtype_of(input);
  check_like_input(input, "input", input);
  check_like_input(weight, "weight", input);
  TORCH_CHECK(offsets.device() == input.device(), "offsets is on ", offsets.device(), " but input is on ",
              input.device());
  const Geometry g = make_jvp_geometry(input, weight, offsets, input_tangent, weight_tangent, bias_tangent, stride,
                                       padding, dilation, groups, pool_kernel_size, pool_stride, pool_padding,
                                       pool_dilation);
  const auto tx = checked_tangent(input_tangent, "input_tangent", input);
  auto tw = checked_tangent(weight_tangent, "weight_tangent", input);
  auto tb = checked_tangent(bias_tangent, "bias_tangent", input);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor out = at::empty({g.N, g.Cout, g.PH, g.PW}, input.options().memory_format(output_format(input)));
  if (out.numel() == 0) return out;
  const at::Tensor w = weight.contiguous();
  if (tw) tw = tw->contiguous();
  if (tb) tb = tb->contiguous();
  const cuda::Strides4 none{{0, 0, 0, 0}};
  C10_CUDA_CHECK(cuda::conv_block_jvp(dtype, static_cast<int>(offsets.element_size()), g, input.const_data_ptr(),
                                      strides_of(input), w.const_data_ptr(), offsets.const_data_ptr(),
                                      strides_of(offsets), tx ? tx->const_data_ptr() : nullptr,
                                      tx ? strides_of(*tx) : none, tw ? tw->const_data_ptr() : nullptr,
                                      tb ? tb->const_data_ptr() : nullptr, out.mutable_data_ptr(), strides_of(out),
                                      c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

void check_linear(const at::Tensor& input, const at::Tensor& weight) {
  linear_dtype_of(input);
  check_like_input(input, "input", input);
  check_like_input(weight, "weight", input);
  check_linear_shapes(input, weight);
}

std::tuple<at::Tensor, at::Tensor> linear_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                                                       const std::optional<at::Tensor>& bias,
                                                       c10::string_view activation) {
  check_linear(input, weight);
  const Act act = parse_activation(activation);
  const int64_t out_f = weight.size(0), in_f = weight.size(1);
  const auto b = checked_bias(bias, out_f, input);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.reshape({-1, in_f}).contiguous();
  const at::Tensor w = weight.contiguous();
  const int64_t rows = x.size(0);
  const auto shape = linear_output_shape(input, out_f);
  at::Tensor y = at::empty({rows, out_f}, input.options());
  at::Tensor saved = act == Act::None ? at::empty({0}, input.options())
                     : act == Act::Relu ? at::empty({rows, out_f}, input.options().dtype(at::kBool))
                                              : at::empty({rows, out_f}, input.options());
  if (y.numel() > 0) {
    C10_CUDA_CHECK(cuda::linear_forward(linear_dtype_of(input), act, rows, in_f, out_f, x.const_data_ptr(),
                                        w.const_data_ptr(), b ? b->const_data_ptr() : nullptr, y.mutable_data_ptr(),
                                        saved.numel() ? saved.mutable_data_ptr() : nullptr,
                                        compute_capability_major(input.device().index()),
                                        c10::cuda::getCurrentCUDAStream().stream()));
  }
  return {y.view(shape), act == Act::None ? saved : saved.view(shape)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_cuda(const at::Tensor& grad_output,
                                                                    const at::Tensor& input, const at::Tensor& weight,
                                                                    const at::Tensor& saved,
                                                                    c10::string_view activation,
                                                                    std::array<bool, 3> output_mask) {
  check_linear(input, weight);
  check_like_input(grad_output, "grad_output", input);
  const Act act = parse_activation(activation);
  const int64_t out_f = weight.size(0), in_f = weight.size(1);
  check_linear_backward_args(grad_output, input, weight, saved, act, activation);
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = input.reshape({-1, in_f}).contiguous();
  const at::Tensor w = weight.contiguous();
  const at::Tensor g = grad_output.reshape({-1, out_f}).contiguous();
  const at::Tensor s = act == Act::None ? saved : saved.reshape({-1, out_f}).contiguous();
  const int64_t rows = x.size(0);
  const auto empty = [&] { return at::empty({0}, input.options()); };
  at::Tensor gi = output_mask[0] ? at::empty({rows, in_f}, input.options()) : empty();
  at::Tensor gw = output_mask[1] ? at::empty({out_f, in_f}, input.options()) : empty();
  at::Tensor gb = output_mask[2] ? at::empty({out_f}, input.options()) : empty();
  if (rows == 0 || out_f == 0 || in_f == 0) {  // empty products: zero gradients
    gi.zero_();
    gw.zero_();
    gb.zero_();
  } else {
    const cuda::DType dtype = linear_dtype_of(input);
    const at::Tensor ws = workspace(
        cuda::linear_backward_workspace(dtype, act, rows, in_f, out_f, output_mask[1], output_mask[2]), input);
    C10_CUDA_CHECK(cuda::linear_backward(dtype, act, rows, in_f, out_f, g.const_data_ptr(), x.const_data_ptr(),
                                         w.const_data_ptr(), act == Act::None ? nullptr : s.const_data_ptr(),
                                         output_mask[0] ? gi.mutable_data_ptr() : nullptr,
                                         output_mask[1] ? gw.mutable_data_ptr() : nullptr,
                                         output_mask[2] ? gb.mutable_data_ptr() : nullptr, ws.mutable_data_ptr(),
                                         compute_capability_major(input.device().index()),
                                         c10::cuda::getCurrentCUDAStream().stream()));
  }
  if (output_mask[0]) gi = gi.view(input.sizes());
  return {gi, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedops, CUDA, m) {
  m.impl("native_conv_block_forward", &conv_block_forward_cuda);
  m.impl("native_conv_block_backward", &conv_block_backward_cuda);
  m.impl("native_conv_block_jvp", &conv_block_jvp_cuda);
  m.impl("native_linear_forward", &linear_forward_cuda);
  m.impl("native_linear_backward", &linear_backward_cuda);
}

}  // namespace fusedops
