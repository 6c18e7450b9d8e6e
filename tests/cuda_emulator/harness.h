// Shared helpers of the emulated-kernel tests: element conversions, random tensors, failure
// reporting, and a launch that runs the kernel in both thread orders and compares the results.
// Included after the generated kernels (it uses their element types).

#pragma once

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <tuple>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "emulator.h"

namespace harness {

inline int failures = 0;

inline void fail(const std::string& what) {
  if (failures++ < 40) std::printf("FAIL %s\n", what.c_str());
}

template <typename T>
double to_double(T v) {
  if constexpr (std::is_same_v<T, __half>) return __half2float(v);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(v);
  else if constexpr (std::is_same_v<T, fusedops::cuda::Tf32>) return v.v;
  else return double(v);
}

template <typename T>
T from_double(double v) {
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(float(v));
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(float(v));
  else if constexpr (std::is_same_v<T, fusedops::cuda::Tf32>) return fusedops::cuda::Tf32{float(v)};
  else return T(v);
}

template <typename T>
const char* name_of() {
  return std::is_same_v<T, float> ? "float32" : std::is_same_v<T, double> ? "float64"
       : std::is_same_v<T, __half> ? "float16" : std::is_same_v<T, fusedops::cuda::Tf32> ? "tf32" : "bfloat16";
}

template <typename T>
std::vector<T> random_tensor(size_t count, std::mt19937& gen) {
  std::uniform_real_distribution<double> u(-1, 1);
  std::vector<T> v(count);
  for (T& e : v) e = from_double<T>(u(gen));
  return v;
}

// |got - want| within a few roundings of T of the sum's scale (the sum of the magnitudes of
// its terms) and of the result: far below what a wrong element would change.
template <typename T>
bool close(double got, double want, double scale) {
  const double eps = std::is_same_v<T, double> ? 1e-15 : std::is_same_v<T, float> ? 1e-6
                   : std::is_same_v<T, __half> || std::is_same_v<T, fusedops::cuda::Tf32> ? 1e-3 : 8e-3;
  return std::fabs(got - want) <= 4 * eps * (scale + std::fabs(want)) + 1e-30;
}

// Runs kernel() over grid twice, threads in increasing and in decreasing order between
// barriers, each time on fresh copies of `outputs` (restored from their state before the
// first run); the two results must agree byte for byte. The reversed run lands cp.async copies
// when issued, the other when waited for (cuda_pipeline.h), so each also checks one side of
// the copies' timing.
template <typename... Vecs>
void launch_both_orders(const std::string& what, dim3 grid, const std::function<void()>& kernel, Vecs&... outputs) {
  const auto before = std::make_tuple(outputs...);
  emu::eager_async_copies = true;
  emu::launch(grid, 256, kernel, true);
  const auto reversed = std::make_tuple(outputs...);
  std::tie(outputs...) = before;
  emu::eager_async_copies = false;
  emu::launch(grid, 256, kernel, false);
  const auto forward = std::make_tuple(outputs...);
  bool same = true;
  std::apply([&](const auto&... r) {
    std::apply([&](const auto&... f) {
      ((same = same && r.size() == f.size() && std::memcmp(r.data(), f.data(), r.size() * sizeof(r[0])) == 0), ...);
    }, forward);
  }, reversed);
  if (!same) fail(what + ": the result depends on the threads' order (a shared-memory race)");
}

}  // namespace harness
