// The experts' grouped GEMMs, run by the kernel backends.experts chooses: "ftd" takes ftd's own
// Hopper grouped GEMM (kernels/grouped_gemm.h) where it serves the operands (bf16 on an sm90 GPU,
// built with CUTLASS; not GEMMs with K or output columns under 128, such as a LoRA adapter's rank
// side), "grouped_mm" LibTorch's at::_grouped_mm. Groups are runs of rows given by
// `offs` [E] int32, the inclusive prefix sums of the rows per expert, on the rows' device.
#pragma once

#include <ATen/core/Tensor.h>

namespace ftd::engine {

// [N, K] x [E, K, M] -> [N, M]: out[rows_g] = rows[rows_g] @ w[g]; w contiguous or the
// transpose(1, 2) view of a contiguous [E, M, K]. Not differentiable (for custom backward passes).
at::Tensor ExpertGemm(const at::Tensor& rows, const at::Tensor& w, const at::Tensor& offs);

// [N, K], [N, M] -> [E, K, M]: out[g] = a[rows_g]^T @ b[rows_g] (zeros for an empty group).
at::Tensor ExpertGemmWeightGrad(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs);

// The weight gradient of `weight` (the stacked parameter) when the optimizer takes it straight
// into its step (expert_weight_grad_sink.h; backends.experts "ftd" only): true when it did, and
// the caller forms no gradient; false: the caller forms it with ExpertGemmWeightGrad(a, b, offs).
bool ExpertWeightGradConsumed(const at::Tensor& weight, const at::Tensor& a, const at::Tensor& b,
                              const at::Tensor& offs);

// ExpertGemm with autograd: the backward is ExpertGemm(dy, w^T) and ExpertGemmWeightGrad(rows, dy).
at::Tensor ExpertGemmDifferentiable(const at::Tensor& rows, const at::Tensor& w, const at::Tensor& offs);

// Whether backends.experts "ftd" runs the own kernel for bf16 CUDA operands on this process's GPU.
bool OwnExpertGemmAvailable();

}  // namespace ftd::engine
