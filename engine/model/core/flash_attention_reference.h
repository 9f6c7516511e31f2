// FlashAttention-2's variable-length contract computed densely on any device (the CPU in tests
// and CPU runs): the stand-in for at::_flash_attention_{forward,backward} wherever that kernel
// cannot run, so code built on the kernel's outputs (SinkAttentionFlash) is testable without a
// GPU. Same layouts and roles as the kernel: the forward returns the output and the logsumexp
// of each query's scores; the backward recomputes the probabilities from q, k and that
// logsumexp, and takes each query's row term D = rowsum(dout * out) from the `out` it is given.
#pragma once

#include <cstdint>
#include <tuple>
#include <utility>

#include <ATen/core/Tensor.h>

namespace ftd::engine {

// Causal attention within each sequence of cu_seqlens [N + 1] (int32 or int64, any device);
// window > 0 also limits query i to keys j > i - window (FlashAttention's window_size_left =
// window - 1, window_size_right = 0). q [T, Hq, D], k, v [T, Hkv, D] (Hq a multiple of Hkv, K/V
// head h / (Hq / Hkv) serving q head h) -> out [T, Hq, D] in q's dtype, logsumexp [Hq, T]
// (fp32 for fp16/bf16/fp32 inputs, fp64 for fp64).
std::pair<at::Tensor, at::Tensor> FlashAttentionReferenceForward(const at::Tensor& q, const at::Tensor& k,
                                                                 const at::Tensor& v, const at::Tensor& cu_seqlens,
                                                                 int64_t window, double scale);

// The gradients of that attention for upstream dout [T, Hq, D]: P = exp(scores - logsumexp),
// dS = P * (dout v^T - rowsum(dout * out)) -> dq [T, Hq, D], dk, dv [T, Hkv, D] (summed over each
// K/V head's group of q heads), in q's dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor> FlashAttentionReferenceBackward(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& logsumexp, const at::Tensor& cu_seqlens, int64_t window, double scale);

}  // namespace ftd::engine
