// RMSNorm as HF computes it, and the residual-add variant of the decoder layer:
//   y = w * cast(x * rsqrt(mean(x^2) + eps))      statistics in fp32, x [..., D], w [D]
//   AddRmsNorm(x, r, w) = (RmsNorm(x + r, w), x + r)
// Forward and backward have CUDA kernels (bf16/fp16/fp32, x and w of one dtype, D <= 8192) and
// LibTorch references. The backward reduces dw as per-block partial sums, then one column sum.
#pragma once

#include <tuple>

#include <ATen/core/Tensor.h>

#include "kernels/kernels_available.h"

namespace ftd::kernels {

// Differentiable ops: the CUDA kernels for CUDA tensors the kernels support, else the reference.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& w, double eps);
// Returns (normed, x + residual); both outputs are differentiable.
std::tuple<at::Tensor, at::Tensor> AddRmsNorm(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& w,
                                              double eps);

// Whether the CUDA kernels handle these operands (CUDA, same floating dtype, supported D).
bool RmsNormCudaSupports(const at::Tensor& x, const at::Tensor& w);

// LibTorch references. Forward returns (y, rstd) with rstd [rows] fp32 (rows = numel / D).
std::tuple<at::Tensor, at::Tensor> RmsNormForwardReference(const at::Tensor& x, const at::Tensor& w, double eps);
// Mirrors ATen's autograd of the forward (intermediate roundings included). Returns (dx, dw).
std::tuple<at::Tensor, at::Tensor> RmsNormBackwardReference(const at::Tensor& dy, const at::Tensor& x,
                                                            const at::Tensor& w, const at::Tensor& rstd);

// Raw CUDA launchers (FTD_WITH_CUDA; CPU-only builds define them to throw). `residual` may be undefined; when
// given, the kernel normalises x + residual and returns it as `sum`. Returns (y, sum, rstd).
std::tuple<at::Tensor, at::Tensor, at::Tensor> RmsNormForwardCuda(const at::Tensor& x, const at::Tensor& residual,
                                                                  const at::Tensor& w, double eps);
// dx = d(normalise)/dx . dy (+ dsum when defined: the gradient reaching x + residual directly).
std::tuple<at::Tensor, at::Tensor> RmsNormBackwardCuda(const at::Tensor& dy, const at::Tensor& dsum,
                                                       const at::Tensor& x, const at::Tensor& w,
                                                       const at::Tensor& rstd);

}  // namespace ftd::kernels
