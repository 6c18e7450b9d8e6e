// Operand loaders of the run GEMM (run_gemm.cuh): each thread fetches one 16-byte run of
// kRunLen<T> elements per k step (8 of a 16-bit type, 4 of float32 multiplied as TF32), so that a
// k step is one 16-byte copy per operand and thread: kRunLen<T> consecutive k of one row of A or
// column of B (RunMap; the forwards' operands and the linear input gradient's A), or kRunLen<T>
// consecutive rows of A / columns of B at one k (KMajorRunMap; operands whose reduction index is
// the outer one, as in the gradients).
//
// The conv forward's reduction index is k = (kh*KW + kw)*Cg + ci: the input's channels
// innermost, as a channels_last input and a (Cout, KH, KW, Cin/groups) weight store them. With
// Cg a multiple of kRunLen<T> every run lies inside one kernel tap and is contiguous in both
// operands, and K = KH*KW*Cg is a multiple of kRunLen<T>, so a run is wholly inside the
// reduction or wholly past it; the gradients' reductions are ordered alike (output channels
// innermost in the input gradient's, whose taps are those of one stride phase). A loader is
// built once per tile; src() (src_a() / src_b() where one loader serves both operands) names
// this step's run (null: zeros, i.e. past the operand or in the conv's padding), next()
// advances k by kRunBK<T>. The digits of k are stepped with one carry per digit (no division in
// the main loop); they and the step are decomposed once per block by the caller (run_digits).
//
// Host and device code alike (no CUDA headers): tests/cuda_loaders_test.cpp and
// tests/cuda_emulator run them on the CPU.

#pragma once

#include <cstdint>

#include "tile_loaders.h"

namespace fusedops {
namespace cuda {

// Elements of a 16-byte run of T: 8 of a 16-bit type, 4 of a 4-byte one (Tf32).
template <typename T>
constexpr int kRunLen = 16 / static_cast<int>(sizeof(T));
// k per step of the run GEMM: four runs (32 of a 16-bit type, 16 of Tf32).
template <typename T>
constexpr int kRunBK = 4 * kRunLen<T>;

// Thread t's run in a step: row of A / column of B o(t), first k of the run kk(t) (relative to
// the step's first k). Four consecutive threads read one row's kRunBK<T> k: 64 contiguous bytes.
template <typename T>
struct RunMap {
  static constexpr int kRunsPerRow = kRunBK<T> / kRunLen<T>;
  static_assert(kBM * kRunsPerRow == kThreads && kBN * kRunsPerRow == kThreads, "one run of A and one of B a thread");
  static FUSEDOPS_HD int o(int t) { return t / kRunsPerRow; }
  static FUSEDOPS_HD int kk(int t) { return (t % kRunsPerRow) * kRunLen<T>; }
};

// Thread t's run in a step of an operand stored across k: k (relative to the step's first k)
// k(t), first row of A / column of B of the run o(t) (relative to the tile's first).
// kBM / kRunLen<T> consecutive threads read one k's 64 rows / columns: 128 or 256 contiguous
// bytes.
template <typename T>
struct KMajorRunMap {
  static constexpr int kRunsPerK = kBM / kRunLen<T>;
  static_assert(kRunBK<T> * kRunsPerK == kThreads, "one run of each operand a thread, across k too");
  static FUSEDOPS_HD int k(int t) { return t / kRunsPerK; }
  static FUSEDOPS_HD int o(int t) { return (t % kRunsPerK) * kRunLen<T>; }
};

// The digits (kh, kw, ci) of thread t's first k and of the step kRunBK<T>, radices (KW, Cg).
struct RunDigits {
  Digits first, step;
};

template <typename T>
FUSEDOPS_HD RunDigits run_digits(int kw, int channels, int t) {
  return {split_small(RunMap<T>::kk(t), kw, channels), split_small(kRunBK<T>, kw, channels)};
}

// Those of the forward's k = (kh, kw, ci).
template <typename T>
FUSEDOPS_HD RunDigits run_digits(const Geometry& g, int t) {
  return run_digits<T>(static_cast<int>(g.KW), static_cast<int>(g.Cg), t);
}

// A row-major matrix with contiguous rows of K elements, rows [m0, M) of it: run
// (m, k..k+kRunLen<T>-1) for m < M and k < K. The conv forward's A (the weights as
// (Cout, KH*KW*Cg)); both operands of the linear forward (x, and w as B's columns).
template <typename T>
struct RowRunLoader {
  const T* p;     // this thread's run at the current step
  int64_t left;   // K - its first k
  bool row;       // its row exists

  FUSEDOPS_HD RowRunLoader(const T* base, int64_t K, int64_t m0, int64_t M, int t)
      : p(base + (m0 + RunMap<T>::o(t)) * K + RunMap<T>::kk(t)), left(K - RunMap<T>::kk(t)),
        row(m0 + RunMap<T>::o(t) < M) {}
  FUSEDOPS_HD const T* src() const { return row && left > 0 ? p : nullptr; }
  FUSEDOPS_HD void next() {
    p += kRunBK<T>;
    left -= kRunBK<T>;
  }
};

// A row-major matrix whose rows are the reduction: rows k in [k0, k1), columns [o0, O) of it,
// each row ld elements apart; run (k, o..o+kRunLen<T>-1) for k < k1 and o < O (O a multiple of
// kRunLen<T>). A and B of the linear weight gradient (dz and x, k the batch row), B of its input
// gradient (w, k the output feature).
template <typename T>
struct KMajorRunLoader {
  const T* p;     // this thread's run at the current step
  int64_t step;   // kRunBK<T> * ld
  int64_t left;   // k1 - its k
  bool column;    // its columns exist

  FUSEDOPS_HD KMajorRunLoader(const T* base, int64_t ld, int64_t o0, int64_t O, int64_t k0, int64_t k1, int t)
      : p(base + (k0 + KMajorRunMap<T>::k(t)) * ld + o0 + KMajorRunMap<T>::o(t)), step(kRunBK<T> * ld),
        left(k1 - k0 - KMajorRunMap<T>::k(t)), column(o0 + KMajorRunMap<T>::o(t) < O) {}
  FUSEDOPS_HD const T* src() const { return column && left > 0 ? p : nullptr; }
  FUSEDOPS_HD void next() {
    p += step;
    left -= kRunBK<T>;
  }
};

// B of the conv forward: the im2col column of one pool tap, k = (kh, kw, ci), for this
// thread's column: x[n][ih][iw][grp*Cg + ci] with ih = r*sh - pt + kh*dh, iw = c*sw - pl + kw*dw,
// where (r, c) is the tap's conv position. xn = x + n*xs0 + grp*Cg (channel stride 1), or null
// where the column is past the end or the tap lies in the pool's padding. Digits, coordinates,
// their checks and the run's offset inside the image are 32-bit: image sides stay below 2^31,
// and the launchers run it only where every offset inside an image does (image_offsets_fit).
template <typename T>
struct PooledRunLoader {
  const T* xn;
  int xs2, xs3;
  int ih0, iw0;          // r*sh - pt, c*sw - pl
  int kh, kw, ci;        // this thread's run's k; kh reaches KH past the reduction
  int step_kh, step_kw, step_ci;

  FUSEDOPS_HD PooledRunLoader(const Geometry& g, const T* xn_, int64_t xs2_, int64_t xs3_, int r, int c,
                              const RunDigits& digits)
      : xn(xn_), xs2(static_cast<int>(xs2_)), xs3(static_cast<int>(xs3_)), ih0(static_cast<int>(r * g.sh - g.pt)),
        iw0(static_cast<int>(c * g.sw - g.pl)),
        kh(static_cast<int>(digits.first.hi)), kw(digits.first.mid), ci(digits.first.lo),
        step_kh(static_cast<int>(digits.step.hi)), step_kw(digits.step.mid), step_ci(digits.step.lo) {}
  FUSEDOPS_HD const T* src(const Geometry& g) const {
    const bool taps = kh < static_cast<int>(g.KH);  // past the reduction kh runs beyond KH: keep ih in the checked range
    const int ih = ih0 + (taps ? kh : 0) * static_cast<int>(g.dh);
    const int iw = iw0 + kw * static_cast<int>(g.dw);
    const bool in = xn && taps && inside(ih, g.H) && inside(iw, g.W);
    return in ? xn + (ih * xs2 + iw * xs3 + ci) : nullptr;
  }
  // add((kh, kw, ci), step, KW, Cg) in 32 bits.
  FUSEDOPS_HD void next(const Geometry& g) {
    ci += step_ci;
    const bool carry_kw = ci >= static_cast<int>(g.Cg);
    if (carry_kw) ci -= static_cast<int>(g.Cg);
    kw += step_kw + carry_kw;
    const bool carry_kh = kw >= static_cast<int>(g.KW);
    if (carry_kh) kw -= static_cast<int>(g.KW);
    kh += step_kh + carry_kh;
  }
};

// The input gradient's phases along one axis (conv_backward_channel_runs). A conv of stride s
// reads input i at tap kk from output o = (i + p - kk*d) / s, where that divides; for the inputs
// i = r + s*q of one phase r in [0, s) the taps that divide are every tap_step-th from `first`
// (tap_step = s / gcd(s, d)), and tap number t of them reads output o = q + out0 - t*out_step
// (out_step = tap_step*d / s). So each phase is an implicit GEMM over its own taps with no
// division and no product that is zero for want of a tap; a phase with no taps has a zero input
// gradient. Unit stride is the one phase r = 0: every tap, out0 = p, out_step = d.
struct AxisPhase {
  int64_t first;     // the first tap that reaches the phase's inputs
  int64_t tap_step;  // the distance between its taps (1 where it has one)
  int64_t taps;      // how many of the axis's `kernel` taps reach them (0: none)
  int64_t out0;      // output read by tap number 0 at q = 0
  int64_t out_step;  // how far back in the output each tap after it reads (0 where it has one)
  int64_t rows;      // inputs of the phase: i = r + s*q for q < rows
};

// Phase r of an axis of `in` inputs, stride s, dilation d, padding p (before), `kernel` taps.
// Once per tile: the first two taps that reach the phase are found by stepping
// (r + p - kk*d) mod s by subtraction (no division in the loop, at most min(kernel, 2s + 1)
// steps), and every later one follows from them.
FUSEDOPS_HD AxisPhase axis_phase(int64_t r, int64_t s, int64_t d, int64_t p, int64_t kernel, int64_t in) {
  AxisPhase ph{0, 1, 0, 0, 0, r < in ? (in - 1 - r) / s + 1 : 0};  // not in - r + s - 1: s may be near 2^63
  const int64_t d_mod = d % s;
  int64_t rem = (r + p) % s, hits = 0;  // (r + p - kk*d) mod s; r and p are non-negative
  // The remainders repeat every s / gcd(s, d) <= s taps: a first tap comes within s of the
  // start, a second within s of the first, or never.
  for (int64_t kk = 0; kk < kernel && hits < 2 && kk - (hits ? ph.first : 0) <= s; ++kk) {
    if (rem == 0) {
      if (hits++ == 0) ph.first = kk;
      else ph.tap_step = kk - ph.first;
    }
    rem = rem >= d_mod ? rem - d_mod : rem - d_mod + s;
  }
  if (hits == 0) return ph;
  ph.taps = hits == 1 ? 1 : (kernel - ph.first + ph.tap_step - 1) / ph.tap_step;
  ph.out0 = (r + p - ph.first * d) / s;                  // exact
  ph.out_step = hits == 1 ? 0 : ph.tap_step * d / s;  // exact
  return ph;
}

// The input gradient's blocks over runs: each stride phase that has inputs (min(s, size) of
// them along an axis, phase_rows x phase_cols) gets as many tiles of kBM rows as the largest,
// phase (0, 0), has (its rows ceil(H / sh) x ceil(W / sw) an image).
struct PhaseGrid {
  int64_t row_tiles, phase_rows, phase_cols;
};

FUSEDOPS_HD PhaseGrid input_grad_phase_grid(const Geometry& g) {
  const auto phases = [](int64_t s, int64_t size) { return s < size ? s : (size > 0 ? size : 1); };
  const auto largest = [](int64_t s, int64_t size) { return size > 0 ? (size - 1) / s + 1 : 0; };
  return {(g.N * largest(g.sh, g.H) * largest(g.sw, g.W) + kBM - 1) / kBM, phases(g.sh, g.H), phases(g.sw, g.W)};
}

// Both operands of the conv input gradient over runs (conv_backward_channel_runs), for one
// phase (rh, rw) = (axis_phase(rh, sh, ...), axis_phase(rw, sw, ...)) of a group: row m = the
// phase's input (n, qh, qw) (input position (rh + sh*qh, rw + sw*qw)), column = input channel
// ci, k = (t, u, co): tap number t of the phase along h and u along w, output channel co
// innermost. Thread t's run of A (row RunMap::o(t)) and of B (column RunMap::o(t)) lie at the
// same k, so one set of digits serves both:
//   A: dconv[n][qh + out0_h - t*out_step_h][qw + out0_w - u*out_step_w][grp*Coutg + co]
//      (channels_last, Cout channels), null outside the conv output or past the reduction;
//   B: wt[grp][ci][first_h + t*tap_step_h][first_w + u*tap_step_w][co], the weights as
//      (groups, Cin/groups, KH, KW, Cout/groups) contiguous, null past Cg or the reduction.
// dn = dconv + n*OH*OW*Cout + grp*Coutg, or null past the phase's rows; wt_row = wt's row of
// this thread's column ci, wt + (grp*Cg + ci)*KH*KW*Coutg, or null past the group's channels.
template <typename T>
struct InputGradRunLoader {
  const T* dn;
  const T* wp;          // B's run at the current k (valid where column and t < taps_h)
  bool column;          // this thread's column ci exists
  int64_t wp_step;      // wp's advance for a step without carries: step's (t, u, co) in wt
  int64_t wp_carry_u;   // and its correction where co wraps into u: one phase tap along w, less Coutg
  int64_t wp_carry_t;   // where u wraps into t: one phase tap along h, less taps_w along w
  int oh0, ow0;         // qh + out0_h, qw + out0_w
  int oh_step, ow_step;
  int taps_h, taps_w;   // the phase's taps (radix of u: taps_w, at least 1)
  Digits d;             // (t, u, co) of this thread's run; t reaches taps_h past the reduction
  Digits step;

  FUSEDOPS_HD InputGradRunLoader(const Geometry& g, const AxisPhase& ph, const AxisPhase& pw, const T* dn_,
                                 const T* wt_row, int qh, int qw, int t)
      : dn(dn_),
        column(wt_row != nullptr),
        oh0(qh + static_cast<int>(ph.out0)),
        ow0(qw + static_cast<int>(pw.out0)),
        oh_step(static_cast<int>(ph.out_step)),
        ow_step(static_cast<int>(pw.out_step)),
        taps_h(static_cast<int>(ph.taps)),
        taps_w(pw.taps > 0 ? static_cast<int>(pw.taps) : 1) {
    const RunDigits digits = run_digits<T>(taps_w, static_cast<int>(g.Coutg), t);
    d = digits.first, step = digits.step;
    const int64_t wh = ph.tap_step * g.KW * g.Coutg, ww = pw.tap_step * g.Coutg;  // wt's distance of one phase tap
    wp = column ? wt_row + (ph.first * g.KW + pw.first) * g.Coutg + d.hi * wh + d.mid * ww + d.lo : nullptr;
    wp_step = step.hi * wh + step.mid * ww + step.lo;
    wp_carry_u = ww - g.Coutg;
    wp_carry_t = wh - taps_w * ww;
  }
  FUSEDOPS_HD const T* src_a(const Geometry& g) const {
    const bool taps = d.hi < taps_h;  // past the reduction t runs beyond taps_h: keep oh in the checked range
    const int oh = oh0 - (taps ? static_cast<int>(d.hi) : 0) * oh_step;
    const int ow = ow0 - d.mid * ow_step;
    const bool in = dn && taps && inside(oh, g.OH) && inside(ow, g.OW);
    // 32-bit offset: the launchers keep an image of dconv, OH*OW*Cout, below 2^31 (backward_runs_fit).
    return in ? dn + ((oh * static_cast<int>(g.OW) + ow) * static_cast<int>(g.Cout) + d.lo) : nullptr;
  }
  FUSEDOPS_HD const T* src_b() const { return column && d.hi < taps_h ? wp : nullptr; }
  // add(d, step, taps_w, Coutg), with wp following the digits' carries.
  FUSEDOPS_HD void next(const Geometry& g) {
    d.lo += step.lo;
    const bool carry_u = d.lo >= g.Coutg;
    if (carry_u) d.lo -= static_cast<int>(g.Coutg);
    d.mid += step.mid + carry_u;
    const bool carry_t = d.mid >= taps_w;
    if (carry_t) d.mid -= taps_w;
    d.hi += step.hi + carry_t;
    if (column) wp += wp_step + (carry_u ? wp_carry_u : 0) + (carry_t ? wp_carry_t : 0);
  }
};

// B of the conv weight gradient over runs (stored across k): k = conv position p = (n, oh, ow)
// in [k0, k1), column j = (kh, kw, ci) (the runs' weight order, channels innermost): the input
// x[n][ih][iw][grp*Cg + ci] at ih = oh*sh - pt + kh*dh, iw = ow*sw - pl + kw*dw, channels_last
// (channel stride 1); xg = x + grp*Cg. A run is kRunLen<T> channels of one tap; null past the
// columns, past k1 or in the padding. Its offset inside an image is 32-bit, as
// PooledRunLoader's (image_offsets_fit).
template <typename T>
struct Im2colKMajorRunLoader {
  const T* xg;
  int64_t xs0;
  int xs2, xs3;
  int ih_tap, iw_tap;  // kh*dh - pt, kw*dw - pl of this thread's columns
  int ci;              // their first channel
  bool column;         // they exist
  Digits p;            // (n, oh, ow) of this thread's k
  Digits step;
  int64_t left;        // k1 - its k

  FUSEDOPS_HD Im2colKMajorRunLoader(const Geometry& g, const T* xg_, int64_t xs0_, int64_t xs2_, int64_t xs3_,
                                    int64_t n0, int64_t k0, int64_t k1, int t)
      : xg(xg_), xs0(xs0_), xs2(static_cast<int>(xs2_)), xs3(static_cast<int>(xs3_)),
        p(split(k0 + KMajorRunMap<T>::k(t), g.OH, g.OW)), step(split(kRunBK<T>, g.OH, g.OW)),
        left(k1 - k0 - KMajorRunMap<T>::k(t)) {
    const int64_t j = n0 + KMajorRunMap<T>::o(t);
    column = j < g.K;
    const Digits tap = split(column ? j : 0, g.KW, g.Cg);  // once per tile
    ih_tap = static_cast<int>(tap.hi * g.dh - g.pt);
    iw_tap = static_cast<int>(tap.mid * g.dw - g.pl);
    ci = static_cast<int>(tap.lo);
  }
  FUSEDOPS_HD const T* src(const Geometry& g) const {
    const int ih = p.mid * static_cast<int>(g.sh) + ih_tap, iw = p.lo * static_cast<int>(g.sw) + iw_tap;
    const bool in = column && left > 0 && inside(ih, g.H) && inside(iw, g.W);
    return in ? xg + p.hi * xs0 + (ih * xs2 + iw * xs3 + ci) : nullptr;
  }
  FUSEDOPS_HD void next(const Geometry& g) {
    add(p, step, static_cast<int>(g.OH), static_cast<int>(g.OW));
    left -= kRunBK<T>;
  }
};

}  // namespace cuda
}  // namespace fusedops
