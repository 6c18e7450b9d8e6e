// The conv-block backward's launcher (kernels.h): conv_block_backward runs the un-pool, the
// gradients' kernel (over runs of channels where conv_backward_channel_runs holds) and the
// fixed-order sum of partial sums of conv_block_kernels.cuh, or for a first layer without an
// input gradient the direct weight gradient and that sum, in the scratch memory
// conv_block_backward_workspace sizes.

#include "conv_block_kernels.cuh"

namespace fusedops {
namespace cuda {

bool conv_backward_channel_runs(DType dtype, const Geometry& g, const void* x, Strides4 xs, int cc_major) {
  return cc_major >= 8 && backward_runs_fit(dtype, g, x, xs);
}

// Workspace layout: dconv, the weight gradient's split partial sums (need_dw), the bias
// gradient's (need_db, more than one split), each start 256-byte aligned.
size_t conv_block_backward_workspace(DType dtype, const Geometry& g, bool need_dx, bool need_dw, bool need_db) {
  if (const int64_t splits = direct_weight_grad_splits(g, need_dx); splits > 0) {  // partial sums only
    const size_t dw_bytes = (static_cast<size_t>(splits * g.Cout * g.K) * acc_bytes(dtype) + 255) / 256 * 256;
    return dw_bytes + static_cast<size_t>(splits * g.Cout) * acc_bytes(dtype);
  }
  size_t bytes = static_cast<size_t>(g.N * g.Cout * g.OH * g.OW) * elem_bytes(dtype);  // dconv
  bytes = (bytes + 255) / 256 * 256;
  if (need_dw) {  // the most splits the launcher may take: with run_rows(g) rows a block (over runs)
    const int rows = run_rows(g);
    const int64_t splits =
        dtype == DType::Double ? weight_grad_splits<double>(g, rows) : weight_grad_splits<float>(g, rows);
    bytes += (static_cast<size_t>(splits * g.Cout * g.K) * acc_bytes(dtype) + 255) / 256 * 256;
  }
  const int64_t bias_splits = channel_sum_splits(g.N * g.PH * g.PW, g.Cout);
  if (need_db && bias_splits > 1) bytes += static_cast<size_t>(bias_splits * g.Cout) * acc_bytes(dtype);
  return bytes;
}

cudaError_t conv_block_backward(DType dtype, int offset_bytes, const Geometry& g, const void* grad_out, Strides4 gs,
                                const void* offsets, Strides4 os, const void* x, Strides4 xs, const void* w,
                                bool channel_runs, void* dx, void* dw, void* db, void* workspace,
                                cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using Acc = typename Num<T>::Acc;
    return dispatch_offsets(offset_bytes, [&](auto otag) {
      using OffT = decltype(otag);
      if (!dx && !dw && !db) return cudaSuccess;
      // channel_runs: the caller found conv_backward_channel_runs true; it is checked again here
      // (a wrong dx would follow from a channel count the runs cannot take, a fault from a
      // misaligned run).
      const bool runs = channel_runs;
      if ((dx && !w) || (dw && !x)) return cudaErrorInvalidValue;
      if (runs && (!backward_runs_fit(dtype, g, x, xs) || reinterpret_cast<uintptr_t>(w) % 16 != 0))
        return cudaErrorInvalidValue;
      if (const int64_t splits = direct_weight_grad_splits(g, dx != nullptr); splits > 0) {
        const size_t dw_bytes = (static_cast<size_t>(splits * g.Cout * g.K) * sizeof(Acc) + 255) / 256 * 256;
        Acc* part_dw = reinterpret_cast<Acc*>(workspace);
        Acc* part_db = reinterpret_cast<Acc*>(static_cast<unsigned char*>(workspace) + dw_bytes);
        const int64_t chunk = ceil_div(g.N * g.PH * g.PW, splits);
        const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(g.Cout));
        conv_weight_grad_direct_kernel<T, OffT, kDirectGradKernel, kDirectGradKernel, kDirectGradMaxChannels>
            <<<grid, kThreads, 0, stream>>>(
            g, static_cast<const T*>(grad_out), gs, static_cast<const OffT*>(offsets), os, static_cast<const T*>(x), xs,
            chunk, part_dw, part_db);
        if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
        const int64_t dw_count = dw ? g.Cout * g.K : 0, db_count = db ? g.Cout : 0;
        sum_grad_partials_kernel<T><<<grid_for(dw_count + db_count), kThreads, 0, stream>>>(
            part_dw, splits, dw_count, static_cast<T*>(dw), part_db, splits, db_count, static_cast<T*>(db));
        return cudaGetLastError();
      }
      const int dw_rows = runs ? run_rows(g) : kBM;
      const GradBlocks plan = grad_blocks(g, dx != nullptr, dw != nullptr, db != nullptr,
                                          dw ? weight_grad_splits<T>(g, dw_rows) : 0, runs ? kRunBK<T> : kBK, runs,
                                          dw_rows);
      if (plan.total() > 0x7fffffff) return cudaErrorInvalidConfiguration;  // gridDim.x
      const int64_t conv_elems = g.N * g.Cout * g.OH * g.OW;
      const size_t dconv_bytes = (static_cast<size_t>(conv_elems) * sizeof(T) + 255) / 256 * 256;
      const size_t dw_part_bytes = (static_cast<size_t>(plan.splits * g.Cout * g.K) * sizeof(Acc) + 255) / 256 * 256;
      unsigned char* ws = static_cast<unsigned char*>(workspace);
      T* dconv = reinterpret_cast<T*>(ws);
      Acc* dw_part = reinterpret_cast<Acc*>(ws + dconv_bytes);
      Acc* db_part = reinterpret_cast<Acc*>(ws + dconv_bytes + dw_part_bytes);
      const OffT* op = static_cast<const OffT*>(offsets);
      const T* go = static_cast<const T*>(grad_out);
      if ((dx || dw) && conv_elems > 0) {  // (no conv output: nothing to un-pool, and no divisor of 0 channels)
        if (runs) {
          if constexpr (kTensorCores<T>) {
            unpool_runs_kernel<T, OffT><<<grid_for(conv_elems / kRunLen<T>), kThreads, 0, stream>>>(
                g, UnpoolDivisors(g, kRunLen<T>), go, gs, op, os, dconv);
            if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
          }
        } else {
          unpool_kernel<T, OffT>
              <<<grid_for(conv_elems), kThreads, 0, stream>>>(g, UnpoolDivisors(g, 1), go, gs, op, os, dconv);
          if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
        }
      }
      const unsigned blocks = static_cast<unsigned>(plan.total());
      if (runs) {
        if constexpr (kTensorCores<T>) {
          const auto grads = plan.dw_rows == kWideRows ? conv_grads_runs_kernel<T, OffT, kWideRows>
                                                       : conv_grads_runs_kernel<T, OffT, kBM>;
          grads<<<blocks, kThreads, 0, stream>>>(g, plan, go, gs, op, os, static_cast<const T*>(x), xs,
                                                 static_cast<const T*>(w), dconv, static_cast<T*>(dx), dw_part,
                                                 db_part, static_cast<T*>(db));
          if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
        }
      } else {
        conv_grads_kernel<T, OffT><<<blocks, kThreads, 0, stream>>>(
            g, plan, go, gs, op, os, static_cast<const T*>(x), xs, static_cast<const T*>(w), dconv,
            static_cast<T*>(dx), dw_part, db_part, static_cast<T*>(db));
        if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
      }
      const int64_t dw_count = dw ? g.Cout * g.K : 0, db_count = db && plan.db_splits > 1 ? g.Cout : 0;
      if (dw_count + db_count == 0) return cudaSuccess;
      sum_grad_partials_kernel<T><<<grid_for(dw_count + db_count), kThreads, 0, stream>>>(
          dw_part, plan.splits, dw_count, static_cast<T*>(dw), db_part, plan.db_splits, db_count, static_cast<T*>(db),
          runs ? RunColumns(g.Cg, g.KH * g.KW) : RunColumns());
      return cudaGetLastError();
    });
  });
}

}  // namespace cuda
}  // namespace fusedops
