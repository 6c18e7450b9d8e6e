// Schemas of the compiled kernel ops of fusedops.
//
// These are the device-dispatched kernel entry points of the "cpp" (CPU) and "cuda"
// backends: csrc/cpu/*.cpp registers their CPU kernels and csrc/cuda/bindings.cpp their
// CUDA kernels. The Python package registers their fake (meta) implementations so that
// torch.compile and torch.export see through them, and routes the backend-independent
// graph ops (fusedops::conv_block_forward, ...) to them.
//
// Argument conventions (shared with fusedops/ops/*.py):
//   padding          [top, bottom, left, right] zero padding of the input
//   pool_kernel_size [] for "no pooling" (conv + bias + ReLU), else [kh, kw]
//   offsets          one small integer per pooled output: the row-major offset of the
//                    window's max inside the pool window, or -1 when ReLU is off there
//   output_mask      which of (grad_input, grad_weight, grad_bias) to compute; an
//                    unneeded gradient is returned as an empty tensor
//   *_tangent        conv_block_jvp: directions of input, weight and bias (None = zero); the
//                    result is the output's tangent with the offsets held fixed

#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

TORCH_LIBRARY(fusedops, m) {
  m.def(
      "native_conv_block_forward(Tensor input, Tensor weight, Tensor? bias, int[2] stride, "
      "int[4] padding, int[2] dilation, int groups, int[] pool_kernel_size, int[2] pool_stride, "
      "int[2] pool_padding, int[2] pool_dilation, bool pool_ceil_mode) -> (Tensor, Tensor)");
  m.def(
      "native_conv_block_backward(Tensor grad_output, Tensor input, Tensor weight, "
      "Tensor offsets, int[2] stride, int[4] padding, int[2] dilation, int groups, "
      "int[] pool_kernel_size, int[2] pool_stride, int[2] pool_padding, int[2] pool_dilation, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
  m.def(
      "native_conv_block_jvp(Tensor input, Tensor weight, Tensor offsets, Tensor? input_tangent, "
      "Tensor? weight_tangent, Tensor? bias_tangent, int[2] stride, int[4] padding, int[2] dilation, "
      "int groups, int[] pool_kernel_size, int[2] pool_stride, int[2] pool_padding, int[2] pool_dilation) "
      "-> Tensor");
  m.def(
      "native_linear_forward(Tensor input, Tensor weight, Tensor? bias, str activation) "
      "-> (Tensor, Tensor)");
  m.def(
      "native_linear_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor saved, "
      "str activation, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

// The kernel ops have no derivatives of their own: the one-call ops (csrc/*_op.cpp) and the
// Python Functions differentiate them. Their Autograd-key kernel is torch's not-implemented
// fallback, which raises where one is asked for: a backward through them, or a tangent of
// their inputs (nested forward mode, e.g. torch.func.jacfwd of jacfwd, reaches them with
// tangents at the outer level). Without it they would return no derivative silently.
TORCH_LIBRARY_IMPL(fusedops, Autograd, m) {
  for (const char* name : {"native_conv_block_forward", "native_conv_block_backward", "native_conv_block_jvp",
                           "native_linear_forward", "native_linear_backward"})
    m.impl(name, torch::autograd::autogradNotImplementedFallback());
}
