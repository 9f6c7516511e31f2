// The fused MoE router: fp32 logits [T, E] -> scores (softmax or sigmoid) -> top-k of
// (scores + optional selection bias, as DeepSeek-V3) -> optional renormalisation of the chosen
// scores -> times `scale` -> weights [T, k] in `weight_dtype`, experts [T, k] int64, and the
// per-expert counts [E] int64 from the same pass. Equal selection scores rank the lower expert
// index first (a stable descending sort). The weights are differentiable in the logits.
// CUDA: one warp per token, the row in registers (E <= 1024, k <= 32).
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "kernels/kernels_available.h"

namespace ftd::kernels {

enum class RouterScore { kSoftmax, kSigmoid };

struct RouterOptions {
  int64_t top_k = 1;
  RouterScore score = RouterScore::kSoftmax;
  bool renormalize = false;  // divide the k chosen scores by their sum
  double scale = 1.0;        // e.g. DeepSeek-V3's routed_scaling_factor
  at::ScalarType weight_dtype = at::kFloat;
};

struct RouterOutput {
  at::Tensor weights;  // [T, k] weight_dtype
  at::Tensor experts;  // [T, k] int64
  at::Tensor counts;   // [E] int64
};

// `bias` [E] fp32 or undefined; it moves only the selection, never the weights.
RouterOutput RouterTopK(const at::Tensor& logits, const at::Tensor& bias, const RouterOptions& options);

RouterOutput RouterTopKReference(const at::Tensor& logits, const at::Tensor& bias, const RouterOptions& options);
// d(logits) [T, E] fp32 given d(weights) [T, k] and the chosen experts.
at::Tensor RouterTopKBackwardReference(const at::Tensor& dweights, const at::Tensor& logits, const at::Tensor& experts,
                                       const RouterOptions& options);

// FTD_WITH_CUDA; CPU-only builds define them to throw.
RouterOutput RouterTopKForwardCuda(const at::Tensor& logits, const at::Tensor& bias, const RouterOptions& options);
at::Tensor RouterTopKBackwardCuda(const at::Tensor& dweights, const at::Tensor& logits, const at::Tensor& experts,
                                  const RouterOptions& options);

}  // namespace ftd::kernels
