// CUDA kernel of kernels/adamw.h: a grid-stride loop over 16-byte vectors of the parameter,
// its gradient and both moments (a scalar tail when the size or alignment asks for it).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/adamw.h"
#include "kernels/cuda_utils.cuh"

namespace ftd::kernels {
namespace {

using cuda::Load;
using cuda::Store;
using cuda::ToFloat;
using cuda::Vec;

constexpr int kThreads = 256;

struct Scalars {
  float lr, beta1, beta2, decay, eps;
};

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) AdamWKernel(T* __restrict__ p, const T* __restrict__ g,
                                                        T* __restrict__ m, T* __restrict__ v,
                                                        const float* __restrict__ step, int64_t n, Scalars s) {
  // As ATen's fused AdamW: bias corrections in double, the element math in fp32.
  const double st = static_cast<double>(*step);
  const double bc1 = 1.0 - pow(static_cast<double>(s.beta1), st);
  const double bc2 = 1.0 - pow(static_cast<double>(s.beta2), st);
  const float step_size = static_cast<float>(static_cast<double>(s.lr) / bc1);
  const float bc2_sqrt = static_cast<float>(sqrt(bc2));
  const int64_t nvec = n / VEC;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < nvec;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t o = i * VEC;
    Vec<T, VEC> pv = Load<T, VEC>(p + o), mv = Load<T, VEC>(m + o), vv = Load<T, VEC>(v + o);
    const Vec<T, VEC> gv = Load<T, VEC>(g + o);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      float pj = ToFloat(pv.v[j]);
      const float gj = ToFloat(gv.v[j]);
      pj -= s.lr * s.decay * pj;
      const float mj = s.beta1 * ToFloat(mv.v[j]) + (1 - s.beta1) * gj;
      const float vj = s.beta2 * ToFloat(vv.v[j]) + (1 - s.beta2) * gj * gj;
      const float denom = sqrtf(vj) / bc2_sqrt + s.eps;
      pj -= step_size * mj / denom;
      pv.v[j] = static_cast<T>(pj);
      mv.v[j] = static_cast<T>(mj);
      vv.v[j] = static_cast<T>(vj);
    }
    Store<T, VEC>(p + o, pv);
    Store<T, VEC>(m + o, mv);
    Store<T, VEC>(v + o, vv);
  }
  // Tail (n % VEC elements), by the first threads of block 0.
  if (blockIdx.x == 0 && threadIdx.x < n - nvec * VEC) {
    const int64_t o = nvec * VEC + threadIdx.x;
    float pj = ToFloat(p[o]);
    const float gj = ToFloat(g[o]);
    pj -= s.lr * s.decay * pj;
    const float mj = s.beta1 * ToFloat(m[o]) + (1 - s.beta1) * gj;
    const float vj = s.beta2 * ToFloat(v[o]) + (1 - s.beta2) * gj * gj;
    pj -= step_size * mj / (sqrtf(vj) / bc2_sqrt + s.eps);
    p[o] = static_cast<T>(pj);
    m[o] = static_cast<T>(mj);
    v[o] = static_cast<T>(vj);
  }
}

}  // namespace

void AdamWStepCuda(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                   const at::Tensor& exp_avg_sq, const at::Tensor& step, const AdamWHyper& h) {
  TORCH_CHECK(AdamWCudaSupports(param, grad, exp_avg, exp_avg_sq, step),
              "AdamWStepCuda: needs contiguous CUDA param/grad/moments of one dtype (bf16 or fp32) and an fp32 step");
  const int64_t n = param.numel();
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(param.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const Scalars s{static_cast<float>(h.lr), static_cast<float>(h.beta1), static_cast<float>(h.beta2),
                  static_cast<float>(h.weight_decay), static_cast<float>(h.eps)};
  auto launch = [&](auto tag) {
    using T = decltype(tag);
    constexpr int kVec = cuda::kVec16<T>;
    const bool aligned = cuda::Aligned16(param.data_ptr()) && cuda::Aligned16(grad.data_ptr()) &&
                         cuda::Aligned16(exp_avg.data_ptr()) && cuda::Aligned16(exp_avg_sq.data_ptr());
    T* p = reinterpret_cast<T*>(param.data_ptr());
    const T* g = reinterpret_cast<const T*>(grad.data_ptr());
    T* m = reinterpret_cast<T*>(exp_avg.data_ptr());
    T* v = reinterpret_cast<T*>(exp_avg_sq.data_ptr());
    const float* st = step.data_ptr<float>();
    const int vec = aligned ? kVec : 1;
    const int64_t needed = std::max<int64_t>(1, cuda::CeilDiv(n / vec, kThreads));
    const int64_t blocks = h.short_blocks ? needed : std::min<int64_t>(needed, int64_t{cuda::NumSms()} * 8);
    if (aligned) {
      AdamWKernel<T, kVec><<<blocks, kThreads, 0, stream>>>(p, g, m, v, st, n, s);
    } else {
      AdamWKernel<T, 1><<<blocks, kThreads, 0, stream>>>(p, g, m, v, st, n, s);
    }
  };
  if (param.scalar_type() == at::kBFloat16) {
    launch(c10::BFloat16{});
  } else {
    launch(float{});
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace ftd::kernels
