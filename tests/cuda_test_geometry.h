// The conv block's Geometry from its sizes, for the host-compiled CUDA tests
// (tests/cuda_loaders_test.cpp, tests/cuda_emulator/conv_kernels_test.cpp): the same fields
// the bindings derive from tensors (csrc/cuda/bindings.cpp), square pool windows.

#pragma once

#include <cstdint>

#include "../csrc/conv_geometry.h"

namespace fusedops {

// pool_k 0: no pool (a 1x1 window of stride 1). pb / pr: the bottom and right padding (-1: as
// pt / pl), which only the conv output's size records, as in the bindings' Geometry; ceil_mode:
// the pool's.
inline Geometry test_geometry(int64_t N, int64_t C, int64_t H, int64_t W, int64_t Cout, int64_t G, int64_t KH,
                              int64_t KW, int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t dh, int64_t dw,
                              int64_t pool_k, int64_t pool_s, int64_t pool_p, int64_t pool_d, int64_t pb = -1,
                              int64_t pr = -1, bool ceil_mode = false) {
  Geometry g{};
  g.N = N, g.C = C, g.H = H, g.W = W, g.Cout = Cout, g.G = G, g.Cg = C / G, g.Coutg = Cout / G;
  g.KH = KH, g.KW = KW, g.K = g.Cg * KH * KW;
  g.sh = sh, g.sw = sw, g.pt = pt, g.pl = pl, g.dh = dh, g.dw = dw;
  // Padding pt + pb around H is padding pt on both sides of H + pb - pt.
  g.OH = pool_out_size(H + (pb < 0 ? pt : pb) - pt, KH, sh, pt, dh, false);
  g.OW = pool_out_size(W + (pr < 0 ? pl : pr) - pl, KW, sw, pl, dw, false);
  g.pool = pool_k > 0;
  g.PKH = g.PKW = g.pool ? pool_k : 1;
  g.psh = g.psw = g.pool ? pool_s : 1;
  g.pph = g.ppw = pool_p;
  g.pdh = g.pdw = pool_d;
  g.PH = pool_out_size(g.OH, g.PKH, g.psh, g.pph, g.pdh, ceil_mode);
  g.PW = pool_out_size(g.OW, g.PKW, g.psw, g.ppw, g.pdw, ceil_mode);
  return g;
}

}  // namespace fusedops
