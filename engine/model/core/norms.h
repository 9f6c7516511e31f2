// RMSNorm as HF computes it, and the decoder's residual add fused with the next norm.
#pragma once

#include <utility>

#include <ATen/core/Tensor.h>

namespace ftd::engine {

// HF RMSNorm: normalise in fp32, cast back, then scale. x [..., D], weight [D]. On CUDA the
// fused kernel (kernels/rms_norm.h); on CPU the ATen formula.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);

// The decoder layer's residual add fused with the next norm: returns (RmsNorm(x + residual),
// x + residual), one pass on CUDA.
std::pair<at::Tensor, at::Tensor> AddRmsNorm(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                                             double eps);

}  // namespace ftd::engine
