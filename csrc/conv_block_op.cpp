// The fused conv block as one registered op with its autograd in C++, for the native
// backends ("cpp" on CPU tensors, "cuda" on CUDA tensors): fusedops::native_conv_block.
//
// A FusedConvBlock whose backend resolves to a native one calls this op directly, so a
// forward is one dispatcher call with no Python between the module and the kernel, and a
// backward runs in C++ too. The kernels are the device-dispatched kernel ops of
// csrc/fusedops.cpp (native_conv_block_forward / _backward / _jvp), called through the
// dispatcher, so that torch.compile and torch.export trace them through their fake kernels.
//
// Autograd, as in fusedops/ops/conv_block_autograd.py: ConvBlockNode (a hand-written node,
// autograd_node.h) saves input, weight and the int offsets; its backward calls
// native_conv_block_backward. When the backward is itself recorded (create_graph=True), the
// backward and the tangent op run as the differentiable nodes ConvBlockBackwardFn and
// ConvBlockJvpFn, whose gradients are built from the same two ops (see that file for the
// formulas), so every derivative order runs the native kernels. Forward-mode AD: an input's
// tangent gives the output the tangent op's result (ConvBlockJvpFn when a backward is recorded
// through it); the node also implements compiled autograd's interface.
//
// Unbatched (C, H, W) input is handled here (a batch of one); argument errors come from the
// kernel ops' checks (csrc/conv_checks.h) and name the argument.

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "autograd_node.h"

#include <array>
#include <mutex>
#include <optional>
#include <tuple>
#include <vector>

namespace fusedops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using IntList = std::vector<int64_t>;

// The non-tensor arguments of the block (padding is [top, bottom, left, right]).
struct ConvArgs {
  IntList stride, padding, dilation;
  int64_t groups;
  IntList pool_kernel_size, pool_stride, pool_padding, pool_dilation;
  bool ceil_mode;
};

std::tuple<at::Tensor, at::Tensor> forward_op(const at::Tensor& input, const at::Tensor& weight,
                                              const std::optional<at::Tensor>& bias, const ConvArgs& a) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fusedops::native_conv_block_forward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                                    at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t,
                                                    at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                                                    bool)>();
  return op.call(input, weight, bias, a.stride, a.padding, a.dilation, a.groups, a.pool_kernel_size, a.pool_stride,
                 a.pool_padding, a.pool_dilation, a.ceil_mode);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_op(const at::Tensor& grad_output, const at::Tensor& input,
                                                           const at::Tensor& weight, const at::Tensor& offsets,
                                                           const ConvArgs& a, std::array<bool, 3> mask) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fusedops::native_conv_block_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, at::IntArrayRef,
              at::IntArrayRef, at::IntArrayRef, int64_t, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
              at::IntArrayRef, std::array<bool, 3>)>();
  return op.call(grad_output, input, weight, offsets, a.stride, a.padding, a.dilation, a.groups, a.pool_kernel_size,
                 a.pool_stride, a.pool_padding, a.pool_dilation, mask);
}

at::Tensor jvp_op(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offsets,
                  const std::optional<at::Tensor>& input_tangent, const std::optional<at::Tensor>& weight_tangent,
                  const std::optional<at::Tensor>& bias_tangent, const ConvArgs& a) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fusedops::native_conv_block_jvp", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, at::IntArrayRef,
                            at::IntArrayRef, at::IntArrayRef, int64_t, at::IntArrayRef, at::IntArrayRef,
                            at::IntArrayRef, at::IntArrayRef)>();
  return op.call(input, weight, offsets, input_tangent, weight_tangent, bias_tangent, a.stride, a.padding, a.dilation,
                 a.groups, a.pool_kernel_size, a.pool_stride, a.pool_padding, a.pool_dilation);
}

// ConvArgs travel through an AutogradContext in one opaque IValue (a capsule): one entry
// instead of one per argument, on every forward with autograd.
struct ArgsHolder : torch::CustomClassHolder {
  explicit ArgsHolder(ConvArgs a) : args(std::move(a)) {}
  ConvArgs args;
};

void save_args(AutogradContext* ctx, const ConvArgs& a) {
  ctx->saved_data["args"] = at::IValue::make_capsule(c10::make_intrusive<ArgsHolder>(a));
}

ConvArgs load_args(AutogradContext* ctx) {
  return static_cast<ArgsHolder*>(ctx->saved_data["args"].toCapsule().get())->args;
}

std::optional<at::Tensor> given(const at::Tensor& t) { return t.defined() ? std::optional(t) : std::nullopt; }

variable_list differentiable_backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                                      const at::Tensor& offsets, const ConvArgs& a, std::array<bool, 3> mask);
at::Tensor differentiable_jvp(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offsets,
                              const at::Tensor& input_tangent, const at::Tensor& weight_tangent,
                              const at::Tensor& bias_tangent, const ConvArgs& a);

// The backward op's three gradients; a recorded (differentiable) one when grad mode is on.
variable_list run_backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                           const at::Tensor& offsets, const ConvArgs& a, std::array<bool, 3> mask) {
  if (at::GradMode::is_enabled()) return differentiable_backward(grad_output, input, weight, offsets, a, mask);
  // Nothing to record: straight to the kernel. (Through the Autograd key the op would take
  // torch's boxed not-implemented fallback, which costs more than a small layer's kernel.)
  at::AutoDispatchBelowADInplaceOrView guard;
  auto [gi, gw, gb] = backward_op(grad_output, input, weight, offsets, a, mask);
  return {gi, gw, gb};
}

at::Tensor run_jvp(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offsets, const at::Tensor& tx,
                   const at::Tensor& tw, const at::Tensor& tb, const ConvArgs& a) {
  if (at::GradMode::is_enabled() && any_requires_grad({input, weight, tx, tw, tb}))
    return differentiable_jvp(input, weight, offsets, tx, tw, tb, a);
  at::AutoDispatchBelowADInplaceOrView guard;  // nothing to record (see run_backward)
  return jvp_op(input, weight, offsets, given(tx), given(tw), given(tb), a);
}

// The block's backward node (the block: output = max_pool(relu(conv(input, weight) + bias)));
// next edges input, weight, bias; saves input, weight and the offsets.
struct ConvBlockNode final : torch::autograd::Node {
  torch::autograd::SavedVariable input, weight, offsets;
  ConvArgs args;
  bool has_bias = false;

  std::string name() const override { return "FusedConvBlockBackward"; }

  // The lock (Node::mutex_), as torch asks of nodes that release saved variables: a backward
  // on another thread must not unpack them while they are released.
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    input.reset_data();
    weight.reset_data();
    offsets.reset_data();
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
    variable_list g = run_backward(grad, x, w, offsets.unpack(), args, mask);
    for (int i = 0; i < 3; ++i)
      if (!mask[i]) g[i] = at::Tensor();
    return g;
  }

  // Compiled autograd: the node's key (its saved tensors and arguments), and its backward
  // traced with the saved tensors swapped for the tracer's proxies (the backward op has a fake
  // kernel, so the graph holds fusedops::native_conv_block_backward).
  void compiled_args(torch::dynamo::autograd::CompiledNodeArgs& key) const override {
    key.collect(input, false);
    key.collect(weight, false);
    key.collect(offsets, false);
    key.collect(args.stride);
    key.collect(args.padding);
    key.collect(args.dilation);
    key.collect(args.groups);
    key.collect(args.pool_kernel_size);
    key.collect(args.pool_stride);
    key.collect(args.pool_padding);
    key.collect(args.pool_dilation);
    key.collect(args.ceil_mode);
    key.collect(has_bias);
  }

  variable_list apply_with_saved(const variable_list& grads, torch::dynamo::autograd::SwapSavedVariables& saved) override {
    check_not_recorded_under_compiled_autograd(name());
    saved.before(input);
    saved.before(weight);
    saved.before(offsets);
    variable_list result = apply(variable_list(grads));
    saved.after(input);
    saved.after(weight);
    saved.after(offsets);
    return result;
  }
};

// The block with derivatives: the forward kernel below autograd, then its backward node
// (when `record`) and its tangent (when `forward_ad`: an input has one).
at::Tensor conv_block_recorded(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               const ConvArgs& a, bool record, bool forward_ad) {
  at::Tensor out, offsets;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(out, offsets) = forward_op(input, weight, bias, a);
  }
  if (forward_ad) {
    const at::Tensor tx = tangent_of(input), tw = tangent_of(weight), tb = tangent_of(bias);
    // The tangent op at the same offsets (the max positions held fixed, as torch's max_pool2d
    // tangent does), itself differentiable when a backward is recorded through it.
    const at::Tensor t = run_jvp(primal_of(input), primal_of(weight), offsets, tx, tw, tb, a);
    out._set_fw_grad(t, kForwardLevel, /*is_inplace_op=*/false);
  }
  if (!record) return out;
  auto [node, owner] = make_node<ConvBlockNode>();
  node->has_bias = bias.has_value() && bias->defined();
  node->set_next_edges(torch::autograd::collect_next_edges(input, weight, node->has_bias ? *bias : at::Tensor()));
  node->input = torch::autograd::SavedVariable(input, false);
  node->weight = torch::autograd::SavedVariable(weight, false);
  node->offsets = torch::autograd::SavedVariable(offsets, false);
  node->args = a;
  set_gradient_function(out, owner);
  return out;
}

// The backward op as a node: gradients (grad_input, grad_weight, grad_bias) of the block.
class ConvBlockBackwardFn : public torch::autograd::Function<ConvBlockBackwardFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_output, const at::Tensor& input,
                               const at::Tensor& weight, const at::Tensor& offsets, const ConvArgs& a,
                               std::array<bool, 3> mask) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [gi, gw, gb] = backward_op(grad_output, input, weight, offsets, a, mask);
    ctx->save_for_backward({grad_output, input, weight, offsets});
    save_args(ctx, a);
    ctx->saved_data["mask"] = c10::List<bool>({mask[0], mask[1], mask[2]});
    variable_list out = {gi, gw, gb};
    for (int i = 0; i < 3; ++i)
      if (!mask[i]) ctx->mark_non_differentiable({out[i]});
    ctx->set_materialize_grads(false);
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const at::Tensor &dy = s[0], &x = s[1], &w = s[2], &offsets = s[3];
    const auto asked = ctx->saved_data["mask"].toBoolList();
    at::Tensor ggi = asked[0] ? grads[0] : at::Tensor(), ggw = asked[1] ? grads[1] : at::Tensor(),
               ggb = asked[2] ? grads[2] : at::Tensor();
    const ConvArgs a = load_args(ctx);
    at::Tensor g_dy, g_x, g_w;
    if (ctx->needs_input_grad(0) && (ggi.defined() || ggw.defined() || ggb.defined()))
      g_dy = run_jvp(x, w, offsets, ggi, ggw, ggb, a);
    if (ctx->needs_input_grad(1) && ggw.defined()) g_x = run_backward(dy, x, ggw, offsets, a, {true, false, false})[0];
    if (ctx->needs_input_grad(2) && ggi.defined()) g_w = run_backward(dy, ggi, w, offsets, a, {false, true, false})[1];
    return {g_dy, g_x, g_w, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// The tangent op as a node: linear in the tangents, bilinear in (input, weight_tangent) and
// (input_tangent, weight).
// The tangents are optional inputs (absent = zero); only present ones are graph inputs.
class ConvBlockJvpFn : public torch::autograd::Function<ConvBlockJvpFn> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& weight,
                            const at::Tensor& offsets, const std::optional<at::Tensor>& tx,
                            const std::optional<at::Tensor>& tw, const std::optional<at::Tensor>& tb,
                            const ConvArgs& a) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({input, weight, offsets, tx.value_or(at::Tensor()), tw.value_or(at::Tensor())});
    save_args(ctx, a);
    ctx->saved_data["has_tangent"] = c10::List<bool>({tx.has_value(), tw.has_value(), tb.has_value()});
    ctx->set_materialize_grads(false);
    return jvp_op(input, weight, offsets, tx, tw, tb, a);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    variable_list out(7);
    if (!grads[0].defined()) return out;
    const auto s = ctx->get_saved_variables();
    const at::Tensor &x = s[0], &w = s[1], &offsets = s[2], &tx = s[3], &tw = s[4];
    const ConvArgs a = load_args(ctx);
    // Graph inputs: input, weight, offsets, then the tangents that are present.
    const auto present = ctx->saved_data["has_tangent"].toBoolList();
    std::array<bool, 3> mask{};
    for (int i = 0, edge = 3; i < 3; ++i)
      if (present[i]) mask[i] = ctx->needs_input_grad(edge++);
    if (mask[0] || mask[1] || mask[2]) {
      const variable_list g = run_backward(grads[0], x, w, offsets, a, mask);
      for (int i = 0; i < 3; ++i)
        if (mask[i]) out[3 + i] = g[i];
    }
    if (ctx->needs_input_grad(0) && tw.defined())
      out[0] = run_backward(grads[0], x, tw, offsets, a, {true, false, false})[0];
    if (ctx->needs_input_grad(1) && tx.defined())
      out[1] = run_backward(grads[0], tx, w, offsets, a, {false, true, false})[1];
    return out;
  }
};

variable_list differentiable_backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                                      const at::Tensor& offsets, const ConvArgs& a, std::array<bool, 3> mask) {
  return ConvBlockBackwardFn::apply(grad_output, input, weight, offsets, a, mask);
}

at::Tensor differentiable_jvp(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& offsets,
                              const at::Tensor& input_tangent, const at::Tensor& weight_tangent,
                              const at::Tensor& bias_tangent, const ConvArgs& a) {
  return ConvBlockJvpFn::apply(input, weight, offsets, given(input_tangent), given(weight_tangent), given(bias_tangent),
                               a);
}

// The flat argument list of native_conv_block (ConvBlockParams.native_args in Python):
// stride (2), padding (4), dilation (2), groups, pooled (0/1), pool kernel, stride, padding,
// dilation (2 each), ceil mode.
ConvArgs unpack_args(at::IntArrayRef v) {
  TORCH_CHECK_VALUE(v.size() == 19, "native_conv_block: expected 19 geometry values, got ", v.size());
  const auto pair = [&](size_t i) { return IntList{v[i], v[i + 1]}; };
  return {pair(0), IntList(v.begin() + 2, v.begin() + 6), pair(6), v[8],
          v[9] ? pair(10) : IntList{}, pair(12), pair(14), pair(16), v[18] != 0};
}

// Runs `block` on a batch of one for unbatched (C, H, W) input.
template <typename F>
at::Tensor batched(const at::Tensor& input, F&& block) {
  if (input.dim() != 3) return block(input);
  return block(input.unsqueeze(0)).squeeze(0);
}

at::Tensor conv_block_autograd(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               at::IntArrayRef geometry) {
  const ConvArgs a = unpack_args(geometry);
  const bool record = at::GradMode::is_enabled() && (input.requires_grad() || weight.requires_grad() ||
                                                     (bias.has_value() && bias->requires_grad()));
  const bool forward_ad = tangent_of(input).defined() || tangent_of(weight).defined() || tangent_of(bias).defined();
  if (!record && !forward_ad) {  // no derivative to set up
    at::AutoDispatchBelowADInplaceOrView guard;
    return batched(input, [&](const at::Tensor& x) { return std::get<0>(forward_op(x, weight, bias, a)); });
  }
  return batched(input,
                 [&](const at::Tensor& x) { return conv_block_recorded(x, weight, bias, a, record, forward_ad); });
}

// Below autograd (inference mode, tracing): the forward kernel alone.
at::Tensor conv_block_plain(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                            at::IntArrayRef geometry) {
  const ConvArgs a = unpack_args(geometry);
  return batched(input, [&](const at::Tensor& x) { return std::get<0>(forward_op(x, weight, bias, a)); });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fusedops, m) {
  // geometry: the block's non-tensor arguments as one flat list (see unpack_args): a list
  // converts faster than nine arguments on every call.
  m.def("native_conv_block(Tensor input, Tensor weight, Tensor? bias, int[] geometry) -> Tensor");
}

TORCH_LIBRARY_IMPL(fusedops, Autograd, m) { m.impl("native_conv_block", &conv_block_autograd); }

TORCH_LIBRARY_IMPL(fusedops, CompositeExplicitAutograd, m) { m.impl("native_conv_block", &conv_block_plain); }

}  // namespace fusedops
