// Fused Linear + bias + activation on the CPU: the "cpp" backend.
//
// Forward: z = x @ w^T + b (one BLAS addmm over the flattened leading dims), then one
// parallel pass computes y = act(z) and the state the derivative needs: a bool mask z > 0
// (NaN counts as on, as torch's ReLU backward) for relu, z itself for gelu / gelu_tanh /
// silu, nothing for no activation.
// Backward: one parallel pass dz = dy * act'(z), then dx = dz @ w, dw = dz^T @ x (BLAS),
// db = sum over rows of dz (in the pass itself for a few rows). The activations and their
// derivatives are computed here, not by torch's activation ops; the formulas are those of
// fusedops/ops/linear.py.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../linear_checks.h"
#include "cpu_checks.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <tuple>

namespace fusedops {
namespace {

// Rows of t as a (rows, last) matrix: the product of its leading sizes (reshape's -1 cannot
// infer it when the last size is 0).
int64_t rows_of(const at::Tensor& t) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) rows *= t.size(d);
  return rows;
}

constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kSqrt2OverPi = 0.79788456080286535588;
constexpr double kGeluTanhC = 0.044715;

template <typename T>
T activate(T z, Act act) {
  switch (act) {
    case Act::Relu: return (z > T(0) || std::isnan(z)) ? z : T(0);
    case Act::Gelu: return T(0.5) * z * (T(1) + std::erf(z * T(kInvSqrt2)));
    case Act::GeluTanh:
      return T(0.5) * z * (T(1) + std::tanh(T(kSqrt2OverPi) * (z + T(kGeluTanhC) * z * z * z)));
    case Act::Silu: return z / (T(1) + std::exp(-z));
    default: return z;
  }
}

template <typename T>
T activation_grad(T z, Act act) {  // gelu, gelu_tanh, silu
  switch (act) {
    case Act::Gelu:
      return T(0.5) * (T(1) + std::erf(z * T(kInvSqrt2))) + z * std::exp(T(-0.5) * z * z) * T(kInvSqrt2Pi);
    case Act::GeluTanh: {
      const T t = std::tanh(T(kSqrt2OverPi) * (z + T(kGeluTanhC) * z * z * z));
      return T(0.5) * (T(1) + t) + T(0.5) * z * (T(1) - t * t) * T(kSqrt2OverPi) * (T(1) + T(3 * kGeluTanhC) * z * z);
    }
    default: {
      const T s = T(1) / (T(1) + std::exp(-z));
      return s * (T(1) + z * (T(1) - s));
    }
  }
}

void check_inputs(const at::Tensor& input, const at::Tensor& weight) {
  TORCH_CHECK_TYPE(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble ||
                  input.scalar_type() == at::kBFloat16,
              "the cpp backend supports float32, float64 and bfloat16 input, got ", input.scalar_type());
  TORCH_CHECK(input.device().is_cpu() && weight.device().is_cpu(), "input and weight must be CPU tensors");
  TORCH_CHECK_TYPE(weight.scalar_type() == input.scalar_type(), "weight has dtype ", weight.scalar_type(),
              " but input has dtype ", input.scalar_type());
  check_linear_shapes(input, weight);
}

std::tuple<at::Tensor, at::Tensor> linear_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                                                      const std::optional<at::Tensor>& bias,
                                                      c10::string_view activation) {
  FUSEDOPS_NO_AUTOCAST;
  check_inputs(input, weight);
  const Act act = parse_activation(activation);
  if (input.scalar_type() == at::kBFloat16) {  // float32 kernels on float32 copies, rounded back
    if (bias.has_value() && bias->defined())
      TORCH_CHECK_TYPE(bias->scalar_type() == input.scalar_type(), "bias has dtype ", bias->scalar_type(),
                  " but input has dtype ", input.scalar_type());
    auto [y, saved] = linear_forward_cpu(
        input.to(at::kFloat), weight.to(at::kFloat),
        bias.has_value() && bias->defined() ? std::optional(bias->to(at::kFloat)) : bias, activation);
    return {y.to(at::kBFloat16), saved.scalar_type() == at::kBool ? saved : saved.to(at::kBFloat16)};
  }
  const int64_t n = weight.size(0);
  // (2-D tensors as they are: a reshape is a dispatcher call, ~1 us a call on small layers)
  const at::Tensor x = input.dim() == 2 ? input : input.reshape({rows_of(input), weight.size(1)});
  at::Tensor z;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == n, "bias must have shape (", n, ",), got ", bias->sizes());
    TORCH_CHECK_TYPE(bias->scalar_type() == input.scalar_type(), "bias has dtype ", bias->scalar_type(),
                " but input has dtype ", input.scalar_type());
    z = at::addmm(*bias, x, weight.t());
  } else {
    z = at::mm(x, weight.t());
  }
  const bool flat = input.dim() == 2;
  const auto shape = linear_output_shape(input, n);
  if (act == Act::None) return {flat ? z : z.view(shape), at::empty({0}, input.options())};
  // relu saves only its mask, so the activation overwrites z; the others keep z as their state.
  at::Tensor y = act == Act::Relu ? z : at::empty_like(z);
  at::Tensor saved = act == Act::Relu ? at::empty(z.sizes(), input.options().dtype(at::kBool)) : z;
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "linear_forward_cpu", [&] {
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    bool* mp = act == Act::Relu ? saved.mutable_data_ptr<bool>() : nullptr;
    at::parallel_for(0, z.numel(), 16384, [&](int64_t begin, int64_t end) {
      if (mp) {  // relu, in place (yp == zp), as branch-free selects the compiler vectorises
        for (int64_t i = begin; i < end; ++i) {
          const scalar_t v = zp[i];
          const bool on = !(v <= scalar_t(0));  // NaN counts as on
          mp[i] = on;
          yp[i] = on ? v : scalar_t(0);
        }
      } else {
        for (int64_t i = begin; i < end; ++i) yp[i] = activate(zp[i], act);
      }
    });
  });
  if (flat) return {y, saved};
  return {y.view(shape), saved.view(shape)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_cpu(const at::Tensor& grad_output,
                                                                   const at::Tensor& input, const at::Tensor& weight,
                                                                   const at::Tensor& saved, c10::string_view activation,
                                                                   std::array<bool, 3> output_mask) {
  FUSEDOPS_NO_AUTOCAST;
  check_inputs(input, weight);
  const Act act = parse_activation(activation);
  check_linear_backward_args(grad_output, input, weight, saved, act, activation);
  if (input.scalar_type() == at::kBFloat16) {  // float32 kernels on float32 copies, rounded back
    auto grads = linear_backward_cpu(grad_output.to(at::kFloat), input.to(at::kFloat), weight.to(at::kFloat),
                                     saved.scalar_type() == at::kBFloat16 ? saved.to(at::kFloat) : saved, activation,
                                     output_mask);
    return {std::get<0>(grads).to(at::kBFloat16), std::get<1>(grads).to(at::kBFloat16),
            std::get<2>(grads).to(at::kBFloat16)};
  }
  const int64_t n = weight.size(0), k = weight.size(1);
  at::Tensor dz = grad_output.dim() == 2 ? grad_output : grad_output.reshape({rows_of(grad_output), n});
  at::Tensor gb;
  if (act != Act::None) {
    // dy is read through its strides: the gradient of a sum arrives expanded (all strides 0),
    // and a contiguous copy of it cost more than this pass on small layers.
    const at::Tensor g = dz;
    const at::Tensor s = (saved.dim() == 2 ? saved : saved.reshape({g.size(0), n})).contiguous();
    const int64_t rows = g.size(0);
    dz = at::empty({rows, n}, g.options());
    const int64_t gs0 = g.stride(0), gs1 = g.stride(1);
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1));
    // A few rows (one task) sum the bias gradient in the same pass, in row order, saving a
    // reduction op's set-up, which costs more than such a layer's pass. Past kSumRows the sum
    // is at::sum's (pairwise, so its rounding error does not grow with the batch).
    constexpr int64_t kSumRows = 32;
    const bool sum_here = output_mask[2] && rows <= std::min(grain, kSumRows);
    if (sum_here) gb = at::zeros({n}, g.options());
    AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "linear_backward_cpu", [&] {
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      scalar_t* dp = dz.mutable_data_ptr<scalar_t>();
      scalar_t* bp = sum_here ? gb.mutable_data_ptr<scalar_t>() : nullptr;
      const bool* mp = act == Act::Relu ? s.const_data_ptr<bool>() : nullptr;
      const scalar_t* zp = act == Act::Relu ? nullptr : s.const_data_ptr<scalar_t>();
      at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const scalar_t* gr = gp + r * gs0;
          scalar_t* dr = dp + r * n;
          if (mp) {  // relu: a branch-free select
            const bool* mr = mp + r * n;
            if (gs1 == 1) {
              for (int64_t j = 0; j < n; ++j) dr[j] = mr[j] ? gr[j] : scalar_t(0);
            } else {
              for (int64_t j = 0; j < n; ++j) dr[j] = mr[j] ? gr[j * gs1] : scalar_t(0);
            }
          } else {
            const scalar_t* zr = zp + r * n;
            for (int64_t j = 0; j < n; ++j) dr[j] = gr[j * gs1] * activation_grad(zr[j], act);
          }
          if (bp)
            for (int64_t j = 0; j < n; ++j) bp[j] += dr[j];
        }
      });
    });
  }
  const auto empty = [&] { return at::empty({0}, input.options()); };
  at::Tensor gi = output_mask[0] ? (input.dim() == 2 ? at::mm(dz, weight) : at::mm(dz, weight).view(input.sizes()))
                                  : empty();
  at::Tensor gw =
      output_mask[1] ? at::mm(dz.t(), input.dim() == 2 ? input : input.reshape({rows_of(input), k})) : empty();
  if (!gb.defined()) gb = output_mask[2] ? dz.sum(0) : empty();
  return {gi, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedops, CPU, m) {
  m.impl("native_linear_forward", &linear_forward_cpu);
  m.impl("native_linear_backward", &linear_backward_cpu);
}

}  // namespace fusedops
