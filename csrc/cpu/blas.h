// Direct calls to the BLAS that libtorch_cpu links (MKL or OpenBLAS): for the kernels' GEMMs on
// small tiles, where wrapping the buffers as tensors and dispatching at::mm costs about as
// much as the arithmetic.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <limits>

// The Fortran BLAS that libtorch_cpu exports (and calls itself, at::native::cpublas::gemm,
// which it does not export): column-major, 32-bit sizes as torch declares them.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
}

namespace fusedops {
namespace blas {

// Column-major C (m x n) = alpha op(A) op(B) + beta C, op = 'N' or 'T'.
inline void gemm(char ta, char tb, int m, int n, int k, float alpha, const float* a, int lda, const float* b,
                 int ldb, float beta, float* c, int ldc) {
  sgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}
inline void gemm(char ta, char tb, int m, int n, int k, double alpha, const double* a, int lda, const double* b,
                 int ldb, double beta, double* c, int ldc) {
  dgemm_(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc);
}

// Row-major C (m x n) = op(A) (m x k) @ op(B) (k x n) [+ C when accumulate]: A stored m x k
// (k x m with trans_a), B stored k x n (n x k with trans_b), leading dimensions lda, ldb, ldc.
// BLAS is column-major, so this computes C^T = op(B)^T op(A)^T. Inside at::parallel_for the
// BLAS runs single-threaded (torch's BLAS does not nest threads in a parallel region).
template <typename T>
void gemm_row_major(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b,
                    int64_t ldb, bool accumulate, T* c, int64_t ldc) {
  constexpr int64_t most = std::numeric_limits<int>::max();
  TORCH_CHECK(std::max({m, n, k, lda, ldb, ldc}) <= most, "GEMM sizes over 2^31 - 1 (", m, ", ", n, ", ", k, ")");
  gemm(trans_b ? 'T' : 'N', trans_a ? 'T' : 'N', static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), T(1),
       b, static_cast<int>(ldb), a, static_cast<int>(lda), accumulate ? T(1) : T(0), c, static_cast<int>(ldc));
}

}  // namespace blas
}  // namespace fusedops
