// Geometry of the fused conv block, shared by the CPU kernels, the CUDA kernels and their
// bindings. Plain integers only (no torch types), so that nvcc compiles it with the CUDA
// kernels on any machine.

#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>

namespace fusedops {

// Below this many channels per group the 16 Winograd GEMMs of the CPU kernel are too thin to
// win over im2col.
constexpr int64_t kWinogradMinChannels = 8;

// The block's geometry, derived once from the arguments and the tensor shapes.
struct Geometry {
  int64_t N, C, H, W;            // input
  int64_t Cout, Cg, Coutg, G;    // channels; per group
  int64_t KH, KW, K;             // kernel; K = Cg * KH * KW
  int64_t sh, sw, pt, pl, dh, dw;
  int64_t OH, OW;                // conv output
  bool pool;
  int64_t PKH, PKW, psh, psw, pph, ppw, pdh, pdw;
  int64_t PH, PW;                // block output
  bool winograd;                 // 3x3, stride 1, dilation 1, enough channels: Winograd F(2x2, 3x3)

  // Conv rows [first, last) read by the pool windows of pooled rows [p0, p1).
  std::pair<int64_t, int64_t> conv_rows(int64_t p0, int64_t p1) const {
    int64_t first = p0 * psh - pph;
    int64_t last = (p1 - 1) * psh - pph + (PKH - 1) * pdh + 1;
    return {std::max<int64_t>(first, 0), std::min<int64_t>(last, OH)};
  }

  // MaxPool2d(2) (2x2 windows, stride 2, no padding or dilation) with every window inside
  // the conv output: each conv-output element is in at most one window.
  bool whole_pool2x2() const {
    return pool && PKH == 2 && PKW == 2 && psh == 2 && psw == 2 && pph == 0 && ppw == 0 && pdh == 1 && pdw == 1 &&
           2 * PH <= OH && 2 * PW <= OW;
  }
};

// Output size of a pool (or conv) along one dimension, as torch computes it.
inline int64_t pool_out_size(int64_t size, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
  int64_t num = size + 2 * p - d * (k - 1) - 1 + (ceil_mode ? s - 1 : 0);
  int64_t out = (num >= 0 ? num / s : -((-num + s - 1) / s)) + 1;  // floor division
  if (ceil_mode && (out - 1) * s >= size + p) --out;
  return out;
}

}  // namespace fusedops
