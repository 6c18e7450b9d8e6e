// The Python module fusedops._C.
//
// Importing it loads this library, which runs the op registrations (csrc/fusedops.cpp, the
// kernels' and the one-call ops' TORCH_LIBRARY blocks). The module carries whether the CUDA
// kernels were compiled in, and typed entries of the two one-call ops.
//
// For tests: the direct convolution's register tile (csrc/cpu/direct_conv.h), pinned so
// that both tiles run on any CPU, and whether that convolution runs here at all.
//
// The entries call the same registered ops through the dispatcher (autograd, dispatch modes
// and the profiler see an ordinary op call), but with typed arguments: torch.ops' generic
// entry converts every argument through the schema (and looks for __torch_function__
// overrides), about 2 us a call, which is a third of a small layer's host time. A module's
// repeat-call path uses them only where nothing could override the call
// (fusedops/functional.py: native_entries).

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/extension.h>

#include <optional>
#include <string>
#include <vector>

#include "cpu/direct_conv.h"

namespace fusedops {
namespace {

at::Tensor native_conv_block_entry(const at::Tensor& input, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias, const std::vector<int64_t>& geometry) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fusedops::native_conv_block", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                               at::IntArrayRef)>();
  return op.call(input, weight, bias, geometry);
}

at::Tensor native_linear_entry(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                               const std::string& activation) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fusedops::native_linear", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                               c10::string_view)>();
  return op.call(input, weight, bias, activation);
}

void set_cpu_direct_tile_channels(int64_t channels) {
  TORCH_CHECK_VALUE(channels == 0 || channels == direct_conv::kCo || channels == direct_conv::kCoAvx2,
                    "channels must be 0 (chosen by the CPU), ", direct_conv::kCoAvx2, " or ", direct_conv::kCo,
                    ", got ", channels);
  direct_conv::tile_channels_override.store(channels, std::memory_order_relaxed);
}

bool cpu_direct_conv_available() { return vector_clones_fast(); }

}  // namespace
}  // namespace fusedops

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#ifdef FUSEDOPS_WITH_CUDA
  m.attr("WITH_CUDA") = 1;
#else
  m.attr("WITH_CUDA") = 0;
#endif
  m.def("native_conv_block", &fusedops::native_conv_block_entry,
        "fusedops::native_conv_block(input, weight, bias, geometry) through the dispatcher, typed");
  m.def("native_linear", &fusedops::native_linear_entry,
        "fusedops::native_linear(input, weight, bias, activation) through the dispatcher, typed");
  m.def("_set_cpu_direct_tile_channels", &fusedops::set_cpu_direct_tile_channels, pybind11::arg("channels"),
        "Output channels per register tile of the CPU direct convolution: 3 or 4 (for tests), 0 to let the "
        "CPU choose");
  m.def("_cpu_direct_conv_available", &fusedops::cpu_direct_conv_available,
        "Whether the CPU direct convolution runs here (AVX2 and FMA, a build with its vector clones)");
}
