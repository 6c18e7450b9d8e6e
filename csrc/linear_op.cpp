// The fused linear layer as one registered op with its autograd in C++, for the native
// backends ("cpp" on CPU tensors, "cuda" on CUDA tensors): fusedops::native_linear.
//
// A FusedLinear whose backend resolves to a native one calls this op directly: one
// dispatcher call per forward, the backward in C++. The kernels are the kernel ops
// native_linear_forward / _backward (csrc/fusedops.cpp), called through the dispatcher so
// that torch.compile and torch.export trace them through their fake kernels.
//
// Autograd, as in fusedops/ops/linear_autograd.py (the formulas are there): LinearNode (a
// hand-written node, autograd_node.h) saves input, weight and the activation state (and bias
// for gelu/gelu_tanh/silu); its backward calls native_linear_backward.
// When the backward is recorded (create_graph=True), the saved pre-activation z of
// gelu/gelu_tanh/silu is re-attached to (input, weight, bias) by PreactivationFn and the
// backward op runs as LinearBackwardFn, whose own gradient uses the fused linear for
// t = ggi @ w^T + x @ ggw^T + ggb and act'(z), act''(z) for the elementwise factors.
// Forward-mode AD: the output's tangent is act'(z) * (tx @ w^T + x @ tw^T + tb), built the same way.

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "autograd_node.h"

#include <array>
#include <cmath>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>

namespace fusedops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<at::Tensor, at::Tensor> forward_op(const at::Tensor& input, const at::Tensor& weight,
                                              const std::optional<at::Tensor>& bias, const std::string& act) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fusedops::native_linear_forward", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                       const std::optional<at::Tensor>&,
                                                                       c10::string_view)>();
  return op.call(input, weight, bias, act);
}

variable_list backward_op(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                          const at::Tensor& saved, const std::string& act, std::array<bool, 3> mask) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fusedops::native_linear_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                const at::Tensor&, const at::Tensor&, c10::string_view,
                                                                std::array<bool, 3>)>();
  auto [gi, gw, gb] = op.call(grad_output, input, weight, saved, act, mask);
  return {gi, gw, gb};
}

bool smooth(const std::string& act) { return act == "gelu" || act == "gelu_tanh" || act == "silu"; }

std::optional<at::Tensor> given(const at::Tensor& t) { return t.defined() ? std::optional(t) : std::nullopt; }

constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kSqrt2OverPi = 0.79788456080286535588;
constexpr double kGeluTanhC = 0.044715;

at::Tensor promoted(const at::Tensor& z) { return z.to(at::promote_types(z.scalar_type(), at::kFloat)); }

// act'(z) for gelu, gelu_tanh, silu, in float32 (float64 for float64 z).
at::Tensor activation_derivative(const at::Tensor& z_in, const std::string& act) {
  const at::Tensor z = promoted(z_in);
  if (act == "gelu") return 0.5 * (1.0 + at::erf(z * kInvSqrt2)) + z * at::exp(-0.5 * z * z) * kInvSqrt2Pi;
  if (act == "gelu_tanh") {
    const at::Tensor t = at::tanh(kSqrt2OverPi * (z + kGeluTanhC * z * z * z));
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * kSqrt2OverPi * (1.0 + 3.0 * kGeluTanhC * z * z);
  }
  const at::Tensor s = at::sigmoid(z);  // silu
  return s * (1.0 + z * (1.0 - s));
}

// act''(z), likewise.
at::Tensor activation_second_derivative(const at::Tensor& z_in, const std::string& act) {
  const at::Tensor z = promoted(z_in);
  if (act == "gelu") return at::exp(-0.5 * z * z) * kInvSqrt2Pi * (2.0 - z * z);
  if (act == "gelu_tanh") {
    const at::Tensor t = at::tanh(kSqrt2OverPi * (z + kGeluTanhC * z * z * z));
    const at::Tensor du = kSqrt2OverPi * (1.0 + 3.0 * kGeluTanhC * z * z);
    const at::Tensor d2u = (kSqrt2OverPi * 6.0 * kGeluTanhC) * z;
    return (1.0 - t * t) * (du - z * t * du * du + 0.5 * z * d2u);
  }
  const at::Tensor s = at::sigmoid(z);  // silu
  return s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s));
}

variable_list run_backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                           const at::Tensor& saved, const std::string& act, std::array<bool, 3> mask);
at::Tensor linear_autograd(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           c10::string_view activation);

// The pre-activation's tangent tx @ w^T + x @ tw^T + tb (undefined tangents are zero; at
// least one is defined), through the fused linear itself, so that it is differentiable.
// `like` is the output, whose shape a bias tangent alone is expanded to.
at::Tensor preactivation_tangent(const at::Tensor& x, const at::Tensor& w, const at::Tensor& tx, const at::Tensor& tw,
                                 at::Tensor tb, const at::Tensor& like) {
  at::Tensor t;
  if (tx.defined()) {
    t = linear_autograd(tx, w, given(tb), "");
    tb = at::Tensor();
  }
  if (tw.defined()) {
    const at::Tensor term = linear_autograd(x, tw, given(tb), "");
    t = t.defined() ? t + term : term;
  } else if (!t.defined()) {
    t = tb.expand_as(like);
  }
  return t;
}

// The output's tangent act'(z) * t from the pre-activation's tangent t and the saved
// activation state (the relu mask, or z for gelu/gelu_tanh/silu), in `dtype`.
at::Tensor activation_tangent(const at::Tensor& t, const at::Tensor& saved, const std::string& act,
                              at::ScalarType dtype) {
  if (act.empty()) return t;
  if (act == "relu") return at::where(saved, t, at::zeros({}, t.options()));
  return (t * activation_derivative(saved, act)).to(dtype);
}

// The layer's backward node (the layer: output = act(input @ weight^T + bias)); next edges
// input, weight, bias. A recorded backward (create_graph=True) runs as LinearBackwardFn, with
// the saved pre-activation of a smooth activation re-attached to (input, weight, bias).
struct LinearNode final : torch::autograd::Node {
  torch::autograd::SavedVariable input, weight, saved, bias;  // bias: smooth activations only
  bool has_bias = false;
  std::string act;

  std::string name() const override { return "FusedLinearBackward"; }

  // The lock (Node::mutex_), as torch asks of nodes that release saved variables: a backward
  // on another thread must not unpack them while they are released.
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    input.reset_data();
    weight.reset_data();
    saved.reset_data();
    bias.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    // An undefined gradient is a zero one, materialised as torch::autograd::Function does: the
    // inputs get zero gradients, as eager's do (a gradient penalty reaches the biases so), not None.
    const at::Tensor grad = grads[0].defined() ? grads[0] : input_metadata(0).zeros_like();
    const std::array<bool, 3> mask = {task_should_compute_output(0), task_should_compute_output(1),
                                      has_bias && task_should_compute_output(2)};
    const at::Tensor x = input.unpack(), w = weight.unpack();
    check_no_tangents(name(), {grad, x, w});
    at::Tensor state = saved.unpack();
    if (reattaches()) state = reattach_preactivation(state, x, w, bias.unpack());
    variable_list g = run_backward(grad, x, w, state, act, mask);
    for (int i = 0; i < 3; ++i)
      if (!mask[i]) g[i] = at::Tensor();
    return g;
  }

  // Compiled autograd: the node's key and its backward traced with the saved tensors swapped
  // for the tracer's proxies (as ConvBlockNode's, csrc/conv_block_op.cpp).
  // The saved bias is read only by a recorded backward (apply): collected only then, since
  // the tracer rejects a saved tensor that the traced backward does not use.
  void compiled_args(torch::dynamo::autograd::CompiledNodeArgs& key) const override {
    key.collect(input, false);
    key.collect(weight, false);
    key.collect(saved, false);
    const bool reads_bias = reattaches();
    key.collect(reads_bias);
    if (reads_bias) key.collect(bias, false);
    key.collect(has_bias);
    key.collect(act);
  }

  variable_list apply_with_saved(const variable_list& grads, torch::dynamo::autograd::SwapSavedVariables& swap) override {
    check_not_recorded_under_compiled_autograd(name());
    const bool reads_bias = reattaches();
    swap.before(input);
    swap.before(weight);
    swap.before(saved);
    if (reads_bias) swap.before(bias);
    variable_list result = apply(variable_list(grads));
    swap.after(input);
    swap.after(weight);
    swap.after(saved);
    if (reads_bias) swap.after(bias);
    return result;
  }

  // Whether apply re-attaches the pre-activation (a recorded backward of a smooth activation).
  bool reattaches() const { return at::GradMode::is_enabled() && smooth(act); }

  static at::Tensor reattach_preactivation(const at::Tensor& z, const at::Tensor& input, const at::Tensor& weight,
                                           const at::Tensor& bias);
};

// The layer with derivatives: the forward kernel below autograd, then its backward node (when
// `record`) and its tangent (when `forward_ad`: an input has one).
at::Tensor linear_recorded(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           const std::string& act, bool record, bool forward_ad) {
  at::Tensor out, saved;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(out, saved) = forward_op(input, weight, bias, act);
  }
  const bool has_bias = bias.has_value() && bias->defined();
  if (forward_ad) {
    const at::Tensor tx = tangent_of(input), tw = tangent_of(weight), tb = tangent_of(bias);
    const at::Tensor x = primal_of(input), w = primal_of(weight), b = has_bias ? primal_of(*bias) : at::Tensor();
    at::Tensor state = saved;
    if (smooth(act) && at::GradMode::is_enabled() && any_requires_grad({x, w, b}))
      state = LinearNode::reattach_preactivation(saved, x, w, b);  // act'(z) differentiable too
    const at::Tensor t = preactivation_tangent(x, w, tx, tw, tb, out);
    out._set_fw_grad(activation_tangent(t, state, act, out.scalar_type()), kForwardLevel, /*is_inplace_op=*/false);
  }
  if (!record) return out;
  auto [node, owner] = make_node<LinearNode>();
  node->set_next_edges(torch::autograd::collect_next_edges(input, weight, has_bias ? *bias : at::Tensor()));
  node->input = torch::autograd::SavedVariable(input, false);
  node->weight = torch::autograd::SavedVariable(weight, false);
  node->saved = torch::autograd::SavedVariable(saved, false);
  if (has_bias && smooth(act)) node->bias = torch::autograd::SavedVariable(*bias, false);
  node->has_bias = has_bias;
  node->act = act;
  set_gradient_function(out, owner);
  return out;
}

// z (the saved pre-activation) as a differentiable function of (input, weight, bias): returns
// z unchanged; a gradient of it goes back through the adjoint of z = input @ weight^T + bias.
class PreactivationFn : public torch::autograd::Function<PreactivationFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& z, const at::Tensor& input,
                            const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
    ctx->save_for_backward({input, weight, bias.value_or(at::Tensor())});
    return z.view_as(z);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(4);
    const auto s = ctx->get_saved_variables();
    const std::array<bool, 3> mask = {ctx->needs_input_grad(1), ctx->needs_input_grad(2),
                                      s[2].defined() && ctx->needs_input_grad(3)};
    variable_list g = run_backward(grads[0], s[0], s[1], at::empty({0}, s[0].options()), "", mask);
    return {at::Tensor(), mask[0] ? g[0] : at::Tensor(), mask[1] ? g[1] : at::Tensor(), mask[2] ? g[2] : at::Tensor()};
  }
};

at::Tensor LinearNode::reattach_preactivation(const at::Tensor& z, const at::Tensor& input,
                                              const at::Tensor& weight, const at::Tensor& bias) {
  return PreactivationFn::apply(z, input, weight, given(bias));
}

// The backward op as a node: (grad_input, grad_weight, grad_bias) of the layer.
class LinearBackwardFn : public torch::autograd::Function<LinearBackwardFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_output, const at::Tensor& input,
                               const at::Tensor& weight, const at::Tensor& saved, const std::string& act,
                               std::array<bool, 3> mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    variable_list out = backward_op(grad_output, input, weight, saved, act, mask);
    ctx->save_for_backward({grad_output, input, weight, saved});
    ctx->saved_data["act"] = act;
    ctx->saved_data["mask"] = c10::List<bool>({mask[0], mask[1], mask[2]});
    for (int i = 0; i < 3; ++i)
      if (!mask[i]) ctx->mark_non_differentiable({out[i]});
    ctx->set_materialize_grads(false);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const at::Tensor &dy = s[0], &x = s[1], &w = s[2], &saved = s[3];
    const std::string act = ctx->saved_data["act"].toStringRef();
    const auto asked = ctx->saved_data["mask"].toBoolList();
    const at::Tensor ggi = asked[0] ? grads[0] : at::Tensor(), ggw = asked[1] ? grads[1] : at::Tensor();
    at::Tensor ggb = asked[2] ? grads[2] : at::Tensor();
    at::Tensor g_dy, g_x, g_w, g_saved;
    if ((ctx->needs_input_grad(0) || ctx->needs_input_grad(3)) && (ggi.defined() || ggw.defined() || ggb.defined())) {
      const at::Tensor t = preactivation_tangent(x, w, ggi, ggw, ggb, dy);
      g_dy = activation_tangent(t, saved, act, dy.scalar_type());
      if (smooth(act) && ctx->needs_input_grad(3))
        g_saved = (t * dy * activation_second_derivative(saved, act)).to(saved.scalar_type());
      if (!ctx->needs_input_grad(0)) g_dy = at::Tensor();
    }
    if (ctx->needs_input_grad(1) && ggw.defined()) g_x = run_backward(dy, x, ggw, saved, act, {true, false, false})[0];
    if (ctx->needs_input_grad(2) && ggi.defined()) g_w = run_backward(dy, ggi, w, saved, act, {false, true, false})[1];
    return {g_dy, g_x, g_w, g_saved, at::Tensor(), at::Tensor()};
  }
};

variable_list run_backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                           const at::Tensor& saved, const std::string& act, std::array<bool, 3> mask) {
  if (at::GradMode::is_enabled()) return LinearBackwardFn::apply(grad_output, input, weight, saved, act, mask);
  // Nothing to record: straight to the kernel. (Through the Autograd key the op would take
  // torch's boxed not-implemented fallback, which costs more than a small layer's kernel.)
  at::AutoDispatchBelowADInplaceOrView guard;
  return backward_op(grad_output, input, weight, saved, act, mask);
}

at::Tensor linear_autograd(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                           c10::string_view activation) {
  const bool record = at::GradMode::is_enabled() && (input.requires_grad() || weight.requires_grad() ||
                                                     (bias.has_value() && bias->requires_grad()));
  const bool forward_ad = tangent_of(input).defined() || tangent_of(weight).defined() || tangent_of(bias).defined();
  if (!record && !forward_ad) {  // no derivative to set up
    at::AutoDispatchBelowADInplaceOrView guard;
    return std::get<0>(forward_op(input, weight, bias, std::string(activation)));
  }
  return linear_recorded(input, weight, bias, std::string(activation), record, forward_ad);
}

// Below autograd (inference mode, tracing): the forward kernel alone.
at::Tensor linear_plain(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        c10::string_view activation) {
  return std::get<0>(forward_op(input, weight, bias, std::string(activation)));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fusedops, m) {
  m.def("native_linear(Tensor input, Tensor weight, Tensor? bias, str activation) -> Tensor");
}

TORCH_LIBRARY_IMPL(fusedops, Autograd, m) { m.impl("native_linear", &linear_autograd); }

TORCH_LIBRARY_IMPL(fusedops, CompositeExplicitAutograd, m) { m.impl("native_linear", &linear_plain); }

}  // namespace fusedops
