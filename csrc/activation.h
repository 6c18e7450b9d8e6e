// The activations of the fused linear layer, shared by the CPU kernels, the CUDA kernels and
// their bindings (torch-free, so that nvcc compiles it with the CUDA kernels).

#pragma once

namespace fusedops {

enum class Act { None, Relu, Gelu, GeluTanh, Silu };

}  // namespace fusedops
