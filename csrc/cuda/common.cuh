// Element types, accumulator types and small helpers shared by the CUDA kernels.

#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>
#include <type_traits>

#include "kernels.h"

namespace fusedops {
namespace cuda {

// Num<T>: the accumulator type of element type T and the conversions (explicit intrinsics:
// torch's extension build disables the implicit __half / __nv_bfloat16 conversions).
template <typename T>
struct Num;
template <>
struct Num<float> {
  using Acc = float;
  static __device__ __forceinline__ float to_acc(float v) { return v; }
  static __device__ __forceinline__ float from_acc(float v) { return v; }
};
template <>
struct Num<double> {
  using Acc = double;
  static __device__ __forceinline__ double to_acc(double v) { return v; }
  static __device__ __forceinline__ double from_acc(double v) { return v; }
};
template <>
struct Num<__half> {
  using Acc = float;
  static __device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from_acc(float v) { return __float2half_rn(v); }
};
template <>
struct Num<__nv_bfloat16> {
  using Acc = float;
  static __device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from_acc(float v) { return __float2bfloat16_rn(v); }
};

// A float32 element whose GEMMs multiply on TF32 tensor cores (DType::Tf32): the same storage
// as float, a distinct type so that the kernels compile a TF32 variant.
struct Tf32 {
  float v;
};
template <>
struct Num<Tf32> {
  using Acc = float;
  static __device__ __forceinline__ float to_acc(Tf32 x) { return x.v; }
  static __device__ __forceinline__ Tf32 from_acc(float v) { return Tf32{v}; }
};

template <typename T>
__device__ __forceinline__ T zero_of() {
  return Num<T>::from_acc(typename Num<T>::Acc(0));
}

// 16-bit types and Tf32 go through tensor cores (wmma); float and double through FMA units.
template <typename T>
constexpr bool kTensorCores =
    std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value || std::is_same<T, Tf32>::value;

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Sum of every thread's v over a block of kThreadsPerBlock threads, in a fixed order
// (deterministic); `scratch` holds kThreadsPerBlock values. Every thread gets the sum.
template <int kThreadsPerBlock, typename A>
__device__ A block_sum(A v, A* scratch) {
  scratch[threadIdx.x] = v;
  __syncthreads();
  for (int half = kThreadsPerBlock / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) scratch[threadIdx.x] += scratch[threadIdx.x + half];
    __syncthreads();
  }
  return scratch[0];
}

// Calls f(T{}) with the element type of dtype.
template <typename F>
cudaError_t dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float: return f(float{});
    case DType::Double: return f(double{});
    case DType::Half: return f(__half{});
    case DType::BFloat16: return f(__nv_bfloat16{});
    case DType::Tf32: return f(Tf32{});
  }
  return cudaErrorInvalidValue;
}

// Size of an accumulator element for dtype.
inline size_t acc_bytes(DType dtype) { return dtype == DType::Double ? sizeof(double) : sizeof(float); }
inline size_t elem_bytes(DType dtype) {
  return dtype == DType::Double ? 8 : dtype == DType::Float || dtype == DType::Tf32 ? 4 : 2;
}

// Elements of a 16-byte run of dtype for the run GEMM (run_gemm.cuh), which takes the tensor-core
// types (kTensorCores): 8 of a 16-bit type, 4 of Tf32; 0 for the others.
inline int64_t run_len(DType dtype) {
  return dtype == DType::Half || dtype == DType::BFloat16 ? 8 : dtype == DType::Tf32 ? 4 : 0;
}

// Number of splits of a long reduction (split-K): enough blocks to fill the GPU, each split at
// least `min_chunk` long; the partial sums are added in a fixed order, so results are
// deterministic.
constexpr int64_t kFillBlocks = 264;  // blocks that fill the GPU: 2 per SM of an H100 (132 SMs)
inline int64_t reduction_splits(int64_t reduction, int64_t tiles, int64_t min_chunk = 512) {
  const int64_t want = ceil_div(kFillBlocks, tiles > 0 ? tiles : 1);
  const int64_t most = ceil_div(reduction, min_chunk);
  const int64_t splits = want < most ? want : most;
  return splits < 1 ? 1 : splits;
}

}  // namespace cuda
}  // namespace fusedops
