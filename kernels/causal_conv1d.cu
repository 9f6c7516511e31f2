// CUDA kernels of kernels/causal_conv1d.h. Channel-last rows: consecutive threads take
// consecutive channels of one row, so every tap's load is coalesced; the K weights of a channel
// stay in registers. Backward: dx recomputes the K pre-activations it needs (K^2 loads, all
// cached); the weight and bias gradients sum over rows per block into fp32 partials [P, C(K+1)],
// then one column sum (cuda::ColumnSumInto).
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/causal_conv1d.h"
#include "kernels/cuda_utils.cuh"

namespace ftd::kernels {
namespace {

using cuda::ToFloat;

constexpr int kMaxK = 8;
constexpr int kThreads = 256;

struct Rows {
  int64_t B, S, C, x_row_stride;  // x's element (b, t, c) at (b * S + t) * x_row_stride + c
};

// Whether output row t reads input row t - j (in the row and, with segment ids, one document).
__device__ __forceinline__ bool TapValid(const int64_t* seg, int64_t b, int64_t S, int64_t t, int j) {
  if (t - j < 0) return false;
  return seg == nullptr || seg[b * S + t - j] == seg[b * S + t];
}

template <typename T>
__device__ __forceinline__ float PreActivation(const T* __restrict__ x, const float* wreg, float bias,
                                               const int64_t* seg, const Rows& r, int K, int64_t b, int64_t t,
                                               int64_t c) {
  float acc = bias;
#pragma unroll
  for (int j = 0; j < kMaxK; ++j) {
    if (j < K && TapValid(seg, b, r.S, t, j)) acc += wreg[K - 1 - j] * ToFloat(x[(b * r.S + t - j) * r.x_row_stride + c]);
  }
  return acc;
}

__device__ __forceinline__ float Sigmoid(float v) { return 1.f / (1.f + __expf(-v)); }

template <typename T>
__global__ void __launch_bounds__(kThreads) ConvForwardKernel(const T* __restrict__ x, const T* __restrict__ w,
                                                              const T* __restrict__ bias,
                                                              const int64_t* __restrict__ seg, T* __restrict__ y,
                                                              Rows r, int K) {
  const int64_t total = r.B * r.S * r.C;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t c = i % r.C, row = i / r.C, b = row / r.S, t = row % r.S;
    float wreg[kMaxK];
#pragma unroll
    for (int k = 0; k < kMaxK; ++k) wreg[k] = k < K ? ToFloat(w[c * K + k]) : 0.f;
    const float pre = PreActivation(x, wreg, bias != nullptr ? ToFloat(bias[c]) : 0.f, seg, r, K, b, t, c);
    y[i] = static_cast<T>(pre * Sigmoid(pre));
  }
}

// dpre at output row t (dy * silu'(pre)).
template <typename T>
__device__ __forceinline__ float DPre(const T* __restrict__ dy, const T* __restrict__ x, const float* wreg, float bias,
                                      const int64_t* seg, const Rows& r, int K, int64_t b, int64_t t, int64_t c) {
  const float pre = PreActivation(x, wreg, bias, seg, r, K, b, t, c);
  const float s = Sigmoid(pre);
  return ToFloat(dy[(b * r.S + t) * r.C + c]) * s * (1.f + pre * (1.f - s));
}

template <typename T>
__global__ void __launch_bounds__(kThreads) ConvBackwardDxKernel(const T* __restrict__ dy, const T* __restrict__ x,
                                                                 const T* __restrict__ w, const T* __restrict__ bias,
                                                                 const int64_t* __restrict__ seg, T* __restrict__ dx,
                                                                 Rows r, int K) {
  const int64_t total = r.B * r.S * r.C;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t c = i % r.C, row = i / r.C, b = row / r.S, t = row % r.S;
    float wreg[kMaxK];
#pragma unroll
    for (int k = 0; k < kMaxK; ++k) wreg[k] = k < K ? ToFloat(w[c * K + k]) : 0.f;
    const float bc = bias != nullptr ? ToFloat(bias[c]) : 0.f;
    float acc = 0.f;
#pragma unroll
    for (int j = 0; j < kMaxK; ++j) {
      // Output row t + j read this input through tap j.
      if (j < K && t + j < r.S && TapValid(seg, b, r.S, t + j, j)) {
        acc += wreg[K - 1 - j] * DPre(dy, x, wreg, bc, seg, r, K, b, t + j, c);
      }
    }
    dx[i] = static_cast<T>(acc);
  }
}

// Partial weight and bias gradients: block (channel tile, row partition p) writes
// partial[p, c * (K + 1) + k] (k < K: dw[c, k]; k = K: dbias[c]).
template <typename T>
__global__ void __launch_bounds__(kThreads) ConvBackwardDwKernel(const T* __restrict__ dy, const T* __restrict__ x,
                                                                 const T* __restrict__ w, const T* __restrict__ bias,
                                                                 const int64_t* __restrict__ seg,
                                                                 float* __restrict__ partial, Rows r, int K,
                                                                 int64_t rows_per_part) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (c >= r.C) return;
  const int64_t p = blockIdx.y;
  float wreg[kMaxK], acc[kMaxK + 1];
#pragma unroll
  for (int k = 0; k < kMaxK; ++k) {
    wreg[k] = k < K ? ToFloat(w[c * K + k]) : 0.f;
    acc[k] = 0.f;
  }
  acc[kMaxK] = 0.f;
  const float bc = bias != nullptr ? ToFloat(bias[c]) : 0.f;
  const int64_t rows = r.B * r.S, begin = p * rows_per_part, end = min(rows, begin + rows_per_part);
  for (int64_t row = begin; row < end; ++row) {
    const int64_t b = row / r.S, t = row % r.S;
    const float d = DPre(dy, x, wreg, bc, seg, r, K, b, t, c);
    acc[kMaxK] += d;
#pragma unroll
    for (int j = 0; j < kMaxK; ++j) {
      if (j < K && TapValid(seg, b, r.S, t, j)) acc[K - 1 - j] += d * ToFloat(x[(row - j) * r.x_row_stride + c]);
    }
  }
  float* out = partial + p * r.C * (K + 1) + c * (K + 1);
#pragma unroll
  for (int k = 0; k < kMaxK; ++k) {
    if (k < K) out[k] = acc[k];
  }
  out[K] = acc[kMaxK];
}

// x as [B, S, C] with unit channel stride and uniform row stride (a column slice of a
// contiguous [B, S, *] tensor qualifies), else a contiguous copy.
at::Tensor RowStrided(const at::Tensor& x) {
  const bool ok = x.stride(2) == 1 && x.stride(0) == x.size(1) * x.stride(1);
  return ok ? x : x.contiguous();
}

void CheckInputs(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, const at::Tensor& seg) {
  TORCH_CHECK(x.is_cuda() && w.is_cuda(), "CausalConv1dSilu: CUDA tensors expected");
  TORCH_CHECK(x.dim() == 3, "CausalConv1dSilu: x must be [B, S, C], got ", x.sizes());
  TORCH_CHECK(w.dim() == 2 && w.size(0) == x.size(2) && w.size(1) >= 1 && w.size(1) <= kMaxK,
              "CausalConv1dSilu: w must be [C, K] with K <= 8, got ", w.sizes());
  TORCH_CHECK(w.scalar_type() == x.scalar_type(), "CausalConv1dSilu: x and w must share a dtype");
  TORCH_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == x.size(2) && bias.scalar_type() == x.scalar_type()),
              "CausalConv1dSilu: bias must be [C] in x's dtype");
  TORCH_CHECK(!seg.defined() || (seg.dim() == 2 && seg.size(0) == x.size(0) && seg.size(1) == x.size(1)),
              "CausalConv1dSilu: segment_ids must be [B, S]");
}

int64_t GridFor(int64_t total) {
  return std::max<int64_t>(1, std::min<int64_t>(cuda::CeilDiv(total, kThreads), 32LL * cuda::NumSms()));
}

}  // namespace

at::Tensor CausalConv1dSiluForwardCuda(const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& bias_in,
                                       const at::Tensor& seg_in) {
  CheckInputs(x_in, w_in, bias_in, seg_in);
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = RowStrided(x_in), w = w_in.contiguous();
  const at::Tensor bias = bias_in.defined() ? bias_in.contiguous() : bias_in;
  const at::Tensor seg = seg_in.defined() ? seg_in.to(x.device(), at::kLong).contiguous() : seg_in;
  const Rows r{x.size(0), x.size(1), x.size(2), x.stride(1)};
  at::Tensor y = at::empty({r.B, r.S, r.C}, x.options());
  if (y.numel() == 0) return y;
  auto stream = at::cuda::getCurrentCUDAStream();
  cuda::DispatchFloatTypes(x.scalar_type(), "causal_conv1d_fwd", [&](auto tag) {
    using scalar_t = decltype(tag);
    ConvForwardKernel<scalar_t><<<GridFor(y.numel()), kThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), bias.defined() ? bias.data_ptr<scalar_t>() : nullptr,
        seg.defined() ? seg.data_ptr<int64_t>() : nullptr, y.data_ptr<scalar_t>(), r, static_cast<int>(w.size(1)));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> CausalConv1dSiluBackwardCuda(const at::Tensor& dy_in,
                                                                            const at::Tensor& x_in,
                                                                            const at::Tensor& w_in,
                                                                            const at::Tensor& bias_in,
                                                                            const at::Tensor& seg_in) {
  CheckInputs(x_in, w_in, bias_in, seg_in);
  TORCH_CHECK(dy_in.sizes() == x_in.sizes() && dy_in.scalar_type() == x_in.scalar_type(),
              "CausalConv1dSilu backward: dy must be [B, S, C] in x's dtype");
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = RowStrided(x_in), w = w_in.contiguous(), dy = dy_in.contiguous();
  const at::Tensor bias = bias_in.defined() ? bias_in.contiguous() : bias_in;
  const at::Tensor seg = seg_in.defined() ? seg_in.to(x.device(), at::kLong).contiguous() : seg_in;
  const Rows r{x.size(0), x.size(1), x.size(2), x.stride(1)};
  const int K = static_cast<int>(w.size(1));
  at::Tensor dx = at::empty({r.B, r.S, r.C}, x.options());
  at::Tensor dw = at::empty_like(w);
  at::Tensor db = bias.defined() ? at::empty_like(bias) : at::Tensor();
  const int64_t rows = r.B * r.S;
  if (rows == 0 || r.C == 0) {
    dw.zero_();
    if (db.defined()) db.zero_();
    return {dx, dw, db};
  }
  // Row partitions for the weight gradient: enough blocks to fill the GPU, >= 16 rows each.
  const int64_t tiles = cuda::CeilDiv(r.C, kThreads);
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(cuda::CeilDiv(rows, 16),
                                                               cuda::CeilDiv(4LL * cuda::NumSms(), tiles)));
  const int64_t rows_per_part = cuda::CeilDiv(rows, parts);
  at::Tensor partial = at::empty({parts, r.C * (K + 1)}, x.options().dtype(at::kFloat));
  at::Tensor sums = at::empty({r.C * (K + 1)}, partial.options());
  auto stream = at::cuda::getCurrentCUDAStream();
  cuda::DispatchFloatTypes(x.scalar_type(), "causal_conv1d_bwd", [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* bias_ptr = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
    const int64_t* seg_ptr = seg.defined() ? seg.data_ptr<int64_t>() : nullptr;
    ConvBackwardDxKernel<scalar_t><<<GridFor(dx.numel()), kThreads, 0, stream>>>(
        dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), bias_ptr, seg_ptr,
        dx.data_ptr<scalar_t>(), r, K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    ConvBackwardDwKernel<scalar_t><<<dim3(tiles, parts), kThreads, 0, stream>>>(
        dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), bias_ptr, seg_ptr,
        partial.data_ptr<float>(), r, K, rows_per_part);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  cuda::ColumnSumInto(partial, sums);
  at::Tensor per_channel = sums.view({r.C, K + 1});
  dw.copy_(per_channel.narrow(1, 0, K));
  if (db.defined()) db.copy_(per_channel.select(1, K));
  return {dx, dw, db};
}

}  // namespace ftd::kernels
