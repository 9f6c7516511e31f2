// Grouped-query self-attention (Qwen3-MoE): q/k/v/o projections, optional per-head q/k RMSNorm,
// rotary embeddings, causal SDPA or varlen attention over packed documents. Also the per-batch
// attention context every attention kind shares.
#pragma once

#include <ATen/core/Tensor.h>

#include "engine/model/config.h"
#include "engine/model/varlen_attention.h"
#include "engine/model/weights.h"

namespace ftd::engine {

// Optional restrictions on attention beyond causality: tokens attend only within their
// document (segment_ids [B, S], packed batches), through varlen boundaries (CUDA, fp16/bf16)
// or a dense mask (CPU and the rest). At most one of the two is set; neither: plain causal.
struct AttentionContext {
  at::Tensor cos, sin;          // [B, S, rope_dim]
  at::Tensor mask;              // [B, 1, S, S] bool (true = attend) or undefined
  VarlenBoundaries varlen;      // cu_seqlens over the B * S flattened tokens, or undefined
  // Sink layers (GPT-OSS) run SinkAttentionFlash (SinkLayersUseFlash, transformer.h): causal
  // within varlen's documents (or each row), limited to `window` keys when window > 0; no mask.
  bool flash_sinks = false;
  int64_t window = 0;
  // [B, S] document ids of packed rows on the model's device, for the layers that carry state
  // along the sequence (Mamba2: reset at document starts); undefined when rows are not packed.
  at::Tensor segment_ids;
};

// Builds the boolean attention mask for packed documents; undefined when segment_ids is.
at::Tensor PackedCausalMask(const at::Tensor& segment_ids);
// Causal attention within a window: query i attends to keys j with i - window < j <= i (HF's
// sliding-window causal mask), and only within its document when segment_ids [B, S] is defined.
// [B or 1, 1, S, S] bool on `device`.
at::Tensor SlidingWindowCausalMask(int64_t seq, int64_t window, const at::Tensor& segment_ids, at::Device device);

// Causal attention with a learned sink logit per query head (GPT-OSS, HF's eager_attention_forward):
// the sink joins each softmax as one more logit that carries no value, so a query's weights sum
// to less than one. q [B, Hq, S, D], k/v [B, Hkv, S, D], mask [B or 1, 1, S, S] bool (true =
// attend) or undefined (causal), sinks [Hq] -> [B, Hq, S, D]. Packed rows come with their
// document mask (the flash form, core/sink_attention_flash.h, takes documents as sequences and
// is chosen by GqaAttention from the context instead). CUDA: SinkAttentionSdpa; else
// SinkAttentionDense, HF's own formula and rounding (with the SDPA form on the CPU, one 5-step
// AdamW parity config drifted from HF's losses by 5e-4 at step 4 after agreeing to 4e-7).
at::Tensor SinkAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                         const at::Tensor& sinks, double scale);
// The [B, Hq, S, S] scores materialised, as HF's eager_attention_forward.
at::Tensor SinkAttentionDense(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                              const at::Tensor& sinks, double scale);
// Through SDPA with the sink as one more key (an extra head dimension carries its logit): the
// memory-efficient kernel on CUDA, no [S, S] scores kept for backward. Equal to the dense
// formula forward and backward (tests/engine/gpt_oss_test.cc, on the CPU).
at::Tensor SinkAttentionSdpa(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                             const at::Tensor& sinks, double scale);

// x [B, S, H] -> [B, S, H]. GQA through SDPA's enable_gqa, or natively in the varlen kernel
// (K/V never repeated). On CUDA the q/k norm and RoPE run as one fused kernel per tensor
// (kernels/rope.h).
at::Tensor GqaAttention(const at::Tensor& x, const AttentionWeights& w, const ModelConfig& config,
                        const AttentionContext& ctx);

}  // namespace ftd::engine
