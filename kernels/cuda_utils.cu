#include <ATen/cuda/CUDAContext.h>

#include "kernels/cuda_utils.cuh"

namespace ftd::kernels::cuda {

int NumSms() {
  static const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return sms;
}

namespace {

// 32 columns per block, 8 row slices per column, then a shared-memory sum over the slices.
template <typename T>
__global__ void ColumnSumKernel(const float* __restrict__ partial, T* __restrict__ out, int64_t parts, int64_t D) {
  __shared__ float acc[8][33];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  float s = 0.f;
  if (c < D) {
    for (int64_t p = threadIdx.y; p < parts; p += 8) s += partial[p * D + c];
  }
  acc[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < D) {
    float t = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) t += acc[i][threadIdx.x];
    out[c] = static_cast<T>(t);
  }
}

}  // namespace

void ColumnSumInto(const at::Tensor& partial, const at::Tensor& out) {
  TORCH_CHECK(partial.is_cuda() && partial.dim() == 2 && partial.scalar_type() == at::kFloat && partial.is_contiguous(),
              "ColumnSumInto: partial must be contiguous CUDA fp32 [P, D]");
  TORCH_CHECK(out.is_contiguous() && out.numel() == partial.size(1), "ColumnSumInto: out must be contiguous [D]");
  const int64_t D = partial.size(1);
  if (D == 0) return;
  auto stream = at::cuda::getCurrentCUDAStream();
  cuda::DispatchFloatTypes(out.scalar_type(), "column_sum", [&](auto tag) {
    using scalar_t = decltype(tag);
    ColumnSumKernel<scalar_t><<<CeilDiv(D, 32), dim3(32, 8), 0, stream>>>(
        partial.data_ptr<float>(), out.data_ptr<scalar_t>(), partial.size(0), D);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace ftd::kernels::cuda
