// The squared L2 norm of a gradient, for global-norm clipping: sum += sum_i x_i^2, accumulated
// in fp32. The CUDA kernel reads x once in 16-byte vectors (a grid of partial sums, then one
// block adding them in a fixed order: deterministic), where ATen's _foreach_norm on one large
// tensor runs a chain of multi_tensor_apply launches at a third of HBM bandwidth.
#pragma once

#include <ATen/core/Tensor.h>

namespace ftd::kernels {

// sum: fp32 [] on x's device; x: float32, bfloat16 or float16, any shape (made contiguous).
// The CUDA kernel on CUDA tensors when built with CUDA, else the reference; on the current stream.
void AddSquaredNorm(const at::Tensor& x, const at::Tensor& sum);

// ATen's form (any device): sum += _foreach_norm(x)^2.
void AddSquaredNormReference(const at::Tensor& x, const at::Tensor& sum);

// The raw CUDA launcher (FTD_WITH_CUDA; CPU-only builds define it to throw).
void AddSquaredNormCuda(const at::Tensor& x, const at::Tensor& sum);

}  // namespace ftd::kernels
