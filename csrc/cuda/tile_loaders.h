// Operand loaders of the implicit GEMMs (tile_gemm.cuh): which operand elements each thread
// of a block fetches for one k step, and the index arithmetic that finds them.
//
// A tile is kBM x kBK of A (rows m, reduction k) or kBK x kBN of B (reduction k, columns n):
// 1,024 elements, kLoads = 4 per thread. A loader is built once per tile with its thread's
// index and the first k, then alternates fetch() (the current step's kLoads elements, zero
// outside the operand) and next() (advance k by kBK). Everything a thread's elements need
// that does not depend on k (its rows or columns: image, pooled position, channel, pointer
// bases) is decomposed once in the constructor; the reduction index is kept as mixed-radix
// digits (Digits) and stepped by kBK with one carry per digit, so the main loop divides
// nothing. Pointer bases, strides and image indices are 64-bit; coordinates inside an image
// (rows, columns, kernel taps) 32-bit: the bindings reject images whose padded sides reach 2^31.
//
// Host and device code alike (no CUDA headers): tests/cuda_loaders_test.cpp checks every
// loader against the operands' definitions on the CPU.

#pragma once

#include <cstdint>

#include "../conv_geometry.h"

#if defined(__CUDACC__)
#define FUSEDOPS_HD __host__ __device__ __forceinline__
#define FUSEDOPS_UNROLL _Pragma("unroll")
#else
#define FUSEDOPS_HD inline
#define FUSEDOPS_UNROLL
#endif

namespace fusedops {
namespace cuda {

constexpr int kBM = 64, kBN = 64, kBK = 16, kThreads = 256;
constexpr int kLoads = kBM * kBK / kThreads;  // operand elements a thread fetches per k step
static_assert(kBN * kBK / kThreads == kLoads && kBM == kBN, "A and B tiles are loaded alike");

// Element j (< kLoads) of thread t: its position kk in the k step and o in the other
// dimension (A's row, B's column). Along k, 16 consecutive threads cover the 16 k of one row
// (for operands contiguous in k); otherwise 64 consecutive threads cover the 64 rows or
// columns at one k (for operands contiguous there). Consecutive threads read neighbours.
template <bool kAlongK>
struct TileMap {
  static FUSEDOPS_HD int kk(int t, int j) { return kAlongK ? t % kBK : t / kBM + (kThreads / kBM) * j; }
  static FUSEDOPS_HD int o(int t, int j) { return kAlongK ? t / kBK + (kThreads / kBK) * j : t % kBM; }
};

// An index i = (hi * r1 + mid) * r2 + lo as its digits (mid < r1, lo < r2).
struct Digits {
  int64_t hi;
  int mid, lo;
};

FUSEDOPS_HD Digits split(int64_t i, int64_t r1, int64_t r2) {
  const int64_t t = i / r2;
  return {t / r1, static_cast<int>(t % r1), static_cast<int>(i % r2)};
}

// The same for a small i (i < 2^31, r1 and r2 too): 32-bit divisions, for loaders built inside
// a loop (the conv forward's, once per pool tap).
FUSEDOPS_HD Digits split_small(int i, int r1, int r2) {
  const int t = i / r2;
  return {t / r1, t % r1, i % r2};
}

// a += s, where s's digits are below their radices: one carry per digit.
FUSEDOPS_HD void add(Digits& a, const Digits& s, int r1, int r2) {
  a.lo += s.lo;
  int carry = a.lo >= r2;
  if (carry) a.lo -= r2;
  a.mid += s.mid + carry;
  carry = a.mid >= r1;
  if (carry) a.mid -= r1;
  a.hi += s.hi + carry;
}

// Division by a divisor fixed at launch, as a multiply (Granlund and Montgomery, "Division by
// invariant integers using multiplication", 1994, section 4): for 0 <= n < 2^63,
//   floor(n / d) = (mulhi64(n, m) + n) >> s,  s = ceil(log2 d),  m = floor(2^64 (2^s - d) / d) + 1,
// their round-up method, whose sum cannot overflow since n < 2^63. On an NVIDIA GPU a 64-bit
// integer division is a called routine of about 70 instructions; this is a high multiply, an
// add and a shift. Built on the host (the launcher), used by the grid-stride kernels whose
// every element decomposes a flat index.
struct FastDivisor {
  uint64_t magic = 1;
  int shift = 0;
  int64_t d = 1;

  FastDivisor() = default;
  explicit FastDivisor(int64_t divisor) : d(divisor) {  // divisor >= 1
    while ((uint64_t(1) << shift) < static_cast<uint64_t>(d)) ++shift;
    const unsigned __int128 excess = (uint64_t(1) << shift) - static_cast<uint64_t>(d);
    magic = static_cast<uint64_t>((excess << 64) / static_cast<uint64_t>(d)) + 1;
  }
  // floor(n / d) for 0 <= n < 2^63.
  FUSEDOPS_HD int64_t div(int64_t n) const {
    const uint64_t u = static_cast<uint64_t>(n);
#if defined(__CUDA_ARCH__)
    const uint64_t hi = __umul64hi(u, magic);
#else
    const uint64_t hi = static_cast<uint64_t>((static_cast<unsigned __int128>(u) * magic) >> 64);
#endif
    return static_cast<int64_t>((hi + u) >> shift);
  }
  // n = q * d + rem, 0 <= rem < d, for 0 <= n < 2^63: returns q.
  FUSEDOPS_HD int64_t divmod(int64_t n, int64_t& rem) const {
    const int64_t q = div(n);
    rem = n - q * d;
    return q;
  }
};

// 0 <= v < size for a side of an image, a conv output or a pool window's reach: the bindings
// keep them below 2^31 (checked_conv_geometry), so one unsigned 32-bit comparison says it
// (a negative v is a large unsigned one).
FUSEDOPS_HD bool inside(int v, int64_t size) { return static_cast<unsigned>(v) < static_cast<unsigned>(size); }

// A strided matrix: element (o, k) = p[o * so + k * sk] for o < O, k < k1, else zero. The
// conv forward's weights (o = output channel) and every operand of the linear kernels.
template <typename T, bool kAlongK>
struct MatrixLoader {
  using Map = TileMap<kAlongK>;
  const T* p;      // element 0 of this thread at the current step
  int64_t jstep;   // pointer distance between consecutive elements j
  int64_t kstep;   // pointer distance of one k step
  int64_t left;    // k1 - element 0's k: element j's k exists while its distance from element 0's is below it
  unsigned inrow;  // bit j: element j's o is below O
  T zero;

  FUSEDOPS_HD MatrixLoader(const T* base, int64_t so, int64_t sk, int64_t o0, int64_t O, int64_t k0, int64_t k1, int t,
                           T zero_)
      : zero(zero_) {
    const int64_t k = k0 + Map::kk(t, 0);
    p = base + (o0 + Map::o(t, 0)) * so + k * sk;
    jstep = kAlongK ? (kThreads / kBK) * so : (kThreads / kBM) * sk;
    kstep = kBK * sk;
    left = k1 - k;
    inrow = 0;
FUSEDOPS_UNROLL
    for (int j = 0; j < kLoads; ++j) inrow |= (o0 + Map::o(t, j) < O ? 1u : 0u) << j;
  }
  FUSEDOPS_HD void fetch(T (&v)[kLoads]) const {
FUSEDOPS_UNROLL
    for (int j = 0; j < kLoads; ++j) {
      const bool in = (inrow >> j & 1u) && left > (kAlongK ? 0 : (kThreads / kBM) * j);
      v[j] = in ? p[j * jstep] : zero;
    }
  }
  FUSEDOPS_HD void next() {
    p += kstep;
    left -= kBK;
  }
};

// Pooled output q = (n, ph, pw) of the conv forward: its image (-1 past the last output),
// position, and the conv position of its window's first tap; tap (th, tw) is at
// (r0 + th*pdh, c0 + tw*pdw).
struct PooledColumn {
  int64_t n;
  int ph, pw, r0, c0;
};

FUSEDOPS_HD PooledColumn pooled_column(const Geometry& g, int64_t q) {
  if (q >= g.N * g.PH * g.PW) return {-1, 0, 0, 0, 0};
  const Digits d = split(q, g.PH, g.PW);
  return {d.hi, d.mid, d.lo, static_cast<int>(d.mid * g.psh - g.pph), static_cast<int>(d.lo * g.psw - g.ppw)};
}

// Conv forward, B: the im2col column of one pool tap. Element (k, q) with k = (ci, kh, kw) is
// x[n][grp*Cg + ci][r*sh - pt + kh*dh][c*sw - pl + kw*dw], where (r, c) is the conv position of
// the tap of pooled output q = (n, ph, pw); zero in the conv's padding. The caller finds
// (n, r, c) of this thread's column (the same for its kLoads elements): xn = x + n*xs0 +
// grp*Cg*xs1, or null where q is past the end or the tap lies in the pool's padding.
template <typename T>
struct PooledColumnLoader {
  using Map = TileMap<false>;
  const T* xn;
  int64_t xs1, xs2, xs3;
  int ih0, iw0;  // r*sh - pt, c*sw - pl
  int64_t k, k1;  // element 0's k and the reduction's end (K)
  Digits d[kLoads];  // (ci, kh, kw) of element j
  Digits step;       // the digits of kBK
  T zero;

  // Built once per pool tap, for the whole reduction (k from 0).
  FUSEDOPS_HD PooledColumnLoader(const Geometry& g, const T* xn_, int64_t xs1_, int64_t xs2_, int64_t xs3_, int r,
                                 int c, int t, T zero_)
      : xn(xn_), xs1(xs1_), xs2(xs2_), xs3(xs3_), ih0(static_cast<int>(r * g.sh - g.pt)),
        iw0(static_cast<int>(c * g.sw - g.pl)), k(Map::kk(t, 0)), k1(g.K), zero(zero_) {
    const int kh = static_cast<int>(g.KH), kw = static_cast<int>(g.KW);
FUSEDOPS_UNROLL
    for (int j = 0; j < kLoads; ++j) d[j] = split_small(Map::kk(t, j), kh, kw);
    step = split_small(kBK, kh, kw);
  }
  FUSEDOPS_HD void fetch(const Geometry& g, T (&v)[kLoads]) const {
FUSEDOPS_UNROLL
    for (int j = 0; j < kLoads; ++j) {
      const int ih = ih0 + d[j].mid * static_cast<int>(g.dh), iw = iw0 + d[j].lo * static_cast<int>(g.dw);
      const bool in = xn && k + (kThreads / kBM) * j < k1 && inside(ih, g.H) && inside(iw, g.W);
      v[j] = in ? xn[d[j].hi * xs1 + ih * xs2 + iw * xs3] : zero;
    }
  }
  FUSEDOPS_HD void next(const Geometry& g) {
    k += kBK;
FUSEDOPS_UNROLL
    for (int j = 0; j < kLoads; ++j) add(d[j], step, static_cast<int>(g.KH), static_cast<int>(g.KW));
  }
};

// Input gradient, A: the weights as (ci, k) with k = (co, tap), tap = kh*KW + kw:
// w[grp*Coutg + co][ci][kh][kw] for ci < Cg, k < Coutg*KH*KW. wg = w + grp*Coutg*Cg*KH*KW.
template <typename T>
struct TapWeightLoader {
  using Map = TileMap<true>;
  const T* wg;
  int64_t ci;     // element 0's input channel
  int64_t k, k1;  // element 0's k and the reduction's end
  Digits d;       // (co, 0, tap) of k (the same for every element j)
  Digits step;
  T zero;

  FUSEDOPS_HD TapWeightLoader(const Geometry& g, const T* wg_, int64_t m0, int t, T zero_)
      : wg(wg_), ci(m0 + Map::o(t, 0)), k(Map::kk(t, 0)), k1(g.Coutg * g.KH * g.KW), zero(zero_) {
    d = split(k, 1, g.KH * g.KW);
    step = split(kBK, 1, g.KH * g.KW);
  }
  FUSEDOPS_HD void fetch(const Geometry& g, T (&v)[kLoads]) const {
    const int64_t taps = g.KH * g.KW;
    const T* row = wg + d.hi * g.Cg * taps + ci * taps + d.lo;
FUSEDOPS_UNROLL
    for (int j = 0; j < kLoads; ++j) {
      const bool in = ci + (kThreads / kBK) * j < g.Cg && k < k1;
      v[j] = in ? row[j * (kThreads / kBK) * taps] : zero;
    }
  }
  FUSEDOPS_HD void next(const Geometry& g) {
    k += kBK;
    add(d, step, 1, static_cast<int>(g.KH * g.KW));
  }
};

// Input gradient, B: the conv-output gradient gathered for input position p = (n, ih, iw)
// (this thread's column) and k = (co, kh, kw): dconv[n][grp*Coutg + co][oh][ow] where
// ih = oh*sh - pt + kh*dh and iw = ow*sw - pl + kw*dw, zero where no (oh, ow) is. dconv is
// contiguous (N, Cout, OH, OW).
template <typename T>
struct DconvGatherLoader {
  using Map = TileMap<false>;
  const T* dn;    // dconv + (n*Cout + grp*Coutg) * OH*OW, null past the last position
  int rh0, rw0;   // ih + pt, iw + pl
  int64_t k, k1;  // element 0's k and the reduction's end
  Digits d[kLoads];  // (co, kh, kw) of element j
  Digits step;
  T zero;

  FUSEDOPS_HD DconvGatherLoader(const Geometry& g, const T* dconv, int64_t grp, int64_t n0, int t, T zero_)
      : k(Map::kk(t, 0)), k1(g.Coutg * g.KH * g.KW), zero(zero_) {
    const int64_t p = n0 + Map::o(t, 0);
    const Digits pos = split(p, g.H, g.W);  // (n, ih, iw)
    dn = p < g.N * g.H * g.W ? dconv + (pos.hi * g.Cout + grp * g.Coutg) * g.OH * g.OW : nullptr;
    rh0 = static_cast<int>(pos.mid + g.pt);
    rw0 = static_cast<int>(pos.lo + g.pl);
FUSEDOPS_UNROLL
    for (int j = 0; j < kLoads; ++j) d[j] = split(Map::kk(t, j), g.KH, g.KW);
    step = split(kBK, g.KH, g.KW);
  }
  FUSEDOPS_HD void fetch(const Geometry& g, T (&v)[kLoads]) const {
    const int sh = static_cast<int>(g.sh), sw = static_cast<int>(g.sw);
FUSEDOPS_UNROLL
    for (int j = 0; j < kLoads; ++j) {
      int rh = rh0 - d[j].mid * static_cast<int>(g.dh), rw = rw0 - d[j].lo * static_cast<int>(g.dw);
      bool in = dn && k + (kThreads / kBM) * j < k1 && rh >= 0 && rw >= 0;
      if (sh != 1) {  // a 32-bit division, for strided convs only
        in = in && rh % sh == 0;
        rh /= sh;
      }
      if (sw != 1) {
        in = in && rw % sw == 0;
        rw /= sw;
      }
      in = in && rh < g.OH && rw < g.OW;
      v[j] = in ? dn[(d[j].hi * g.OH + rh) * g.OW + rw] : zero;
    }
  }
  FUSEDOPS_HD void next(const Geometry& g) {
    k += kBK;
FUSEDOPS_UNROLL
    for (int j = 0; j < kLoads; ++j) add(d[j], step, static_cast<int>(g.KH), static_cast<int>(g.KW));
  }
};

// Weight gradient, A: the conv-output gradient as (co, p) with p = (n, oh, ow) the reduction:
// dconv[n][grp*Coutg + co][oh][ow] for co < Coutg, p < p1. dg = dconv + grp*Coutg*OH*OW.
template <typename T>
struct DconvRowLoader {
  using Map = TileMap<true>;
  const T* dg;
  int64_t co;     // element 0's output channel
  int64_t p, p1;  // element 0's position and the split's end
  Digits d;       // (n, oh, ow) of p: each image coordinate below 2^31, their product need not be
  Digits step;
  T zero;

  FUSEDOPS_HD DconvRowLoader(const Geometry& g, const T* dg_, int64_t m0, int64_t p0, int64_t p1_, int t, T zero_)
      : dg(dg_), co(m0 + Map::o(t, 0)), p(p0 + Map::kk(t, 0)), p1(p1_), zero(zero_) {
    d = split(p, g.OH, g.OW);
    step = split(kBK, g.OH, g.OW);
  }
  FUSEDOPS_HD void fetch(const Geometry& g, T (&v)[kLoads]) const {
    const int64_t ohw = g.OH * g.OW;
    const T* at = dg + (d.hi * g.Cout + co) * ohw + d.mid * g.OW + d.lo;
FUSEDOPS_UNROLL
    for (int j = 0; j < kLoads; ++j) {
      const bool in = co + (kThreads / kBK) * j < g.Coutg && p < p1;
      v[j] = in ? at[j * (kThreads / kBK) * ohw] : zero;
    }
  }
  FUSEDOPS_HD void next(const Geometry& g) {
    p += kBK;
    add(d, step, static_cast<int>(g.OH), static_cast<int>(g.OW));
  }
};

// Weight gradient, B: im2col transposed, (p, kc) with p = (n, oh, ow) the reduction and
// kc = (ci, kh, kw) this thread's columns: x[n][grp*Cg + ci][oh*sh - pt + kh*dh][ow*sw - pl + kw*dw],
// zero in the conv's padding, for p < p1 and kc < K. xg = x + grp*Cg*xs1.
template <typename T>
struct Im2colRowLoader {
  using Map = TileMap<true>;
  const T* xg;
  int64_t xs0, xs1, xs2, xs3;
  int64_t cofs[kLoads];  // ci*xs1 of element j's column, -1 past K
  int kh_dh[kLoads], kw_dw[kLoads];  // kh*dh - pt, kw*dw - pl
  int64_t p, p1;  // element 0's position and the split's end
  Digits d;       // (n, oh, ow) of p
  Digits step;
  T zero;

  FUSEDOPS_HD Im2colRowLoader(const Geometry& g, const T* xg_, int64_t xs0_, int64_t xs1_, int64_t xs2_,
                              int64_t xs3_, int64_t n0, int64_t p0, int64_t p1_, int t, T zero_)
      : xg(xg_), xs0(xs0_), xs1(xs1_), xs2(xs2_), xs3(xs3_), p(p0 + Map::kk(t, 0)), p1(p1_), zero(zero_) {
FUSEDOPS_UNROLL
    for (int j = 0; j < kLoads; ++j) {
      const int64_t kc = n0 + Map::o(t, j);
      const Digits c = split(kc, g.KH, g.KW);
      cofs[j] = kc < g.K ? c.hi * xs1 : -1;
      kh_dh[j] = static_cast<int>(c.mid * g.dh - g.pt);
      kw_dw[j] = static_cast<int>(c.lo * g.dw - g.pl);
    }
    d = split(p, g.OH, g.OW);
    step = split(kBK, g.OH, g.OW);
  }
  FUSEDOPS_HD void fetch(const Geometry& g, T (&v)[kLoads]) const {
    const T* xn = xg + d.hi * xs0;
    const int oh = d.mid * static_cast<int>(g.sh), ow = d.lo * static_cast<int>(g.sw);
FUSEDOPS_UNROLL
    for (int j = 0; j < kLoads; ++j) {
      const int ih = oh + kh_dh[j], iw = ow + kw_dw[j];
      const bool in = cofs[j] >= 0 && p < p1 && inside(ih, g.H) && inside(iw, g.W);
      v[j] = in ? xn[cofs[j] + ih * xs2 + iw * xs3] : zero;
    }
  }
  FUSEDOPS_HD void next(const Geometry& g) {
    p += kBK;
    add(d, step, static_cast<int>(g.OH), static_cast<int>(g.OW));
  }
};

}  // namespace cuda
}  // namespace fusedops
