// Host stand-in for the wmma API the fusedops kernels use (16x16x16 fragments of 16-bit
// types, 16x16x8 of TF32; row_major operands and col_major matrix_b): every thread of a warp
// holds the whole fragment, as float (16-bit inputs converted when loaded: exact); lane 0 of
// the warp stores it. Loads and stores check
// CUDA's rules (32-byte aligned pointers, leading dimensions of whole 16-byte rows) and abort
// when one is broken.

#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "cuda_runtime.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major };
namespace precision {
struct tf32 {};
}  // namespace precision

template <typename Use, int M, int N, int K>
struct FragmentShape {  // the accumulator's: M x N
  static constexpr int rows = M, cols = N;
};
template <int M, int N, int K>
struct FragmentShape<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct FragmentShape<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = FragmentShape<Use, M, N, K>::rows, cols = FragmentShape<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols;
  float x[rows * cols];
};

inline float to_float(float v) { return v; }
inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// float -> TF32 (cvt.rna.tf32.f32): 10 mantissa bits, round to nearest, ties away from zero.
inline float __float_to_tf32(float f) {
  if (!std::isfinite(f)) return f;
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u = (u + 0x1000u) & ~0x1FFFu;
  std::memcpy(&f, &u, 4);
  return f;
}

inline void check_alignment(const void* p, unsigned ldm, unsigned element_bytes, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0 || (ldm * element_bytes) % 16 != 0) {
    std::fprintf(stderr, "wmma rule broken in %s: pointer %% 32 = %u, ldm = %u\n", what,
                 unsigned(reinterpret_cast<uintptr_t>(p) % 32), ldm);
    std::abort();
  }
}

template <typename Use, int M, int N, int K, typename T, typename Layout, typename P>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const P* p, unsigned ldm) {
  check_alignment(p, ldm, sizeof(P), "load_matrix_sync");
  using F = fragment<Use, M, N, K, T, Layout>;
  constexpr bool col = std::is_same_v<Layout, col_major>;  // element (r, c) at p[c * ldm + r]
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) f.x[r * F::cols + c] = to_float(col ? p[c * ldm + r] : p[r * ldm + c]);
}

template <int K>
void fill_fragment(fragment<accumulator, 16, 16, K, float>& f, float v) {
  for (float& e : f.x) e = v;
}

template <int K, typename T, typename LA, typename LB>
void mma_sync(fragment<accumulator, 16, 16, K, float>& d, const fragment<matrix_a, 16, 16, K, T, LA>& a,
              const fragment<matrix_b, 16, 16, K, T, LB>& b, const fragment<accumulator, 16, 16, K, float>& c) {
  float out[256];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float s = c.x[i * 16 + j];
      for (int k = 0; k < K; ++k) s += a.x[i * K + k] * b.x[k * 16 + j];
      out[i * 16 + j] = s;
    }
  for (int e = 0; e < 256; ++e) d.x[e] = out[e];
}

template <int K>
void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, K, float>& f, unsigned ldm, layout_t) {
  check_alignment(p, ldm, sizeof(float), "store_matrix_sync");
  if (threadIdx.x % 32 != 0) return;
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) p[r * ldm + c] = f.x[r * 16 + c];
}

}  // namespace wmma
}  // namespace nvcuda
