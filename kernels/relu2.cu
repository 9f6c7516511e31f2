// CUDA kernels of kernels/relu2.h, laid out as kernels/swiglu.cu: one warp per row of F
// outputs, 16-byte vectors when F and the alignment allow; the routing-weight gradient is the
// warp's sum.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/cuda_utils.cuh"
#include "kernels/relu2.h"

namespace ftd::kernels {
namespace {

using cuda::Load;
using cuda::Store;
using cuda::ToFloat;
using cuda::Vec;

constexpr int kWarpsPerBlock = 8;

template <typename T, int VEC>
__global__ void __launch_bounds__(32 * kWarpsPerBlock) Relu2ForwardKernel(const T* __restrict__ h,
                                                                          const T* __restrict__ w,
                                                                          T* __restrict__ out, int64_t rows,
                                                                          int64_t F) {
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y; r < rows;
       r += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const float wr = ToFloat(w[r]);
    const T* hr = h + r * F;
    T* orow = out + r * F;
#pragma unroll 2
    for (int64_t f = static_cast<int64_t>(threadIdx.x) * VEC; f < F; f += 32 * VEC) {
      const Vec<T, VEC> hv = Load<T, VEC>(hr + f);
      Vec<T, VEC> o;
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const float x = fmaxf(ToFloat(hv.v[i]), 0.f);
        o.v[i] = static_cast<T>(x * x * wr);
      }
      Store<T, VEC>(orow + f, o);
    }
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(32 * kWarpsPerBlock) Relu2BackwardKernel(const T* __restrict__ dout,
                                                                           const T* __restrict__ h,
                                                                           const T* __restrict__ w,
                                                                           T* __restrict__ dh, T* __restrict__ dw,
                                                                           int64_t rows, int64_t F) {
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y; r < rows;
       r += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const float wr = ToFloat(w[r]);
    const T* hr = h + r * F;
    const T* dr = dout + r * F;
    T* dhr = dh + r * F;
    float acc = 0.f;
#pragma unroll 2
    for (int64_t f = static_cast<int64_t>(threadIdx.x) * VEC; f < F; f += 32 * VEC) {
      const Vec<T, VEC> hv = Load<T, VEC>(hr + f);
      const Vec<T, VEC> dv = Load<T, VEC>(dr + f);
      Vec<T, VEC> g;
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const float x = fmaxf(ToFloat(hv.v[i]), 0.f), d = ToFloat(dv.v[i]);
        g.v[i] = static_cast<T>(2.f * x * d * wr);
        acc += d * x * x;
      }
      Store<T, VEC>(dhr + f, g);
    }
    acc = cuda::WarpSum(acc);
    if (threadIdx.x == 0) dw[r] = static_cast<T>(acc);
  }
}

void CheckInputs(const at::Tensor& h, const at::Tensor& w) {
  TORCH_CHECK(h.is_cuda() && w.is_cuda(), "WeightedRelu2: CUDA tensors expected");
  TORCH_CHECK(h.dim() == 2, "WeightedRelu2: h must be [N, F], got ", h.sizes());
  TORCH_CHECK(w.dim() == 1 && w.size(0) == h.size(0), "WeightedRelu2: w must be [N], got ", w.sizes());
  TORCH_CHECK(h.scalar_type() == w.scalar_type(), "WeightedRelu2: h and w must share a dtype");
}

int64_t GridFor(int64_t rows) {
  return std::max<int64_t>(1, std::min<int64_t>(cuda::CeilDiv(rows, kWarpsPerBlock), 32LL * cuda::NumSms()));
}

}  // namespace

at::Tensor WeightedRelu2ForwardCuda(const at::Tensor& h_in, const at::Tensor& w_in) {
  CheckInputs(h_in, w_in);
  c10::cuda::CUDAGuard guard(h_in.device());
  const at::Tensor h = h_in.contiguous(), w = w_in.contiguous();
  const int64_t rows = h.size(0), F = h.size(1);
  at::Tensor out = at::empty({rows, F}, h.options());
  if (rows == 0 || F == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  cuda::DispatchFloatTypes(h.scalar_type(), "relu2_fwd", [&](auto tag) {
    using scalar_t = decltype(tag);
    const bool vec = cuda::CanVectorize(h, F) && cuda::Aligned16(out.data_ptr());
    auto* kernel = vec ? Relu2ForwardKernel<scalar_t, cuda::kVec16<scalar_t>> : Relu2ForwardKernel<scalar_t, 1>;
    kernel<<<GridFor(rows), dim3(32, kWarpsPerBlock), 0, stream>>>(h.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                                                                   out.data_ptr<scalar_t>(), rows, F);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> WeightedRelu2BackwardCuda(const at::Tensor& dout_in, const at::Tensor& h_in,
                                                             const at::Tensor& w_in) {
  CheckInputs(h_in, w_in);
  TORCH_CHECK(dout_in.sizes() == h_in.sizes() && dout_in.scalar_type() == h_in.scalar_type(),
              "WeightedRelu2 backward: dout must be [N, F] in h's dtype");
  c10::cuda::CUDAGuard guard(h_in.device());
  const at::Tensor h = h_in.contiguous(), w = w_in.contiguous(), dout = dout_in.contiguous();
  const int64_t rows = h.size(0), F = h.size(1);
  at::Tensor dh = at::empty_like(h), dw = at::empty_like(w);
  if (rows == 0) return {dh, dw};
  if (F == 0) return {dh, dw.zero_()};
  auto stream = at::cuda::getCurrentCUDAStream();
  cuda::DispatchFloatTypes(h.scalar_type(), "relu2_bwd", [&](auto tag) {
    using scalar_t = decltype(tag);
    const bool vec = cuda::CanVectorize(h, F) && cuda::CanVectorize(dout, F) && cuda::Aligned16(dh.data_ptr());
    auto* kernel = vec ? Relu2BackwardKernel<scalar_t, cuda::kVec16<scalar_t>> : Relu2BackwardKernel<scalar_t, 1>;
    kernel<<<GridFor(rows), dim3(32, kWarpsPerBlock), 0, stream>>>(dout.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                                                                   w.data_ptr<scalar_t>(), dh.data_ptr<scalar_t>(),
                                                                   dw.data_ptr<scalar_t>(), rows, F);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dh, dw};
}

}  // namespace ftd::kernels
