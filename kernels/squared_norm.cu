// CUDA kernel of kernels/squared_norm.h. Stage one: a grid-strided pass, four 16-byte vectors in
// flight a thread, each block's sum into partial[block]; the unaligned head and the tail (fewer
// than one vector each) go to block 0. Stage two: one block adds the partials in a fixed order to
// the output. The grid depends only on the size, so the result is the same every run.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/cuda_utils.cuh"
#include "kernels/squared_norm.h"

namespace ftd::kernels {
namespace {

using cuda::ToFloat;
using cuda::Vec;

constexpr int kThreads = 256;
constexpr int kUnroll = 4;

// The block's sum of v, on thread 0 (fixed order: warp shuffles, then warp 0 over the warps).
__device__ __forceinline__ float BlockSum(float v) {
  __shared__ float warp_sums[kThreads / 32];
  v = cuda::WarpSum(v);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
  __syncthreads();
  v = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.f;
  if (threadIdx.x < 32) v = cuda::WarpSum(v);
  return v;
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) SquaresPartialKernel(const T* __restrict__ x, int64_t head,
                                                                 int64_t vectors, int64_t n,
                                                                 float* __restrict__ partial) {
  using V = Vec<T, VEC>;
  const V* body = reinterpret_cast<const V*>(x + head);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  float acc[kUnroll] = {};
  int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  for (; i + (kUnroll - 1) * stride < vectors; i += kUnroll * stride) {
    V v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) v[u] = body[i + u * stride];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const float f = ToFloat(v[u].v[e]);
        acc[u] = fmaf(f, f, acc[u]);
      }
    }
  }
  for (; i < vectors; i += stride) {
    const V v = body[i];
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float f = ToFloat(v.v[e]);
      acc[0] = fmaf(f, f, acc[0]);
    }
  }
  if (blockIdx.x == 0) {  // the elements outside the aligned vectors: head, then the tail
    const int64_t tail_begin = head + vectors * VEC;
    const int64_t t = threadIdx.x;
    if (t < head) acc[1] += ToFloat(x[t]) * ToFloat(x[t]);
    if (tail_begin + t < n) acc[2] += ToFloat(x[tail_begin + t]) * ToFloat(x[tail_begin + t]);
  }
  const float s = BlockSum((acc[0] + acc[1]) + (acc[2] + acc[3]));
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void __launch_bounds__(kThreads) AddPartialsKernel(const float* __restrict__ partial, int parts,
                                                              float* __restrict__ sum) {
  float v = 0.f;
  for (int p = threadIdx.x; p < parts; p += kThreads) v += partial[p];
  v = BlockSum(v);
  if (threadIdx.x == 0) *sum += v;
}

}  // namespace

void AddSquaredNormCuda(const at::Tensor& x_in, const at::Tensor& sum) {
  TORCH_CHECK(x_in.is_cuda(), "AddSquaredNormCuda: x must be a CUDA tensor");
  TORCH_CHECK(sum.is_cuda() && sum.numel() == 1 && sum.scalar_type() == at::kFloat && sum.is_contiguous(),
              "AddSquaredNormCuda: sum must be a contiguous CUDA fp32 scalar tensor");
  TORCH_CHECK(sum.device() == x_in.device(), "AddSquaredNormCuda: sum is on ", sum.device(), ", x on ", x_in.device());
  const int64_t n = x_in.numel();
  if (n == 0) return;
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  auto stream = at::cuda::getCurrentCUDAStream();
  cuda::DispatchFloatTypes(x.scalar_type(), "squared_norm", [&](auto tag) {
    using scalar_t = decltype(tag);
    constexpr int kVec = cuda::kVec16<scalar_t>;
    const auto addr = reinterpret_cast<uintptr_t>(x.data_ptr());
    // Elements before the first 16-byte boundary (x is at least element-aligned).
    const int64_t head = std::min<int64_t>(n, static_cast<int64_t>(((16 - (addr & 15u)) & 15u) / sizeof(scalar_t)));
    const int64_t vectors = (n - head) / kVec;
    const int64_t blocks = std::max<int64_t>(
        1, std::min<int64_t>(cuda::CeilDiv(vectors, static_cast<int64_t>(kThreads) * kUnroll), 4LL * cuda::NumSms()));
    at::Tensor partial = at::empty({blocks}, x.options().dtype(at::kFloat));
    SquaresPartialKernel<scalar_t, kVec><<<blocks, kThreads, 0, stream>>>(x.data_ptr<scalar_t>(), head, vectors, n,
                                                                          partial.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    AddPartialsKernel<<<1, kThreads, 0, stream>>>(partial.data_ptr<float>(), static_cast<int>(blocks),
                                                  sum.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace ftd::kernels
