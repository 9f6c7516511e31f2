// Attention with learned per-head sinks (GPT-OSS) on FlashAttention-2, without masks or padded
// head dims: the sink is one more logit in each query's softmax that carries no value, so with
// the kernel's output O (softmax over the real keys) and logsumexp L, the sink output is exactly
//   O_sink = O * r,  r = sigmoid(L - sink) = sum exp(s) / (sum exp(s) + exp(sink)).
// Backward, for upstream gradient G: the kernel's backward with dout = r * G and out = O_sink
// (its row term D = rowsum(dout * out) then equals r^2 * rowsum(G * O), which is the plain
// D = r * rowsum(G * O) minus dL = rowsum(G * O) * r * (1 - r), the gradient through L), and
//   dsink = -sum over queries of (1 - r) * rowsum(G * O_sink).
// The same contract runs on the CPU with the dense reference kernel (flash_attention_reference.h),
// which is how tests/engine/sink_attention_flash_test.cc checks it against HF's formula.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include "engine/model/varlen_attention.h"

namespace ftd::engine {

// Whether SinkAttentionFlash serves these activations: CUDA in fp16/bf16 within the varlen
// kernel's limits (VarlenAttentionSupports), or the CPU (the dense reference kernel, any float).
bool SinkAttentionFlashSupports(c10::Device device, c10::ScalarType dtype, int64_t head_dim, int64_t q_heads,
                                int64_t kv_heads);

// q [B, S, Hq, D], k, v [B, S, Hkv, D] (GQA: K/V never repeated), sinks [Hq] -> [B, S, Hq, D],
// differentiable in q, k, v and sinks. Query i attends causally within its sequence: the
// documents of `documents` over the B * S flattened tokens (packed rows), or each row when its
// cu_seqlens is undefined; window > 0 keeps only keys j > i - window (HF's sliding window:
// the query and the window - 1 keys before it).
at::Tensor SinkAttentionFlash(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& sinks,
                              const VarlenBoundaries& documents, int64_t window, double scale);

}  // namespace ftd::engine
