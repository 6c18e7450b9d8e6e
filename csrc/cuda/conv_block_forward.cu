// The conv-block forward's launcher (kernels.h): conv_block_forward picks the direct, patch,
// implicit-GEMM or channel-run kernel of conv_block_kernels.cuh; conv_forward_channel_runs says
// whether the caller may give it the weight for the channel-run kernel.

#include "conv_block_kernels.cuh"

namespace fusedops {
namespace cuda {

cudaError_t conv_block_forward(DType dtype, int offset_bytes, const Geometry& g, const void* x, Strides4 xs,
                               const void* w, const void* w_runs, const void* b, void* y, void* offsets, Strides4 ys,
                               cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return dispatch_offsets(offset_bytes, [&](auto otag) {
      using OffT = decltype(otag);
      const T* xp = static_cast<const T*>(x);
      const T* wp = static_cast<const T*>(w);
      const T* bp = static_cast<const T*>(b);
      T* yp = static_cast<T*>(y);
      OffT* op = static_cast<OffT*>(offsets);
      const int64_t Q = g.N * g.PH * g.PW;
      const dim3 grid(static_cast<unsigned>(ceil_div(Q, kBN)), static_cast<unsigned>(ceil_div(g.Coutg, kBM)),
                      static_cast<unsigned>(g.G));
      if (w_runs) {  // the caller found conv_forward_channel_runs true; what the loads need is rechecked
        if constexpr (kTensorCores<T>) {
          if (reinterpret_cast<uintptr_t>(w_runs) % 16 == 0 && !w && forward_runs_fit(dtype, g, x, xs)) {
            const int rows = run_rows(g);
            const auto runs = rows == kWideRows ? conv_pool_runs_kernel<T, OffT, kWideRows>
                                                : conv_pool_runs_kernel<T, OffT, kBM>;
            const dim3 blocks(grid.x, static_cast<unsigned>(ceil_div(g.Coutg, rows)), grid.z);
            runs<<<blocks, kThreads, 0, stream>>>(g, xp, xs, static_cast<const T*>(w_runs), bp, yp, op, ys);
            return cudaGetLastError();
          }
        }
        return cudaErrorInvalidValue;
      }
      if (!w) return cudaErrorInvalidValue;
      const int co = direct_channels<typename Num<T>::Acc>(g, xs);
      if (co > 0) {
        const dim3 direct(grid_for(Q), static_cast<unsigned>(g.G * ceil_div(g.Coutg, co)));
        const size_t smem = g.K * co * sizeof(typename Num<T>::Acc);
        if (co == kDirectWideChannels) {
          // Windows of at most 4 taps: int8 offsets (offsets_dtype), the only patch instances.
          if constexpr (sizeof(typename Num<T>::Acc) == 4 && std::is_same<OffT, int8_t>::value) {
            const int side = conv_patch_pool(g);
            if (side > 0) {
              const auto patch = side == 2 ? conv_pool_patch_kernel<T, OffT, kPatchKernel, 2>
                                           : conv_pool_patch_kernel<T, OffT, kPatchKernel, 1>;
              patch<<<direct, kThreads, smem, stream>>>(g, xp, xs, wp, bp, yp, op, ys);
              return cudaGetLastError();
            }
          }
          conv_pool_direct_kernel<T, OffT, kDirectWideChannels><<<direct, kThreads, smem, stream>>>(g, xp, xs, wp, bp,
                                                                                                   yp, op, ys);
          return cudaGetLastError();
        }
        conv_pool_direct_kernel<T, OffT, 1><<<direct, kThreads, smem, stream>>>(g, xp, xs, wp, bp, yp, op, ys);
        return cudaGetLastError();
      }
      conv_pool_gemm_kernel<T, OffT><<<grid, kThreads, 0, stream>>>(g, xp, xs, wp, bp, yp, op, ys);
      return cudaGetLastError();
    });
  });
}

bool conv_forward_channel_runs(DType dtype, const Geometry& g, const void* x, Strides4 xs, int cc_major) {
  return cc_major >= 8 && forward_runs_fit(dtype, g, x, xs);
}

}  // namespace cuda
}  // namespace fusedops
