// Fused Linear + bias + activation on the CPU: the "cpp" backend.
//
// Forward: z = x @ w^T + b (one BLAS GEMM over the flattened leading dims: mm, the bias added
// in the pass; addmm without an activation), then one parallel pass computes y = act(z) and
// the state the derivative needs: a bool mask z > 0 (NaN counts as on, as torch's ReLU
// backward) for relu, z itself for gelu / gelu_tanh / silu, nothing for no activation.
// Backward: one parallel pass dz = dy * act'(z) that also sums db = sum over rows of dz, then
// dx = dz @ w, dw = dz^T @ x (BLAS). The activations and their derivatives are computed here,
// not by torch's activation ops (float32's exp and erf by vector_math.h, so that the
// passes vectorise); the formulas are those of fusedops/ops/linear.py.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../linear_checks.h"
#include "cpu_checks.h"
#include "vector_math.h"
#include "vectorize.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

namespace fusedops {
namespace {

// Rows of t as a (rows, last) matrix: the product of its leading sizes (reshape's -1 cannot
// infer it when the last size is 0).
int64_t rows_of(const at::Tensor& t) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) rows *= t.size(d);
  return rows;
}

constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kSqrt2OverPi = 0.79788456080286535588;
constexpr double kGeluTanhC = 0.044715;

// The math functions of the activations: float32 through the branch-free versions of
// vector_math.h, so that the passes' loops vectorise; float64 through the C library.
// gelu_tanh goes through sigmoid(2u) = (1 + tanh(u)) / 2, u = k (z + c z^3), as the Triton
// kernels do: for negative z, 1 + tanh(u) cancels, sigmoid(2u) does not.
FUSEDOPS_ALWAYS_INLINE inline float exp_of(float v) { return vexp(v); }
FUSEDOPS_ALWAYS_INLINE inline float erf_of(float v) { return verf(v); }
FUSEDOPS_ALWAYS_INLINE inline float select_of(bool c, float a, float b) { return vselect(c, a, b); }
inline double exp_of(double v) { return std::exp(v); }
inline double erf_of(double v) { return std::erf(v); }
inline double select_of(bool c, double a, double b) { return c ? a : b; }

// GELU's derivative Phi(z) + z phi(z) = (1 + erf(h)) / 2 + z exp(-h^2) / sqrt(2 pi), h = z / sqrt(2).
// float32 computes exp(-h^2) once, for both terms (verf_given_gauss): with two vexp calls the
// 256 x 1024 gelu backward pass took 555 us on one thread, against 345-365 us with one and
// 385-430 us for torch's gelu_backward. float64 calls the C library's erf and exp.
FUSEDOPS_ALWAYS_INLINE inline float gelu_grad_of(float z) {
  const float h = z * float(kInvSqrt2);
  const float g = vexp(-h * h);
  return 0.5f * (1.0f + verf_given_gauss(h, g)) + z * g * float(kInvSqrt2Pi);
}
inline double gelu_grad_of(double z) {
  return 0.5 * (1.0 + std::erf(z * kInvSqrt2)) + z * std::exp(-0.5 * z * z) * kInvSqrt2Pi;
}

// s = sigmoid(2u) for gelu_tanh's u = k (z + c z^3), and 1 - s: as e s with e = exp(-2u) where
// s >= 1/2 (1 - s would cancel: 4x torch's float32 error in the derivative at z in [1, 5)),
// as 1 - s below (e s would be inf * 0 where e overflows).
template <typename T>
struct Sigmoid2u {
  T s, one_minus_s;
};
template <typename T>
FUSEDOPS_ALWAYS_INLINE inline Sigmoid2u<T> sigmoid_2u(T z) {
  const T e = exp_of(T(-2 * kSqrt2OverPi) * (z + T(kGeluTanhC) * z * z * z));
  const T s = T(1) / (T(1) + e);
  return {s, select_of(e <= T(1), e * s, T(1) - s)};
}

// gelu, gelu_tanh and silu, and their derivatives (relu is a mask in both passes).
template <Act A, typename T>
FUSEDOPS_ALWAYS_INLINE inline T activate(T z) {
  if constexpr (A == Act::Gelu) {
    return T(0.5) * z * (T(1) + erf_of(z * T(kInvSqrt2)));
  } else if constexpr (A == Act::GeluTanh) {
    return z * sigmoid_2u(z).s;
  } else {
    return z / (T(1) + exp_of(-z));
  }
}

template <Act A, typename T>
FUSEDOPS_ALWAYS_INLINE inline T activation_grad(T z) {
  if constexpr (A == Act::Gelu) {
    return gelu_grad_of(z);
  } else if constexpr (A == Act::GeluTanh) {
    // 0.5 (1 + t) + 0.5 z (1 - t^2) u' with (1 + t) / 2 = s and 1 - t^2 = 4 s (1 - s)
    const Sigmoid2u<T> g = sigmoid_2u(z);
    return g.s + T(2) * z * g.s * g.one_minus_s * T(kSqrt2OverPi) * (T(1) + T(3 * kGeluTanhC) * z * z);
  } else {
    const T s = T(1) / (T(1) + exp_of(-z));
    return s * (T(1) + z * (T(1) - s));
  }
}

// The forward pass of a smooth activation over one run of a row: z[t] += b[t] (b may be null;
// the saved pre-activation includes the bias), then y[t] = act(z[t]). Adding the bias in a loop
// of its own, over a run that then stays in cache, measured faster than in the activation's
// loop.
template <Act A, typename T>
FUSEDOPS_ALWAYS_INLINE inline void smooth_forward_run(T* z, const T* b, T* y, int64_t len) {
  if (b) {
    for (int64_t t = 0; t < len; ++t) z[t] += b[t];
  }
  for (int64_t t = 0; t < len; ++t) y[t] = activate<A>(z[t]);
}

// The backward pass of a smooth activation over one row of a tile: d[t] = g[t * gs] * act'(z[t]).
template <Act A, typename T>
FUSEDOPS_ALWAYS_INLINE inline void smooth_grad_run(const T* g, int64_t gs, const T* z, T* d, int64_t w) {
  if (gs == 1) {
    for (int64_t t = 0; t < w; ++t) d[t] = g[t] * activation_grad<A>(z[t]);
  } else {
    for (int64_t t = 0; t < w; ++t) d[t] = g[t * gs] * activation_grad<A>(z[t]);
  }
}

// float32: vectorised clones (FUSEDOPS_VECTORIZE): with the C library's erf the gelu layers ran
// at 0.64x-0.80x eager's speed (benchmarks/NOTES.md).
template <Act A>
FUSEDOPS_VECTORIZE void smooth_forward_row_f32(float* z, const float* b, float* y, int64_t len) {
  smooth_forward_run<A>(z, b, y, len);
}
template <Act A>
FUSEDOPS_VECTORIZE void smooth_grad_row_f32(const float* g, int64_t gs, const float* z, float* d, int64_t w) {
  smooth_grad_run<A>(g, gs, z, d, w);
}

// float64 stays on the baseline ISA: its loops call the C library (scalar either way), and the
// clones would contract its arithmetic into FMAs, changing float64 results in the last bits
// from one CPU to another.
template <Act A, typename T>
void smooth_forward_row(T* z, const T* b, T* y, int64_t len) {
  if constexpr (std::is_same_v<T, float>) {
    smooth_forward_row_f32<A>(z, b, y, len);
  } else {
    smooth_forward_run<A>(z, b, y, len);
  }
}
template <Act A, typename T>
void smooth_grad_row(const T* g, int64_t gs, const T* z, T* d, int64_t w) {
  if constexpr (std::is_same_v<T, float>) {
    smooth_grad_row_f32<A>(g, gs, z, d, w);
  } else {
    smooth_grad_run<A>(g, gs, z, d, w);
  }
}

// Calls f(std::integral_constant<Act, A>()) for act = A, one of gelu, gelu_tanh and silu, so
// that each pass's loop is compiled for one activation: with the activation read inside the
// loop, silu's forward pass took about 30% longer.
template <typename F>
void with_smooth_activation(Act act, const F& f) {
  switch (act) {
    case Act::Gelu: f(std::integral_constant<Act, Act::Gelu>()); break;
    case Act::GeluTanh: f(std::integral_constant<Act, Act::GeluTanh>()); break;
    default: f(std::integral_constant<Act, Act::Silu>()); break;
  }
}

// Calls f(i, j, len) for each run of consecutive elements of [begin, end) of a row-major
// (rows, n) matrix that lie in one row: element i is column j, and the run has len elements.
template <typename F>
void for_each_row_run(int64_t begin, int64_t end, int64_t n, const F& f) {
  int64_t j = begin % n;
  for (int64_t i = begin; i < end;) {
    const int64_t len = std::min(end - i, n - j);
    f(i, j, len);
    i += len;
    j = 0;
  }
}

// The backward pass's tiles: column blocks of at most kTileCols columns, and row chunks whose
// number depends on the shape alone, so each column's bias gradient is summed in the same
// order whatever the thread count. Past two grains a pass has tiles of about kTileElems
// elements, several per thread, so that tasks of whole tiles come out near equal.
constexpr int64_t kTileCols = 256;
// Elements a pass task takes at least. relu and no activation: torch's own grain for
// elementwise ops (at::internal::GRAIN_SIZE); with 16384, a 64 x 512 relu gradient ran as
// two tasks, and on 2 threads took longer than one thread's 7 us pass (the second thread's
// wake-up). gelu, gelu_tanh and silu cost more per element (vectorised exp and erf: about
// 3.5 ns an element on one thread for gelu's derivative pass, 3 times relu's), so their
// passes split at 16384 elements: tasks of ~50 us, well above a thread's wake-up.
constexpr int64_t kPassGrain = 32768;
constexpr int64_t kSmoothPassGrain = 16384;
inline int64_t pass_grain(Act act) { return act == Act::Relu || act == Act::None ? kPassGrain : kSmoothPassGrain; }
constexpr int64_t kTileElems = 4096;
constexpr int64_t kMaxTiles = 256;

// Running sums of a tile's columns, one row at a time. float32 adds in double: a float sum
// in row order has an error growing with the rows (about rows * 6e-8 relative to the sum of
// magnitudes), a double one stays far below float32's rounding for any realistic batch.
// float64 adds with Kahan's compensation, whose error bound does not depend on the rows.
template <typename T>
struct ColumnSums;

// s[t] += d[t] in double, for t < w: a row of ColumnSums<float> (vectorised: its own clones).
template <typename D>
FUSEDOPS_VECTORIZE void add_in_double(double* s, const D* d, int64_t w) {
  for (int64_t t = 0; t < w; ++t) s[t] += static_cast<double>(d[t]);
}

// s[t] += d[t] with Kahan's compensation c[t], for t < w: a row of ColumnSums<double>. Each
// column's steps stay in order (no reassociation: the build has no -ffast-math), so widening
// the loop over the columns leaves every sum as it is.
FUSEDOPS_VECTORIZE inline void add_compensated(double* s, double* c, const double* d, int64_t w) {
  for (int64_t t = 0; t < w; ++t) {
    const double y = d[t] - c[t];
    const double u = s[t] + y;
    c[t] = (u - s[t]) - y;
    s[t] = u;
  }
}

template <>
struct ColumnSums<float> {
  double s[kTileCols];
  void clear(int64_t w) { std::fill_n(s, w, 0.0); }
  template <typename D>
  void add(const D* d, int64_t w) {
    add_in_double(s, d, w);
  }
  double value(int64_t t) const { return s[t]; }
};

template <>
struct ColumnSums<double> {
  double s[kTileCols], c[kTileCols];
  void clear(int64_t w) {
    std::fill_n(s, w, 0.0);
    std::fill_n(c, w, 0.0);
  }
  void add(const double* d, int64_t w) { add_compensated(s, c, d, w); }
  double value(int64_t t) const { return s[t] - c[t]; }
};

// d[t] = g[t * gs] where the relu mask m[t] is on, else 0, for t < w (one row of a tile), as
// bit operations: g's bits AND a mask of all ones or zeros made from m's byte (nonzero: on),
// so a NaN or infinite gradient under an off mask gives 0, as torch's threshold_backward
// does. The auto-vectoriser widens this loop to the CPU's vectors (FUSEDOPS_VECTORIZE); the
// select `m[t] ? g[t] : T(0)` compiled to a branch and two stores, which random masks
// mispredict half the time (64 x 512 float, 1 thread: about 90 us, against 11 for torch's op).
template <typename T>
FUSEDOPS_VECTORIZE void relu_grad_row(const T* g, int64_t gs, const bool* m, T* d, int64_t w) {
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  static_assert(sizeof(U) == sizeof(T) && sizeof(bool) == 1, "a float type of 4 or 8 bytes, one-byte bools");
  const auto* mb = reinterpret_cast<const uint8_t*>(m);
  const auto select = [](T v, uint8_t on) FUSEDOPS_ALWAYS_INLINE {
    U bits;
    __builtin_memcpy(&bits, &v, sizeof(T));
    bits &= U(0) - U(on != 0);  // any nonzero byte counts as on
    __builtin_memcpy(&v, &bits, sizeof(T));
    return v;
  };
  if (gs == 1) {
    for (int64_t t = 0; t < w; ++t) d[t] = select(g[t], mb[t]);
  } else {
    for (int64_t t = 0; t < w; ++t) d[t] = select(g[t * gs], mb[t]);
  }
}

void check_inputs(const at::Tensor& input, const at::Tensor& weight) {
  TORCH_CHECK_TYPE(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble ||
                  input.scalar_type() == at::kBFloat16,
              "the cpp backend supports float32, float64 and bfloat16 input, got ", input.scalar_type());
  TORCH_CHECK(input.device().is_cpu() && weight.device().is_cpu(), "input and weight must be CPU tensors");
  TORCH_CHECK_TYPE(weight.scalar_type() == input.scalar_type(), "weight has dtype ", weight.scalar_type(),
              " but input has dtype ", input.scalar_type());
  check_linear_shapes(input, weight);
}

std::tuple<at::Tensor, at::Tensor> linear_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                                                      const std::optional<at::Tensor>& bias,
                                                      c10::string_view activation) {
  FUSEDOPS_NO_AUTOCAST;
  check_inputs(input, weight);
  const Act act = parse_activation(activation);
  if (input.scalar_type() == at::kBFloat16) {  // float32 kernels on float32 copies, rounded back
    if (bias.has_value() && bias->defined())
      TORCH_CHECK_TYPE(bias->scalar_type() == input.scalar_type(), "bias has dtype ", bias->scalar_type(),
                  " but input has dtype ", input.scalar_type());
    auto [y, saved] = linear_forward_cpu(
        input.to(at::kFloat), weight.to(at::kFloat),
        bias.has_value() && bias->defined() ? std::optional(bias->to(at::kFloat)) : bias, activation);
    return {y.to(at::kBFloat16), saved.scalar_type() == at::kBool ? saved : saved.to(at::kBFloat16)};
  }
  const int64_t n = weight.size(0);
  // (2-D tensors as they are: a reshape is a dispatcher call, ~1 us a call on small layers)
  const at::Tensor x = input.dim() == 2 ? input : input.reshape({rows_of(input), weight.size(1)});
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == n, "bias must have shape (", n, ",), got ", bias->sizes());
    TORCH_CHECK_TYPE(bias->scalar_type() == input.scalar_type(), "bias has dtype ", bias->scalar_type(),
                " but input has dtype ", input.scalar_type());
    b = bias->contiguous();
  }
  const bool flat = input.dim() == 2;
  const auto shape = linear_output_shape(input, n);
  // With an activation the bias is added in the activation's pass, over a GEMM with beta 0:
  // addmm copies the expanded bias into the output (an op of its own) and runs the GEMM with
  // beta 1, which measured slower than mm and the add in the pass at every size tried (relu,
  // paired against nn.Linear + nn.ReLU, 1 and 2 threads: 64 x 784 -> 512 +1-5%, 64 x 32 -> 512
  // +17-20%, 2048 x 1024 -> 1024 +2-3%; benchmarks/NOTES.md). Without an activation there is no
  // pass, and addmm's copy costs less than one of our own.
  const bool bias_in_pass = act != Act::None && b.defined();
  at::Tensor z = b.defined() && !bias_in_pass ? at::addmm(b, x, weight.t()) : at::mm(x, weight.t());
  if (act == Act::None) return {flat ? z : z.view(shape), at::empty({0}, input.options())};
  if (!bias_in_pass) b = at::Tensor();  // added by addmm
  // relu saves only its mask, so the activation overwrites z; the others keep z + b as their state.
  at::Tensor y = act == Act::Relu ? z : at::empty_like(z);
  at::Tensor saved = act == Act::Relu ? at::empty(z.sizes(), input.options().dtype(at::kBool)) : z;
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "linear_forward_cpu", [&] {
    scalar_t* zp = z.mutable_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    bool* mp = act == Act::Relu ? saved.mutable_data_ptr<bool>() : nullptr;
    at::parallel_for(0, z.numel(), pass_grain(act), [&](int64_t begin, int64_t end) {
      for_each_row_run(begin, end, n, [&](int64_t i, int64_t j, int64_t len) {
        scalar_t* zr = zp + i;
        if (mp) {  // relu, in place (y is z), as branch-free selects the compiler vectorises
          bool* mr = mp + i;
          if (bp) {
            const scalar_t* br = bp + j;
            for (int64_t t = 0; t < len; ++t) {
              const scalar_t v = zr[t] + br[t];
              const bool on = !(v <= scalar_t(0));  // NaN counts as on
              mr[t] = on;
              zr[t] = on ? v : scalar_t(0);
            }
          } else {
            for (int64_t t = 0; t < len; ++t) {
              const scalar_t v = zr[t];
              const bool on = !(v <= scalar_t(0));
              mr[t] = on;
              zr[t] = on ? v : scalar_t(0);
            }
          }
        } else {
          with_smooth_activation(act, [&](auto a) {
            smooth_forward_row<decltype(a)::value>(zr, bp ? bp + j : nullptr, yp + i, len);
          });
        }
      });
    });
  });
  if (flat) return {y, saved};
  return {y.view(shape), saved.view(shape)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_backward_cpu(const at::Tensor& grad_output,
                                                                   const at::Tensor& input, const at::Tensor& weight,
                                                                   const at::Tensor& saved, c10::string_view activation,
                                                                   std::array<bool, 3> output_mask) {
  FUSEDOPS_NO_AUTOCAST;
  check_inputs(input, weight);
  const Act act = parse_activation(activation);
  check_linear_backward_args(grad_output, input, weight, saved, act, activation);
  if (input.scalar_type() == at::kBFloat16) {  // float32 kernels on float32 copies, rounded back
    auto grads = linear_backward_cpu(grad_output.to(at::kFloat), input.to(at::kFloat), weight.to(at::kFloat),
                                     saved.scalar_type() == at::kBFloat16 ? saved.to(at::kFloat) : saved, activation,
                                     output_mask);
    return {std::get<0>(grads).to(at::kBFloat16), std::get<1>(grads).to(at::kBFloat16),
            std::get<2>(grads).to(at::kBFloat16)};
  }
  const int64_t n = weight.size(0), k = weight.size(1);
  at::Tensor dz = grad_output.dim() == 2 ? grad_output : grad_output.reshape({rows_of(grad_output), n});
  at::Tensor gb;
  if (act != Act::None) {
    // dy is read through its strides: the gradient of a sum arrives expanded (all strides 0),
    // and a contiguous copy of it cost more than this pass on small layers.
    const at::Tensor g = dz;
    const at::Tensor s = (saved.dim() == 2 ? saved : saved.reshape({g.size(0), n})).contiguous();
    const int64_t rows = g.size(0);
    dz = at::empty({rows, n}, g.options());
    const int64_t gs0 = g.stride(0), gs1 = g.stride(1);
    // The bias gradient is summed in this pass, so it costs no reduction op (whose set-up
    // alone cost more than small layers' pass) and no second read of dz. Tiles: column blocks
    // times row chunks, both counts from the shape alone. A tile sums its rows of each of its
    // columns (ColumnSums), and the row chunks' sums are added in chunk order after the pass.
    const bool sum_db = output_mask[2];
    const int64_t col_blocks = (n + kTileCols - 1) / kTileCols;
    const int64_t width = col_blocks > 0 ? (n + col_blocks - 1) / col_blocks : 0;
    const int64_t elems = rows * n, grain = pass_grain(act);
    const int64_t tiles_wanted =
        std::clamp<int64_t>(elems / (elems > 2 * grain ? kTileElems : grain), 1, kMaxTiles);
    const int64_t blocks = std::max<int64_t>(col_blocks, 1);
    const int64_t chunks_wanted =
        std::clamp<int64_t>((tiles_wanted + blocks - 1) / blocks, 1, std::max<int64_t>(rows, 1));
    const int64_t chunk_rows = (rows + chunks_wanted - 1) / chunks_wanted;
    const int64_t row_chunks = chunk_rows > 0 ? (rows + chunk_rows - 1) / chunk_rows : 0;
    const int64_t tiles = row_chunks * col_blocks;
    const int64_t tile_elems = std::max<int64_t>(chunk_rows * width, 1);
    const int64_t tile_grain = (grain + tile_elems - 1) / tile_elems;
    if (sum_db) gb = rows == 0 ? at::zeros({n}, g.options()) : at::empty({n}, g.options());
    std::vector<double> chunk_sums(sum_db && row_chunks > 1 ? row_chunks * n : 0);
    AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "linear_backward_cpu", [&] {
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      scalar_t* dp = dz.mutable_data_ptr<scalar_t>();
      scalar_t* bp = sum_db ? gb.mutable_data_ptr<scalar_t>() : nullptr;
      const bool* mp = act == Act::Relu ? s.const_data_ptr<bool>() : nullptr;
      const scalar_t* zp = act == Act::Relu ? nullptr : s.const_data_ptr<scalar_t>();
      // A compensated sum turns an infinite one into NaN; a column whose sum is not finite
      // is summed again plainly in row order, which gives what a plain sum gives.
      const auto finish = [&](double v, int64_t j) {
        if (std::is_same_v<scalar_t, double> && !std::isfinite(v)) {
          v = 0;
          for (int64_t r = 0; r < rows; ++r) v += dp[r * n + j];
        }
        return static_cast<scalar_t>(v);
      };
      at::parallel_for(0, tiles, tile_grain, [&](int64_t begin, int64_t end) {
        ColumnSums<scalar_t> sums;
        for (int64_t tile = begin; tile < end; ++tile) {
          const int64_t c = tile / col_blocks, j0 = tile % col_blocks * width;
          const int64_t r1 = std::min(rows, (c + 1) * chunk_rows), w = std::min(n - j0, width);
          if (bp) sums.clear(w);
          for (int64_t r = c * chunk_rows; r < r1; ++r) {
            const scalar_t* gr = gp + r * gs0 + j0 * gs1;
            scalar_t* dr = dp + r * n + j0;
            if (mp) {
              relu_grad_row(gr, gs1, mp + r * n + j0, dr, w);
            } else {
              const scalar_t* zr = zp + r * n + j0;
              with_smooth_activation(act, [&](auto a) { smooth_grad_row<decltype(a)::value>(gr, gs1, zr, dr, w); });
            }
            if (bp) sums.add(dr, w);
          }
          if (!bp) continue;
          if (row_chunks == 1) {
            for (int64_t t = 0; t < w; ++t) bp[j0 + t] = finish(sums.value(t), j0 + t);
          } else {
            for (int64_t t = 0; t < w; ++t) chunk_sums[c * n + j0 + t] = sums.value(t);
          }
        }
      });
      if (bp && row_chunks > 1) {
        ColumnSums<scalar_t> sums;
        for (int64_t j0 = 0; j0 < n; j0 += kTileCols) {
          const int64_t w = std::min(n - j0, kTileCols);
          sums.clear(w);
          for (int64_t c = 0; c < row_chunks; ++c) sums.add(chunk_sums.data() + c * n + j0, w);
          for (int64_t t = 0; t < w; ++t) bp[j0 + t] = finish(sums.value(t), j0 + t);
        }
      }
    });
  }
  const auto empty = [&] { return at::empty({0}, input.options()); };
  at::Tensor gi = output_mask[0] ? (input.dim() == 2 ? at::mm(dz, weight) : at::mm(dz, weight).view(input.sizes()))
                                  : empty();
  at::Tensor gw =
      output_mask[1] ? at::mm(dz.t(), input.dim() == 2 ? input : input.reshape({rows_of(input), k})) : empty();
  if (!gb.defined()) gb = output_mask[2] ? dz.sum(0) : empty();
  return {gi, gw, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(fusedops, CPU, m) {
  m.impl("native_linear_forward", &linear_forward_cpu);
  m.impl("native_linear_backward", &linear_backward_cpu);
}

}  // namespace fusedops
