// The wmma shapes of the tensor-core element types, shared by both GEMM engines
// (tile_gemm.cuh, run_gemm.cuh), and their operand loads from shared memory.

#pragma once

#include <mma.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common.cuh"

namespace fusedops {
namespace cuda {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
// wmma.load of a 16x16x16 bfloat16 or 16x16x8 TF32 operand fragment (four 32-bit registers a
// thread) from shared memory, with the state space named: nvcc emits float16's wmma loads as
// .shared (ldmatrix) but bfloat16's and TF32's with a generic address, which ptxas turns into a
// generic 32-bit load per register, plus a movmatrix per register where the layout is transposed
// (bfloat16 in the run engine: 48 instructions a k step where ldmatrix takes 6). The fragment's
// contents are wmma.load's whatever the state space.
// (The "memory" clobber orders it with the barriers and cp.async waits around it as a load.)
#define FUSEDOPS_WMMA_LOAD_SHARED(op, r, addr, ldm)                                           \
  asm volatile(op " {%0, %1, %2, %3}, [%4], %5;"                                           \
               : "=r"((r)[0]), "=r"((r)[1]), "=r"((r)[2]), "=r"((r)[3])                      \
               : "r"(addr), "r"(ldm)                                                         \
               : "memory")

template <typename Use, typename Layout, typename Elem, typename Frag>
__device__ __forceinline__ void wmma_load_shared(Frag& f, const void* p, unsigned ldm) {
  namespace wmma = nvcuda::wmma;
  static_assert(sizeof(f.x) == 4 * sizeof(uint32_t), "four 32-bit registers a thread");
  static_assert(std::is_same<Use, wmma::matrix_a>::value || std::is_same<Use, wmma::matrix_b>::value,
                "an operand fragment");
  constexpr bool a = std::is_same<Use, wmma::matrix_a>::value, row = std::is_same<Layout, wmma::row_major>::value;
  // Shared-window offsets fit 32 bits (cvta's result truncated, as cp.async's operands are).
  uint32_t r[4];
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(p));
  if constexpr (std::is_same<Elem, __nv_bfloat16>::value) {
    if constexpr (a && row) FUSEDOPS_WMMA_LOAD_SHARED("wmma.load.a.sync.aligned.row.m16n16k16.shared.bf16", r, addr, ldm);
    else if constexpr (a) FUSEDOPS_WMMA_LOAD_SHARED("wmma.load.a.sync.aligned.col.m16n16k16.shared.bf16", r, addr, ldm);
    else if constexpr (row) FUSEDOPS_WMMA_LOAD_SHARED("wmma.load.b.sync.aligned.row.m16n16k16.shared.bf16", r, addr, ldm);
    else FUSEDOPS_WMMA_LOAD_SHARED("wmma.load.b.sync.aligned.col.m16n16k16.shared.bf16", r, addr, ldm);
  } else {
    static_assert(std::is_same<Elem, wmma::precision::tf32>::value, "bfloat16 and TF32 only");
    if constexpr (a && row) FUSEDOPS_WMMA_LOAD_SHARED("wmma.load.a.sync.aligned.row.m16n16k8.shared.tf32", r, addr, ldm);
    else if constexpr (a) FUSEDOPS_WMMA_LOAD_SHARED("wmma.load.a.sync.aligned.col.m16n16k8.shared.tf32", r, addr, ldm);
    else if constexpr (row) FUSEDOPS_WMMA_LOAD_SHARED("wmma.load.b.sync.aligned.row.m16n16k8.shared.tf32", r, addr, ldm);
    else FUSEDOPS_WMMA_LOAD_SHARED("wmma.load.b.sync.aligned.col.m16n16k8.shared.tf32", r, addr, ldm);
  }
  std::memcpy(f.x, r, sizeof(r));  // the registers as the fragment's elements, in order (load_matrix_sync's)
}
#undef FUSEDOPS_WMMA_LOAD_SHARED
#endif

// The wmma shape and fragment element of T's tensor-core products: 16x16x16 for the 16-bit
// types; 16x16x8 TF32 for Tf32, whose fragments load float32 values (Tf32 has float's
// storage) and round them to TF32 (round to nearest, ties away) before the product.
// load_shared(f, p, ldm): an operand fragment from shared memory (only: on the GPU bfloat16's
// and TF32's p must point into it) at p, leading dimension ldm (wmma::load_matrix_sync's rules),
// ready to multiply.
template <typename T>
struct WmmaShape {
  using Elem = T;
  static constexpr int kK = 16;
  template <typename Use, typename Layout>
  static __device__ __forceinline__ void load_shared(nvcuda::wmma::fragment<Use, 16, 16, kK, Elem, Layout>& f,
                                                     const T* p, unsigned ldm) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if constexpr (std::is_same<T, __nv_bfloat16>::value) {
      wmma_load_shared<Use, Layout, Elem>(f, p, ldm);
      return;
    }
#endif
    nvcuda::wmma::load_matrix_sync(f, p, ldm);
  }
};
template <>
struct WmmaShape<Tf32> {
  using Elem = nvcuda::wmma::precision::tf32;
  static constexpr int kK = 8;
  template <typename Use, typename Layout>
  static __device__ __forceinline__ void load_shared(nvcuda::wmma::fragment<Use, 16, 16, kK, Elem, Layout>& f,
                                                     const Tf32* p, unsigned ldm) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    wmma_load_shared<Use, Layout, Elem>(f, p, ldm);
#else
    nvcuda::wmma::load_matrix_sync(f, reinterpret_cast<const float*>(p), ldm);
#endif
    for (int e = 0; e < f.num_elements; ++e) f.x[e] = nvcuda::wmma::__float_to_tf32(f.x[e]);
  }
};

}  // namespace cuda
}  // namespace fusedops
