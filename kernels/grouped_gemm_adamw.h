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

// The norm that clipping needs before the update: adds the sum of squares of dW (of the bf16 dW
// for bf16 operands; the Grams give that of its fp32 accumulation, within 1.5e-4 relative of the
// bf16 one's in the CUDA tests and benchmarks) to `sq_sum` (fp32 [1] on the operands' device),
// without forming dW on an sm90 GPU when M is a multiple of 256.
// On the GPU the norm comes from the groups' token Gram matrices where they pay
// (PickWeightGradNormMethod), else from the weight-gradient GEMM with a squares-only epilogue.
void GroupedMmWeightGradSquaredNorm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                    const at::Tensor& sq_sum);
bool GroupedMmWeightGradSquaredNormCudaSupports(const at::Tensor& a, const at::Tensor& b, const at::Tensor& sq_sum);

// The fused launches (FTD_WITH_CUTLASS; otherwise they throw).
void GroupedMmWeightGradCompactAdamWCuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                         const at::Tensor& param, const at::Tensor& master_low,
                                         const CompactMoments& moments, const at::Tensor& step, const AdamWHyper& h);
// How the sm90 launch takes the weight gradient's squared norm.
enum class WeightGradNormMethod {
  kAuto,  // PickWeightGradNormMethod
  // ||a_g^T b_g||^2 = sum_ij (a_g a_g^T)_ij (b_g b_g^T)_ij: two GEMMs per group of 2 T_g^2 k and
  // 2 T_g^2 m FLOPs against the product's 2 T_g k m (kernels/grouped_gemm_sm90_gram.cu). The first
  // Grams are held in fp32, gram_capacity floats in all (< 0: min(N^2, 2 N^2 / E + 2^20)); a group
  // that does not fit (an expert far above its share of the rows) takes the squares-only GEMM.
  kGram,
  // The weight-gradient GEMM with a squares-only epilogue: the product's FLOPs, nothing stored.
  kSquaresOnly,
};
// The Grams where they pay, by the mean rows a group (N / E) of a [N, K], b [N, M]: at least 512,
// and their FLOPs at most half the product's. On an H100 the Grams of Mixtral-8x7B's experts
// (~1,000 rows each) took 0.89 / 1.42 ms against the squares-only GEMM's 1.66 / 3.20 (down /
// gate_up); at Qwen3-30B-A3B's ~256 rows (their FLOPs 0.29-0.46 of the product's, but small
// square tiles and a real router's uneven loads) they were slower in the step (bench/RESULTS.md).
WeightGradNormMethod PickWeightGradNormMethod(int64_t rows, int64_t groups, int64_t k, int64_t m);
void GroupedMmWeightGradSquaredNormCuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                        const at::Tensor& sq_sum,
                                        WeightGradNormMethod method = WeightGradNormMethod::kAuto,
                                        int64_t gram_capacity = -1);

}  // namespace ftd::kernels
