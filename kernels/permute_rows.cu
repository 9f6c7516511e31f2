// CUDA kernels of kernels/permute_rows.h. One warp per output row, lanes across the row in the
// widest access the row size and alignment allow (16 bytes for H % 8 == 0 in bf16).
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/cuda_utils.cuh"
#include "kernels/permute_rows.h"

namespace ftd::kernels {
namespace {

using cuda::Load;
using cuda::Store;
using cuda::ToFloat;
using cuda::Vec;

constexpr int kWarpsPerBlock = 8;

// out[p] = x[order[p] / k]: a copy of row bytes in units of U.
template <typename U>
__global__ void __launch_bounds__(32 * kWarpsPerBlock) PermuteRowsKernel(const U* __restrict__ x,
                                                                         const int64_t* __restrict__ order,
                                                                         U* __restrict__ out, int64_t rows,
                                                                         int64_t units, int64_t k) {
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y; p < rows;
       p += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const U* src = x + (order[p] / k) * units;
    U* dst = out + p * units;
#pragma unroll 4
    for (int64_t u = threadIdx.x; u < units; u += 32) dst[u] = src[u];
  }
}

// out[t] = sum_j y[inverse[t*k + j]] in fp32, j ascending.
template <typename T, int VEC>
__global__ void __launch_bounds__(32 * kWarpsPerBlock) UnpermuteSumKernel(const T* __restrict__ y,
                                                                          const int64_t* __restrict__ inverse,
                                                                          T* __restrict__ out, int64_t tokens,
                                                                          int64_t H, int k) {
  const int lane = threadIdx.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y; t < tokens;
       t += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    for (int64_t c = static_cast<int64_t>(lane) * VEC; c < H; c += 32 * VEC) {
      float acc[VEC];
#pragma unroll
      for (int i = 0; i < VEC; ++i) acc[i] = 0.f;
#pragma unroll 8
      for (int j = 0; j < k; ++j) {
        const int64_t src = inverse[t * k + j];
        const Vec<T, VEC> v = Load<T, VEC>(y + src * H + c);
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[i] += ToFloat(v.v[i]);
      }
      Vec<T, VEC> o;
#pragma unroll
      for (int i = 0; i < VEC; ++i) o.v[i] = static_cast<T>(acc[i]);
      Store<T, VEC>(out + t * H + c, o);
    }
  }
}

int64_t GridFor(int64_t rows) {
  return std::max<int64_t>(1, std::min<int64_t>(cuda::CeilDiv(rows, kWarpsPerBlock), 32LL * cuda::NumSms()));
}

}  // namespace

at::Tensor PermuteRowsCuda(const at::Tensor& x_in, const at::Tensor& order_in, int64_t k) {
  TORCH_CHECK(x_in.is_cuda() && x_in.dim() == 2, "PermuteRowsCuda: x must be a 2-D CUDA tensor");
  TORCH_CHECK(order_in.is_cuda() && order_in.scalar_type() == at::kLong, "PermuteRowsCuda: order must be CUDA int64");
  TORCH_CHECK(k >= 1 && x_in.size(0) * k == order_in.numel(), "PermuteRowsCuda: order must have x.size(0) * k entries");
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), order = order_in.contiguous();
  const int64_t rows = order.numel(), H = x.size(1);
  at::Tensor out = at::empty({rows, H}, x.options());
  if (rows == 0 || H == 0) return out;
  const int64_t row_bytes = H * x.element_size();
  // The widest unit that divides the row size and both base addresses.
  const uint64_t align = static_cast<uint64_t>(row_bytes) | reinterpret_cast<uintptr_t>(x.data_ptr()) |
                         reinterpret_cast<uintptr_t>(out.data_ptr());
  const dim3 block(32, kWarpsPerBlock);
  const int64_t grid = GridFor(rows);
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t* ord = order.data_ptr<int64_t>();
  auto launch = [&](auto unit) {
    using U = decltype(unit);
    PermuteRowsKernel<U><<<grid, block, 0, stream>>>(static_cast<const U*>(x.data_ptr()), ord,
                                                     static_cast<U*>(out.data_ptr()), rows,
                                                     row_bytes / static_cast<int64_t>(sizeof(U)), k);
  };
  if (align % 16 == 0) {
    launch(uint4{});
  } else if (align % 4 == 0) {
    launch(uint32_t{});
  } else if (align % 2 == 0) {
    launch(uint16_t{});
  } else {
    launch(uint8_t{});
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor UnpermuteSumCuda(const at::Tensor& y_in, const at::Tensor& inverse_in, int64_t k) {
  TORCH_CHECK(y_in.is_cuda() && y_in.dim() == 2, "UnpermuteSumCuda: y must be a 2-D CUDA tensor");
  TORCH_CHECK(inverse_in.is_cuda() && inverse_in.scalar_type() == at::kLong,
              "UnpermuteSumCuda: inverse must be CUDA int64");
  TORCH_CHECK(k >= 1 && inverse_in.numel() % k == 0 && y_in.size(0) == inverse_in.numel(),
              "UnpermuteSumCuda: y and inverse must have T*k rows");
  c10::cuda::CUDAGuard guard(y_in.device());
  const at::Tensor y = y_in.contiguous(), inverse = inverse_in.contiguous();
  const int64_t tokens = inverse.numel() / k, H = y.size(1);
  at::Tensor out = at::empty({tokens, H}, y.options());
  if (tokens == 0 || H == 0) return out;
  const dim3 block(32, kWarpsPerBlock);
  const int64_t grid = GridFor(tokens);
  auto stream = at::cuda::getCurrentCUDAStream();
  cuda::DispatchFloatTypes(y.scalar_type(), "unpermute_sum", [&](auto tag) {
    using scalar_t = decltype(tag);
    constexpr int kVec = cuda::kVec16<scalar_t>;
    const bool vec = cuda::CanVectorize(y, H) && cuda::Aligned16(out.data_ptr());
    auto* kernel = vec ? UnpermuteSumKernel<scalar_t, kVec> : UnpermuteSumKernel<scalar_t, 1>;
    kernel<<<grid, block, 0, stream>>>(y.data_ptr<scalar_t>(), inverse.data_ptr<int64_t>(), out.data_ptr<scalar_t>(),
                                       tokens, H, static_cast<int>(k));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace ftd::kernels
