// Host stand-in for the parts of the CUDA runtime that the fusedops kernels use, so that
// their device code runs on the CPU (tests/test_cuda_emulator.py): the kernel qualifiers
// compile away, threadIdx / blockIdx / blockDim / gridDim and __syncthreads come from the
// block emulator (emulator.h), and __shared__ declarations are rewritten by the test to
// point at the emulator's shared memory.

#pragma once

#include <math.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __align__(n) alignas(n)
#define __launch_bounds__(...)

struct uint3 {
  unsigned x, y, z;
};

struct alignas(16) uint4 {
  unsigned x, y, z, w;
};

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3() = default;
  dim3(unsigned x_, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

typedef int cudaError_t;
typedef void* cudaStream_t;
enum { cudaSuccess = 0, cudaErrorInvalidValue = 1 };

namespace emu {
extern uint3 thread_index, block_index;
extern dim3 block_dim, grid_dim;
extern unsigned char* shared_memory;  // one block's shared memory (kSharedBytes)
constexpr size_t kSharedBytes = 64 * 1024;
void syncthreads();
// Called after each block by the emulator; set by stand-ins with per-block state (cuda_pipeline.h).
inline void (*block_finished)() = nullptr;
// cp.async copies land when issued (true) or only when their thread waits for them (false, as
// late as CUDA allows): an early read shows with the second, an early overwrite with the first.
inline bool eager_async_copies = false;
}  // namespace emu

#define threadIdx emu::thread_index
#define blockIdx emu::block_index
#define blockDim emu::block_dim
#define gridDim emu::grid_dim

inline void __syncthreads() { emu::syncthreads(); }

// CUDA's min/max overloads on mixed integer types.
template <typename A, typename B>
inline auto min(A a, B b) {
  return a < b ? a : b;
}
template <typename A, typename B>
inline auto max(A a, B b) {
  return a > b ? a : b;
}
