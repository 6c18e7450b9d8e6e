// Checks and dispatch shared by the CPU kernels of the fused conv block (conv_block_forward.cpp,
// conv_block_backward.cpp, conv_block_jvp.cpp).

#pragma once

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <cstdint>

namespace fusedops {

// float32 and float64 run natively; bfloat16 (CPU autocast's dtype) runs the float32 kernels
// on float32 copies and rounds the results back, like an fp32-accumulating bf16 kernel.
inline void check_cpu_dtype(const at::Tensor& input) {
  const auto t = input.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kBFloat16,
              "the cpp backend supports float32, float64 and bfloat16 input, got ", t);
}

inline at::Tensor to_float(const at::Tensor& t) { return t.to(at::kFloat); }

inline void check_float_cpu(const at::Tensor& t, const char* name, const at::Tensor& input) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == input.scalar_type(), name, " has dtype ", t.scalar_type(),
              " but input has dtype ", input.scalar_type());
}

// The kernels call ATen for GEMMs and copies: autocast must not recast those (the op's inputs
// were cast already by the caller's autocast, and the kernels pick their own precision).
#define FUSEDOPS_NO_AUTOCAST const c10::impl::ExcludeDispatchKeyGuard no_autocast_(c10::autocast_dispatch_keyset)

// Runs the lambda __VA_ARGS__ with OffT, the C++ type of an offsets tensor of dtype `dtype`.
#define FUSEDOPS_DISPATCH_OFFSETS(dtype, ...)                        \
  switch (dtype) {                                                   \
    case at::kChar: { using OffT = int8_t; __VA_ARGS__(); break; }   \
    case at::kShort: { using OffT = int16_t; __VA_ARGS__(); break; } \
    default: { using OffT = int32_t; __VA_ARGS__(); break; }         \
  }

}  // namespace fusedops
