// The wmma shapes of the tensor-core element types, shared by both GEMM engines
// (tile_gemm.cuh, run_gemm.cuh).

#pragma once

#include <mma.h>

#include "common.cuh"

namespace fusedops {
namespace cuda {

// The wmma shape and fragment element of T's tensor-core products: 16x16x16 for the 16-bit
// types; 16x16x8 TF32 for Tf32, whose fragments load float32 values (Tf32 has float's
// storage) and round them to TF32 (round to nearest, ties away) before the product.
template <typename T>
struct WmmaShape {
  using Elem = T;
  static constexpr int kK = 16;
  static __device__ __forceinline__ const T* ptr(const T* p) { return p; }
  template <typename Frag>
  static __device__ __forceinline__ void round(Frag&) {}
};
template <>
struct WmmaShape<Tf32> {
  using Elem = nvcuda::wmma::precision::tf32;
  static constexpr int kK = 8;
  static __device__ __forceinline__ const float* ptr(const Tf32* p) { return reinterpret_cast<const float*>(p); }
  template <typename Frag>
  static __device__ __forceinline__ void round(Frag& f) {
    for (int e = 0; e < f.num_elements; ++e) f.x[e] = nvcuda::wmma::__float_to_tf32(f.x[e]);
  }
};

}  // namespace cuda
}  // namespace fusedops
