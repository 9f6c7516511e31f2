// CUDA kernel of kernels/cross_entropy.h. One block of 1024 threads per row: pass 1 keeps a
// running (max, sum of exp) per thread over 16-byte vectors, combined across the block; pass 2
// re-reads the row (mostly from L2: a 151,936-wide bf16 row is 300 KB) and writes
// softmax - onehot over it. Bytes: 2 reads + 1 write of the row.
#include <cmath>

#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/cross_entropy.h"
#include "kernels/cuda_utils.cuh"

namespace ftd::kernels {
namespace {

using cuda::Load;
using cuda::Store;
using cuda::ToFloat;
using cuda::Vec;

constexpr int kThreads = 1024;

__device__ __forceinline__ void Combine(float& m, float& s, float om, float os) {
  const float nm = fmaxf(m, om);
  if (nm == -INFINITY) return;  // both empty
  s = s * __expf(m - nm) + os * __expf(om - nm);
  m = nm;
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) CrossEntropyRowsKernel(T* __restrict__ logits,
                                                                   const int64_t* __restrict__ targets,
                                                                   float* __restrict__ loss, int64_t V,
                                                                   int64_t ignore_index) {
  __shared__ float sm[32], ss[32];
  __shared__ float s_lse, s_xt;
  const int64_t row = blockIdx.x;
  T* x = logits + row * V;
  const int64_t t = targets[row];
  const bool valid = t != ignore_index;
  CUDA_KERNEL_ASSERT(!valid || (t >= 0 && t < V));
  if (threadIdx.x == 0) s_xt = valid ? ToFloat(x[t]) : 0.f;  // read before pass 2 overwrites it
  float m = -INFINITY, s = 0.f;
  for (int64_t i = static_cast<int64_t>(threadIdx.x) * VEC; i < V; i += static_cast<int64_t>(kThreads) * VEC) {
    const Vec<T, VEC> v = Load<T, VEC>(x + i);
    float lm = ToFloat(v.v[0]);
#pragma unroll
    for (int j = 1; j < VEC; ++j) lm = fmaxf(lm, ToFloat(v.v[j]));
    const float nm = fmaxf(m, lm);
    if (nm == -INFINITY) continue;
    s *= __expf(m - nm);
#pragma unroll
    for (int j = 0; j < VEC; ++j) s += __expf(ToFloat(v.v[j]) - nm);
    m = nm;
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float om = __shfl_xor_sync(0xffffffffu, m, off), os = __shfl_xor_sync(0xffffffffu, s, off);
    Combine(m, s, om, os);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sm[warp] = m;
    ss[warp] = s;
  }
  __syncthreads();
  if (warp == 0) {
    m = sm[lane];
    s = ss[lane];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const float om = __shfl_xor_sync(0xffffffffu, m, off), os = __shfl_xor_sync(0xffffffffu, s, off);
      Combine(m, s, om, os);
    }
    if (lane == 0) {
      const float lse = m + logf(s);
      s_lse = lse;
      loss[row] = valid ? lse - s_xt : 0.f;
    }
  }
  __syncthreads();
  const float lse = s_lse;
  for (int64_t i = static_cast<int64_t>(threadIdx.x) * VEC; i < V; i += static_cast<int64_t>(kThreads) * VEC) {
    const Vec<T, VEC> v = Load<T, VEC>(x + i);
    Vec<T, VEC> o;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      float g = valid ? expf(ToFloat(v.v[j]) - lse) : 0.f;
      if (valid && i + j == t) g -= 1.f;
      o.v[j] = static_cast<T>(g);
    }
    Store<T, VEC>(x + i, o);
  }
}

}  // namespace

at::Tensor CrossEntropyRowsInPlaceCuda(const at::Tensor& logits, const at::Tensor& targets, int64_t ignore_index) {
  TORCH_CHECK(CrossEntropyRowsCudaSupports(logits, targets),
              "CrossEntropyRowsInPlaceCuda: needs contiguous CUDA logits [N, V] (fp32/bf16/fp16) and int64 targets [N]");
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t N = logits.size(0), V = logits.size(1);
  at::Tensor loss = at::empty({N}, logits.options().dtype(at::kFloat));
  if (N == 0) return loss;
  TORCH_CHECK(V > 0, "CrossEntropyRowsInPlaceCuda: empty vocabulary");
  at::Tensor tg = targets.contiguous();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  cuda::DispatchFloatTypes(logits.scalar_type(), "CrossEntropyRowsInPlaceCuda", [&](auto tag) {
    using T = decltype(tag);
    constexpr int kVec = cuda::kVec16<T>;
    T* p = reinterpret_cast<T*>(logits.data_ptr());
    if (cuda::CanVectorize(logits, V)) {
      CrossEntropyRowsKernel<T, kVec><<<N, kThreads, 0, stream>>>(p, tg.data_ptr<int64_t>(), loss.data_ptr<float>(),
                                                                  V, ignore_index);
    } else {
      CrossEntropyRowsKernel<T, 1><<<N, kThreads, 0, stream>>>(p, tg.data_ptr<int64_t>(), loss.data_ptr<float>(), V,
                                                               ignore_index);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return loss;
}

}  // namespace ftd::kernels
