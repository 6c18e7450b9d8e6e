// The implicit GEMMs' operand loaders (csrc/cuda/tile_loaders.h), checked on the CPU: for
// many geometries and every tile, the elements that all kThreads threads of a block fetch over
// every k step, at the tile positions tile_gemm stores them to, must be the operand's elements
// as defined here with plain divisions (the definitions the CUDA kernels had before the
// loaders), and every tile position must be written exactly once. Built and run by
// tests/test_cuda_loaders.py; prints the failures and exits 1 when there are any.

#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cuda/run_loaders.h"
#include "cuda/tile_loaders.h"
#include "cuda_test_geometry.h"

using namespace fusedops;
using namespace fusedops::cuda;
using T = double;  // element values are their storage index + 1: exact, and 0 only for "no element"

namespace {

int failures = 0, tiles = 0;

void fail(const std::string& what) {
  if (failures++ < 30) std::printf("FAIL %s\n", what.c_str());
}

// One tile of one operand: loaders of every thread, stepped over [k0, k1); want(o, k) is the
// operand's element at (row or column o, reduction index k), 0 outside the operand.
template <bool kAlongK, typename Make, typename Fetch, typename Next, typename Want>
void check_tile(const std::string& what, Make make, Fetch fetch, Next next, Want want, int64_t o0, int64_t k0,
                int64_t k1) {
  using Map = TileMap<kAlongK>;
  using Loader = decltype(make(0));
  std::vector<Loader> loaders;
  for (int t = 0; t < kThreads; ++t) loaders.push_back(make(t));
  const int64_t steps = (k1 - k0 + kBK - 1) / kBK;
  ++tiles;
  for (int64_t s = 0; s < steps; ++s) {
    std::vector<int> written(kBM * kBK, 0);
    for (int t = 0; t < kThreads; ++t) {
      T v[kLoads];
      fetch(loaders[t], v);
      for (int j = 0; j < kLoads; ++j) {
        const int kk = Map::kk(t, j), o = Map::o(t, j);
        ++written[o * kBK + kk];
        const int64_t k = k0 + s * kBK + kk;
        const T expect = k < k1 ? want(o0 + o, k) : T(0);
        if (v[j] != expect)
          fail(what + ": o=" + std::to_string(o0 + o) + " k=" + std::to_string(k) + " got " +
               std::to_string(v[j]) + " want " + std::to_string(expect));
      }
      next(loaders[t]);
    }
    for (int i = 0; i < kBM * kBK; ++i)
      if (written[i] != 1) fail(what + ": tile position written " + std::to_string(written[i]) + " times");
  }
}

struct Tensor4 {
  std::vector<T> data;
  int64_t s[4];
  // (n, c, h, w) with contiguous (NCHW) or channels_last strides; values = storage index + 1.
  Tensor4(int64_t n, int64_t c, int64_t h, int64_t w, bool channels_last) : data(n * c * h * w) {
    if (channels_last) {
      s[1] = 1, s[3] = c, s[2] = w * c, s[0] = h * w * c;
    } else {
      s[3] = 1, s[2] = w, s[1] = h * w, s[0] = c * h * w;
    }
    for (size_t i = 0; i < data.size(); ++i) data[i] = T(i + 1);
  }
  T at(int64_t n, int64_t c, int64_t h, int64_t w) const { return data[n * s[0] + c * s[1] + h * s[2] + w * s[3]]; }
};

std::vector<T> iota(int64_t count) {
  std::vector<T> v(count);
  for (int64_t i = 0; i < count; ++i) v[i] = T(i + 1);
  return v;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

void check_conv(const Geometry& g, bool channels_last, const std::string& name) {
  const Tensor4 x(g.N, g.C, g.H, g.W, channels_last);
  const std::vector<T> w = iota(g.Cout * g.K);
  const std::vector<T> dconv = iota(g.N * g.Cout * g.OH * g.OW);
  const int64_t Q = g.N * g.PH * g.PW, P = g.N * g.H * g.W, R = g.N * g.OH * g.OW, taps = g.KH * g.KW;
  for (int64_t grp = 0; grp < g.G; ++grp) {
    const std::string at = name + " grp " + std::to_string(grp);
    // Forward A: the group's weights (Coutg x K), along k.
    const T* wg = w.data() + grp * g.Coutg * g.K;
    for (int64_t m0 = 0; m0 < g.Coutg; m0 += kBM)
      check_tile<true>(
          at + " forward A", [&](int t) { return MatrixLoader<T, true>(wg, g.K, 1, m0, g.Coutg, 0, g.K, t, T(0)); },
          [](const auto& l, T(&v)[kLoads]) { l.fetch(v); }, [](auto& l) { l.next(); },
          [&](int64_t m, int64_t k) { return m < g.Coutg ? wg[m * g.K + k] : T(0); }, m0, 0, g.K);
    // Forward B: im2col at each pool tap.
    for (int th = 0; th < g.PKH; ++th)
      for (int tw = 0; tw < g.PKW; ++tw)
        for (int64_t n0 = 0; n0 < Q; n0 += kBN) {
          const auto make = [&](int t) {
            const PooledColumn col = pooled_column(g, n0 + TileMap<false>::o(t, 0));
            const int r = col.r0 + th * static_cast<int>(g.pdh), c = col.c0 + tw * static_cast<int>(g.pdw);
            const bool tap = col.n >= 0 && inside(r, g.OH) && inside(c, g.OW);
            const T* xn = tap ? x.data.data() + col.n * x.s[0] + grp * g.Cg * x.s[1] : nullptr;
            return PooledColumnLoader<T>(g, xn, x.s[1], x.s[2], x.s[3], r, c, t, T(0));
          };
          const auto want = [&](int64_t q, int64_t k) -> T {
            if (q >= Q) return 0;
            const int64_t pw = q % g.PW, ph = (q / g.PW) % g.PH, n = q / (g.PW * g.PH);
            const int64_t r = ph * g.psh - g.pph + th * g.pdh, c = pw * g.psw - g.ppw + tw * g.pdw;
            if (r < 0 || r >= g.OH || c < 0 || c >= g.OW) return 0;
            const int64_t kw = k % g.KW, kh = (k / g.KW) % g.KH, ci = k / (g.KW * g.KH);
            const int64_t ih = r * g.sh - g.pt + kh * g.dh, iw = c * g.sw - g.pl + kw * g.dw;
            if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) return 0;
            return x.at(n, grp * g.Cg + ci, ih, iw);
          };
          check_tile<false>(
              at + " forward B tap " + std::to_string(th) + "," + std::to_string(tw), make,
              [&](const auto& l, T(&v)[kLoads]) { l.fetch(g, v); }, [&](auto& l) { l.next(g); }, want, n0, 0, g.K);
        }
    // Input gradient A: weights as (ci, (co, tap)).
    const T* wgi = w.data() + grp * g.Coutg * g.Cg * taps;
    for (int64_t m0 = 0; m0 < g.Cg; m0 += kBM)
      check_tile<true>(
          at + " input-gradient A", [&](int t) { return TapWeightLoader<T>(g, wgi, m0, t, T(0)); },
          [&](const auto& l, T(&v)[kLoads]) { l.fetch(g, v); }, [&](auto& l) { l.next(g); },
          [&](int64_t ci, int64_t k) -> T {
            if (ci >= g.Cg) return 0;
            return w[((grp * g.Coutg + k / taps) * g.Cg + ci) * taps + k % taps];
          },
          m0, 0, g.Coutg * taps);
    // Input gradient B: dconv gathered per input position.
    for (int64_t n0 = 0; n0 < P; n0 += kBN)
      check_tile<false>(
          at + " input-gradient B", [&](int t) { return DconvGatherLoader<T>(g, dconv.data(), grp, n0, t, T(0)); },
          [&](const auto& l, T(&v)[kLoads]) { l.fetch(g, v); }, [&](auto& l) { l.next(g); },
          [&](int64_t p, int64_t k) -> T {
            if (p >= P) return 0;
            const int64_t co = k / taps, kh = (k % taps) / g.KW, kw = k % g.KW;
            const int64_t iw = p % g.W, ih = (p / g.W) % g.H, n = p / (g.W * g.H);
            const int64_t rh = ih + g.pt - kh * g.dh, rw = iw + g.pl - kw * g.dw;
            if (rh < 0 || rw < 0 || rh % g.sh != 0 || rw % g.sw != 0) return 0;
            const int64_t oh = rh / g.sh, ow = rw / g.sw;
            if (oh >= g.OH || ow >= g.OW) return 0;
            return dconv[((n * g.Cout + grp * g.Coutg + co) * g.OH + oh) * g.OW + ow];
          },
          n0, 0, g.Coutg * taps);
    // Weight gradient, over splits of the positions (chunks of multiples of kBK, as the launcher makes).
    for (int64_t chunk : {ceil_div(R, kBK) * kBK, int64_t(kBK), int64_t(3 * kBK)}) {
      for (int64_t p0 = 0; p0 < R; p0 += chunk) {
        const int64_t p1 = std::min(R, p0 + chunk);
        const T* dg = dconv.data() + grp * g.Coutg * g.OH * g.OW;
        for (int64_t m0 = 0; m0 < g.Coutg; m0 += kBM)
          check_tile<true>(
              at + " weight-gradient A p0=" + std::to_string(p0),
              [&](int t) { return DconvRowLoader<T>(g, dg, m0, p0, p1, t, T(0)); },
              [&](const auto& l, T(&v)[kLoads]) { l.fetch(g, v); }, [&](auto& l) { l.next(g); },
              [&](int64_t co, int64_t p) -> T {
                if (co >= g.Coutg || p >= p1) return 0;
                const int64_t hw = p % (g.OH * g.OW), n = p / (g.OH * g.OW);
                return dconv[(n * g.Cout + grp * g.Coutg + co) * g.OH * g.OW + hw];
              },
              m0, p0, p1);
        const T* xg = x.data.data() + grp * g.Cg * x.s[1];
        for (int64_t n0 = 0; n0 < g.K; n0 += kBN)
          check_tile<true>(
              at + " weight-gradient B p0=" + std::to_string(p0),
              [&](int t) { return Im2colRowLoader<T>(g, xg, x.s[0], x.s[1], x.s[2], x.s[3], n0, p0, p1, t, T(0)); },
              [&](const auto& l, T(&v)[kLoads]) { l.fetch(g, v); }, [&](auto& l) { l.next(g); },
              [&](int64_t k, int64_t p) -> T {
                if (k >= g.K || p >= p1) return 0;
                const int64_t ow = p % g.OW, oh = (p / g.OW) % g.OH, n = p / (g.OW * g.OH);
                const int64_t kw = k % g.KW, kh = (k / g.KW) % g.KH, ci = k / (g.KW * g.KH);
                const int64_t ih = oh * g.sh - g.pt + kh * g.dh, iw = ow * g.sw - g.pl + kw * g.dw;
                if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) return 0;
                return x.at(n, grp * g.Cg + ci, ih, iw);
              },
              n0, p0, p1);
      }
    }
  }
}

// A strided matrix, both thread maps: element (o, k) = p[o*so + k*sk].
template <bool kAlongK>
void check_matrix(int64_t O, int64_t K, int64_t so, int64_t sk, int64_t k0, int64_t k1) {
  const std::vector<T> m = iota((O - 1) * so + (K - 1) * sk + 1);
  const std::string name = "matrix " + std::to_string(O) + "x" + std::to_string(K) + " strides " +
                           std::to_string(so) + "," + std::to_string(sk) + (kAlongK ? " along k" : " along o");
  for (int64_t o0 = 0; o0 < O; o0 += kBM)
    check_tile<kAlongK>(
        name, [&](int t) { return MatrixLoader<T, kAlongK>(m.data(), so, sk, o0, O, k0, k1, t, T(0)); },
        [](const auto& l, T(&v)[kLoads]) { l.fetch(v); }, [](auto& l) { l.next(); },
        [&](int64_t o, int64_t k) { return o < O ? m[o * so + k * sk] : T(0); }, o0, k0, k1);
}

// A tensor too large to allocate, mapped without backing (untouched pages read as zero): only
// the elements a test expects to be fetched are written, with their index + 1.
struct SparseBuffer {
  T* data = nullptr;
  size_t bytes;
  explicit SparseBuffer(int64_t count) : bytes(static_cast<size_t>(count) * sizeof(T)) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) fail("mmap of " + std::to_string(bytes) + " bytes without backing failed");
    else data = static_cast<T*>(p);
  }
  ~SparseBuffer() {
    if (data) munmap(data, bytes);
  }
};

// The weight gradient's loaders where one conv-output plane has more than 2^31 positions
// (1 x 1 x 46341 x 46341, 3x3, padding 1): the position inside an image needs 64 bits.
void check_large_weight_gradient() {
  const Geometry g = test_geometry(1, 1, 46341, 46341, 1, 1, 3, 3, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1);
  const int64_t R = g.N * g.OH * g.OW;  // 2,147,488,281
  SparseBuffer dconv(R), x(g.N * g.C * g.H * g.W);
  if (!dconv.data || !x.data) return;
  const int64_t xs[4] = {g.C * g.H * g.W, g.H * g.W, g.W, 1};
  for (int64_t p0 : {int64_t(0), (int64_t(1) << 31) - 40, R - 50}) {
    const int64_t p1 = std::min(R, p0 + 6 * kBK);
    // The elements these tiles hold, written where the definitions put them.
    const auto x_index = [&](int64_t k, int64_t p) -> int64_t {  // -1 in the padding
      const int64_t ow = p % g.OW, oh = p / g.OW, kw = k % g.KW, kh = k / g.KW;
      const int64_t ih = oh - g.pt + kh, iw = ow - g.pl + kw;
      return ih < 0 || ih >= g.H || iw < 0 || iw >= g.W ? -1 : ih * xs[2] + iw;
    };
    for (int64_t p = p0; p < p1; ++p) {
      dconv.data[p] = T(p + 1);
      for (int64_t k = 0; k < g.K; ++k)
        if (x_index(k, p) >= 0) x.data[x_index(k, p)] = T(x_index(k, p) + 1);
    }
    check_tile<true>(
        "large weight-gradient A p0=" + std::to_string(p0),
        [&](int t) { return DconvRowLoader<T>(g, dconv.data, 0, p0, p1, t, T(0)); },
        [&](const auto& l, T(&v)[kLoads]) { l.fetch(g, v); }, [&](auto& l) { l.next(g); },
        [&](int64_t co, int64_t p) { return co == 0 && p < p1 ? T(p + 1) : T(0); }, 0, p0, p1);
    check_tile<true>(
        "large weight-gradient B p0=" + std::to_string(p0),
        [&](int t) { return Im2colRowLoader<T>(g, x.data, xs[0], xs[1], xs[2], xs[3], 0, p0, p1, t, T(0)); },
        [&](const auto& l, T(&v)[kLoads]) { l.fetch(g, v); }, [&](auto& l) { l.next(g); },
        [&](int64_t k, int64_t p) {
          return k < g.K && p < p1 && x_index(k, p) >= 0 ? T(x_index(k, p) + 1) : T(0);
        },
        0, p0, p1);
  }
}

// The stride phases of the channel-run input gradient (run_loaders.h axis_phase), one axis:
// for every stride, dilation, padding, kernel and input size here, the (input, tap) pairs the
// phases enumerate (input r + s*q, tap first + t*tap_step, read output q + out0 - t*out_step)
// must be exactly the pairs whose output (i + p - kk*d) / s divides, each once, at that output
// (strides of 2^40 and 2^63 - 1 too: an output of 1 whose stride no coordinate reaches).
// Returns how many axes it checked.
int check_axis_phases() {
  int axes = 0;
  for (int64_t s : {int64_t(1), int64_t(2), int64_t(3), int64_t(4), int64_t(5), int64_t(1) << 40,
                    std::numeric_limits<int64_t>::max()})
    for (int64_t d = 1; d <= 4; ++d)
      for (int64_t p = 0; p <= 4; ++p)
        for (int64_t kernel = 1; kernel <= 7; ++kernel)
          for (int64_t in : {1, 2, 5, 12, 13}) {
            const std::string at = "axis_phase s=" + std::to_string(s) + " d=" + std::to_string(d) + " p=" +
                                   std::to_string(p) + " kernel=" + std::to_string(kernel) + " in=" +
                                   std::to_string(in);
            std::vector<int> seen(in * kernel, 0);
            int64_t rows = 0;
            for (int64_t r = 0; r < std::min(s, in); ++r) {  // phases r >= in have no inputs
              const AxisPhase ph = axis_phase(r, s, d, p, kernel, in);
              rows += ph.rows;
              for (int64_t q = 0; q < ph.rows; ++q)
                for (int64_t t = 0; t < ph.taps; ++t) {
                  const int64_t i = r + s * q, kk = ph.first + t * ph.tap_step, o = q + ph.out0 - t * ph.out_step;
                  if (i >= in || kk >= kernel || o * s - p + kk * d != i) {
                    fail(at + " r=" + std::to_string(r) + ": input " + std::to_string(i) + " tap " +
                         std::to_string(kk) + " reads output " + std::to_string(o));
                    continue;
                  }
                  ++seen[i * kernel + kk];
                }
            }
            if (rows != in) fail(at + ": the phases' rows sum to " + std::to_string(rows));
            for (int64_t i = 0; i < in; ++i)
              for (int64_t kk = 0; kk < kernel; ++kk) {
                const int want = (i + p - kk * d) % s == 0 ? 1 : 0;
                if (seen[i * kernel + kk] != want)
                  fail(at + ": input " + std::to_string(i) + " tap " + std::to_string(kk) + " enumerated " +
                       std::to_string(seen[i * kernel + kk]) + " times, want " + std::to_string(want));
              }
            ++axes;
          }
  return axes;
}

// Stand-ins of the run engine's element types: only their size matters to the loaders.
struct Bits16 {
  uint16_t v;
};
struct Bits32 {
  float v;
};

// The channel-run input gradient of one geometry, as conv_grads_runs_kernel computes it: the
// blocks input_grad_phase_grid counts (decoded as the kernel does), each tile's runs from
// InputGradRunLoader for all kThreads threads at every step, checked against the operands'
// definitions (A: dconv at the conv position a tap of the phase reads the input from; B: the
// weight at that tap), multiplied in double, and written back through the rows' digits as the
// epilogue steps them (for_owned_rows): every dx element once, equal to a direct convolution's
// input gradient (small integers: exact).
template <typename T>
void check_input_grad_runs(const Geometry& g, std::mt19937& gen, const std::string& at) {
  constexpr int kBKr = kRunBK<T>;
  std::uniform_int_distribution<int> small(-3, 3);
  std::vector<T> dconv(g.N * g.OH * g.OW * g.Cout), wt(g.G * g.Cg * g.KH * g.KW * g.Coutg);  // addresses only
  std::vector<double> dv(dconv.size()), wv(wt.size());  // their values
  for (double& v : dv) v = small(gen);
  for (double& v : wv) v = small(gen);
  std::vector<double> want(g.N * g.H * g.W * g.C, 0.0), got(want.size(), 0.0);
  std::vector<int> written(want.size(), 0);
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t oh = 0; oh < g.OH; ++oh)
      for (int64_t ow = 0; ow < g.OW; ++ow)
        for (int64_t kh = 0; kh < g.KH; ++kh)
          for (int64_t kw = 0; kw < g.KW; ++kw) {
            const int64_t ih = oh * g.sh - g.pt + kh * g.dh, iw = ow * g.sw - g.pl + kw * g.dw;
            if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;
            for (int64_t grp = 0; grp < g.G; ++grp)
              for (int64_t ci = 0; ci < g.Cg; ++ci)
                for (int64_t co = 0; co < g.Coutg; ++co)
                  want[((n * g.H + ih) * g.W + iw) * g.C + grp * g.Cg + ci] +=
                      dv[((n * g.OH + oh) * g.OW + ow) * g.Cout + grp * g.Coutg + co] *
                      wv[(((grp * g.Cg + ci) * g.KH + kh) * g.KW + kw) * g.Coutg + co];
          }
  const PhaseGrid grid = input_grad_phase_grid(g);
  const int64_t col_tiles = (g.Cg + kBN - 1) / kBN;
  const int64_t blocks = grid.row_tiles * col_tiles * g.G * grid.phase_rows * grid.phase_cols;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t z = b / (grid.row_tiles * col_tiles), phase = z / g.G, grp = z % g.G;
    const int64_t rh = phase / grid.phase_cols, rw = phase % grid.phase_cols;
    const AxisPhase ph = axis_phase(rh, g.sh, g.dh, g.pt, g.KH, g.H), pw = axis_phase(rw, g.sw, g.dw, g.pl, g.KW, g.W);
    const int64_t P = g.N * ph.rows * pw.rows, K = ph.taps * pw.taps * g.Coutg;
    const int64_t m0 = b % grid.row_tiles * kBM, n0 = b / grid.row_tiles % col_tiles * kBN;
    if (m0 >= P) continue;
    ++tiles;
    std::vector<InputGradRunLoader<T>> loaders;
    for (int t = 0; t < kThreads; ++t) {
      const int64_t p = m0 + RunMap<T>::o(t), ci = n0 + RunMap<T>::o(t);
      const Digits q = split(p < P ? p : 0, ph.rows, pw.rows);
      loaders.emplace_back(g, ph, pw, p < P ? dconv.data() + q.hi * g.OH * g.OW * g.Cout + grp * g.Coutg : nullptr,
                           ci < g.Cg ? wt.data() + (grp * g.Cg + ci) * g.KH * g.KW * g.Coutg : nullptr, q.mid, q.lo, t);
    }
    std::vector<double> c(kBM * kBN, 0.0);
    for (int64_t step = 0; step * kBKr < K; ++step) {
      std::vector<double> a(kBM * kBKr), bt(kBN * kBKr);
      for (int t = 0; t < kThreads; ++t) {
        InputGradRunLoader<T>& l = loaders[t];
        if (step > 0) l.next(g);
        const int o = RunMap<T>::o(t), kk = RunMap<T>::kk(t);
        const int64_t k = step * kBKr + kk, p = m0 + o, ci = n0 + o;
        const T *want_a = nullptr, *want_b = nullptr;
        if (k < K) {
          const int64_t co = k % g.Coutg, u = k / g.Coutg % pw.taps, tap = k / g.Coutg / pw.taps;
          const int64_t kh = ph.first + tap * ph.tap_step, kw = pw.first + u * pw.tap_step;
          if (p < P) {
            const int64_t n = p / (ph.rows * pw.rows), ih = rh + g.sh * (p / pw.rows % ph.rows),
                          iw = rw + g.sw * (p % pw.rows);
            const int64_t rows = ih + g.pt - kh * g.dh, cols = iw + g.pl - kw * g.dw;
            if (kh >= g.KH || kw >= g.KW || rows % g.sh != 0 || cols % g.sw != 0)
              fail(at + ": k " + std::to_string(k) + " is no tap of the phase");
            const int64_t oh = rows / g.sh, ow = cols / g.sw;
            if (oh >= 0 && oh < g.OH && ow >= 0 && ow < g.OW)
              want_a = dconv.data() + ((n * g.OH + oh) * g.OW + ow) * g.Cout + grp * g.Coutg + co;
          }
          if (ci < g.Cg) want_b = wt.data() + (((grp * g.Cg + ci) * g.KH + kh) * g.KW + kw) * g.Coutg + co;
        }
        const T *src_a = l.src_a(g), *src_b = l.src_b();
        if (src_a != want_a || src_b != want_b) {
          fail(at + ": block " + std::to_string(b) + " thread " + std::to_string(t) + " step " +
               std::to_string(step) + (src_a != want_a ? ": A's run" : ": B's run"));
          continue;
        }
        for (int e = 0; e < kRunLen<T>; ++e) {
          a[o * kBKr + kk + e] = src_a ? dv[src_a - dconv.data() + e] : 0.0;
          bt[o * kBKr + kk + e] = src_b ? wv[src_b - wt.data() + e] : 0.0;
        }
      }
      for (int i = 0; i < kBM; ++i)
        for (int j = 0; j < kBN; ++j)
          for (int k = 0; k < kBKr; ++k) c[i * kBN + j] += a[i * kBKr + k] * bt[j * kBKr + k];
    }
    for (int t = 0; t < kThreads; ++t) {  // the epilogue: thread t's rows t / kBN + 4j, stepped as digits
      const int nn = t % kBN, mm0 = t / kBN;
      if (n0 + nn >= g.Cg) continue;
      Digits q = split(m0 + mm0, ph.rows, pw.rows);
      const Digits step = split(kThreads / kBN, ph.rows, pw.rows);
      for (int j = 0; j < kBM * kBN / kThreads; ++j, add(q, step, static_cast<int>(ph.rows), static_cast<int>(pw.rows))) {
        const int mm = mm0 + j * (kThreads / kBN);
        if (m0 + mm >= P) continue;
        const int64_t i = ((q.hi * g.H + rh + g.sh * q.mid) * g.W + rw + g.sw * q.lo) * g.C + grp * g.Cg + n0 + nn;
        got[i] = c[mm * kBN + nn], ++written[i];
      }
    }
  }
  for (size_t i = 0; i < want.size(); ++i)
    if (written[i] != 1 || got[i] != want[i]) {
      fail(at + ": dx[" + std::to_string(i) + "] written " + std::to_string(written[i]) + " times, " +
           std::to_string(got[i]) + ", want " + std::to_string(want[i]));
      break;
    }
}

// A random conv window for an H x W input (kernel up to 6, dilation 1-3, padding 0-4 on each
// side, drawn in that order), or false where it leaves no conv output.
struct Window {
  int64_t KH, KW, dh, dw, pt, pl, pb, pr;
};

template <typename Pick>
bool draw_window(Pick& pick, int64_t H, int64_t W, Window& w) {
  w.KH = pick(1, 6), w.KW = pick(1, 6), w.dh = pick(1, 3), w.dw = pick(1, 3);
  w.pt = pick(0, 4), w.pl = pick(0, 4), w.pb = pick(0, 4), w.pr = pick(0, 4);
  return H + w.pt + w.pb >= w.dh * (w.KH - 1) + 1 && W + w.pl + w.pr >= w.dw * (w.KW - 1) + 1;
}

// check_input_grad_runs over random geometries (fixed seed): 16-bit and 4-byte runs, strides
// 1-6 (2^40 where the output has one row), dilations 1-3, asymmetric padding, kernels up to 6
// (larger than small images), 1 or 2 groups, several row and channel tiles, phases without
// taps. Returns how many it checked.
int check_input_grad_runs_geometries(int count) {
  std::mt19937 gen(20261129);
  const auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(gen); };
  int done = 0;
  while (done < count) {
    const bool four_bytes = pick(0, 2) == 0;
    const int64_t len = four_bytes ? kRunLen<Bits32> : kRunLen<Bits16>;
    const int64_t N = pick(1, 3), H = pick(1, 14), W = pick(1, 14), G = pick(1, 2);
    const int64_t Cg = len * (pick(0, 3) == 0 ? pick(9, 20) : pick(1, 3));
    const int64_t Coutg = len * (pick(0, 3) == 0 ? pick(5, 10) : pick(1, 3));
    Window w;
    if (!draw_window(pick, H, W, w)) continue;
    Geometry g = test_geometry(N, Cg * G, H, W, Coutg * G, G, w.KH, w.KW, pick(1, 6), pick(1, 6), w.pt, w.pl, w.dh, w.dw,
                               0, 1, 0, 1, w.pb, w.pr);
    if (g.OH == 1 && pick(0, 3) == 0) g.sh = (int64_t(1) << 40) + pick(0, 5);
    if (g.OW == 1 && pick(0, 3) == 0) g.sw = (int64_t(1) << 40) + pick(0, 5);
    const std::string at = "input gradient over runs #" + std::to_string(done) + " (" + std::to_string(N) + "x" +
                           std::to_string(Cg * G) + "x" + std::to_string(H) + "x" + std::to_string(W) + " -> " +
                           std::to_string(Coutg * G) + ", " + std::to_string(w.KH) + "x" + std::to_string(w.KW) +
                           " stride " + std::to_string(g.sh) + "x" + std::to_string(g.sw) + ")";
    if (four_bytes) check_input_grad_runs<Bits32>(g, gen, at);
    else check_input_grad_runs<Bits16>(g, gen, at);
    ++done;
  }
  return done;
}

// The conv forward's B loader over runs (PooledRunLoader), one image: for each thread's first
// k (the loader depends on the thread only through it), every conv position a pool tap can
// name and every k step, the run it names must be the input's run at that k by the definition:
// x + ih*xs2 + iw*xs3 + ci, or null past the reduction or in the padding; with no input (a tap
// in the pool's padding) null throughout.
template <typename T>
void check_pooled_runs(const Geometry& g, const T* x, int64_t xs2, int64_t xs3, const std::string& at) {
  const int64_t steps = (g.K + kRunBK<T> - 1) / kRunBK<T>;
  for (int t = 0; t < RunMap<T>::kRunsPerRow; ++t)
    for (int64_t r = 0; r < g.OH; ++r)
      for (int64_t c = 0; c < g.OW; ++c)
        for (const T* xn : {x, static_cast<const T*>(nullptr)}) {
          PooledRunLoader<T> l(g, xn, xs2, xs3, static_cast<int>(r), static_cast<int>(c), run_digits<T>(g, t));
          for (int64_t step = 0; step < steps; ++step) {
            if (step > 0) l.next(g);
            const int64_t k = step * kRunBK<T> + RunMap<T>::kk(t);
            const T* want = nullptr;
            if (xn && k < g.K) {
              const int64_t ci = k % g.Cg, kw = k / g.Cg % g.KW, kh = k / g.Cg / g.KW;
              const int64_t ih = r * g.sh - g.pt + kh * g.dh, iw = c * g.sw - g.pl + kw * g.dw;
              if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) want = xn + ih * xs2 + iw * xs3 + ci;
            }
            if (l.src(g) != want) {
              fail(at + ": conv position (" + std::to_string(r) + ", " + std::to_string(c) + "), thread " +
                   std::to_string(t) + ", step " + std::to_string(step) + (xn ? "" : ", no input"));
              return;
            }
          }
        }
}

// check_pooled_runs over random geometries (fixed seed): 16-bit and 4-byte runs, kernels up to
// 6 (wider than small images), strides and dilations 1-3, asymmetric padding, channels_last
// strides with gaps; then one whose last element lies 2^31 - 1 from its first (an unbacked
// mapping). Returns how many it checked.
int check_pooled_runs_geometries(int count) {
  std::mt19937 gen(20261130);
  const auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(gen); };
  int done = 0;
  while (done < count) {
    const bool four_bytes = pick(0, 2) == 0;
    const int64_t len = four_bytes ? kRunLen<Bits32> : kRunLen<Bits16>;
    const int64_t H = pick(1, 12), W = pick(1, 12), Cg = len * pick(1, 9), Cout = pick(1, 3);
    Window w;
    if (!draw_window(pick, H, W, w)) continue;
    const Geometry g = test_geometry(1, Cg, H, W, Cout, 1, w.KH, w.KW, pick(1, 3), pick(1, 3), w.pt, w.pl, w.dh, w.dw,
                                     0, 1, 0, 1, w.pb, w.pr);
    const int64_t xs3 = Cg + len * pick(0, 2), xs2 = W * xs3 + pick(0, 5);
    const std::string at = "forward B over runs #" + std::to_string(done) + " (" + std::to_string(Cg) + " x " +
                           std::to_string(H) + " x " + std::to_string(W) + ", " + std::to_string(w.KH) + "x" +
                           std::to_string(w.KW) + ")";
    if (four_bytes) {
      std::vector<Bits32> x(H * xs2);
      check_pooled_runs(g, x.data(), xs2, xs3, at);
    } else {
      std::vector<Bits16> x(H * xs2);
      check_pooled_runs(g, x.data(), xs2, xs3, at);
    }
    ++done;
  }
  // The largest image the loader takes (image_offsets_fit): its last element 2^31 - 1 from its
  // first, (H - 1)*xs2 + (W - 1)*xs3 + Cg - 1 with H = 3, W = 2, Cg = 8.
  const Geometry g = test_geometry(1, 8, 3, 2, 1, 1, 3, 3, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1);
  const int64_t xs2 = ((int64_t(1) << 31) - 1 - 8 - 7) / 2;
  SparseBuffer x((3 * xs2 * sizeof(Bits16) + sizeof(T) - 1) / sizeof(T));
  if (x.data)
    check_pooled_runs(g, reinterpret_cast<const Bits16*>(x.data), xs2, 8, "forward B, offsets up to 2^31 - 1");
  return done + 1;
}

}  // namespace

// FastDivisor's quotient and remainder against the division operators: every divisor up to
// 4096 and 2000 random ones up to 2^62 (powers of two and their neighbours among them), each at
// dividends around multiples of it (q d - 1, q d, q d + 1 for small and large q), 0, small
// values, random ones and the largest, 2^63 - 1. Returns the divisors checked.
int check_fast_divisors() {
  std::mt19937_64 gen(11);
  std::vector<int64_t> divisors;
  for (int64_t d = 1; d <= 4096; ++d) divisors.push_back(d);
  for (int b = 12; b < 63; ++b)
    for (int64_t e : {-1, 0, 1}) divisors.push_back((int64_t(1) << b) + e);
  for (int i = 0; i < 2000; ++i) divisors.push_back(int64_t(gen() >> (2 + gen() % 60)) + 1);
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  for (const int64_t d : divisors) {
    const FastDivisor f(d);
    std::vector<int64_t> ns = {0, 1, 2, d - 1, d, d + 1, kMax, kMax - 1, kMax - d + 1};
    for (int64_t q : {int64_t(2), int64_t(3), int64_t(1000), int64_t(1) << 20, int64_t(1) << 40, kMax / d - 1,
                      kMax / d})
      if (q >= 0 && q <= kMax / d)
        for (int64_t e : {-1, 0, 1})
          if (q * d + e >= 0 && (e <= 0 || q * d <= kMax - e)) ns.push_back(q * d + e);
    for (int i = 0; i < 40; ++i) ns.push_back(int64_t(gen() >> (1 + gen() % 63)));
    for (const int64_t n : ns) {
      if (n < 0) continue;
      int64_t rem = -1;
      const int64_t q = f.divmod(n, rem);
      if (q != n / d || rem != n % d)
        fail("FastDivisor(" + std::to_string(d) + "): " + std::to_string(n) + " -> " + std::to_string(q) + " r " +
             std::to_string(rem) + ", want " + std::to_string(n / d) + " r " + std::to_string(n % d));
    }
  }
  return static_cast<int>(divisors.size());
}

int main() {
  struct Case {
    const char* name;
    int64_t N, C, H, W, Cout, G, KH, KW, stride, pad, dil, pk, ps, pp, pd;
  };
  const Case cases[] = {
      {"tutorial 3->32 3x3 pad 1 pool 2", 2, 3, 8, 8, 32, 1, 3, 3, 1, 1, 1, 2, 2, 0, 1},
      {"32->64 3x3 pad 1 pool 2", 2, 32, 6, 6, 64, 1, 3, 3, 1, 1, 1, 2, 2, 0, 1},
      {"70->80: several row tiles", 1, 70, 5, 5, 80, 1, 3, 3, 1, 1, 1, 2, 2, 0, 1},
      {"5x5 no pad, pool 3 stride 2 pad 1", 2, 6, 12, 11, 16, 1, 5, 5, 1, 0, 1, 3, 2, 1, 1},
      {"stride 2 pad 1, pool dilation 2", 2, 8, 11, 9, 12, 1, 3, 3, 2, 1, 1, 2, 1, 0, 2},
      {"dilation 2, stride 3", 1, 4, 13, 13, 8, 1, 3, 3, 3, 2, 2, 2, 2, 1, 1},
      {"groups 2", 2, 8, 7, 7, 12, 2, 3, 3, 1, 1, 1, 2, 2, 0, 1},
      {"1x1, no pool, tiny images (OH*OW < 16)", 3, 20, 3, 3, 24, 1, 1, 1, 1, 0, 1, 0, 1, 0, 1},
      {"7x1 kernel", 2, 5, 9, 6, 7, 1, 7, 1, 1, 3, 1, 2, 2, 0, 1},
      {"1x1 image", 5, 9, 1, 1, 10, 1, 1, 1, 1, 0, 1, 0, 1, 0, 1},
      {"depthwise 3x3 stride 2", 2, 6, 9, 9, 6, 6, 3, 3, 2, 1, 1, 2, 2, 0, 1},
  };
  int convs = 0;
  for (const Case& c : cases) {
    const Geometry g = test_geometry(c.N, c.C, c.H, c.W, c.Cout, c.G, c.KH, c.KW, c.stride, c.stride, c.pad, c.pad,
                                     c.dil, c.dil, c.pk, c.ps, c.pp, c.pd);
    for (bool channels_last : {false, true}) {
      check_conv(g, channels_last, std::string(c.name) + (channels_last ? " (channels_last)" : ""));
      ++convs;
    }
  }
  for (auto [O, K] : {std::pair<int64_t, int64_t>{1, 1}, {64, 16}, {65, 17}, {130, 40}, {7, 100}}) {
    for (auto [so, sk] : {std::pair<int64_t, int64_t>{K, 1}, {1, O}}) {
      check_matrix<true>(O, K, so, sk, 0, K);
      check_matrix<false>(O, K, so, sk, 0, K);
      if (K > 20) {  // a split of the reduction, as the weight gradients take
        check_matrix<true>(O, K, so, sk, 16, std::min<int64_t>(K, 35));
        check_matrix<false>(O, K, so, sk, 16, std::min<int64_t>(K, 35));
      }
    }
  }
  check_large_weight_gradient();
  const int axes = check_axis_phases();
  const int runs = check_input_grad_runs_geometries(300);
  const int forwards = check_pooled_runs_geometries(300);
  const int divisors = check_fast_divisors();
  std::printf("%d conv geometries, %d tiles checked, %d stride-phase axes, %d input gradients over runs, "
              "%d forward inputs over runs, %d fast divisors, %d failures\n",
              convs, tiles, axes, runs, forwards, divisors, failures);
  return failures ? 1 : 0;
}
