// Fused Linear + bias + activation on NVIDIA GPUs: the "cuda" backend's linear kernels.
//
// Forward: one implicit GEMM (tile_gemm.cuh; tensor cores for fp16/bf16 and TF32; for those with
// in features a multiple of a run, 8 / 4, on sm_80+, run_gemm.cuh's 16-byte runs, in blocks of 128
// rows where large problems still fill the GPU with them, linear_rows), M = rows,
// N = out features, K = in features, whose epilogue adds the bias, applies the activation and
// writes the state the derivative needs (a bool mask z > 0 for relu, z for gelu / gelu_tanh /
// silu). Backward: an elementwise pass dz = dy * act'(z) (skipped without activation), then
// dx = dz @ w (a GEMM), dw = dz^T @ x (a GEMM over the rows, split in chunks whose partial sums
// are added in a fixed order) and db = column sums of dz (split over blocks whose partial sums
// are added in a fixed order). Both GEMMs run over 16-byte runs for fp16/bf16 and TF32 with in
// and out features multiples of a run on sm_80+, in blocks of 128 rows (dx: batch rows; dw: out
// features) where those still fill the GPU (linear_rows, weight_grad_rows). Deterministic.
// The activation formulas are those of fusedops/ops/linear.py.

#include "run_gemm.cuh"
#include "tile_gemm.cuh"

namespace fusedops {
namespace cuda {
namespace {

// sigmoid(2u) for gelu_tanh's u = k (z + c z^3), which is (1 + tanh(u)) / 2, and 1 - sigmoid(2u),
// as the Triton and CPU kernels compute them: in float, 1 + tanh(u) is 0 once tanh(u) rounds
// to -1 (z below about -5.3: gelu_tanh(-8) = -3.1e-21 came out -0), and 1 - tanh(u)^2 cancels
// alike in the derivative. 1 - s is e s where e = exp(-2u) <= 1 (1 - s would cancel there),
// 1 - s above (e s would be inf * 0 where e overflows).
template <typename A>
struct Sigmoid2u {
  A s, one_minus_s;
};
template <typename A>
__device__ __forceinline__ Sigmoid2u<A> sigmoid_2u(A z) {
  const A e = exp(A(-2 * 0.79788456080286535588) * (z + A(0.044715) * z * z * z));
  const A s = A(1) / (A(1) + e);
  return {s, e <= A(1) ? e * s : A(1) - s};
}

template <typename A>
__device__ __forceinline__ A activate(A z, Act act) {
  const A half = A(0.5);
  switch (act) {
    case Act::Relu: return (z > A(0) || z != z) ? z : A(0);
    case Act::Gelu: return half * z * (A(1) + erf(z * A(0.70710678118654752440)));
    case Act::GeluTanh: return z * sigmoid_2u(z).s;
    case Act::Silu: return z / (A(1) + exp(-z));
    default: return z;
  }
}

// act'(z) for gelu, gelu_tanh and silu.
template <typename A>
__device__ __forceinline__ A activation_grad(A z, Act act) {
  const A half = A(0.5);
  switch (act) {
    case Act::Gelu:
      return half * (A(1) + erf(z * A(0.70710678118654752440))) + z * exp(-half * z * z) * A(0.39894228040143267794);
    case Act::GeluTanh: {
      // 0.5 (1 + t) + 0.5 z (1 - t^2) u' with (1 + t) / 2 = s and 1 - t^2 = 4 s (1 - s)
      const Sigmoid2u<A> g = sigmoid_2u(z);
      return g.s + A(2) * z * g.s * g.one_minus_s * A(0.79788456080286535588) * (A(1) + A(3 * 0.044715) * z * z);
    }
    default: {
      const A s = A(1) / (A(1) + exp(-z));
      return s * (A(1) + z * (A(1) - s));
    }
  }
}

// Runs tile_gemm over two strided-matrix loaders (tile_loaders.h's MatrixLoader).
template <typename T, bool kAlongKA, bool kAlongKB>
__device__ void matrix_gemm(MatrixLoader<T, kAlongKA>& la, MatrixLoader<T, kAlongKB>& lb, int64_t steps,
                            TileSmem<T>& s) {
  tile_gemm<T, kAlongKA, kAlongKB>([&](T(&v)[kLoads]) { la.fetch(v); }, [&](T(&v)[kLoads]) { lb.fetch(v); },
                                   [&] {
                                     la.next();
                                     lb.next();
                                   },
                                   steps, s);
}

// The forward's epilogue on a finished tile s.c (TileSmem or RunSmem): y = act(z), z = C + b,
// and the state the derivative needs in saved.
template <typename T, typename Smem>
__device__ __forceinline__ void linear_epilogue(const Smem& s, Act act, int64_t rows, int64_t out_f, int64_t m0,
                                                int64_t n0, const T* b, T* y, void* saved) {
  using Acc = typename Num<T>::Acc;
  for_owned(s, rows, out_f, m0, n0, [&](int64_t m, int64_t n, Acc acc) {
    const Acc z = acc + (b ? Num<T>::to_acc(b[n]) : Acc(0));
    const int64_t i = m * out_f + n;
    y[i] = Num<T>::from_acc(activate(z, act));
    if (act == Act::Relu) static_cast<bool*>(saved)[i] = !(z <= Acc(0));
    else if (act != Act::None) static_cast<T*>(saved)[i] = Num<T>::from_acc(z);
  });
}

// y = act(x @ w^T + b): A = x (rows x in_f), B(k, n) = w[n][k], both read along k (contiguous).
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T>)
    linear_forward_kernel(Act act, int64_t rows, int64_t in_f, int64_t out_f, const T* __restrict__ x,
                          const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y, void* saved) {
  __shared__ TileSmem<T> s;
  const int64_t m0 = blockIdx.x * int64_t(kBM), n0 = blockIdx.y * int64_t(kBN);
  MatrixLoader<T, true> la(x, in_f, 1, m0, rows, 0, in_f, threadIdx.x, zero_of<T>());
  MatrixLoader<T, true> lb(w, in_f, 1, n0, out_f, 0, in_f, threadIdx.x, zero_of<T>());
  matrix_gemm(la, lb, ceil_div(in_f, kBK), s);
  linear_epilogue(s, act, rows, out_f, m0, n0, b, y, saved);
}

// The same over 16-byte runs (run_gemm.cuh), for float16/bfloat16 and TF32 with in_f a multiple
// of kRunLen<T> and x, w 16-byte aligned, on sm_80+ (linear_forward's choice): x's and w's rows
// are runs along k. Blocks of kRows rows: 64, or 128 in large problems (linear_rows).
template <typename T, int kRows>
__global__ void __launch_bounds__(kThreads, 2)
    linear_forward_runs_kernel(Act act, int64_t rows, int64_t in_f, int64_t out_f, const T* __restrict__ x,
                               const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y, void* saved) {
  __shared__ RunSmem<T, kRows> s;
  const int64_t m0 = blockIdx.x * int64_t(kRows), n0 = blockIdx.y * int64_t(kBN);
  RowRunLoader<T> lb(w, in_f, n0, out_f, threadIdx.x);
  run_gemm_row_blocks<T, false, false, kRows>(
      [&](int i) { return RowRunLoader<T>(x, in_f, m0 + i * kBM, rows, threadIdx.x); }, [&] { return lb.src(); },
      [&] { lb.next(); }, ceil_div(in_f, kRunBK<T>), s);
  linear_epilogue(s, act, rows, out_f, m0, n0, b, y, saved);
}

// dz = dy * act'(z) (relu: dy where the mask is set).
template <typename T>
__global__ void activation_grad_kernel(Act act, int64_t count, const T* __restrict__ dy, const void* saved,
                                       T* __restrict__ dz) {
  using Acc = typename Num<T>::Acc;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    if (act == Act::Relu) {
      dz[i] = static_cast<const bool*>(saved)[i] ? dy[i] : zero_of<T>();
    } else {
      const Acc z = Num<T>::to_acc(static_cast<const T*>(saved)[i]);
      dz[i] = Num<T>::from_acc(Num<T>::to_acc(dy[i]) * activation_grad(z, act));
    }
  }
}

// dx (rows x in_f) = dz (rows x out_f) @ w (out_f x in_f): A read along k, B along n.
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T>)
    linear_input_grad_kernel(int64_t rows, int64_t in_f, int64_t out_f, const T* __restrict__ dz,
                             const T* __restrict__ w, T* __restrict__ dx) {
  __shared__ TileSmem<T> s;
  const int64_t m0 = blockIdx.x * int64_t(kBM), n0 = blockIdx.y * int64_t(kBN);
  MatrixLoader<T, true> la(dz, out_f, 1, m0, rows, 0, out_f, threadIdx.x, zero_of<T>());
  MatrixLoader<T, false> lb(w, 1, in_f, n0, in_f, 0, out_f, threadIdx.x, zero_of<T>());
  matrix_gemm(la, lb, ceil_div(out_f, kBK), s);
  for_owned(s, rows, in_f, m0, n0,
            [&](int64_t m, int64_t n, typename Num<T>::Acc v) { dx[m * in_f + n] = Num<T>::from_acc(v); });
}

// The same over 16-byte runs (run_gemm.cuh), for float16/bfloat16 and TF32 with in_f and out_f
// multiples of kRunLen<T> and dz, w 16-byte aligned, on sm_80+ (linear_backward's choice): dz's
// rows are runs along k, w's rows runs across it (B stored (k, n)). Blocks of kRows rows, as the
// forward's (linear_rows).
template <typename T, int kRows>
__global__ void __launch_bounds__(kThreads, 2)
    linear_input_grad_runs_kernel(int64_t rows, int64_t in_f, int64_t out_f, const T* __restrict__ dz,
                                  const T* __restrict__ w, T* __restrict__ dx) {
  __shared__ RunSmem<T, kRows> s;
  const int64_t m0 = blockIdx.x * int64_t(kRows), n0 = blockIdx.y * int64_t(kBN);
  KMajorRunLoader<T> lb(w, in_f, n0, in_f, 0, out_f, threadIdx.x);
  run_gemm_row_blocks<T, false, true, kRows>(
      [&](int i) { return RowRunLoader<T>(dz, out_f, m0 + i * kBM, rows, threadIdx.x); }, [&] { return lb.src(); },
      [&] { lb.next(); }, ceil_div(out_f, kRunBK<T>), s);
  for_owned(s, rows, in_f, m0, n0,
            [&](int64_t m, int64_t n, typename Num<T>::Acc v) { dx[m * in_f + n] = Num<T>::from_acc(v); });
}

// part[split] (out_f x in_f) = sum over the split's rows r of dz[r][o] * x[r][i]: both read
// along their rows (o, i: contiguous). An empty split writes zeros.
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T>)
    linear_weight_grad_kernel(int64_t rows, int64_t in_f, int64_t out_f, const T* __restrict__ dz,
                              const T* __restrict__ x, int64_t chunk, typename Num<T>::Acc* __restrict__ part) {
  __shared__ TileSmem<T> s;
  const int64_t split = blockIdx.z, k0 = split * chunk, k1 = min(rows, k0 + chunk);
  const int64_t m0 = blockIdx.y * int64_t(kBM), n0 = blockIdx.x * int64_t(kBN);
  MatrixLoader<T, false> la(dz, 1, out_f, m0, out_f, k0, k1, threadIdx.x, zero_of<T>());
  MatrixLoader<T, false> lb(x, 1, in_f, n0, in_f, k0, k1, threadIdx.x, zero_of<T>());
  matrix_gemm(la, lb, k0 < k1 ? ceil_div(k1 - k0, kBK) : 0, s);
  store_partial(s, out_f, in_f, m0, n0, part + split * out_f * in_f);
}

// The same over 16-byte runs (run_gemm.cuh), under linear_input_grad_runs_kernel's conditions:
// both operands' rows are runs across k (A stored (k, m), B (k, n)). Blocks of kRows output
// features: 64, or 128 where that pads out_f no more and the grid still fills the GPU
// (weight_grad_rows), one KMajorRunLoader of dz a 64-feature block.
template <typename T, int kRows>
__global__ void __launch_bounds__(kThreads, 2)
    linear_weight_grad_runs_kernel(int64_t rows, int64_t in_f, int64_t out_f, const T* __restrict__ dz,
                                   const T* __restrict__ x, int64_t chunk, typename Num<T>::Acc* __restrict__ part) {
  __shared__ RunSmem<T, kRows> s;
  const int64_t split = blockIdx.z, k0 = split * chunk, k1 = min(rows, k0 + chunk);
  const int64_t m0 = blockIdx.y * int64_t(kRows), n0 = blockIdx.x * int64_t(kBN);
  KMajorRunLoader<T> lb(x, in_f, n0, in_f, k0, k1, threadIdx.x);
  run_gemm_row_blocks<T, true, true, kRows>(
      [&](int i) { return KMajorRunLoader<T>(dz, out_f, m0 + i * kBM, out_f, k0, k1, threadIdx.x); },
      [&] { return lb.src(); }, [&] { lb.next(); }, k0 < k1 ? ceil_div(k1 - k0, kRunBK<T>) : 0, s);
  store_partial(s, out_f, in_f, m0, n0, part + split * out_f * in_f);
}

// db[o] = sum over rows of dz[r][o]. Block (o, split) sums split's chunk of rows (each thread a
// strided serial sum, then a fixed-order tree): into db[o] when there is one split, else into
// part[split * cols + o], which sum_partials_kernel adds in split order. Splits:
// channel_sum_splits (short serial sums).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    column_sum_kernel(int64_t rows, int64_t cols, const T* __restrict__ dz, int64_t chunk,
                      typename Num<T>::Acc* __restrict__ part, T* __restrict__ db) {
  using Acc = typename Num<T>::Acc;
  __shared__ Acc scratch[kThreads];
  const int64_t o = blockIdx.x, r0 = blockIdx.y * chunk, r1 = min(rows, r0 + chunk);
  Acc sum = Acc(0);
  for (int64_t r = r0 + threadIdx.x; r < r1; r += kThreads) sum += Num<T>::to_acc(dz[r * cols + o]);
  const Acc total = block_sum<kThreads>(sum, scratch);
  if (threadIdx.x != 0) return;
  if (gridDim.y == 1) db[o] = Num<T>::from_acc(total);
  else part[blockIdx.y * cols + o] = total;
}

// Rows a block of the forward or input gradient over runs takes (their A's rows are the
// batch's): kWideRows (128) where the grid of 128-row blocks still has kFillBlocks (264: 2 an SM
// of an H100) and pads at most rows / 16 more rows than 64-row blocks do, so that each step's runs of
// the other operand feed twice the products; kBM elsewhere (small batches keep more blocks).
int linear_rows(int64_t rows, int64_t cols) {
  const int64_t wide = ceil_div(rows, kWideRows);
  const bool fills = wide * ceil_div(cols, kBN) >= kFillBlocks;
  const bool pads_little = wide * kWideRows - ceil_div(rows, kBM) * kBM <= rows / 16;
  return fills && pads_little ? kWideRows : kBM;
}

// Reduction splits of the weight gradient in blocks of `tile` output features (2 blocks an SM
// of an H100; reduction_splits). Fewer features a block give no more splits than more.
int64_t weight_grad_splits(int64_t rows, int64_t in_f, int64_t out_f, int tile = kBM) {
  return reduction_splits(rows, ceil_div(out_f, tile) * ceil_div(in_f, kBN));
}

// Output features a block of the weight gradient over runs takes (its A's rows, dz's columns):
// kWideRows (128) where that pads out_f to no more rows than kBM (64) does, as the conv's
// run_rows, and the 128-row grid with its splits still has kFillBlocks (264) blocks, so that
// each step's runs of x feed twice the products; kBM elsewhere (small problems keep more
// blocks). The price: up to twice the splits, so up to twice the partial sums written and
// added (splits x out_f x in_f floats), against about a quarter fewer instructions a
// tensor-core product in the main loop (benchmarks/cuda-sm90.md).
int weight_grad_rows(int64_t rows, int64_t in_f, int64_t out_f) {
  if (out_f <= kBM || ceil_div(out_f, kWideRows) * kWideRows != ceil_div(out_f, kBM) * kBM) return kBM;
  const int64_t tiles = ceil_div(out_f, kWideRows) * ceil_div(in_f, kBN);
  return tiles * weight_grad_splits(rows, in_f, out_f, kWideRows) >= kFillBlocks ? kWideRows : kBM;
}

}  // namespace

cudaError_t linear_forward(DType dtype, Act act, int64_t rows, int64_t in_f, int64_t out_f, const void* x,
                           const void* w, const void* b, void* y, void* saved, int cc_major, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const dim3 grid(static_cast<unsigned>(ceil_div(rows, kBM)), static_cast<unsigned>(ceil_div(out_f, kBN)));
    if constexpr (kTensorCores<T>) {
      // 16-byte runs of x's and w's rows, on sm_80+ (cp.async, 16-bit and TF32 wmma).
      const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
      if (cc_major >= 8 && in_f % kRunLen<T> == 0 && aligned(x) && aligned(w)) {
        const int tile = linear_rows(rows, out_f);
        const auto kernel = tile == kWideRows ? linear_forward_runs_kernel<T, kWideRows>
                                              : linear_forward_runs_kernel<T, kBM>;
        const dim3 runs_grid(static_cast<unsigned>(ceil_div(rows, tile)), grid.y);
        kernel<<<runs_grid, kThreads, 0, stream>>>(act, rows, in_f, out_f, static_cast<const T*>(x),
                                                   static_cast<const T*>(w), static_cast<const T*>(b),
                                                   static_cast<T*>(y), saved);
        return cudaGetLastError();
      }
    }
    linear_forward_kernel<T><<<grid, kThreads, 0, stream>>>(act, rows, in_f, out_f, static_cast<const T*>(x),
                                                            static_cast<const T*>(w), static_cast<const T*>(b),
                                                            static_cast<T*>(y), saved);
    return cudaGetLastError();
  });
}

// Workspace layout: dz (with an activation), the weight gradient's split partial sums (need_dw),
// the bias gradient's (need_db, more than one split), each start 256-byte aligned.
size_t linear_backward_workspace(DType dtype, Act act, int64_t rows, int64_t in_f, int64_t out_f, bool need_dw,
                                 bool need_db) {
  size_t bytes = act == Act::None ? 0 : (static_cast<size_t>(rows * out_f) * elem_bytes(dtype) + 255) / 256 * 256;
  if (need_dw) {  // the most splits the launcher may take: with weight_grad_rows a block where runs may apply
    const int64_t len = run_len(dtype);
    const int tile = len > 0 && in_f % len == 0 && out_f % len == 0 ? weight_grad_rows(rows, in_f, out_f) : kBM;
    bytes += (static_cast<size_t>(weight_grad_splits(rows, in_f, out_f, tile) * out_f * in_f) * acc_bytes(dtype) +
              255) / 256 * 256;
  }
  const int64_t bias_splits = channel_sum_splits(rows, out_f);
  if (need_db && bias_splits > 1) bytes += static_cast<size_t>(bias_splits * out_f) * acc_bytes(dtype);
  return bytes;
}

cudaError_t linear_backward(DType dtype, Act act, int64_t rows, int64_t in_f, int64_t out_f, const void* grad_out,
                            const void* x, const void* w, const void* saved, void* dx, void* dw, void* db,
                            void* workspace, int cc_major, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = typename Num<T>::Acc;
    const T* dz = static_cast<const T*>(grad_out);
    size_t used = 0;
    if (act != Act::None) {
      T* buf = static_cast<T*>(workspace);
      activation_grad_kernel<T><<<grid_for(rows * out_f), kThreads, 0, stream>>>(act, rows * out_f, dz, saved, buf);
      if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
      dz = buf;
      used = (static_cast<size_t>(rows * out_f) * sizeof(T) + 255) / 256 * 256;
    }
    // 16-byte runs of the operands' rows (tensor-core types, both features multiples of a run,
    // each GEMM's operands 16-byte aligned: dz and w for dx, dz and x for dw), on sm_80+.
    const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    const bool runs = kTensorCores<T> && cc_major >= 8 && in_f % kRunLen<T> == 0 && out_f % kRunLen<T> == 0 &&
                      aligned(dz);
    if (dx) {
      const dim3 grid(static_cast<unsigned>(ceil_div(rows, kBM)), static_cast<unsigned>(ceil_div(in_f, kBN)));
      if (runs && aligned(w)) {
        if constexpr (kTensorCores<T>) {
          const int tile = linear_rows(rows, in_f);
          const auto kernel = tile == kWideRows ? linear_input_grad_runs_kernel<T, kWideRows>
                                                : linear_input_grad_runs_kernel<T, kBM>;
          const dim3 runs_grid(static_cast<unsigned>(ceil_div(rows, tile)), grid.y);
          kernel<<<runs_grid, kThreads, 0, stream>>>(rows, in_f, out_f, dz, static_cast<const T*>(w),
                                                     static_cast<T*>(dx));
          if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
        }
      } else {
        linear_input_grad_kernel<T><<<grid, kThreads, 0, stream>>>(rows, in_f, out_f, dz, static_cast<const T*>(w),
                                                                   static_cast<T*>(dx));
        if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
      }
    }
    if (dw) {
      Acc* part = reinterpret_cast<Acc*>(static_cast<unsigned char*>(workspace) + used);
      const bool dw_runs = runs && aligned(x);
      const int tile = dw_runs ? weight_grad_rows(rows, in_f, out_f) : kBM;
      const int64_t splits = weight_grad_splits(rows, in_f, out_f, tile);
      used += (static_cast<size_t>(splits * out_f * in_f) * sizeof(Acc) + 255) / 256 * 256;
      const int64_t step = dw_runs ? kRunBK<T> : kBK;  // whole k steps a split
      const int64_t chunk = ceil_div(ceil_div(rows, splits), step) * step;
      const dim3 grid(static_cast<unsigned>(ceil_div(in_f, kBN)), static_cast<unsigned>(ceil_div(out_f, tile)),
                      static_cast<unsigned>(splits));
      if (dw_runs) {
        if constexpr (kTensorCores<T>) {
          const auto kernel = tile == kWideRows ? linear_weight_grad_runs_kernel<T, kWideRows>
                                                : linear_weight_grad_runs_kernel<T, kBM>;
          kernel<<<grid, kThreads, 0, stream>>>(rows, in_f, out_f, dz, static_cast<const T*>(x), chunk, part);
          if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
        }
      } else {
        linear_weight_grad_kernel<T><<<grid, kThreads, 0, stream>>>(rows, in_f, out_f, dz, static_cast<const T*>(x),
                                                                    chunk, part);
        if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
      }
      sum_partials_kernel<T><<<grid_for(out_f * in_f), kThreads, 0, stream>>>(part, splits, out_f * in_f,
                                                                              static_cast<T*>(dw));
      if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
    }
    if (db) {
      Acc* part = reinterpret_cast<Acc*>(static_cast<unsigned char*>(workspace) + used);
      const int64_t splits = channel_sum_splits(rows, out_f);
      const dim3 grid(static_cast<unsigned>(out_f), static_cast<unsigned>(splits));
      column_sum_kernel<T><<<grid, kThreads, 0, stream>>>(rows, out_f, dz, ceil_div(rows, splits), part,
                                                          static_cast<T*>(db));
      if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
      if (splits > 1) {
        sum_partials_kernel<T><<<grid_for(out_f), kThreads, 0, stream>>>(part, splits, out_f, static_cast<T*>(db));
        if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
      }
    }
    return cudaSuccess;
  });
}

}  // namespace cuda
}  // namespace fusedops
