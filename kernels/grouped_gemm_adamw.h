// The experts' weight gradient taken straight into the compact AdamW step (the optimizer inside
// backward): dW[g] = a[rows_g]^T @ b[rows_g] of a stacked expert weight [E, K, M] steps that
// weight in place, as GroupedMmWeightGrad followed by CompactAdamWStep would. On an sm90 GPU the
// update runs in the grouped GEMM's epilogue (kernels/grouped_gemm_sm90_wgrad_adamw.cu), so the
// gradient is never written to or read from memory, or (WeightGradUpdate::kL2Chunks) the two run
// a few groups at a time so that each chunk's gradient is read back from L2; elsewhere the two
// steps run one after the other (the reference).
#pragma once

#include <ATen/core/Tensor.h>

#include "kernels/adamw_compact.h"

namespace ftd::kernels {

// How an sm90 GPU runs it:
enum class WeightGradUpdate {
  // The update in the GEMM's epilogue: dW never leaves the SM. Its 8 consumer warps an SM are
  // bound by the update's arithmetic (~1.3 TB/s on an H100).
  kEpilogue,
  // The plain GEMM and the element-wise kernel (24 warps an SM), a few groups at a time: each
  // chunk's dW is one buffer (the allocator hands back the same block every chunk) small enough
  // to be read back from the 50 MB L2, so its round trip through HBM is mostly saved.
  kL2Chunks,
};
const char* WeightGradUpdateName(WeightGradUpdate how);

// a [N, K], b [N, M] (contiguous), offs [E] int32 on their device; param [E, K, M] with its
// master_low and moments; step already incremented.
void GroupedMmWeightGradCompactAdamW(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                     const at::Tensor& param, const at::Tensor& master_low,
                                     const CompactMoments& moments, const at::Tensor& step, const AdamWHyper& h,
                                     WeightGradUpdate how = WeightGradUpdate::kEpilogue);

// Whether `how` serves these operands on the GPU: GroupedMmWeightGradCudaSupports(a, b), a bf16
// [E, K, M] parameter with its compact state on their device, and M (kEpilogue) or K * M
// (kL2Chunks) a multiple of 256.
bool GroupedMmWeightGradCompactAdamWCudaSupports(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                                 const at::Tensor& param, const at::Tensor& master_low,
                                                 const CompactMoments& moments, const at::Tensor& step,
                                                 const AdamWHyper& h,
                                                 WeightGradUpdate how = WeightGradUpdate::kEpilogue);

// kL2Chunks: groups a chunk holds for a [K, M] bf16 gradient each (at least one).
int64_t L2ChunkGroups(int64_t k, int64_t m);
// kL2Chunks on the GPU, `chunk_groups` groups a chunk (0: L2ChunkGroups). With discard_chunks
// each chunk's lines leave L2 as the step reads them (AdamWHyper::discard_grad), not written back.
void GroupedMmWeightGradThenCompactAdamWCuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                             const at::Tensor& param, const at::Tensor& master_low,
                                             const CompactMoments& moments, const at::Tensor& step,
                                             const AdamWHyper& h, int64_t chunk_groups = 0,
                                             bool discard_chunks = true);

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
