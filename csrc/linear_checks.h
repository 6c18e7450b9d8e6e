// Argument checks of the fused linear layer's kernel ops that do not depend on the device
// (shapes, the activation name, the saved state), shared by the CPU and CUDA bindings. The
// error messages name the argument and what was expected.

#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "activation.h"

namespace fusedops {

inline Act parse_activation(c10::string_view activation) {
  const std::string name(activation);
  if (name.empty()) return Act::None;
  if (name == "relu") return Act::Relu;
  if (name == "gelu") return Act::Gelu;
  if (name == "gelu_tanh") return Act::GeluTanh;
  if (name == "silu") return Act::Silu;
  TORCH_CHECK_VALUE(false, "activation must be one of '', 'relu', 'gelu', 'gelu_tanh', 'silu', got '", name, "'");
}

// input (..., in_features) and weight (out_features, in_features).
inline void check_linear_shapes(const at::Tensor& input, const at::Tensor& weight) {
  TORCH_CHECK_VALUE(input.dim() >= 1, "input must have at least 1 dimension (..., in_features)");
  TORCH_CHECK_VALUE(weight.dim() == 2, "weight must be 2-D (out_features, in_features), got ", weight.dim(), "-D");
  TORCH_CHECK_VALUE(input.size(-1) == weight.size(1), "input has ", input.size(-1), " features (last dim) but weight expects ",
              weight.size(1));
}

// (..., out_features) for an input (..., in_features).
inline std::vector<int64_t> linear_output_shape(const at::Tensor& input, int64_t out_features) {
  std::vector<int64_t> shape(input.sizes().begin(), input.sizes().end() - 1);
  shape.push_back(out_features);
  return shape;
}

// grad_output has the output's shape and input's dtype; the saved state fits the activation
// (a bool mask for relu, the pre-activation in input's dtype for gelu / gelu_tanh / silu).
inline void check_linear_backward_args(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                                       const at::Tensor& saved, Act act, c10::string_view activation) {
  const auto shape = linear_output_shape(input, weight.size(0));
  TORCH_CHECK_VALUE(grad_output.sizes() == at::IntArrayRef(shape), "grad_output must have shape ", shape, ", got ",
              grad_output.sizes());
  TORCH_CHECK_TYPE(grad_output.scalar_type() == input.scalar_type(), "grad_output has dtype ", grad_output.scalar_type(),
              " but input has dtype ", input.scalar_type());
  if (act == Act::None) return;
  TORCH_CHECK_VALUE(saved.numel() == grad_output.numel(), "saved must have the shape of grad_output, got ", saved.sizes());
  TORCH_CHECK_TYPE(saved.scalar_type() == (act == Act::Relu ? at::kBool : input.scalar_type()), "saved has dtype ",
              saved.scalar_type(), ", which does not fit activation '", std::string(activation), "'");
  TORCH_CHECK(saved.device() == input.device(), "saved is on ", saved.device(), " but input is on ", input.device());
}

}  // namespace fusedops
