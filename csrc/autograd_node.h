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

#pragma once

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/saved_variable.h>

#include <memory>
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

}  // namespace fusedops
