// Launchers of the CUDA kernels of fusedops: raw pointers, sizes, strides and a stream, no
// torch types, so that nvcc compiles the kernels on any machine (csrc/cuda/bindings.cpp turns
// tensors into these arguments). Every launcher returns the launch's cudaError_t.
//
// Element types: DType selects float (Float, Tf32), double, __half or __nv_bfloat16 for every
// floating tensor of a call; accumulation is in float (double for double).

#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "../activation.h"
#include "../conv_geometry.h"

namespace fusedops {
namespace cuda {

// Tf32: float32 tensors whose implicit GEMMs multiply on TF32 tensor cores (sm_80+; operands
// rounded to 10 mantissa bits, products summed in float32), chosen by the bindings exactly
// when torch allows TF32 for its own op (its convolution switch for the conv block, its
// matmul switch for linear); Float multiplies in IEEE float32 on the FMA units.
enum class DType { Float, Double, Half, BFloat16, Tf32 };
using fusedops::Act;  // csrc/activation.h

// Element strides of a 4-D tensor.
struct Strides4 {
  int64_t s[4];
};

// The largest coordinate the conv-block kernels form inside an image, which they keep in 32
// bits: an input row r * sh - pt + kh * dh (r < OH, kh < KH) and a conv row ph * psh - pph +
// th * pdh (ph < PH, th < PKH), likewise for columns; each term and sum is bounded by the sum
// of the terms' magnitudes (padding on the far side counted through OH and PH).
inline int64_t conv_coordinate_reach(const Geometry& g) {
  const int64_t rows = (g.OH - 1) * g.sh + g.pt + (g.KH - 1) * g.dh + g.H;
  const int64_t cols = (g.OW - 1) * g.sw + g.pl + (g.KW - 1) * g.dw + g.W;
  const int64_t pooled_rows = (g.PH - 1) * g.psh + g.pph + (g.PKH - 1) * g.pdh + g.OH;
  const int64_t pooled_cols = (g.PW - 1) * g.psw + g.ppw + (g.PKW - 1) * g.pdw + g.OW;
  const int64_t reach = rows > cols ? rows : cols, pooled = pooled_rows > pooled_cols ? pooled_rows : pooled_cols;
  return reach > pooled ? reach : pooled;
}

// Whether the conv-block forward can read the input in 16-byte channel runs (run_gemm.cuh):
// float16/bfloat16 or Tf32 x, more than kDirectMaxChannels (4) channels a group (fewer take the
// direct kernel), channels contiguous (xs.s[1] == 1) and 16-byte aligned at every pixel
// (Cin/groups and the strides of the dims longer than 1 multiples of a run, 8 / 4 elements, x
// 16-byte aligned), on a GPU of compute capability cc_major >= 8 (cp.async, 16-bit and TF32
// wmma).
bool conv_forward_channel_runs(DType dtype, const Geometry& g, const void* x, Strides4 xs, int cc_major);

// Fused conv + bias + ReLU + max-pool forward: y and offsets (offset_bytes = 1, 2 or 4 per
// element) share the strides ys. w is (Cout, Cin/groups, KH, KW) contiguous; b may be null.
// Where conv_forward_channel_runs holds, the caller gives instead (w null) w_runs: the same
// weight as (Cout, KH, KW, Cin/groups) contiguous and 16-byte aligned, and the forward runs over
// channel runs; elsewhere w_runs is null.
cudaError_t conv_block_forward(DType dtype, int offset_bytes, const Geometry& g, const void* x, Strides4 xs,
                               const void* w, const void* w_runs, const void* b, void* y, void* offsets, Strides4 ys,
                               cudaStream_t stream);

// Whether the conv-block backward can run over 16-byte channel runs: where the forward can
// (conv_forward_channel_runs), with Cout/groups a multiple of a run too (any conv stride: the
// input gradient runs by stride phase).
bool conv_backward_channel_runs(DType dtype, const Geometry& g, const void* x, Strides4 xs, int cc_major);

// Bytes of scratch memory conv_block_backward needs (need_dx / need_dw / need_db: dx / dw / db
// will be asked for).
size_t conv_block_backward_workspace(DType dtype, const Geometry& g, bool need_dx, bool need_dw, bool need_db);

// Gradients of the fused conv block. dx (contiguous NCHW), dw (contiguous) and db may each be
// null when not needed. grad_out and offsets are (N, Cout, PH, PW) with the strides gs / os; w
// is (Cout, Cin/groups, KH, KW) contiguous (only the input gradient reads it: null without dx);
// only the weight gradient reads x (null without dw, xs still as the kernels would read it).
// channel_runs: the caller found conv_backward_channel_runs true and gives w instead as
// (groups, Cin/groups, KH, KW, Cout/groups) contiguous and 16-byte aligned, and dx channels_last
// contiguous (N, H, W, C).
cudaError_t conv_block_backward(DType dtype, int offset_bytes, const Geometry& g, const void* grad_out, Strides4 gs,
                                const void* offsets, Strides4 os, const void* x, Strides4 xs, const void* w,
                                bool channel_runs, void* dx, void* dw, void* db, void* workspace,
                                cudaStream_t stream);

// Tangent of the fused conv block at fixed offsets (os: the offsets' strides): y (strides ys)
// is, where the offset is >= 0, tb + conv(tx, w) + conv(x, tw) at the window's max, else 0.
// tx (strides txs), tw (contiguous) and tb may each be null (a zero tangent); w is contiguous.
cudaError_t conv_block_jvp(DType dtype, int offset_bytes, const Geometry& g, const void* x, Strides4 xs,
                           const void* w, const void* offsets, Strides4 os, const void* tx, Strides4 txs,
                           const void* tw, const void* tb, void* y, Strides4 ys, cudaStream_t stream);

// Linear + bias + activation forward on contiguous x (rows x in_f) and w (out_f x in_f):
// y = act(x w^T + b) (rows x out_f); saved is a bool mask z > 0 for relu, z for
// gelu/gelu_tanh/silu, unused (may be null) without activation. b may be null. cc_major: the
// GPU's compute capability (float16/bfloat16 and TF32 GEMMs with in_f a multiple of a run, 8 / 4
// elements, read 16-byte runs on 8 and above).
cudaError_t linear_forward(DType dtype, Act act, int64_t rows, int64_t in_f, int64_t out_f, const void* x,
                           const void* w, const void* b, void* y, void* saved, int cc_major, cudaStream_t stream);

// Bytes of scratch memory linear_backward needs (need_dw / need_db: dw / db will be asked for).
size_t linear_backward_workspace(DType dtype, Act act, int64_t rows, int64_t in_f, int64_t out_f, bool need_dw,
                                 bool need_db);

// Gradients of the linear layer; dx (rows x in_f), dw (out_f x in_f) and db (out_f) may each be
// null. cc_major as linear_forward's (float16/bfloat16 and TF32 with in_f and out_f multiples of
// a run read 16-byte runs on 8 and above).
cudaError_t linear_backward(DType dtype, Act act, int64_t rows, int64_t in_f, int64_t out_f, const void* grad_out,
                            const void* x, const void* w, const void* saved, void* dx, void* dw, void* db,
                            void* workspace, int cc_major, cudaStream_t stream);

}  // namespace cuda
}  // namespace fusedops
