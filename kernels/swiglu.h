// SwiGLU with the routing weight folded in, the activation of the MoE expert MLP:
//   out[n, f] = silu(h[n, f]) * h[n, F + f] * w[n]       h [N, 2F] = [gate | up], w [N]
// Forward and backward have a CUDA kernel (bf16/fp16/fp32) and a LibTorch reference.
#pragma once

#include <tuple>

#include <ATen/core/Tensor.h>

#include "kernels/kernels_available.h"

namespace ftd::kernels {

// Differentiable op: the CUDA kernels on CUDA tensors when built with CUDA, else the reference.
at::Tensor WeightedSwiglu(const at::Tensor& h, const at::Tensor& w);

// LibTorch references (autograd-free math, fp32 accumulation like the kernels).
at::Tensor WeightedSwigluForwardReference(const at::Tensor& h, const at::Tensor& w);
// Returns (dh [N, 2F], dw [N]).
std::tuple<at::Tensor, at::Tensor> WeightedSwigluBackwardReference(const at::Tensor& dout, const at::Tensor& h,
                                                                   const at::Tensor& w);

// The raw CUDA launchers (FTD_WITH_CUDA; CPU-only builds define them to throw).
at::Tensor WeightedSwigluForwardCuda(const at::Tensor& h, const at::Tensor& w);
std::tuple<at::Tensor, at::Tensor> WeightedSwigluBackwardCuda(const at::Tensor& dout, const at::Tensor& h,
                                                              const at::Tensor& w);

}  // namespace ftd::kernels
