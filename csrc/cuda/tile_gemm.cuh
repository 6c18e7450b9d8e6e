// One block's tile of an implicit GEMM, the engine of every CUDA kernel of fusedops:
//
//   C[m0 + i][n0 + j] = sum_{k in [k0, k1)} A(m0 + i, k) * B(k, n0 + j),   0 <= i < kBM, 0 <= j < kBN
//
// where A and B are operand loaders (tile_loaders.h) that compute each operand element from
// the tensors (an im2col element, a weight, an un-pooled gradient, ...), so no operand is ever
// materialised, and find it without dividing in the main loop. Tiles of A (kBM x kBK) and B
// (kBK x kBN) are staged in shared memory, two stages deep: while the block multiplies the
// tiles of step s, each thread holds its elements of step s + 1 in registers (their global
// loads in flight during the products) and stores them into the other stage; one barrier per
// step. 16-bit types multiply on tensor cores (wmma 16x16x16, float accumulators), Tf32
// (float32 when torch allows TF32) on TF32 tensor cores (16x16x8), float and double on the FMA
// units (a 4x4 register micro-tile per thread). The finished tile lands in
// shared memory (TileSmem::c), from where the caller's epilogue reads the elements it owns:
// element e = threadIdx.x + j * kThreads. The k loop runs in a fixed order, so results are
// deterministic.
//
// The float summation is blocked: each kBK-long k tile is summed on its own (an FMA chain, or
// one mma from zero), and the tile sums are added into the running sum by the FP32 units, with
// compensated (Kahan) addition on the FMA path. A serial float sum of K products gains a
// rounding error ~K (the running sum, as large as the result, is rounded at every step);
// blocked, the serial chains are kBK long and the error grows like sqrt(K / kBK) tile errors:
// in a float32 simulation of random products with K = 4100..18432, 14-30x less than the serial
// sum (RMS; 23-65x the largest error). double keeps the plain serial FMA chain: its error is
// far below any float result's.

#pragma once

#include <mma.h>

#include "common.cuh"
#include "tile_loaders.h"
#include "wmma_shape.cuh"

namespace fusedops {
namespace cuda {

constexpr int kPerThread = kBM * kBN / kThreads;  // tile elements each thread's epilogue owns

// Blocks per SM the GEMM kernels are compiled for (__launch_bounds__): two for the 16-bit
// and float kernels (at most 128 registers per thread), one for double, whose 4x4 micro-tile
// of double accumulators does not fit in 128.
template <typename T>
constexpr int kMinBlocks = std::is_same<T, double>::value ? 1 : 2;

// Shared memory of one tile: two operand stages, and the result, which reuses their space.
// The padded leading dimensions keep wmma's alignment rules (multiples of 8 / 4 elements,
// 32-byte rows).
template <typename T>
struct __align__(32) TileSmem {
  using Acc = typename Num<T>::Acc;
  struct Stage {
    T a[kBM][kBK + 8];  // A tile, row-major (m, k)
    T b[kBK][kBN + 8];  // B tile, row-major (k, n)
  };
  union {
    Stage ab[2];
    Acc c[kBM][kBN + 4];  // the result tile
  };
};

// sum += v with Kahan compensation: comp carries the low-order part that sum lost (its final
// value is sum - comp). A non-finite step (an infinite or NaN v or sum) resets comp to 0 so
// that sums with infinities end like the plain sum (inf, not the NaN of inf - inf).
__device__ __forceinline__ void compensated_add(float& sum, float& comp, float v) {
  const float y = v - comp, t = sum + y, c = (t - sum) - y;
  comp = isfinite(c) ? c : 0.0f;
  sum = t;
}

// Stores this thread's fetched elements into a stage, where TileMap places them.
template <typename T, bool kAlongK>
__device__ __forceinline__ void store_a(typename TileSmem<T>::Stage& st, const T (&v)[kLoads]) {
  using Map = TileMap<kAlongK>;
#pragma unroll
  for (int j = 0; j < kLoads; ++j) st.a[Map::o(threadIdx.x, j)][Map::kk(threadIdx.x, j)] = v[j];
}
template <typename T, bool kAlongK>
__device__ __forceinline__ void store_b(typename TileSmem<T>::Stage& st, const T (&v)[kLoads]) {
  using Map = TileMap<kAlongK>;
#pragma unroll
  for (int j = 0; j < kLoads; ++j) st.b[Map::kk(threadIdx.x, j)][Map::o(threadIdx.x, j)] = v[j];
}

// Computes the tile into s.c over `steps` k steps (zero for none). fetch_a(v) / fetch_b(v)
// write this thread's elements of the current step of A / B (zero outside the operands);
// next() advances both loaders by kBK. kAlongKA / kAlongKB: the loaders' TileMap. All
// threads of the block must call it; it ends with a barrier.
template <typename T, bool kAlongKA, bool kAlongKB, typename FetchA, typename FetchB, typename Next>
__device__ void tile_gemm(const FetchA& fetch_a, const FetchB& fetch_b, const Next& next, int64_t steps,
                          TileSmem<T>& s) {
  using Acc = typename Num<T>::Acc;
  const int tid = threadIdx.x;
  T ra[kLoads], rb[kLoads];
  if (steps > 0) {
    fetch_a(ra);
    fetch_b(rb);
    store_a<T, kAlongKA>(s.ab[0], ra);
    store_b<T, kAlongKB>(s.ab[0], rb);
  }
  __syncthreads();
  // Prefetches step i + 1 into registers, runs `multiply` on stage i % 2, stores the prefetched
  // elements into the other stage, then one barrier: the stage read in step i is rewritten only
  // in step i + 1, after every thread passed that barrier.
  const auto pipeline = [&](const auto& multiply) {
    for (int64_t i = 0; i < steps; ++i) {
      const bool more = i + 1 < steps;
      if (more) {
        next();
        fetch_a(ra);
        fetch_b(rb);
      }
      multiply(s.ab[i & 1]);
      if (more) {
        store_a<T, kAlongKA>(s.ab[(i + 1) & 1], ra);
        store_b<T, kAlongKB>(s.ab[(i + 1) & 1], rb);
      }
      __syncthreads();
    }
  };
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  constexpr bool tensor_cores = false;  // bf16 and TF32 wmma need sm_80
#else
  constexpr bool tensor_cores = kTensorCores<T>;
#endif
  if constexpr (tensor_cores) {
    namespace wmma = nvcuda::wmma;
    using Shape = WmmaShape<T>;
    constexpr int kK = Shape::kK;
    const int warp = tid / 32, wm = warp % 4, wn = warp / 4;  // warp tile: rows wm*16, columns wn*32 (+32)
    // Blocked: each k tile's product is summed from zero by the tensor cores (one mma, or two
    // of k = 8 for TF32), then added into acc by the FP32 units (element by element: the
    // fragments share one layout), so the long running sum never goes through the tensor
    // cores' accumulation. (Not compensated: its 16 more registers made ptxas spill in the
    // 16-bit input-gradient and linear-forward kernels, and the 16-bit cases passed with the
    // serial sum already.)
    using Frag = wmma::fragment<wmma::accumulator, 16, 16, kK, float>;
    Frag acc[2];
    wmma::fill_fragment(acc[0], 0.0f);
    wmma::fill_fragment(acc[1], 0.0f);
    pipeline([&](const typename TileSmem<T>::Stage& st) {
      Frag part[2];
      wmma::fill_fragment(part[0], 0.0f);
      wmma::fill_fragment(part[1], 0.0f);
#pragma unroll
      for (int k = 0; k < kBK; k += kK) {
        wmma::fragment<wmma::matrix_a, 16, 16, kK, typename Shape::Elem, wmma::row_major> fa;
        Shape::load_shared(fa, &st.a[wm * 16][k], kBK + 8);
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          wmma::fragment<wmma::matrix_b, 16, 16, kK, typename Shape::Elem, wmma::row_major> fb;
          Shape::load_shared(fb, &st.b[k][wn * 32 + j * 16], kBN + 8);
          wmma::mma_sync(part[j], fa, fb, part[j]);
        }
      }
      for (int j = 0; j < 2; ++j)
        for (int e = 0; e < part[j].num_elements; ++e) acc[j].x[e] += part[j].x[e];
    });
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(&s.c[wm * 16][wn * 32 + j * 16], acc[j], kBN + 4, wmma::mem_row_major);
  } else {
    // float: blocked, each k tile summed into part (a kBK-long FMA chain), part added into acc
    // with compensation comp. double: one serial FMA chain into acc (part and comp unused).
    constexpr bool blocked = std::is_same<Acc, float>::value;
    const int tm = tid / 16, tn = tid % 16;  // this thread's micro-tile: rows tm*4.., columns tn*4..
    Acc acc[4][4], comp[4][4];
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) acc[i][j] = comp[i][j] = Acc(0);
    pipeline([&](const typename TileSmem<T>::Stage& st) {
      Acc part[4][4];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) part[i][j] = blocked ? Acc(0) : acc[i][j];
#pragma unroll
      for (int kk = 0; kk < kBK; ++kk) {
        Acc av[4], bv[4];
        for (int i = 0; i < 4; ++i) {
          av[i] = Num<T>::to_acc(st.a[tm * 4 + i][kk]);
          bv[i] = Num<T>::to_acc(st.b[kk][tn * 4 + i]);
        }
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 4; ++j) part[i][j] = fma(av[i], bv[j], part[i][j]);
      }
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
          if constexpr (blocked) compensated_add(acc[i][j], comp[i][j], part[i][j]);
          else acc[i][j] = part[i][j];
        }
    });
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) s.c[tm * 4 + i][tn * 4 + j] = acc[i][j] - comp[i][j];
  }
  __syncthreads();
}

// Epilogue helper: calls f(m, n, value) for the tile elements this thread owns inside M x N.
// They share one column (kThreads is a multiple of kBN): n = n0 + threadIdx.x % kBN, and
// rows threadIdx.x / kBN + j * (kThreads / kBN), j < rows * kBN / kThreads for the result
// tile's rows (64, or 128 in a run engine's wide tile). Smem: TileSmem<T> or RunSmem<T, kRows>
// (run_gemm.cuh), whose result tiles c share one layout (kBN + 4 floats a row).
template <typename Smem, typename F>
__device__ void for_owned(const Smem& s, int64_t M, int64_t N, int64_t m0, int64_t n0, const F& f) {
  static_assert(kThreads % kBN == 0, "a thread's owned elements share a column");
  constexpr int kOwnedRows = std::extent<decltype(s.c)>::value * kBN / kThreads;  // 16, or 32 for 128 rows
  const int nn = threadIdx.x % kBN;
  if (n0 + nn >= N) return;
#pragma unroll
  for (int j = 0; j < kOwnedRows; ++j) {
    const int mm = threadIdx.x / kBN + j * (kThreads / kBN);
    if (m0 + mm < M) f(m0 + mm, n0 + nn, s.c[mm][nn]);
  }
}

// for_owned with each row m given as its digits (hi, mid, lo) of radices (r1, r2): one
// division a thread for its first row, then a carry step a row (the rows kThreads / kBN apart),
// so an epilogue that scatters rows by their digits divides nothing per element.
template <typename Smem, typename F>
__device__ void for_owned_rows(const Smem& s, int64_t M, int64_t N, int64_t m0, int64_t n0, int64_t r1, int64_t r2,
                               const F& f) {
  const int nn = threadIdx.x % kBN;
  if (n0 + nn >= N) return;
  const int mm0 = threadIdx.x / kBN;
  Digits at = split(m0 + mm0, r1, r2);
  const Digits step = split(kThreads / kBN, r1, r2);
#pragma unroll
  for (int j = 0; j < kPerThread; ++j, add(at, step, static_cast<int>(r1), static_cast<int>(r2))) {
    const int mm = mm0 + j * (kThreads / kBN);
    if (m0 + mm < M) f(static_cast<const Digits&>(at), n0 + nn, s.c[mm][nn]);
  }
}

// Writes the reduction-split partial sums of a tile: part[m * N + n] = C[m][n] (Smem as
// for_owned's).
template <typename Smem, typename Acc>
__device__ void store_partial(const Smem& s, int64_t M, int64_t N, int64_t m0, int64_t n0, Acc* part) {
  for_owned(s, M, N, m0, n0, [&](int64_t m, int64_t n, Acc v) { part[m * N + n] = v; });
}

// out[i] = sum_{s < splits} part[s * count + i], in split order (deterministic).
template <typename T>
__global__ void __launch_bounds__(kThreads) sum_partials_kernel(const typename Num<T>::Acc* part, int64_t splits,
                                                                int64_t count, T* out) {
  using Acc = typename Num<T>::Acc;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    Acc sum = Acc(0);
    for (int64_t s = 0; s < splits; ++s) sum += part[s * count + i];
    out[i] = Num<T>::from_acc(sum);
  }
}

// Blocks per channel of a per-channel sum over `count` elements (bias gradients): enough blocks
// to fill the GPU, each block's threads summing at least 16 elements, and at most
// kMaxSerialSum elements per thread. A thread's serial float sum gains a rounding error ~ its
// length (the running sum is rounded at each step), so one block per channel over a large
// tensor (17.8M elements: 70k per thread) is far less accurate than torch's split reduction.
// Depends on the sizes alone, so the summation order and the result are deterministic.
constexpr int64_t kMaxSerialSum = 1024;
inline int64_t channel_sum_splits(int64_t count, int64_t channels) {
  int64_t splits = reduction_splits(count, channels, int64_t(kThreads) * 16);
  const int64_t chain = ceil_div(count, int64_t(kThreads) * kMaxSerialSum);
  if (splits < chain) splits = chain;
  return splits < 65535 ? splits : 65535;  // grid.y
}

// Grid for a grid-stride loop over `count` elements.
inline unsigned grid_for(int64_t count) {
  const int64_t blocks = ceil_div(count > 0 ? count : 1, kThreads);
  return static_cast<unsigned>(blocks < 65536 ? blocks : 65536);
}

}  // namespace cuda
}  // namespace fusedops
