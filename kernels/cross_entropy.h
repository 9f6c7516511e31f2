// Cross-entropy over rows of logits with the gradient written in place: for logits [N, V]
// (bf16, fp16 or fp32) and targets [N] int64 (ignore_index rows contribute nothing),
//   loss[r]   = logsumexp(logits[r]) - logits[r, t_r]            (fp32, 0 for ignored rows)
//   logits[r] <- softmax(logits[r]) - onehot(t_r)                (rounded to the logits' dtype)
// i.e. the gradient of sum(loss) in the logits. The math is fp32 on the input values, as
// F.cross_entropy(logits.float()) is. The fused linear cross-entropy runs it on each chunk
// of lm_head logits, so no fp32 [tokens, vocab] tensor ever exists.
// CUDA: one block per row, two passes over it (online max/sum, then exp and write).
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "kernels/kernels_available.h"

namespace ftd::kernels {

// Returns (loss [N] fp32, gradient [N, V] in the logits' dtype); `logits` is not modified.
std::pair<at::Tensor, at::Tensor> CrossEntropyRowsReference(const at::Tensor& logits, const at::Tensor& targets,
                                                            int64_t ignore_index);

// Whether the CUDA kernel takes these tensors (CUDA, contiguous [N, V], float types, int64 targets).
bool CrossEntropyRowsCudaSupports(const at::Tensor& logits, const at::Tensor& targets);

// FTD_WITH_CUDA only. Overwrites `logits` with the gradient; returns loss [N] fp32. Targets
// must lie in [0, V) or equal ignore_index (checked on the device).
at::Tensor CrossEntropyRowsInPlaceCuda(const at::Tensor& logits, const at::Tensor& targets, int64_t ignore_index);

}  // namespace ftd::kernels
