// One block's tile of an implicit GEMM over 16-byte runs of a tensor-core type (__half,
// __nv_bfloat16, or Tf32: float32 multiplied as TF32), the engine of the run kernels
// (channels_last conv input, linear layers; the runs' dimension a multiple of kRunLen<T>):
//
//   C[m0 + i][n0 + j] = sum_k A(m0 + i, k) * B(k, n0 + j),   0 <= i < kRows, 0 <= j < kBN
//
// (kRows = kBM = 64, or kWideRows = 128 where A has the conv's output channels as rows, in the
// forward and the weight gradient: their B, the gathered input, then feeds twice the products;
// and the linear forward's and input gradient's batch rows in large problems), where the
// loaders (run_loaders.h) name, per k step of kRunBK<T> (32 for 16-bit types, 16 for Tf32), one
// 16-byte run of B and one of A (two with 128 rows) for each thread (null: zeros). An operand's
// runs lie along k (kKMajor false: a row of A / a column of B, kRunLen<T> consecutive k; RunMap)
// or across it (kKMajor true: kRunLen<T> consecutive m of A / n of B at one k, as in a gradient
// whose reduction is the outer index of both operands; KMajorRunMap). Against tile_gemm.cuh's
// engine, which fetches 4 + 4 single elements a thread per step of 16 through registers:
//   - the runs go straight from global to shared memory with cp.async (sm_80+), kRunStages = 3
//     stages deep: while the block multiplies step s, the copies of steps s + 1 and s + 2 are
//     in flight; one barrier a step;
//   - each operand is stored as its runs lie (along k: A as (m, k), B as (n, k); across k: as
//     (k, m) / (k, n)), so a run is one 16-byte shared store, and read by the wmma layout that
//     matches (A row_major / col_major, B col_major / row_major), with no transposes;
//   - each step is 4 wmma products a warp (16x16x16, or 16x16x8 for TF32; 8 with 128 rows),
//     so the address arithmetic of a step (one carry chain a loader) is spent on twice (four
//     times) as many products.
// Summation as tile_gemm's: each step's products summed from zero by the tensor cores, the
// step sums added into the running sum by the FP32 units, in a fixed order (deterministic).
// The finished tile lands in shared memory (RunSmem::c, the layout of TileSmem::c).

#pragma once

#include <cuda_pipeline.h>
#include <mma.h>

#include <type_traits>

#include "common.cuh"
#include "run_loaders.h"
#include "wmma_shape.cuh"

namespace fusedops {
namespace cuda {

constexpr int kRunStages = 3;
// The rows of the engine's wide tiles (kRows; kBM the others).
constexpr int kWideRows = 2 * kBM;

// Where an operand tile of kRows rows / columns (64, or 128 for A's rows in the wide tiles)
// keeps its elements in one stage: along k, as (o, k) rows of kRunBK<T> + kRunLen<T> (80
// bytes); across k, as (k, o) rows of kRows + kRunLen<T> (144 bytes of a 16-bit type, 272 of
// Tf32, at 64). Both are whole 16-byte rows, and 16 rows are a multiple of 32 bytes, as wmma's
// loads require; the extra run shifts consecutive rows across the shared-memory banks.
template <typename T, bool kKMajor, int kRows = kBM>
struct RunTile {
  static_assert(kRows % kBM == 0, "a tile is whole blocks of 64 rows, one run of each a thread");
  static constexpr int ld = kKMajor ? kRows + kRunLen<T> : kRunBK<T> + kRunLen<T>;
  static constexpr int size = kKMajor ? kRunBK<T> * ld : kRows * ld;
  // Offset of thread t's run in the tile's block i of 64 rows (the loaders' map, rows 64i on).
  static FUSEDOPS_HD int run(int t, int i = 0) {
    return kKMajor ? KMajorRunMap<T>::k(t) * ld + KMajorRunMap<T>::o(t) + i * kBM
                   : (RunMap<T>::o(t) + i * kBM) * ld + RunMap<T>::kk(t);
  }
  // Offset of element (o, k) of the tile.
  static FUSEDOPS_HD int at(int o, int k) { return kKMajor ? k * ld + o : o * ld + k; }
};
template <typename T, int kRows = kBM>
constexpr int kRunTileSize = RunTile<T, false, kRows>::size > RunTile<T, true, kRows>::size
                                 ? RunTile<T, false, kRows>::size
                                 : RunTile<T, true, kRows>::size;
static_assert(kBM == kBN, "A and B tiles share RunTile");

// The run engine's shared memory for a tile of kRows x kBN (kRows 64, or 128).
template <typename T, int kRows = kBM>
struct __align__(32) RunSmem {
  static_assert(kTensorCores<T>, "the run engine multiplies on tensor cores: 16-bit types and Tf32");
  struct Stage {
    T a[kRunTileSize<T, kRows>];  // A tile, RunTile<T, kAKMajor, kRows>
    T b[kRunTileSize<T>];         // B tile, RunTile<T, kBKMajor>
  };
  union {
    Stage st[kRunStages];
    float c[kRows][kBN + 4];  // the result tile
  };
};

// Copies a 16-byte run into shared memory asynchronously, or stores zeros for a null src.
template <typename T>
__device__ __forceinline__ void copy_run(T* dst, const T* src) {
  if (src) {
    __pipeline_memcpy_async(dst, src, 16);
  } else {
    uint32_t* d = reinterpret_cast<uint32_t*>(dst);
    d[0] = d[1] = d[2] = d[3] = 0u;
  }
}

// Computes the tile into s.c over `steps` k steps. src_a() / src_b() give this thread's run
// of the loaders' current step (laid out along k, or across it where kAKMajor / kBKMajor); with
// 128 rows, src_a(i) gives its run of A's rows 64i.. (i < 2). next() advances both by
// kRunBK<T>. All threads of the block must call it; it ends with a barrier.
//
// Warps: 4 x 2 over the tile, each 16 (64 rows) or 32 (128 rows) rows x 32 columns, i.e. 2 or
// 4 wmma products per k of a fragment (kK): the 128-row tile spends a step's loads and address
// arithmetic of B on twice the products.
template <typename T, bool kAKMajor, bool kBKMajor, int kRows = kBM, typename SrcA, typename SrcB, typename Next>
__device__ __forceinline__ void run_gemm(const SrcA& src_a, const SrcB& src_b, const Next& next, int64_t steps,
                                         RunSmem<T, kRows>& s) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // 16-bit and TF32 wmma and cp.async need sm_80; the launchers never choose this engine below it
#else
  namespace wmma = nvcuda::wmma;
  using TileA = RunTile<T, kAKMajor, kRows>;
  using TileB = RunTile<T, kBKMajor>;
  using Shape = WmmaShape<T>;
  constexpr int kK = Shape::kK;
  constexpr int kBlocksA = kRows / kBM;  // A's runs a thread copies a step
  constexpr int kWarpRows = kRows / 4 / 16;  // A fragments a warp reads a k
  // A stored (m, k) is wmma's row_major matrix_a, (k, m) its col_major; B stored (n, k) is
  // col_major matrix_b, (k, n) row_major.
  using LayoutA = std::conditional_t<kAKMajor, wmma::col_major, wmma::row_major>;
  using LayoutB = std::conditional_t<kBKMajor, wmma::row_major, wmma::col_major>;
  const int run_b = TileB::run(threadIdx.x);
  const auto issue = [&](int stage) {
#pragma unroll
    for (int i = 0; i < kBlocksA; ++i) {
      if constexpr (kBlocksA == 1) copy_run(&s.st[stage].a[TileA::run(threadIdx.x)], src_a());
      else copy_run(&s.st[stage].a[TileA::run(threadIdx.x, i)], src_a(i));
    }
    copy_run(&s.st[stage].b[run_b], src_b());
  };
  // Prologue: the first kRunStages - 1 steps in flight, one commit group a step (empty past
  // the last, so that the group count per step stays fixed).
#pragma unroll
  for (int i = 0; i < kRunStages - 1; ++i) {
    if (i < steps) {
      if (i > 0) next();
      issue(i);
    }
    __pipeline_commit();
  }
  // Warp tile: rows wm * 16 * kWarpRows (+16 * kWarpRows), columns wn * 32 (+32).
  const int warp = threadIdx.x / 32, wm = warp % 4, wn = warp / 4;
  using Frag = wmma::fragment<wmma::accumulator, 16, 16, kK, float>;
  Frag acc[kWarpRows][2];
#pragma unroll
  for (int r = 0; r < kWarpRows; ++r)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[r][j], 0.0f);
  // The stages step i reads and step i + kRunStages - 1 writes (i % kRunStages and the one
  // before it), counted rather than divided.
  int read = 0, write = kRunStages - 1;
  // One step an iteration (not unrolled), so that tools/cuda_kernel_report.py counts one
  // barrier a step.
#pragma unroll 1
  for (int64_t i = 0; i < steps; ++i) {
    // This thread's copies of step i have landed; after the barrier everyone's have, and every
    // thread is done reading step i - 1, whose stage the copies issued next overwrite.
    __pipeline_wait_prior(kRunStages - 2);
    __syncthreads();
    if (i + kRunStages - 1 < steps) {
      next();
      issue(write);
    }
    __pipeline_commit();
    const typename RunSmem<T, kRows>::Stage& st = s.st[read];
    write = read;
    read = read + 1 == kRunStages ? 0 : read + 1;
    Frag part[kWarpRows][2];
#pragma unroll
    for (int r = 0; r < kWarpRows; ++r)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(part[r][j], 0.0f);
#pragma unroll
    for (int k = 0; k < kRunBK<T>; k += kK) {
      wmma::fragment<wmma::matrix_a, 16, 16, kK, typename Shape::Elem, LayoutA> fa[kWarpRows];
#pragma unroll
      for (int r = 0; r < kWarpRows; ++r)
        Shape::load_shared(fa[r], &st.a[TileA::at((wm * kWarpRows + r) * 16, k)], TileA::ld);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        wmma::fragment<wmma::matrix_b, 16, 16, kK, typename Shape::Elem, LayoutB> fb;
        Shape::load_shared(fb, &st.b[TileB::at(wn * 32 + j * 16, k)], TileB::ld);
#pragma unroll
        for (int r = 0; r < kWarpRows; ++r) wmma::mma_sync(part[r][j], fa[r], fb, part[r][j]);
      }
    }
#pragma unroll
    for (int r = 0; r < kWarpRows; ++r)
#pragma unroll
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int e = 0; e < part[r][j].num_elements; ++e) acc[r][j].x[e] += part[r][j].x[e];
  }
  __pipeline_wait_prior(0);
  __syncthreads();  // every stage read; s.c overlays them
  for (int r = 0; r < kWarpRows; ++r)
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(&s.c[(wm * kWarpRows + r) * 16][wn * 32 + j * 16], acc[r][j], kBN + 4,
                              wmma::mem_row_major);
  __syncthreads();
#endif
}

// run_gemm with A read by one loader per block of 64 rows (kRows / kBM of them, each with src()
// and next()): make_a(i) builds block i's, rows 64i on, at the same k. The callers with 128
// rows (the conv forward's weights, the weight gradient's conv-output gradient, the linear
// forward's and input gradient's rows) and 64 alike.
template <typename T, bool kAKMajor, bool kBKMajor, int kRows, typename MakeA, typename SrcB, typename NextB>
__device__ __forceinline__ void run_gemm_row_blocks(const MakeA& make_a, const SrcB& src_b, const NextB& next_b,
                                                    int64_t steps, RunSmem<T, kRows>& s) {
  auto la = make_a(0);
  if constexpr (kRows == kBM) {
    run_gemm<T, kAKMajor, kBKMajor>([&] { return la.src(); }, src_b,
                                    [&] {
                                      la.next();
                                      next_b();
                                    },
                                    steps, s);
  } else {
    static_assert(kRows == 2 * kBM, "one or two blocks of 64 rows");
    auto la2 = make_a(1);
    run_gemm<T, kAKMajor, kBKMajor, kRows>([&](int i) { return i ? la2.src() : la.src(); }, src_b,
                                           [&] {
                                             la.next();
                                             la2.next();
                                             next_b();
                                           },
                                           steps, s);
  }
}

}  // namespace cuda
}  // namespace fusedops
