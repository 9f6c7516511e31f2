// Cross-entropy of a linear head without the full [tokens, vocab] fp32 logits: the tokens are
// processed in chunks, and each chunk's gradients (dh, dW) are computed in the forward pass
// (the loss is the last node, so its incoming gradient is a scalar applied in backward). The
// same three GEMMs as a plain head (logits, dh, dW), no recomputation, and at most one chunk of
// fp32 logits alive.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace ftd::engine {

// Sum over valid targets (target != -100) of -log softmax(h @ W^T)[target]. h [N, H], W [V, H],
// targets [N] int64. Returns a scalar fp32 tensor; differentiable in h and W.
// `expected_grad`: the gradient the caller will send into the sum (1/targets for a mean loss).
// The chunk GEMMs then produce dh and dW already scaled by it (their alpha), and backward, after
// one host check that the incoming gradient is that value, returns them as they are; any other
// incoming gradient is applied with one more pass, so the result is the same either way. With
// the default 1 the incoming gradient is always applied (and no host check is made).
// `expected_grad_exact`: the caller guarantees the incoming gradient is expected_grad (its loss
// is the sum times that constant), so backward makes no host check (no device sync).
// `rows` (>= 0, < N): compute only that many rows, the rows with a target first (in order), so
// the three GEMMs skip the ignored rows (a prompt's, padding); the ignored rows' dh is zero. The
// caller guarantees rows >= the number of targets (a row with a target past `rows` would be
// left out of the loss). -1: every row.
at::Tensor LinearCrossEntropySum(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& targets,
                                 int64_t chunk_tokens = 1024, double expected_grad = 1.0,
                                 bool expected_grad_exact = false, int64_t rows = -1);

}  // namespace ftd::engine
