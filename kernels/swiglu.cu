// CUDA kernels of kernels/swiglu.h. Forward: elementwise, vectorised over the row. Backward:
// one block per row (the routing-weight gradient is a row reduction).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/swiglu.h"

namespace ftd::kernels {
namespace {

template <typename T>
__device__ __forceinline__ float ToFloat(T v) { return static_cast<float>(v); }

template <typename T>
__global__ void SwigluForwardKernel(const T* __restrict__ h, const T* __restrict__ w, T* __restrict__ out,
                                    int64_t rows, int64_t F) {
  const int64_t total = rows * F;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / F, f = i - r * F;
    const float g = ToFloat(h[r * 2 * F + f]);
    const float u = ToFloat(h[r * 2 * F + F + f]);
    const float silu = g / (1.f + __expf(-g));
    out[i] = static_cast<T>(silu * u * ToFloat(w[r]));
  }
}

template <typename T>
__global__ void SwigluBackwardKernel(const T* __restrict__ dout, const T* __restrict__ h, const T* __restrict__ w,
                                     T* __restrict__ dh, T* __restrict__ dw, int64_t F) {
  const int64_t r = blockIdx.x;
  const float wr = ToFloat(w[r]);
  const T* hr = h + r * 2 * F;
  const T* dr = dout + r * F;
  T* dhr = dh + r * 2 * F;
  float acc = 0.f;
  for (int64_t f = threadIdx.x; f < F; f += blockDim.x) {
    const float g = ToFloat(hr[f]), u = ToFloat(hr[F + f]), d = ToFloat(dr[f]);
    const float s = 1.f / (1.f + __expf(-g));
    const float silu = g * s;
    dhr[f] = static_cast<T>(d * u * wr * s * (1.f + g * (1.f - s)));
    dhr[F + f] = static_cast<T>(d * silu * wr);
    acc += d * silu * u;
  }
  // Block reduction of the routing-weight gradient.
  __shared__ float warp_sums[32];
  for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_down_sync(0xffffffff, acc, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = acc;
  __syncthreads();
  if (warp == 0) {
    acc = lane < (blockDim.x + 31) / 32 ? warp_sums[lane] : 0.f;
    for (int offset = 16; offset > 0; offset >>= 1) acc += __shfl_down_sync(0xffffffff, acc, offset);
    if (lane == 0) dw[r] = static_cast<T>(acc);
  }
}

void CheckInputs(const at::Tensor& h, const at::Tensor& w) {
  TORCH_CHECK(h.is_cuda() && w.is_cuda(), "WeightedSwiglu: CUDA tensors expected");
  TORCH_CHECK(h.dim() == 2 && h.size(1) % 2 == 0, "WeightedSwiglu: h must be [N, 2F]");
  TORCH_CHECK(w.dim() == 1 && w.size(0) == h.size(0), "WeightedSwiglu: w must be [N]");
  TORCH_CHECK(h.scalar_type() == w.scalar_type(), "WeightedSwiglu: h and w must share a dtype");
}

}  // namespace

at::Tensor WeightedSwigluForwardCuda(const at::Tensor& h_in, const at::Tensor& w_in) {
  CheckInputs(h_in, w_in);
  c10::cuda::CUDAGuard guard(h_in.device());
  at::Tensor h = h_in.contiguous(), w = w_in.contiguous();
  const int64_t rows = h.size(0), F = h.size(1) / 2;
  at::Tensor out = at::empty({rows, F}, h.options());
  if (rows == 0 || F == 0) return out;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((rows * F + threads - 1) / threads, 65535LL * 8);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, h.scalar_type(), "swiglu_fwd", [&] {
    SwigluForwardKernel<scalar_t><<<blocks, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        h.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), rows, F);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> WeightedSwigluBackwardCuda(const at::Tensor& dout_in, const at::Tensor& h_in,
                                                              const at::Tensor& w_in) {
  CheckInputs(h_in, w_in);
  c10::cuda::CUDAGuard guard(h_in.device());
  at::Tensor h = h_in.contiguous(), w = w_in.contiguous(), dout = dout_in.contiguous();
  const int64_t rows = h.size(0), F = h.size(1) / 2;
  at::Tensor dh = at::empty_like(h), dw = at::empty_like(w);
  if (rows == 0) return {dh, dw};
  const int threads = F >= 512 ? 512 : 128;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, h.scalar_type(), "swiglu_bwd", [&] {
    SwigluBackwardKernel<scalar_t><<<rows, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        dout.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), dh.data_ptr<scalar_t>(),
        dw.data_ptr<scalar_t>(), F);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dh, dw};
}

}  // namespace ftd::kernels
