// A hand-written autograd node for the native ops' first-order backward.
//
// torch::autograd::Function builds a general node on every forward (an AutogradContext with
// a saved-data map, output wrapping for views and dirty tensors, a lock and a copy of the
// saved variables on every backward). The fused ops need none of that: their forward makes
// one fresh output and saves a fixed set of tensors. A Node subclass that holds its saved
// tensors as members, as torch's generated nodes do, costs less host time per call on both
// sides, which on a GPU is what a small layer costs.
//
// Nodes are owned through the pointer type of torch::autograd::Edge: c10::intrusive_ptr in
// recent torch, std::shared_ptr before; make_node() builds either.
//
// Like torch's generated nodes, the native nodes implement compiled_args / apply_with_saved
// (compiled autograd traces their backward ops through the ops' fake kernels), and the ops'
// autograd kernels propagate tangents for forward-mode AD with the helpers below.

#pragma once

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/dynamo/compiled_autograd.h>

#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

namespace fusedops {

using NodePtr = decltype(torch::autograd::Edge::function);

template <typename P>
struct IsSharedPtr : std::false_type {};
template <typename T>
struct IsSharedPtr<std::shared_ptr<T>> : std::true_type {};

// A new node of type T (a torch::autograd::Node) and the owning pointer that edges hold.
template <typename T>
std::pair<T*, NodePtr> make_node() {
  if constexpr (IsSharedPtr<NodePtr>::value) {
    // torch's deleter, which frees a long chain of nodes without recursing (named through T,
    // so that it is looked up only where this branch is compiled: torch without it has no
    // shared_ptr nodes).
    std::shared_ptr<T> node(new T(), [](T* raw) { deleteNode(raw); });
    T* raw = node.get();
    return {raw, NodePtr(std::move(node))};
  } else {
    auto node = c10::make_intrusive<T>();
    T* raw = node.get();
    return {raw, NodePtr(std::move(node))};
  }
}

// Makes `node` the gradient function of the fresh output `out` (its input 0).
inline void set_gradient_function(const at::Tensor& out, const NodePtr& node) {
  const auto input_nr = node->add_input_metadata(out);
  torch::autograd::impl::set_gradient_edge(out, {node, input_nr});
}

// Forward-mode AD (torch.autograd.forward_ad, torch.func.jvp) uses level 0, as torch's own
// kernels do.
constexpr uint64_t kForwardLevel = 0;

// The tangent of `t` (undefined when `t` is, or has none).
inline at::Tensor tangent_of(const at::Tensor& t) { return t.defined() ? t._fw_grad(kForwardLevel) : at::Tensor(); }

inline at::Tensor tangent_of(const std::optional<at::Tensor>& t) {
  return t.has_value() ? tangent_of(*t) : at::Tensor();
}

// `t` without its tangent, for computing a tangent: formulas take the primal values, so that
// the ops they run do not propagate tangents of their own.
inline at::Tensor primal_of(const at::Tensor& t) {
  return t.defined() && t._fw_grad(kForwardLevel).defined() ? t._fw_primal(kForwardLevel) : t;
}

inline std::optional<at::Tensor> primal_of(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional(primal_of(*t)) : std::nullopt;
}

// A node's backward with tangents (forward mode over reverse mode, e.g. a Hessian-vector
// product as the tangent of a gradient): the backward kernels do not propagate them, so this
// raises rather than return a gradient without its tangent.
inline void check_no_tangents(const std::string& node, std::initializer_list<at::Tensor> ts) {
  for (const auto& t : ts)
    TORCH_CHECK_NOT_IMPLEMENTED(!t.defined() || !t._fw_grad(kForwardLevel).defined(), node,
                                ": forward-mode AD through the backward (forward over reverse) is not supported; "
                                "differentiate the gradient in reverse mode (create_graph=True) instead");
}

// Compiled autograd traces the kernel ops of a backward, which have no derivatives of their
// own, so a recorded backward (create_graph=True) under it would lose its graph: raise.
inline void check_not_recorded_under_compiled_autograd(const std::string& node) {
  TORCH_CHECK_NOT_IMPLEMENTED(!at::GradMode::is_enabled(), node,
                              ": compiled autograd of a backward with create_graph=True is not supported; "
                              "run that backward without compiled autograd");
}

inline bool any_requires_grad(std::initializer_list<at::Tensor> ts) {
  for (const auto& t : ts)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

}  // namespace fusedops
