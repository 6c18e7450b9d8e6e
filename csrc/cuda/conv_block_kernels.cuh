// Fused Conv2d + bias + ReLU + MaxPool2d on NVIDIA GPUs: the "cuda" backend's conv kernels and
// the launchers' shared choices. Their launchers: conv_block_forward.cu, conv_block_backward.cu
// and conv_block_jvp.cu (one translation unit each, so that a build compiles them side by side).
//
// Forward, four kernels (the launcher picks one):
//  - conv_pool_direct_kernel, for few input channels per group (a CNN's first layer, <= 4):
//    a thread computes one pooled output of 8 output channels directly (1 where a group has
//    fewer than 4), each input element loaded once for all 8, the filters in shared memory and
//    the max over the window in registers;
//    conv_pool_patch_kernel the same for the commonest of these layers (3x3 stride 1, a 2x2
//    pool or none: conv_patch_pool), a window's input patch loaded whole before it multiplies.
//  - conv_pool_gemm_kernel, for the rest: an implicit GEMM (tile_gemm.cuh; tensor cores for
//    fp16/bf16 and TF32) with M = output channels of a group, N = pooled outputs, K = Cin/groups*KH*KW,
//    run once per pool-window tap; the epilogue keeps each pooled output's running max and its
//    tap in registers, so the conv output never reaches memory.
//  - conv_pool_runs_kernel, the same GEMM and epilogue for float16/bfloat16 and TF32 channels_last
//    input with Cin/groups a multiple of a run (8 / 4 channels; conv_forward_channel_runs) on
//    sm_80+: k ordered (kh, kw, ci), each operand read in 16-byte runs of channels by cp.async,
//    three stages deep (run_gemm.cuh), 64 or 128 output channels a block (run_rows).
// Each writes the pooled value and the window offset of its max (or -1 where the ReLU is off).
// Max rule (torch's): taps in row-major order, a tap replaces the max when larger or NaN.
//
// Backward, at most three launches (conv_block_backward):
//  - unpool_kernel rebuilds the conv-output gradient into scratch memory: each conv position
//    gathers the pooled gradients whose window max was there (no atomics); unpool_runs_kernel
//    the same channels_last, a run of channels a thread, for the channel-run backward. Only when
//    an input or weight gradient is wanted.
//  - conv_grads_kernel runs every gradient's blocks side by side (GradBlocks):
//    - input gradient: an implicit GEMM per group, M = Cin/groups, N = input positions,
//      K = Cout/groups*KH*KW, whose B operand reads the conv-output gradient at the conv
//      position each (input position, kernel tap) pair maps to (a gather, so no col2im atomics);
//    - weight gradient: an implicit GEMM per group, M = Cout/groups, N = Cin/groups*KH*KW, over
//      the reduction N*OH*OW split into chunks whose partial sums are added in a fixed order;
//    - bias gradient: the sum of the pooled gradients whose ReLU was on, per channel, split
//      over blocks (channel_sum_splits);
//    or conv_grads_runs_kernel, the same over 16-byte runs of channels where the forward runs
//    over them and Cout/groups is whole runs too (conv_backward_channel_runs): the input
//    gradient one GEMM per stride phase (each phase's inputs, only the taps that reach them:
//    axis_phase), the weight gradient with both operands stored across k.
//  - sum_grad_partials_kernel adds the weight and bias gradients' split partial sums in split
//    order.
// A first layer without an input gradient (3x3, <= 3 input channels a group:
// direct_weight_grad_splits) takes two launches instead: conv_weight_grad_direct_kernel sends
// each pooled gradient through its offset to its one conv position (no un-pool), then
// sum_grad_partials_kernel.
// Every result is deterministic, for any pool.
//
// Tangent (jvp_kernel): the output's tangent at fixed offsets, one dot product per output at
// the conv position of its window's max (used by forward-mode and double backward).

#pragma once

#include "run_gemm.cuh"
#include "tile_gemm.cuh"

namespace fusedops {
namespace cuda {
namespace {

constexpr int kDirectMaxChannels = 4;  // input channels per group handled by the direct kernel
constexpr int kDirectWideChannels = 8;  // its output channels per thread where a group has enough
constexpr int64_t kDirectWideMin = 4;   // (at least this many; fewer: one per thread)
constexpr int64_t kDirectMaxSmem = 48 * 1024;  // bytes of filters it keeps in shared memory

// Pooled output q = (n, ph, pw) and a window tap -> conv position (r, c); false outside the conv output.
struct PooledIndex {
  int64_t n, ph, pw;
  __device__ PooledIndex(int64_t n_, int64_t ph_, int64_t pw_) : n(n_), ph(ph_), pw(pw_) {}
  __device__ explicit PooledIndex(const Digits& q) : n(q.hi), ph(q.mid), pw(q.lo) {}
  __device__ bool tap(const Geometry& g, int th, int tw, int64_t& r, int64_t& c) const {
    r = ph * g.psh - g.pph + th * g.pdh;
    c = pw * g.psw - g.ppw + tw * g.pdw;
    return r >= 0 && r < g.OH && c >= 0 && c < g.OW;
  }
};

template <typename A>
__device__ __forceinline__ A relu_keep_nan(A v) {
  return (v > A(0) || v != v) ? v : A(0);
}

template <typename A>
__device__ __forceinline__ bool replaces(A v, A best) {
  return v > best || v != v;
}

// The output channels [c0, c0 + nc) of group grp a direct-forward block computes (blockIdx.y =
// group x chunk of kCo channels; nc < kCo in a group's last chunk when kCo does not divide it),
// their filters copied into shared memory as (K, kCo): filter[k * kCo + j] = w[c0 + j][k] (0 for
// j >= nc), so a filter tap's kCo weights are adjacent and every thread of the block reads the
// same ones (a broadcast). Ends with a barrier.
struct DirectChunk {
  int64_t grp, c0;
  int nc;
};

template <int kCo, typename T, typename Acc>
__device__ DirectChunk load_direct_chunk(const Geometry& g, const T* __restrict__ w, Acc* filter) {
  const int64_t chunks = ceil_div(g.Coutg, kCo);
  DirectChunk ch;
  ch.grp = blockIdx.y / chunks;
  ch.c0 = ch.grp * g.Coutg + (blockIdx.y % chunks) * kCo;
  const int64_t left = g.Coutg - (ch.c0 - ch.grp * g.Coutg);
  ch.nc = static_cast<int>(left < kCo ? left : kCo);
  const int K = static_cast<int>(g.K);
  for (int i = threadIdx.x; i < K * kCo; i += blockDim.x) {
    const int k = i / kCo, j = i % kCo;
    filter[i] = j < ch.nc ? Num<T>::to_acc(w[(ch.c0 + j) * g.K + k]) : Acc(0);
  }
  __syncthreads();
  return ch;
}

// Pooled output (n, ph, pw) of a direct-forward grid-stride loop over N*PH*PW, as digits: the
// thread's first one split once, then stepped by the grid's size with carries (the loop divides
// nothing).
struct PooledSteps {
  Digits at, step;
  __device__ explicit PooledSteps(const Geometry& g)
      : at(split(blockIdx.x * int64_t(blockDim.x) + threadIdx.x, g.PH, g.PW)),
        step(split(int64_t(gridDim.x) * blockDim.x, g.PH, g.PW)) {}
  __device__ void next(const Geometry& g) { add(at, step, static_cast<int>(g.PH), static_cast<int>(g.PW)); }
};

// Stores pooled output (n, ph, pw) of channels [c0, c0 + nc) from their window maxima and the
// taps they came from: the offset is the tap where the ReLU was on (a max > 0, or NaN), else -1.
template <int kCo, typename T, typename OffT, typename Acc>
__device__ __forceinline__ void store_direct(const Strides4& ys, const Digits& q, const DirectChunk& ch,
                                             const Acc (&best)[kCo], const int (&where)[kCo], T* __restrict__ y,
                                             OffT* __restrict__ off) {
  const int64_t yi = q.hi * ys.s[0] + ch.c0 * ys.s[1] + q.mid * ys.s[2] + int64_t(q.lo) * ys.s[3];
#pragma unroll
  for (int j = 0; j < kCo; ++j) {
    if (j < ch.nc) {
      y[yi + j * ys.s[1]] = Num<T>::from_acc(best[j]);
      off[yi + j * ys.s[1]] = static_cast<OffT>(best[j] > Acc(0) || best[j] != best[j] ? where[j] : -1);
    }
  }
}

// One thread: pooled output q = (n, ph, pw) of kCo output channels [c0, c0 + kCo) of one group
// (load_direct_chunk). Each input element a window tap reads is loaded once and multiplied into
// all kCo channels' sums (kCo-fold fewer loads than one channel per thread), the filter taps
// skipped where they fall in the padding (so an infinite weight there adds nothing, where
// torch's conv and the patch kernel, multiplying the padding's zeros, give NaN). Index
// arithmetic within an image is 32-bit (the launcher checks it fits). The launch bounds (3
// blocks of 256 threads per SM, 2 for double: 80 and 128 registers) hold every variant without
// spills on sm_90 (ptxas -v; on sm_80 the 8-wide float variants spill 56-72 bytes). Any
// geometry within direct_channels; the commonest first layers take conv_pool_patch_kernel.
template <typename T, typename OffT, int kCo>
__global__ void __launch_bounds__(kThreads, sizeof(typename Num<T>::Acc) == 8 ? 2 : 3)
    conv_pool_direct_kernel(Geometry g, const T* __restrict__ x, Strides4 xs, const T* __restrict__ w,
                            const T* __restrict__ b, T* __restrict__ y, OffT* __restrict__ off, Strides4 ys) {
  using Acc = typename Num<T>::Acc;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Acc* filter = reinterpret_cast<Acc*>(smem_raw);
  const DirectChunk ch = load_direct_chunk<kCo>(g, w, filter);
  Acc bias[kCo];
#pragma unroll
  for (int j = 0; j < kCo; ++j) bias[j] = b && j < ch.nc ? Num<T>::to_acc(b[ch.c0 + j]) : Acc(0);
  const int H = static_cast<int>(g.H), W = static_cast<int>(g.W), Cg = static_cast<int>(g.Cg),
            KH = static_cast<int>(g.KH), KW = static_cast<int>(g.KW);
  const int xc = static_cast<int>(xs.s[1]), xh = static_cast<int>(xs.s[2]), xw = static_cast<int>(xs.s[3]);
  const int64_t Q = g.N * g.PH * g.PW;
  PooledSteps qs(g);
  for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < Q;
       q += int64_t(gridDim.x) * blockDim.x, qs.next(g)) {
    const PooledIndex p(qs.at);
    const T* xn = x + p.n * xs.s[0] + ch.grp * g.Cg * xs.s[1];
    Acc best[kCo];
    int where[kCo];
#pragma unroll
    for (int j = 0; j < kCo; ++j) best[j] = -std::numeric_limits<Acc>::infinity(), where[j] = -1;
    for (int th = 0; th < g.PKH; ++th) {
      for (int tw = 0; tw < g.PKW; ++tw) {
        int64_t r64, c64;
        if (!p.tap(g, th, tw, r64, c64)) continue;
        const int ih0 = static_cast<int>(r64 * g.sh - g.pt), iw0 = static_cast<int>(c64 * g.sw - g.pl);
        Acc v[kCo];
#pragma unroll
        for (int j = 0; j < kCo; ++j) v[j] = bias[j];
        const Acc* f = filter;
        for (int ci = 0; ci < Cg; ++ci) {
          for (int kh = 0; kh < KH; ++kh, f += KW * kCo) {
            const int ih = ih0 + kh * static_cast<int>(g.dh);
            if (ih < 0 || ih >= H) continue;
            const T* row = xn + (ci * xc + ih * xh);
            for (int kw = 0; kw < KW; ++kw) {
              const int iw = iw0 + kw * static_cast<int>(g.dw);
              if (iw < 0 || iw >= W) continue;
              const Acc xv = Num<T>::to_acc(row[iw * xw]);
#pragma unroll
              for (int j = 0; j < kCo; ++j) v[j] = fma(f[kw * kCo + j], xv, v[j]);
            }
          }
        }
#pragma unroll
        for (int j = 0; j < kCo; ++j) {
          const Acc a = relu_keep_nan(v[j]);
          if (replaces(a, best[j])) {
            best[j] = a;
            where[j] = th * static_cast<int>(g.PKW) + tw;
          }
        }
      }
    }
    store_direct<kCo>(ys, qs.at, ch, best, where, y, off);
  }
}

// The direct forward of the commonest first layers, kCo = 8 output channels a thread: a kK x kK
// conv (3x3) of stride 1 and dilation 1 pooled by kP x kP windows of dilation 1 at any pool
// stride and padding (MaxPool2d(2): kP = 2; no pool: kP = 1; conv_patch_pool picks it). A
// window's kP x kP conv outputs are adjacent, so together they read one kS x kS patch of each
// input channel (kS = kP + kK - 1: 16 elements for a 2x2 window against 36 tap by tap). A thread
// loads a channel's whole patch before it multiplies (the loads in flight together; the general
// kernel's loop waits on each), then multiplies each filter tap's 8 weights, read once from
// shared memory, into all kP^2 outputs' sums. A patch element in the padding is 0, as in
// torch's conv: a sum adds w * 0 there (exactly what skipping the tap gives for a finite
// weight; an infinite or NaN weight makes it NaN, as torch's does), in the general kernel's
// order (bias, then ci, kh, kw). The sums of a window's taps outside the conv output are not
// pooled. 32-bit index arithmetic within an image, as the general kernel's; float
// accumulators only (float64 keeps the general kernel: its sums and patch do not fit 128
// registers).
template <typename T, typename OffT, int kK, int kP>
__global__ void __launch_bounds__(kThreads, kP == 1 ? 3 : 2)
    conv_pool_patch_kernel(Geometry g, const T* __restrict__ x, Strides4 xs, const T* __restrict__ w,
                           const T* __restrict__ b, T* __restrict__ y, OffT* __restrict__ off, Strides4 ys) {
  using Acc = typename Num<T>::Acc;
  static_assert(sizeof(Acc) == 4, "float accumulators only");
  constexpr int kCo = kDirectWideChannels, kS = kP + kK - 1, kTaps = kP * kP;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Acc* filter = reinterpret_cast<Acc*>(smem_raw);
  const DirectChunk ch = load_direct_chunk<kCo>(g, w, filter);
  Acc bias[kCo];
#pragma unroll
  for (int j = 0; j < kCo; ++j) bias[j] = b && j < ch.nc ? Num<T>::to_acc(b[ch.c0 + j]) : Acc(0);
  const int H = static_cast<int>(g.H), W = static_cast<int>(g.W), Cg = static_cast<int>(g.Cg);
  const int OH = static_cast<int>(g.OH), OW = static_cast<int>(g.OW);
  const int xc = static_cast<int>(xs.s[1]), xh = static_cast<int>(xs.s[2]), xw = static_cast<int>(xs.s[3]);
  const int64_t Q = g.N * g.PH * g.PW;
  PooledSteps qs(g);
  for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < Q;
       q += int64_t(gridDim.x) * blockDim.x, qs.next(g)) {
    const int r0 = qs.at.mid * static_cast<int>(g.psh) - static_cast<int>(g.pph);  // conv position of tap (0, 0)
    const int c0 = qs.at.lo * static_cast<int>(g.psw) - static_cast<int>(g.ppw);
    const int ih0 = r0 - static_cast<int>(g.pt), iw0 = c0 - static_cast<int>(g.pl);  // its filter tap (0, 0)
    const T* xn = x + qs.at.hi * xs.s[0] + ch.grp * g.Cg * xs.s[1];
    Acc v[kTaps][kCo];
#pragma unroll
    for (int t = 0; t < kTaps; ++t)
#pragma unroll
      for (int j = 0; j < kCo; ++j) v[t][j] = bias[j];
    const Acc* f = filter;
    for (int ci = 0; ci < Cg; ++ci, f += kK * kK * kCo) {
      const T* xci = xn + ci * xc;
      Acc patch[kS][kS];
#pragma unroll
      for (int a = 0; a < kS; ++a) {
        const int ih = ih0 + a;
#pragma unroll
        for (int e = 0; e < kS; ++e) {
          const int iw = iw0 + e;
          patch[a][e] = ih >= 0 && ih < H && iw >= 0 && iw < W ? Num<T>::to_acc(xci[ih * xh + iw * xw]) : Acc(0);
        }
      }
#pragma unroll
      for (int kh = 0; kh < kK; ++kh)
#pragma unroll
        for (int kw = 0; kw < kK; ++kw) {
          Acc wt[kCo];
#pragma unroll
          for (int j = 0; j < kCo; ++j) wt[j] = f[(kh * kK + kw) * kCo + j];
#pragma unroll
          for (int th = 0; th < kP; ++th)
#pragma unroll
            for (int tw = 0; tw < kP; ++tw)
#pragma unroll
              for (int j = 0; j < kCo; ++j)
                v[th * kP + tw][j] = fma(wt[j], patch[th + kh][tw + kw], v[th * kP + tw][j]);
        }
    }
    Acc best[kCo];
    int where[kCo];
#pragma unroll
    for (int j = 0; j < kCo; ++j) best[j] = -std::numeric_limits<Acc>::infinity(), where[j] = -1;
#pragma unroll
    for (int th = 0; th < kP; ++th)
#pragma unroll
      for (int tw = 0; tw < kP; ++tw) {
        if (r0 + th < 0 || r0 + th >= OH || c0 + tw < 0 || c0 + tw >= OW) continue;
#pragma unroll
        for (int j = 0; j < kCo; ++j) {
          const Acc a = relu_keep_nan(v[th * kP + tw][j]);
          if (replaces(a, best[j])) {
            best[j] = a;
            where[j] = th * kP + tw;
          }
        }
      }
    store_direct<kCo>(ys, qs.at, ch, best, where, y, off);
  }
}

constexpr int64_t kInt32 = int64_t(1) << 31;

// Whether every element offset inside one image of a group of x, ci*xs1 + ih*xs2 + iw*xs3 for
// ci < Cin/groups, ih < H, iw < W (strides non-negative), and each stride, stay below 2^31: the
// kernels that index inside an image in 32 bits (the direct forward; the channel-run loaders,
// run_loaders.h) need it.
inline bool image_offsets_fit(const Geometry& g, const Strides4& xs) {
  const int64_t span = (g.Cg - 1) * xs.s[1] + (g.H - 1) * xs.s[2] + (g.W - 1) * xs.s[3];
  return span < kInt32 && xs.s[1] < kInt32 && xs.s[2] < kInt32 && xs.s[3] < kInt32;
}

// Output channels per thread of conv_pool_direct_kernel for g and input strides xs; 0 where
// the implicit GEMM runs instead: more than kDirectMaxChannels input channels per group, even
// one channel's filter over kDirectMaxSmem (8 channels' over it: 1 channel a thread), more than
// 65535 chunks (gridDim.y), or an image whose offsets do not fit the kernel's 32-bit index
// arithmetic.
template <typename Acc>
int direct_channels(const Geometry& g, const Strides4& xs) {
  if (g.Cg > kDirectMaxChannels) return 0;
  const int64_t filter_bytes = g.K * static_cast<int64_t>(sizeof(Acc));
  const int co = g.Coutg >= kDirectWideMin && filter_bytes * kDirectWideChannels <= kDirectMaxSmem
                     ? kDirectWideChannels : 1;
  if (filter_bytes * co > kDirectMaxSmem) return 0;
  if (g.G * ceil_div(g.Coutg, co) > 65535) return 0;
  if (!image_offsets_fit(g, xs)) return 0;
  if (conv_coordinate_reach(g) >= kInt32) return 0;  // the bindings refuse these; kept for other callers
  return co;
}

// The pool window side kP of conv_pool_patch_kernel<T, OffT, 3, kP> for g: 2 for 2x2 windows of
// dilation 1 (any pool stride and padding), 1 without a pool (or a 1x1 one), after a 3x3 conv of
// stride 1 and dilation 1; 0 where it does not run (the general direct kernel does). The caller
// also needs 8 output channels a thread (direct_channels) and float accumulators.
constexpr int kPatchKernel = 3;  // the conv's filter size (a template parameter of the kernel)

inline int conv_patch_pool(const Geometry& g) {
  if (g.KH != kPatchKernel || g.KW != kPatchKernel || g.sh != 1 || g.sw != 1 || g.dh != 1 || g.dw != 1) return 0;
  if (g.PKH == 1 && g.PKW == 1) return 1;
  return g.PKH == 2 && g.PKW == 2 && g.pdh == 1 && g.pdw == 1 ? 2 : 0;
}

// The pooled epilogue of the implicit-GEMM forwards over a result tile of kRows rows, for the
// elements this thread owns (column nn of the tile, rows threadIdx.x / kBN + j * (kThreads /
// kBN), j < kOwned<kRows>, as for_owned): after the GEMM of pool tap `tap`, keep_window_max folds
// the tile's conv outputs (+ bias, ReLU) into the running max of each pooled output and
// remembers the tap; write_pooled stores the max and its offset (-1 where the ReLU is off) of
// pooled output col.
template <int kRows>
constexpr int kOwned = kRows * kBN / kThreads;

template <typename T, typename Acc, int kRows>
__device__ __forceinline__ void keep_window_max(const Acc (&c)[kRows][kBN + 4], const Geometry& g, const T* b,
                                                int64_t grp, int64_t m0, int nn, int tap, Acc (&best)[kOwned<kRows>],
                                                int (&where)[kOwned<kRows>]) {
  // This block's rows that are output channels (m0 < Coutg), and its first channel's bias.
  const int rows = g.Coutg - m0 < kRows ? static_cast<int>(g.Coutg - m0) : kRows;
  const T* bm = b ? b + grp * g.Coutg + m0 : nullptr;
#pragma unroll
  for (int j = 0; j < kOwned<kRows>; ++j) {
    const int mm = threadIdx.x / kBN + j * (kThreads / kBN);
    if (mm >= rows) continue;
    const Acc v = relu_keep_nan(c[mm][nn] + (bm ? Num<T>::to_acc(bm[mm]) : Acc(0)));
    if (replaces(v, best[j])) {
      best[j] = v;
      where[j] = tap;
    }
  }
}

template <typename T, typename OffT, typename Acc, int kN>
__device__ __forceinline__ void write_pooled(const Geometry& g, const PooledColumn& col, int64_t grp, int64_t m0,
                                             const Acc (&best)[kN], const int (&where)[kN], T* y, OffT* off,
                                             const Strides4& ys) {
  if (col.n < 0) return;
  const int64_t yq = col.n * ys.s[0] + col.ph * ys.s[2] + col.pw * ys.s[3];
#pragma unroll
  for (int j = 0; j < kN; ++j) {
    const int64_t m = m0 + threadIdx.x / kBN + j * (kThreads / kBN);
    if (m >= g.Coutg) continue;
    const int64_t yi = yq + (grp * g.Coutg + m) * ys.s[1];
    y[yi] = Num<T>::from_acc(best[j]);
    off[yi] = static_cast<OffT>(best[j] > Acc(0) || best[j] != best[j] ? where[j] : -1);
  }
}

// The pool-window loop of the implicit-GEMM forwards: for each tap (th, tw) of the window,
// gemm(dr, dc) computes the block's conv outputs at the taps' offset (dr, dc) from each
// column's first tap into the result tile c (kRows rows), whose elements this thread folds
// into the window max of pooled output col (where the tap is inside the conv output); then the
// max and its offset are written.
template <typename T, typename OffT, typename Acc, int kRows, typename Gemm>
__device__ __forceinline__ void pool_over_taps(const Geometry& g, const PooledColumn& col, int64_t grp, int64_t m0,
                                               int nn, const T* b, const Acc (&c)[kRows][kBN + 4], T* y, OffT* off,
                                               const Strides4& ys, const Gemm& gemm) {
  Acc best[kOwned<kRows>];
  int where[kOwned<kRows>];
  for (int j = 0; j < kOwned<kRows>; ++j) {
    best[j] = -std::numeric_limits<Acc>::infinity();
    where[j] = -1;
  }
  for (int th = 0; th < g.PKH; ++th) {
    for (int tw = 0; tw < g.PKW; ++tw) {
      const int dr = th * static_cast<int>(g.pdh), dc = tw * static_cast<int>(g.pdw);
      gemm(dr, dc);
      if (col.n >= 0 && inside(col.r0 + dr, g.OH) && inside(col.c0 + dc, g.OW))  // else in the pool's padding
        keep_window_max(c, g, b, grp, m0, nn, th * static_cast<int>(g.PKW) + tw, best, where);
      __syncthreads();  // s.c is overwritten by the next tap's tile
    }
  }
  write_pooled(g, col, grp, m0, best, where, y, off, ys);
}

// One block: output channels [m0, m0 + kBM) of group blockIdx.z at pooled outputs
// [n0, n0 + kBN). Each thread's B elements and epilogue elements share one pooled output
// (column), decomposed once; the GEMM runs once per pool tap.
template <typename T, typename OffT>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T>)
    conv_pool_gemm_kernel(Geometry g, const T* __restrict__ x, Strides4 xs, const T* __restrict__ w,
                          const T* __restrict__ b, T* __restrict__ y, OffT* __restrict__ off, Strides4 ys) {
  __shared__ TileSmem<T> s;
  const int64_t grp = blockIdx.z;
  const int64_t n0 = blockIdx.x * int64_t(kBN), m0 = blockIdx.y * int64_t(kBM);
  const T* wg = w + grp * g.Coutg * g.K;
  const T zero = zero_of<T>();
  const int nn = threadIdx.x % kBN;  // this thread's column
  const PooledColumn col = pooled_column(g, n0 + nn);
  const T* xn = col.n >= 0 ? x + col.n * xs.s[0] + grp * g.Cg * xs.s[1] : nullptr;
  const int64_t steps = ceil_div(g.K, kBK);
  pool_over_taps(g, col, grp, m0, nn, b, s.c, y, off, ys, [&](int dr, int dc) {
    const int r = col.r0 + dr, c = col.c0 + dc;
    const bool tap = xn && inside(r, g.OH) && inside(c, g.OW);  // false: the tap is in the pool's padding
    MatrixLoader<T, true> la(wg, g.K, 1, m0, g.Coutg, 0, g.K, threadIdx.x, zero);
    PooledColumnLoader<T> lb(g, tap ? xn : nullptr, xs.s[1], xs.s[2], xs.s[3], r, c, threadIdx.x, zero);
    tile_gemm<T, true, false>([&](T(&v)[kLoads]) { la.fetch(v); }, [&](T(&v)[kLoads]) { lb.fetch(g, v); },
                              [&] {
                                la.next();
                                lb.next(g);
                              },
                              steps, s);
  });
}

// The forward over channel runs (run_gemm.cuh), for 16-bit or TF32 channels_last input with
// Cin/groups a multiple of kRunLen<T> (conv_forward_channel_runs): the blocks and the pooled
// epilogue of conv_pool_gemm_kernel, with k = (kh, kw, ci) and the weights wk as (Cout, KH, KW,
// Cin/groups) contiguous, over kRows output channels a block: 64, or 128 where that pads no
// more rows (run_rows; the input's runs, the costly operand, then serve twice the products).
// A thread's loader column (RunMap::o) differs from its epilogue column (nn), so each is
// decomposed once.
template <typename T, typename OffT, int kRows>
__global__ void __launch_bounds__(kThreads, 2)
    conv_pool_runs_kernel(Geometry g, const T* __restrict__ x, Strides4 xs, const T* __restrict__ wk,
                          const T* __restrict__ b, T* __restrict__ y, OffT* __restrict__ off, Strides4 ys) {
  __shared__ RunSmem<T, kRows> s;
  const int64_t grp = blockIdx.z;
  const int64_t n0 = blockIdx.x * int64_t(kBN), m0 = blockIdx.y * int64_t(kRows);
  const T* wg = wk + grp * g.Coutg * g.K;
  const int nn = threadIdx.x % kBN;
  const PooledColumn col = pooled_column(g, n0 + nn);
  const PooledColumn lcol = pooled_column(g, n0 + RunMap<T>::o(threadIdx.x));
  const T* xl = lcol.n >= 0 ? x + lcol.n * xs.s[0] + grp * g.Cg : nullptr;
  const RunDigits digits = run_digits<T>(g, threadIdx.x);
  const int64_t steps = ceil_div(g.K, kRunBK<T>);
  pool_over_taps(g, col, grp, m0, nn, b, s.c, y, off, ys, [&](int dr, int dc) {
    const bool ltap = xl && inside(lcol.r0 + dr, g.OH) && inside(lcol.c0 + dc, g.OW);
    PooledRunLoader<T> lb(g, ltap ? xl : nullptr, xs.s[2], xs.s[3], lcol.r0 + dr, lcol.c0 + dc, digits);
    run_gemm_row_blocks<T, false, false, kRows>(
        [&](int i) { return RowRunLoader<T>(wg, g.K, m0 + i * kBM, g.Coutg, threadIdx.x); },
        [&] { return lb.src(g); }, [&] { lb.next(g); }, steps, s);
  });
}

// The divisors of the un-pools' index arithmetic, built by the launcher, with which the kernels
// divide nothing (FastDivisor; 64-bit divisions had made the un-pool compute-bound): the
// channels a step of the flat index covers (Cout, or Cout / kRunLen<T> runs), the conv output's
// sides, the pool's strides and dilations.
struct UnpoolDivisors {
  FastDivisor channels, oh, ow, psh, psw, pdh, pdw;
  UnpoolDivisors(const Geometry& g, int64_t run)
      : channels(g.Cout / run), oh(g.OH), ow(g.OW), psh(g.psh), psw(g.psw), pdh(g.pdh), pdw(g.pdw) {}
};

// Calls f(ph, pw, tap) for each pooled output (ph, pw) whose window holds conv position (r, col),
// with the window tap it is there: the rows ph with r + pph - (PKH - 1)*pdh <= ph*psh <= r + pph
// whose distance r + pph - ph*psh is a whole th*pdh, the columns alike (one of each for an
// undilated pool whose stride is its window).
template <typename F>
__device__ __forceinline__ void for_each_window(const Geometry& g, const UnpoolDivisors& dv, int64_t r, int64_t col,
                                                const F& f) {
  const int64_t top = r + g.pph, left = col + g.ppw;
  const int64_t lo_h = top - (g.PKH - 1) * g.pdh, lo_w = left - (g.PKW - 1) * g.pdw;
  const int64_t ph0 = lo_h <= 0 ? 0 : dv.psh.div(lo_h + g.psh - 1), pw0 = lo_w <= 0 ? 0 : dv.psw.div(lo_w + g.psw - 1);
  const int64_t ph1 = min(dv.psh.div(top), g.PH - 1), pw1 = min(dv.psw.div(left), g.PW - 1);
  for (int64_t ph = ph0; ph <= ph1; ++ph) {
    int64_t th_rem;
    const int64_t th = dv.pdh.divmod(top - ph * g.psh, th_rem);
    if (th_rem != 0) continue;
    for (int64_t pw = pw0; pw <= pw1; ++pw) {
      int64_t tw_rem;
      const int64_t tw = dv.pdw.divmod(left - pw * g.psw, tw_rem);
      if (tw_rem == 0) f(ph, pw, th * g.PKW + tw);
    }
  }
}

// dconv[n][c][r][col] = sum of the pooled gradients whose window max is at (r, col), dconv
// contiguous as (N, Cout, OH, OW): one element a thread and pass, its flat index split into
// (n, c, r, col), each window that holds it compared by its saved offset (dv: run 1).
template <typename T, typename OffT>
__global__ void unpool_kernel(Geometry g, UnpoolDivisors dv, const T* __restrict__ go, Strides4 gs,
                              const OffT* __restrict__ off, Strides4 os, T* __restrict__ dconv) {
  using Acc = typename Num<T>::Acc;
  const int64_t total = g.N * g.Cout * g.OH * g.OW;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t c, r, col;  // i = ((n * Cout + c) * OH + r) * OW + col
    const int64_t n = dv.channels.divmod(dv.oh.divmod(dv.ow.divmod(i, col), r), c);
    Acc sum = Acc(0);
    for_each_window(g, dv, r, col, [&](int64_t ph, int64_t pw, int64_t tap) {
      if (off[n * os.s[0] + c * os.s[1] + ph * os.s[2] + pw * os.s[3]] == tap)
        sum += Num<T>::to_acc(go[n * gs.s[0] + c * gs.s[1] + ph * gs.s[2] + pw * gs.s[3]]);
    });
    dconv[i] = Num<T>::from_acc(sum);
  }
}

// The same into channels_last dconv (N, OH, OW, Cout), the channel-run backward's operand, for
// its tensor-core types with Cout whole runs of kRunLen<T> channels: one run a thread and pass,
// so that a pixel's windows are found once for its run's channels and the run is stored as one
// 16-byte vector (dv: run kRunLen<T>).
template <typename T, typename OffT>
__global__ void unpool_runs_kernel(Geometry g, UnpoolDivisors dv, const T* __restrict__ go, Strides4 gs,
                                   const OffT* __restrict__ off, Strides4 os, T* __restrict__ dconv) {
  using Acc = typename Num<T>::Acc;
  constexpr int kLen = kRunLen<T>;
  static_assert(kLen * sizeof(T) == sizeof(uint4), "a run is one 16-byte vector");
  const int64_t total = g.N * g.OH * g.OW * (g.Cout / kLen);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t run, r, col;  // i = ((n * OH + r) * OW + col) * (Cout / kLen) + run
    const int64_t n = dv.oh.divmod(dv.ow.divmod(dv.channels.divmod(i, run), col), r);
    Acc sum[kLen];
#pragma unroll
    for (int v = 0; v < kLen; ++v) sum[v] = Acc(0);
    for_each_window(g, dv, r, col, [&](int64_t ph, int64_t pw, int64_t tap) {
      const OffT* o = off + n * os.s[0] + run * kLen * os.s[1] + ph * os.s[2] + pw * os.s[3];
      const T* gp = go + n * gs.s[0] + run * kLen * gs.s[1] + ph * gs.s[2] + pw * gs.s[3];
#pragma unroll
      for (int v = 0; v < kLen; ++v)
        if (o[v * os.s[1]] == tap) sum[v] += Num<T>::to_acc(gp[v * gs.s[1]]);
    });
    T run_out[kLen];
#pragma unroll
    for (int v = 0; v < kLen; ++v) run_out[v] = Num<T>::from_acc(sum[v]);
    uint4 vec;
    memcpy(&vec, run_out, sizeof(vec));  // registers; one 16-byte store (dconv is 256-byte aligned)
    reinterpret_cast<uint4*>(dconv)[i] = vec;
  }
}

// db[c] = sum over (n, ph, pw) of the pooled gradients whose ReLU was on. Block (c, split) sums
// split's chunk of the positions (each thread a strided serial sum, then a fixed-order tree):
// into db[c] when there is one split, else into part[split * Cout + c], which the reduction
// launch adds in split order. Splits: channel_sum_splits (short serial sums).
template <typename T, typename OffT>
__device__ void bias_grad_block(const Geometry& g, const T* __restrict__ go, Strides4 gs, const OffT* __restrict__ off,
                                Strides4 os, int64_t chunk, int64_t splits, int64_t c, int64_t split_index,
                                typename Num<T>::Acc* __restrict__ part, T* __restrict__ db) {
  using Acc = typename Num<T>::Acc;
  __shared__ Acc scratch[kThreads];
  const int64_t per_image = g.PH * g.PW;
  const int64_t i0 = split_index * chunk, i1 = min(g.N * per_image, i0 + chunk);
  Acc sum = Acc(0);
  // Position i = (n, ph, pw) as digits, stepped by kThreads with carries (no division in the loop).
  Digits at = split(i0 + threadIdx.x, g.PH, g.PW);
  const Digits step = split(kThreads, g.PH, g.PW);
  for (int64_t i = i0 + threadIdx.x; i < i1; i += kThreads, add(at, step, int(g.PH), int(g.PW))) {
    const int64_t n = at.hi, ph = at.mid, pw = at.lo;
    if (off[n * os.s[0] + c * os.s[1] + ph * os.s[2] + pw * os.s[3]] >= 0)
      sum += Num<T>::to_acc(go[n * gs.s[0] + c * gs.s[1] + ph * gs.s[2] + pw * gs.s[3]]);
  }
  const Acc total = block_sum<kThreads>(sum, scratch);
  if (threadIdx.x != 0) return;
  if (splits == 1) db[c] = Num<T>::from_acc(total);
  else part[split_index * g.Cout + c] = total;
}

// dx[n][grp*Cg + ci][ih][iw] = sum_{co, kh, kw} w[grp*Coutg + co][ci][kh][kw] * dconv[n][grp*Coutg + co][oh][ow]
// over the (kh, kw) for which ih = oh*sh - pt + kh*dh and iw = ow*sw - pl + kw*dw.
// Tile (bx, by) of group grp: input positions [bx * kBN, ...) x channels [by * kBM, ...).
template <typename T>
__device__ void input_grad_tile(const Geometry& g, const T* __restrict__ w, const T* __restrict__ dconv,
                                T* __restrict__ dx, int64_t bx, int64_t by, int64_t grp, TileSmem<T>& s) {
  const int64_t P = g.N * g.H * g.W, taps = g.KH * g.KW;
  const int64_t n0 = bx * int64_t(kBN), m0 = by * int64_t(kBM);
  const T zero = zero_of<T>();
  TapWeightLoader<T> la(g, w + grp * g.Coutg * g.Cg * taps, m0, threadIdx.x, zero);
  DconvGatherLoader<T> lb(g, dconv, grp, n0, threadIdx.x, zero);
  tile_gemm<T, true, false>([&](T(&v)[kLoads]) { la.fetch(g, v); }, [&](T(&v)[kLoads]) { lb.fetch(g, v); },
                            [&] {
                              la.next(g);
                              lb.next(g);
                            },
                            ceil_div(g.Coutg * taps, kBK), s);
  const int64_t p = n0 + threadIdx.x % kBN, hw = g.H * g.W;  // this thread's column (for_owned)
  if (p >= P) return;
  T* dxn = dx + ((p / hw) * g.C + grp * g.Cg) * hw + p % hw;
  for_owned(s, g.Cg, P, m0, n0,
            [&](int64_t ci, int64_t, typename Num<T>::Acc v) { dxn[ci * hw] = Num<T>::from_acc(v); });
}

// Partial weight gradients of reduction split `split`, tile (bx, by) of group grp: columns
// k in [bx * kBN, ...) x output channels [by * kBM, ...) of
// part[split][grp*Coutg + co][k] = sum over its chunk of positions p = (n, oh, ow) of
// dconv[n][grp*Coutg + co][oh][ow] * im2col(x)[k][p]. An empty chunk writes zeros.
template <typename T>
__device__ void weight_grad_tile(const Geometry& g, const T* __restrict__ x, Strides4 xs, const T* __restrict__ dconv,
                                 int64_t chunk, int64_t bx, int64_t by, int64_t grp, int64_t split,
                                 typename Num<T>::Acc* __restrict__ part, TileSmem<T>& s) {
  const int64_t P = g.N * g.OH * g.OW, k0 = split * chunk, k1 = min(P, k0 + chunk);
  const int64_t n0 = bx * int64_t(kBN), m0 = by * int64_t(kBM);
  const T zero = zero_of<T>();
  DconvRowLoader<T> la(g, dconv + grp * g.Coutg * g.OH * g.OW, m0, k0, k1, threadIdx.x, zero);
  Im2colRowLoader<T> lb(g, x + grp * g.Cg * xs.s[1], xs.s[0], xs.s[1], xs.s[2], xs.s[3], n0, k0, k1, threadIdx.x,
                        zero);
  tile_gemm<T, true, true>([&](T(&v)[kLoads]) { la.fetch(g, v); }, [&](T(&v)[kLoads]) { lb.fetch(g, v); },
                           [&] {
                             la.next(g);
                             lb.next(g);
                           },
                           k0 < k1 ? ceil_div(k1 - k0, kBK) : 0, s);
  store_partial(s, g.Coutg, g.K, m0, n0, part + split * g.Cout * g.K + grp * g.Coutg * g.K);
}

// Output channels a block of the run kernels' conv forward and weight gradient takes:
// kWideRows (128) where that pads a group's channels to no more rows than blocks of kBM (64) do
// (more than 64 channels in an even number of 64-row blocks: 65-128, 193-256, ...), so that each
// run of their costly operand (the gathered input) feeds twice the products; kBM elsewhere.
inline int run_rows(const Geometry& g) {
  return g.Coutg > kBM && ceil_div(g.Coutg, kWideRows) * kWideRows == ceil_div(g.Coutg, kBM) * kBM ? kWideRows : kBM;
}

// Reduction splits of the weight gradient in blocks of `rows` output channels (2 blocks an SM
// of an H100; reduction_splits). Fewer rows give no more splits than more.
template <typename T>
int64_t weight_grad_splits(const Geometry& g, int rows = kBM) {
  const int64_t tiles = ceil_div(g.Coutg, rows) * ceil_div(g.K, kBN) * g.G;
  const int64_t splits = reduction_splits(g.N * g.OH * g.OW, tiles);
  const int64_t most = 65535 / g.G;  // grid.z = groups * splits
  return splits < most ? splits : most;
}

// The blocks of the backward's one gradient launch (conv_grads_kernel), in block order: the
// input gradient's tiles (dx_x x dx_y per group, and per stride phase over runs; none when it
// is not wanted), the weight gradient's (dw_x x dw_y per group and reduction split), the bias
// gradient's (channel, split).
// They all read only the conv-output gradient (built by the un-pool before) or the pooled
// gradient, so one launch runs them side by side.
struct GradBlocks {
  int64_t dx_x = 0, dx_y = 0, dx = 0, dx_pw = 1;  // dx_pw: the input gradient's stride phases along w
  int64_t dw_x = 0, dw_y = 0, dw = 0, splits = 0, chunk = 0;
  int dw_rows = kBM;  // output channels a weight-gradient block (kWideRows: over runs, run_rows)
  int64_t db_splits = 0, db_chunk = 0, db = 0;
  int64_t total() const { return dx + dw + db; }
};

// The gradient launch's blocks for the gradients wanted; `dw_splits` is weight_grad_splits, each
// split's chunk a whole number of k steps of `step` (kBK; kRunBK<T> over channel runs). The tiles
// count alike in both kernels (kBM == kBN): conv_grads_kernel's input-gradient tiles are
// channels x positions, conv_grads_runs_kernel's positions x channels, the latter for each
// stride phase that has inputs (`phases`: input_grad_phase_grid; input_grad_runs_tile); the
// weight gradient's blocks take dw_rows output channels (kWideRows: only over runs).
inline GradBlocks grad_blocks(const Geometry& g, bool want_dx, bool want_dw, bool want_db, int64_t dw_splits,
                              int64_t step = kBK, bool phases = false, int dw_rows = kBM) {
  GradBlocks b;
  if (want_dx) {
    const PhaseGrid p = phases ? input_grad_phase_grid(g) : PhaseGrid{ceil_div(g.N * g.H * g.W, kBN), 1, 1};
    b.dx_x = p.row_tiles, b.dx_y = ceil_div(g.Cg, kBM);
    b.dx = b.dx_x * b.dx_y * g.G * p.phase_rows * p.phase_cols, b.dx_pw = p.phase_cols;
  }
  if (want_dw) {
    b.dw_x = ceil_div(g.K, kBN), b.dw_y = ceil_div(g.Coutg, dw_rows), b.splits = dw_splits, b.dw_rows = dw_rows;
    b.chunk = ceil_div(ceil_div(g.N * g.OH * g.OW, dw_splits), step) * step;
    b.dw = b.dw_x * b.dw_y * g.G * dw_splits;
  }
  if (want_db) {
    const int64_t positions = g.N * g.PH * g.PW;
    b.db_splits = channel_sum_splits(positions, g.Cout), b.db_chunk = ceil_div(positions, b.db_splits);
    b.db = g.Cout * b.db_splits;
  }
  return b;
}

// Every gradient of the backward in one launch: block blockIdx.x runs the tile or channel sum
// that GradBlocks assigns it. dw_part / db_part: the weight / bias gradients' split partial sums
// (db_part only with more than one bias split; one split writes db).
template <typename T, typename OffT>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T>)
    conv_grads_kernel(Geometry g, GradBlocks plan, const T* __restrict__ go, Strides4 gs,
                      const OffT* __restrict__ off, Strides4 os, const T* __restrict__ x, Strides4 xs,
                      const T* __restrict__ w, const T* __restrict__ dconv, T* __restrict__ dx,
                      typename Num<T>::Acc* __restrict__ dw_part, typename Num<T>::Acc* __restrict__ db_part,
                      T* __restrict__ db) {
  __shared__ TileSmem<T> s;
  int64_t b = blockIdx.x;
  if (b < plan.dx) {
    input_grad_tile<T>(g, w, dconv, dx, b % plan.dx_x, b / plan.dx_x % plan.dx_y, b / (plan.dx_x * plan.dx_y), s);
    return;
  }
  b -= plan.dx;
  if (b < plan.dw) {
    const int64_t z = b / (plan.dw_x * plan.dw_y);  // grp * splits + split
    weight_grad_tile<T>(g, x, xs, dconv, plan.chunk, b % plan.dw_x, b / plan.dw_x % plan.dw_y, z / plan.splits,
                        z % plan.splits, dw_part, s);
    return;
  }
  b -= plan.dw;
  bias_grad_block<T, OffT>(g, go, gs, off, os, plan.db_chunk, plan.db_splits, b % g.Cout, b / g.Cout, db_part, db);
}

// The input gradient over channel runs (conv_backward_channel_runs), tile (bx, by) of phase
// (rh, rw) of group grp: the phase's input positions (n, ih, iw) = (n, rh + sh*qh, rw + sw*qw),
// rows q = (n, qh, qw) in [bx * kBM, ...), x channels [by * kBN, ...) of
// dx[n][ih][iw][grp*Cg + ci] (channels_last contiguous) = sum over the phase's taps (kh, kw) and
// the output channels co of dconv at the conv position that tap read (ih, iw) from * the weight
// (InputGradRunLoader: dconv channels_last, the weights wt as (groups, Cin/groups, KH, KW,
// Cout/groups) contiguous). Unit stride is one phase of every tap (q = (n, ih, iw)).
template <typename T>
__device__ void input_grad_runs_tile(const Geometry& g, const T* __restrict__ wt, const T* __restrict__ dconv,
                                     T* __restrict__ dx, int64_t bx, int64_t by, int64_t grp, int64_t rh, int64_t rw,
                                     RunSmem<T>& s) {
  const AxisPhase ph = axis_phase(rh, g.sh, g.dh, g.pt, g.KH, g.H), pw = axis_phase(rw, g.sw, g.dw, g.pl, g.KW, g.W);
  const int64_t P = g.N * ph.rows * pw.rows, K = ph.taps * pw.taps * g.Coutg;
  const int64_t m0 = bx * int64_t(kBM), n0 = by * int64_t(kBN);
  if (m0 >= P) return;  // past this phase's rows (the grid counts the largest phase's)
  const int64_t p = m0 + RunMap<T>::o(threadIdx.x);  // this thread's loader row
  const Digits at = split(p < P ? p : 0, ph.rows, pw.rows);  // (n, qh, qw)
  const int64_t ci = n0 + RunMap<T>::o(threadIdx.x);  // and column
  InputGradRunLoader<T> l(g, ph, pw, p < P ? dconv + at.hi * g.OH * g.OW * g.Cout + grp * g.Coutg : nullptr,
                          ci < g.Cg ? wt + (grp * g.Cg + ci) * g.KH * g.KW * g.Coutg : nullptr, at.mid, at.lo,
                          threadIdx.x);
  run_gemm<T, false, false>([&] { return l.src_a(g); }, [&] { return l.src_b(); }, [&] { l.next(g); },
                            ceil_div(K, kRunBK<T>), s);
  // The owned elements' rows as digits (n, qh, qw), stepped from the first with carries.
  T* dxg = dx + grp * g.Cg;
  for_owned_rows(s, P, g.Cg, m0, n0, ph.rows, pw.rows, [&](const Digits& q, int64_t c, typename Num<T>::Acc v) {
    const int64_t ih = rh + g.sh * q.mid, iw = rw + g.sw * q.lo;
    dxg[((q.hi * g.H + ih) * g.W + iw) * g.C + c] = Num<T>::from_acc(v);
  });
}

// The weight gradient's partial sums over channel runs, reduction split `split`, tile (bx, by) of
// group grp: columns j = (kh, kw, ci) in [bx * kBN, ...) x output channels [by * kBM, ...) of
// part[split][grp*Coutg + co][j] = sum over its chunk of conv positions p = (n, oh, ow) of
// dconv[n][oh][ow][grp*Coutg + co] * x[n][oh*sh - pt + kh*dh][ow*sw - pl + kw*dw][grp*Cg + ci]:
// both operands' runs lie across k (output channels; input channels of one tap). The
// columns are in the runs' weight order; sum_grad_partials_kernel puts them in dw's.
template <typename T, int kRows>
__device__ void weight_grad_runs_tile(const Geometry& g, const T* __restrict__ x, Strides4 xs,
                                      const T* __restrict__ dconv, int64_t chunk, int64_t bx, int64_t by, int64_t grp,
                                      int64_t split, typename Num<T>::Acc* __restrict__ part,
                                      RunSmem<T, kRows>& s) {
  const int64_t P = g.N * g.OH * g.OW, k0 = split * chunk, k1 = min(P, k0 + chunk);
  const int64_t n0 = bx * int64_t(kBN), m0 = by * int64_t(kRows);
  const int64_t steps = k0 < k1 ? ceil_div(k1 - k0, kRunBK<T>) : 0;
  Im2colKMajorRunLoader<T> lb(g, x + grp * g.Cg, xs.s[0], xs.s[2], xs.s[3], n0, k0, k1, threadIdx.x);
  const T* dconv_g = dconv + grp * g.Coutg;
  run_gemm_row_blocks<T, true, true, kRows>(
      [&](int i) { return KMajorRunLoader<T>(dconv_g, g.Cout, m0 + i * kBM, g.Coutg, k0, k1, threadIdx.x); },
      [&] { return lb.src(g); }, [&] { lb.next(g); }, steps, s);
  store_partial(s, g.Coutg, g.K, m0, n0, part + split * g.Cout * g.K + grp * g.Coutg * g.K);
}

// The shared memory of conv_grads_runs_kernel: the input gradient's tile of 64 rows and the
// weight gradient's of kDwRows.
template <typename T, int kDwRows>
union GradRunSmem {
  RunSmem<T> narrow;
  RunSmem<T, kDwRows> dw;
};

// conv_grads_kernel over channel runs (conv_backward_channel_runs): its blocks (GradBlocks with
// the input gradient's tiles per stride phase, z = phase * G + grp, and chunks of kRunBK<T>
// steps); dconv channels_last (unpool_runs_kernel), dx channels_last contiguous, wt as
// input_grad_runs_tile reads it, dw_part in the runs' column order (weight_grad_runs_tile); the
// weight gradient's blocks of kDwRows output channels (plan.dw_rows: run_rows).
template <typename T, typename OffT, int kDwRows>
__global__ void __launch_bounds__(kThreads, 2)
    conv_grads_runs_kernel(Geometry g, GradBlocks plan, const T* __restrict__ go, Strides4 gs,
                           const OffT* __restrict__ off, Strides4 os, const T* __restrict__ x, Strides4 xs,
                           const T* __restrict__ wt, const T* __restrict__ dconv, T* __restrict__ dx,
                           typename Num<T>::Acc* __restrict__ dw_part, typename Num<T>::Acc* __restrict__ db_part,
                           T* __restrict__ db) {
  __shared__ GradRunSmem<T, kDwRows> s;
  int64_t b = blockIdx.x;
  if (b < plan.dx) {
    const int64_t z = b / (plan.dx_x * plan.dx_y), phase = z / g.G;  // z = phase * G + grp
    input_grad_runs_tile<T>(g, wt, dconv, dx, b % plan.dx_x, b / plan.dx_x % plan.dx_y, z % g.G,
                            phase / plan.dx_pw, phase % plan.dx_pw, s.narrow);
    return;
  }
  b -= plan.dx;
  if (b < plan.dw) {
    const int64_t z = b / (plan.dw_x * plan.dw_y);  // grp * splits + split
    weight_grad_runs_tile<T>(g, x, xs, dconv, plan.chunk, b % plan.dw_x, b / plan.dw_x % plan.dw_y, z / plan.splits,
                             z % plan.splits, dw_part, s.dw);
    return;
  }
  b -= plan.dw;
  bias_grad_block<T, OffT>(g, go, gs, off, os, plan.db_chunk, plan.db_splits, b % g.Cout, b / g.Cout, db_part, db);
}

// The column order of the channel-run backward's weight-gradient partial sums, the runs'
// (KH, KW, Cin/groups): column r = tap * Cg + ci of a filter is dw's column ci * taps + tap
// (taps = KH*KW). taps = 0: the columns are in dw's order already.
struct RunColumns {
  FastDivisor k, cg;  // K = Cg * taps, Cg
  int64_t taps = 0;
  RunColumns() = default;
  RunColumns(int64_t cg_, int64_t taps_) : k(cg_ * taps_), cg(cg_), taps(taps_) {}  // both >= 1
};

// The backward's reduction launch: dw[i] = sum over splits of dw_part (dw_count elements, none
// when dw is null), then db[c] = sum over db_splits of db_part (none when db_splits is 1: the
// bias blocks wrote db), each in split order (deterministic). dw is (Cout, Cin/groups, KH, KW)
// contiguous; dw_part's columns are in that order too, or in the runs' (cols.taps > 0).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    sum_grad_partials_kernel(const typename Num<T>::Acc* dw_part, int64_t splits, int64_t dw_count, T* dw,
                             const typename Num<T>::Acc* db_part, int64_t db_splits, int64_t db_count, T* db,
                             RunColumns cols = RunColumns()) {
  using Acc = typename Num<T>::Acc;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < dw_count + db_count;
       i += int64_t(gridDim.x) * blockDim.x) {
    const bool weight = i < dw_count;
    // Thread i reads element i of each split (consecutive threads, consecutive addresses) and
    // writes it to dw[o], reordered from the runs' columns.
    int64_t o = i;
    if (weight && cols.taps > 0) {
      int64_t r, ci;
      cols.k.divmod(i, r);                         // r = tap * Cg + ci
      const int64_t tap = cols.cg.divmod(r, ci);
      o = i - r + ci * cols.taps + tap;
    }
    const Acc* part = weight ? dw_part + i : db_part + (i - dw_count);
    const int64_t n = weight ? splits : db_splits, count = weight ? dw_count : db_count;
    Acc sum = Acc(0);
    for (int64_t k = 0; k < n; ++k) sum += part[k * count];
    (weight ? dw[o] : db[i - dw_count]) = Num<T>::from_acc(sum);
  }
}

// Where the direct weight gradient runs (its reduction splits; 0: the un-pool and the
// implicit GEMM instead): no input gradient wanted (a network's first layer), a 3x3 filter
// over at most kDirectGradMaxChannels input channels per group, 1 to 65535 output channels
// (gridDim.y). The bindings keep in-image coordinates in 32 bits.
constexpr int kDirectGradKernel = 3;    // its filter size (a template parameter of the kernel)
constexpr int kDirectGradMaxChannels = 3;  // its input channels per group (27 sums in registers)

inline int64_t direct_weight_grad_splits(const Geometry& g, bool want_dx) {
  if (want_dx || g.Cg > kDirectGradMaxChannels || g.KH != kDirectGradKernel || g.KW != kDirectGradKernel ||
      g.Cout < 1 || g.Cout > 65535)
    return 0;
  return reduction_splits(g.N * g.PH * g.PW, g.Cout);
}

// The weight and bias gradients of a first layer straight from the pooled gradient: a pooled
// output q = (n, ph, pw) whose offset o >= 0 sends dy[q, c] to the one conv position its
// window's max came from (tap o), so dw[c][k] = sum over such q of dy[q, c] * x at that
// position's filter tap k (windows that overlap add, as they must) and db[c] = the sum of those
// dy: no conv-output gradient in memory, no window search. Block (split, c): the split's
// chunk of pooled outputs, one per thread in turn, kMaxCg x kKH x kKW + 1 sums in registers
// (the filter size a template parameter, so each sum has a fixed register; 3 blocks of 256
// threads per SM, 2 for double: no spills on sm_90), then a
// fixed-order block reduction of each (deterministic) into part_dw[split][c][k] and
// part_db[split][c], which sum_grad_partials_kernel adds in split order.
template <typename T, typename OffT, int kKH, int kKW, int kMaxCg>
__global__ void __launch_bounds__(kThreads, sizeof(typename Num<T>::Acc) == 8 ? 2 : 3)
    conv_weight_grad_direct_kernel(Geometry g, const T* __restrict__ go, Strides4 gs, const OffT* __restrict__ off,
                                   Strides4 os, const T* __restrict__ x, Strides4 xs, int64_t chunk,
                                   typename Num<T>::Acc* __restrict__ part_dw,
                                   typename Num<T>::Acc* __restrict__ part_db) {
  using Acc = typename Num<T>::Acc;
  constexpr int kTaps = kKH * kKW;
  __shared__ Acc scratch[kThreads];
  const int64_t c = blockIdx.y, piece = blockIdx.x, grp = c / g.Coutg;
  const int64_t q0 = piece * chunk, q1 = min(g.N * g.PH * g.PW, q0 + chunk);
  const int Cg = static_cast<int>(g.Cg), H = static_cast<int>(g.H), W = static_cast<int>(g.W);
  const int PKW = static_cast<int>(g.PKW), dh = static_cast<int>(g.dh), dw = static_cast<int>(g.dw);
  Acc acc[kMaxCg * kTaps], bias = Acc(0);
#pragma unroll
  for (int k = 0; k < kMaxCg * kTaps; ++k) acc[k] = Acc(0);
  // Pooled output q = (n, ph, pw) as digits, stepped by kThreads with carries (no division in the loop).
  Digits at = split(q0 + threadIdx.x, g.PH, g.PW);
  const Digits step = split(kThreads, g.PH, g.PW);
  for (int64_t q = q0 + threadIdx.x; q < q1; q += kThreads, add(at, step, int(g.PH), int(g.PW))) {
    const int64_t n = at.hi;
    const int ph = at.mid, pw = at.lo;
    const int o = static_cast<int>(off[n * os.s[0] + c * os.s[1] + ph * os.s[2] + pw * os.s[3]]);
    if (o < 0) continue;  // the ReLU was off
    const Acc d = Num<T>::to_acc(go[n * gs.s[0] + c * gs.s[1] + ph * gs.s[2] + pw * gs.s[3]]);
    bias += d;
    const int th = o / PKW, tw = o - th * PKW;
    const int r = ph * static_cast<int>(g.psh) - static_cast<int>(g.pph) + th * static_cast<int>(g.pdh);
    const int col = pw * static_cast<int>(g.psw) - static_cast<int>(g.ppw) + tw * static_cast<int>(g.pdw);
    const int ih0 = r * static_cast<int>(g.sh) - static_cast<int>(g.pt);
    const int iw0 = col * static_cast<int>(g.sw) - static_cast<int>(g.pl);
    const T* xn = x + n * xs.s[0] + grp * g.Cg * xs.s[1];
#pragma unroll
    for (int ci = 0; ci < kMaxCg; ++ci) {
      if (ci >= Cg) break;
#pragma unroll
      for (int kh = 0; kh < kKH; ++kh) {
        const int ih = ih0 + kh * dh;
        if (ih < 0 || ih >= H) continue;
        const T* row = xn + ci * xs.s[1] + ih * xs.s[2];
#pragma unroll
        for (int kw = 0; kw < kKW; ++kw) {
          const int iw = iw0 + kw * dw;
          if (iw >= 0 && iw < W)
            acc[(ci * kKH + kh) * kKW + kw] = fma(d, Num<T>::to_acc(row[iw * xs.s[3]]), acc[(ci * kKH + kh) * kKW + kw]);
        }
      }
    }
  }
#pragma unroll
  for (int k = 0; k < kMaxCg * kTaps; ++k) {
    if (k < g.K) {
      const Acc total = block_sum<kThreads>(acc[k], scratch);
      if (threadIdx.x == 0) part_dw[(piece * g.Cout + c) * g.K + k] = total;
      __syncthreads();  // scratch is reused by the next sum
    }
  }
  const Acc total = block_sum<kThreads>(bias, scratch);
  if (threadIdx.x == 0) part_db[piece * g.Cout + c] = total;
}

// The divisors of the tangent's flat index i = ((c * N + n) * PH + ph) * PW + pw and of a window
// offset o = th * PKW + tw, built by the launcher (FastDivisor: the kernel divides nothing).
// Every one >= 1: the launcher skips an empty output.
struct JvpDivisors {
  FastDivisor pooled, pw, ph, coutg, pkw;  // N*PH*PW, PW, PH, Cout/groups, PKW
  explicit JvpDivisors(const Geometry& g)
      : pooled(g.N * g.PH * g.PW), pw(g.PW), ph(g.PH), coutg(g.Coutg), pkw(g.PKW) {}
};

// Tangent at fixed offsets: each thread computes whole outputs y[n, c, ph, pw] (a grid-stride
// loop over (c, n, ph, pw)), a dot product of length K at the conv position of the window's
// max: tb[c] + sum tx * w + x * tw, or 0 where the ReLU is off.
template <typename T, typename OffT>
__global__ void jvp_kernel(Geometry g, JvpDivisors dv, const T* __restrict__ x, Strides4 xs,
                           const T* __restrict__ w, const OffT* __restrict__ off, Strides4 os, const T* __restrict__ tx,
                           Strides4 txs, const T* __restrict__ tw, const T* __restrict__ tb, T* __restrict__ y,
                           Strides4 ys) {
  using Acc = typename Num<T>::Acc;
  const int64_t total = g.N * g.PH * g.PW * g.Cout;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    int64_t q, ph, pw;
    const int64_t c = dv.pooled.divmod(i, q), grp = dv.coutg.div(c);
    const int64_t n = dv.ph.divmod(dv.pw.divmod(q, pw), ph);
    const PooledIndex p(n, ph, pw);
    const int64_t o = off[p.n * os.s[0] + c * os.s[1] + p.ph * os.s[2] + p.pw * os.s[3]];
    Acc acc = Acc(0);
    int64_t r, cc, tap_w = 0;
    const int64_t tap_h = o >= 0 ? dv.pkw.divmod(o, tap_w) : 0;
    if (o >= 0 && p.tap(g, static_cast<int>(tap_h), static_cast<int>(tap_w), r, cc)) {
      if (tb) acc = Num<T>::to_acc(tb[c]);
      for (int64_t ci = 0; ci < g.Cg; ++ci) {
        const int64_t ch = grp * g.Cg + ci;
        for (int64_t kh = 0; kh < g.KH; ++kh) {
          const int64_t ih = r * g.sh - g.pt + kh * g.dh;
          if (ih < 0 || ih >= g.H) continue;
          for (int64_t kw = 0; kw < g.KW; ++kw) {
            const int64_t iw = cc * g.sw - g.pl + kw * g.dw;
            if (iw < 0 || iw >= g.W) continue;
            const int64_t wi = c * g.K + (ci * g.KH + kh) * g.KW + kw;
            if (tx)
              acc = fma(Num<T>::to_acc(tx[p.n * txs.s[0] + ch * txs.s[1] + ih * txs.s[2] + iw * txs.s[3]]),
                        Num<T>::to_acc(w[wi]), acc);
            if (tw)
              acc = fma(Num<T>::to_acc(x[p.n * xs.s[0] + ch * xs.s[1] + ih * xs.s[2] + iw * xs.s[3]]),
                        Num<T>::to_acc(tw[wi]), acc);
          }
        }
      }
    }
    y[p.n * ys.s[0] + c * ys.s[1] + p.ph * ys.s[2] + p.pw * ys.s[3]] = Num<T>::from_acc(acc);
  }
}

// Whether x has 16-byte runs of `len` channels at every pixel: channels contiguous, x 16-byte
// aligned, the strides of the dims longer than 1 whole runs (a size-1 dim's stride never meets a
// nonzero index, so an (N, C, 1, 1) tensor has runs in either layout).
inline bool runs_at_every_pixel(int64_t len, const Geometry& g, const void* x, Strides4 xs) {
  const auto pixel_step = [&](int64_t stride, int64_t size) { return size == 1 || stride % len == 0; };
  return xs.s[1] == 1 && pixel_step(xs.s[0], g.N) && pixel_step(xs.s[2], g.H) && pixel_step(xs.s[3], g.W) &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0;
}

// What the channel-run kernels need of a problem, whatever the GPU: a tensor-core type, whole
// runs of more than kDirectMaxChannels input channels a group (fewer keep the direct kernel), k
// digits within 32 bits, offsets inside an image of x within 32 bits, runs at every pixel of
// x; the backward also whole runs of output channels (any stride: its input gradient runs by
// stride phase) and an image of the conv-output gradient (OH*OW*Cout) within 32 bits. The
// bindings' choice (conv_forward_channel_runs / conv_backward_channel_runs: these on sm_80+)
// and the launchers' recheck of it.
inline bool forward_runs_fit(DType dtype, const Geometry& g, const void* x, Strides4 xs) {
  const int64_t len = run_len(dtype);
  return len > 0 && g.Cg % len == 0 && g.Cg > kDirectMaxChannels &&
         g.Cg * g.KW < std::numeric_limits<int32_t>::max() && image_offsets_fit(g, xs) &&
         runs_at_every_pixel(len, g, x, xs);
}

inline bool backward_runs_fit(DType dtype, const Geometry& g, const void* x, Strides4 xs) {
  // Each stride phase gets the largest one's row tiles: with strides near the image's size, up
  // to kBM times the tile engine's input-gradient blocks; kept within half of gridDim.x.
  const int64_t dx_blocks = grad_blocks(g, true, false, false, 0, kBK, true).dx;
  return forward_runs_fit(dtype, g, x, xs) && g.Coutg % run_len(dtype) == 0 &&
         g.Coutg * g.KW < std::numeric_limits<int32_t>::max() && dx_blocks < (int64_t(1) << 30) &&
         g.OH * g.OW * g.Cout < kInt32;
}

template <typename F>
cudaError_t dispatch_offsets(int offset_bytes, F&& f) {
  switch (offset_bytes) {
    case 1: return f(int8_t{});
    case 2: return f(int16_t{});
    case 4: return f(int32_t{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace
}  // namespace cuda
}  // namespace fusedops
