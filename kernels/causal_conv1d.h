// Mamba2's depthwise causal convolution with its SiLU, over channel-last rows:
//   y[b, t, c] = silu(bias[c] + sum_{j<K} w[c, K-1-j] * x[b, t-j, c])
// where taps before the row, or (segment_ids [B, S] defined: packed rows) in another document,
// read zero. x [B, S, C] (its rows may be strided, as a slice of the in_proj output), w [C, K],
// bias [C] or undefined. Forward and backward have a CUDA kernel (bf16/fp16/fp32 in, fp32 math)
// and a LibTorch reference.
#pragma once

#include <tuple>

#include <ATen/core/Tensor.h>

#include "kernels/kernels_available.h"

namespace ftd::kernels {

// Differentiable op: the CUDA kernels on CUDA tensors when built with CUDA, else the reference.
at::Tensor CausalConv1dSilu(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                            const at::Tensor& segment_ids);

// LibTorch references (autograd-free math in fp32, results in the inputs' dtypes).
at::Tensor CausalConv1dSiluForwardReference(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                                            const at::Tensor& segment_ids);
// Returns (dx [B, S, C], dw [C, K], dbias [C] or undefined without bias).
std::tuple<at::Tensor, at::Tensor, at::Tensor> CausalConv1dSiluBackwardReference(const at::Tensor& dy,
                                                                                 const at::Tensor& x,
                                                                                 const at::Tensor& w,
                                                                                 const at::Tensor& bias,
                                                                                 const at::Tensor& segment_ids);

// The raw CUDA launchers (FTD_WITH_CUDA; CPU-only builds define them to throw). K <= 8.
at::Tensor CausalConv1dSiluForwardCuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias,
                                       const at::Tensor& segment_ids);
std::tuple<at::Tensor, at::Tensor, at::Tensor> CausalConv1dSiluBackwardCuda(const at::Tensor& dy, const at::Tensor& x,
                                                                            const at::Tensor& w,
                                                                            const at::Tensor& bias,
                                                                            const at::Tensor& segment_ids);

}  // namespace ftd::kernels
