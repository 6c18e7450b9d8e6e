// Row kernels of the cpp conv block without a pool (the block is conv + bias + ReLU): the
// forward's output row with its offsets (bias_relu_row), and the backward's conv-output
// gradient row (relu_grad_row). Offsets are 0 where the ReLU passes (a positive or NaN value)
// and -1 (RELU_OFF) where it is off.
//
// Written on the 32-byte vectors of pool_rows.h. The scalar loops they replace wrote the
// output and the offsets through a runtime stride, and the gradient one element at a time into
// a channels-innermost tile; neither vectorised (on a 32->64 no-pool layer they were 19% of a
// training step).

#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "pool_rows.h"
#include "vectorize.h"

namespace fusedops {
namespace relu_rows {

// y[q * ys] = relu(t[q] + bias) (NaN kept), o[q * ys] = 0 where that value is positive or NaN
// and -1 where it is not, for q in [0, n).
template <typename T, typename OffT>
FUSEDOPS_VECTORIZE void bias_relu_row(const T* __restrict t, int64_t n, T bias, T* __restrict y,
                                      OffT* __restrict o, int64_t ys) {
  using V = typename pool_rows::RowVec<T>::type;
  using I = decltype(V{} > V{});  // lane-wise compare results: 0 or -1
  constexpr int64_t L = sizeof(V) / sizeof(T);
  int64_t q = 0;
  if (ys == 1) {
    const V zero = {};
    for (; q + L <= n; q += L) {
      V v;
      std::memcpy(&v, t + q, sizeof(V));
      v += bias;
      const I on = (v > T(0)) | (v != v);
      const V out = on ? v : zero;
      std::memcpy(y + q, &out, sizeof(V));
      if constexpr (std::is_same_v<OffT, int8_t>) {
        const typename pool_rows::RowVec<T>::bytes kb = pool_rows::RowVec<T>::low_bytes(~on);  // on: 0, off: -1
        std::memcpy(o + q, &kb, sizeof(kb));
      } else {
        for (int64_t i = 0; i < L; ++i) o[q + i] = static_cast<OffT>(~on[i]);
      }
    }
  }
  for (; q < n; ++q) {
    const T v = t[q] + bias;
    const bool on = (v > T(0)) | is_nan(v);
    y[q * ys] = on ? v : T(0);
    o[q * ys] = static_cast<OffT>(on ? 0 : -1);
  }
}

// d[q] = g[q * gstride] where off[q * ostride] >= 0 (the ReLU passed), else 0 (a NaN or Inf
// gradient too, as torch's ReLU backward zeroes it), for q in [0, n); d is contiguous. Rows of
// unit or zero gradient stride and unit offset stride load whole vectors; others gather. Adds the
// gradients that passed into bsum (lane-wise partial sums, then the lanes in order) and returns
// whether any did.
template <typename T, typename OffT>
FUSEDOPS_VECTORIZE bool relu_grad_row(const T* __restrict g, int64_t gstride, const OffT* __restrict off,
                                      int64_t ostride, int64_t n, T* __restrict d, T& bsum) {
  using V = typename pool_rows::RowVec<T>::type;
  using I = decltype(V{} > V{});
  constexpr int64_t L = sizeof(V) / sizeof(T);
  V passed = {};
  I on_any = {};
  // Elements [q, q + count), count <= L, into e.
  const auto step = [&](int64_t q, int64_t count, T* e) {
    V gv;
    I k;
    if (count == L && ostride == 1 && (gstride == 1 || gstride == 0)) {
      if (gstride == 1)
        std::memcpy(&gv, g + q, sizeof(V));
      else  // a gradient expanded along the row (a sum's backward): one value
        gv = V{} + g[0];
      typedef OffT lanes_of_off __attribute__((vector_size(L * sizeof(OffT))));
      lanes_of_off ko;
      std::memcpy(&ko, off + q, sizeof(ko));
      k = __builtin_convertvector(ko, I);
    } else {
      for (int64_t i = 0; i < L; ++i) {
        gv[i] = i < count ? g[(q + i) * gstride] : T(0);
        k[i] = i < count ? off[(q + i) * ostride] : -1;
      }
    }
    const V zero = {};
    const I on = k >= 0;
    const V s = on ? gv : zero;
    passed += s;
    on_any |= on;
    std::memcpy(e, &s, sizeof(V));
  };
  int64_t q = 0;
  for (; q + L <= n; q += L) step(q, L, d + q);
  if (q < n) {
    T e[L];
    step(q, n - q, e);
    pool_rows::copy_short<T, L>(d + q, e, n - q);
  }
  return pool_rows::finish_passed(passed, on_any, bsum);
}

}  // namespace relu_rows
}  // namespace fusedops
