// The experts' weight gradient taken straight into the compact AdamW step (the optimizer inside
// backward): dW[g] = a[rows_g]^T @ b[rows_g] of a stacked expert weight [E, K, M] steps that
// weight in place, as GroupedMmWeightGrad followed by CompactAdamWStep would. On an sm90 GPU the
// update runs in the grouped GEMM's epilogue (kernels/grouped_gemm_sm90_wgrad_adamw.cu), so the
// gradient is never written to or read from memory; elsewhere the two steps run one after the
// other (the reference).
#pragma once

#include <ATen/core/Tensor.h>

#include "kernels/adamw_compact.h"

namespace ftd::kernels {

// a [N, K], b [N, M] (contiguous), offs [E] int32 on their device; param [E, K, M] with its
// master_low and moments; step already incremented.
void GroupedMmWeightGradCompactAdamW(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                     const at::Tensor& param, const at::Tensor& master_low,
                                     const CompactMoments& moments, const at::Tensor& step, const AdamWHyper& h);

// Whether the fused kernel serves these operands: GroupedMmWeightGradCudaSupports(a, b), a bf16
// [E, K, M] parameter with its compact state on their device, and M a multiple of 256.
bool GroupedMmWeightGradCompactAdamWCudaSupports(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                                 const at::Tensor& param, const at::Tensor& master_low,
                                                 const CompactMoments& moments, const at::Tensor& step,
                                                 const AdamWHyper& h);

// The two steps, GroupedMmWeightGrad (bf16 output for bf16 operands) then CompactAdamWStep.
void GroupedMmWeightGradCompactAdamWReference(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                              const at::Tensor& param, const at::Tensor& master_low,
                                              const CompactMoments& moments, const at::Tensor& step,
                                              const AdamWHyper& h);

// The norm that clipping needs before the update: adds the sum of squares of dW (as bf16 for
// bf16 operands) to `sq_sum` (fp32 [1] on the operands' device), without forming dW on an sm90
// GPU when M is a multiple of 256 (the same kernel, its epilogue summing instead of updating).
void GroupedMmWeightGradSquaredNorm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                    const at::Tensor& sq_sum);
bool GroupedMmWeightGradSquaredNormCudaSupports(const at::Tensor& a, const at::Tensor& b, const at::Tensor& sq_sum);

// The fused launches (FTD_WITH_CUTLASS; otherwise they throw).
void GroupedMmWeightGradCompactAdamWCuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                         const at::Tensor& param, const at::Tensor& master_low,
                                         const CompactMoments& moments, const at::Tensor& step, const AdamWHyper& h);
void GroupedMmWeightGradSquaredNormCuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                        const at::Tensor& sq_sum);

}  // namespace ftd::kernels
