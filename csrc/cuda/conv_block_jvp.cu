// The conv-block tangent's launcher (kernels.h): conv_block_jvp runs jvp_kernel of
// conv_block_kernels.cuh.

#include "conv_block_kernels.cuh"

namespace fusedops {
namespace cuda {

cudaError_t conv_block_jvp(DType dtype, int offset_bytes, const Geometry& g, const void* x, Strides4 xs,
                           const void* w, const void* offsets, Strides4 os, const void* tx, Strides4 txs,
                           const void* tw, const void* tb, void* y, Strides4 ys, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return dispatch_offsets(offset_bytes, [&](auto otag) {
      using OffT = decltype(otag);
      const int64_t total = g.N * g.Cout * g.PH * g.PW;
      if (total == 0) return cudaSuccess;  // (and no divisor of 0)
      const T *xp = static_cast<const T*>(x), *wp = static_cast<const T*>(w), *txp = static_cast<const T*>(tx),
              *twp = static_cast<const T*>(tw), *tbp = static_cast<const T*>(tb);
      jvp_kernel<T, OffT><<<grid_for(total), kThreads, 0, stream>>>(g, JvpDivisors(g), xp, xs, wp,
          static_cast<const OffT*>(offsets), os, txp, txs, twp, tbp, static_cast<T*>(y), ys);
      return cudaGetLastError();
    });
  });
}

}  // namespace cuda
}  // namespace fusedops
