// relu^2 with the routing weight folded in, the activation of Nemotron-H's experts (no gate):
//   out[n, f] = relu(h[n, f])^2 * w[n]       h [N, F], w [N]
// Forward and backward have a CUDA kernel (bf16/fp16/fp32) and a LibTorch reference.
#pragma once

#include <tuple>

#include <ATen/core/Tensor.h>

#include "kernels/kernels_available.h"

namespace ftd::kernels {

// Differentiable op: the CUDA kernels on CUDA tensors when built with CUDA, else the reference.
at::Tensor WeightedRelu2(const at::Tensor& h, const at::Tensor& w);

// LibTorch references (autograd-free math, fp32 accumulation like the kernels).
at::Tensor WeightedRelu2ForwardReference(const at::Tensor& h, const at::Tensor& w);
// Returns (dh [N, F], dw [N]).
std::tuple<at::Tensor, at::Tensor> WeightedRelu2BackwardReference(const at::Tensor& dout, const at::Tensor& h,
                                                                  const at::Tensor& w);

// The raw CUDA launchers (FTD_WITH_CUDA; CPU-only builds define them to throw).
at::Tensor WeightedRelu2ForwardCuda(const at::Tensor& h, const at::Tensor& w);
std::tuple<at::Tensor, at::Tensor> WeightedRelu2BackwardCuda(const at::Tensor& dout, const at::Tensor& h,
                                                             const at::Tensor& w);

}  // namespace ftd::kernels
