// Device helpers shared by the .cu files: 16-byte vectors of any element type, fp32
// conversions, warp reductions and the launch-shape arithmetic. Header-only, light includes.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

namespace ftd::kernels::cuda {

// N elements of T moved as one aligned access (16 bytes when N == 16 / sizeof(T)).
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> Load(const T* p) {
  return *reinterpret_cast<const Vec<T, N>*>(p);
}

template <typename T, int N>
__device__ __forceinline__ void Store(T* p, const Vec<T, N>& v) {
  *reinterpret_cast<Vec<T, N>*>(p) = v;
}

template <typename T>
__device__ __forceinline__ float ToFloat(T v) {
  return static_cast<float>(v);
}

template <typename T>
__device__ __forceinline__ T FromFloat(float v) {
  return static_cast<T>(v);
}

// Rounds through T, as ATen does when an intermediate tensor has dtype T.
template <typename T>
__device__ __forceinline__ float Round(float v) {
  return static_cast<float>(static_cast<T>(v));
}

// Sum over groups of `width` consecutive lanes (width a power of two <= 32); every lane gets it.
__device__ __forceinline__ float GroupSum(float v, int width) {
  for (int offset = width >> 1; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset, width);
  return v;
}

__device__ __forceinline__ float WarpSum(float v) { return GroupSum(v, 32); }

// Elements per 16-byte vector.
template <typename T>
constexpr int kVec16 = static_cast<int>(16 / sizeof(T));

inline bool Aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Whether rows of `row_elems` elements of `t` can be read as 16-byte vectors.
inline bool CanVectorize(const at::Tensor& t, int64_t row_elems) {
  const int64_t vec = 16 / static_cast<int64_t>(t.element_size());
  return row_elems % vec == 0 && Aligned16(t.data_ptr());
}

// Calls f with a value of the C++ type of t: float, c10::BFloat16 or c10::Half (the dtypes
// the kernels take; narrower than ATen's dispatch macros, which would also build double).
template <typename F>
void DispatchFloatTypes(at::ScalarType t, const char* op, F&& f) {
  switch (t) {
    case at::kFloat:
      f(float{});
      break;
    case at::kBFloat16:
      f(c10::BFloat16{});
      break;
    case at::kHalf:
      f(c10::Half{});
      break;
    default:
      TORCH_CHECK(false, op, ": unsupported dtype ", t, " (float32, bfloat16 or float16)");
  }
}

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int NextPow2(int64_t v) {
  int p = 1;
  while (p < v) p <<= 1;
  return p;
}

// Multiprocessors of the current device (cached per process; one GPU per process here).
int NumSms();

// out[c] = sum_p partial[p, c] (fp32 sums, cast to out's dtype): the second stage of the
// weight-gradient reductions. partial [P, D] fp32 CUDA, out [D] contiguous, P >= 1.
void ColumnSumInto(const at::Tensor& partial, const at::Tensor& out);

}  // namespace ftd::kernels::cuda
