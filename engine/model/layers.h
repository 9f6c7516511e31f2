// The dense building blocks of a decoder layer: RMSNorm, rotary embeddings, attention and the
// dense SwiGLU MLP. Plain functions over weights; autograd comes from ATen.
#pragma once

#include <optional>
#include <utility>

#include <ATen/core/Tensor.h>

#include "engine/model/config.h"
#include "engine/model/varlen_attention.h"
#include "engine/model/weights.h"

namespace ftd::engine {

// HF RMSNorm: normalise in fp32, cast back, then scale. x [..., D], weight [D]. On CUDA the
// fused kernel (kernels/rms_norm.h); on CPU the ATen formula.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);

// The decoder layer's residual add fused with the next norm: returns (RmsNorm(x + residual),
// x + residual), one pass on CUDA.
std::pair<at::Tensor, at::Tensor> AddRmsNorm(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                                             double eps);

// Inverse frequencies [head_dim/2] fp32 and the attention scaling of the config's rope type.
std::pair<at::Tensor, double> RopeInverseFrequencies(const ModelConfig& config);

// cos, sin [B, S, head_dim] in `dtype` for positions [B, S].
std::pair<at::Tensor, at::Tensor> RopeCosSin(const at::Tensor& inv_freq, double attention_scaling,
                                             const at::Tensor& position_ids, at::ScalarType dtype);

// x [B, heads, S, D] rotated by cos/sin [B, S, D]. On CUDA, when x is the heads-transposed view
// of a contiguous [B, S, heads, D] tensor (as in Attention), the fused kernel.
at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

// Optional restrictions on attention beyond causality: tokens attend only within their
// document (segment_ids [B, S], packed batches), through varlen boundaries (CUDA, fp16/bf16)
// or a dense mask (CPU and the rest). At most one of the two is set; neither: plain causal.
struct AttentionContext {
  at::Tensor cos, sin;          // [B, S, head_dim]
  at::Tensor mask;              // [B, 1, S, S] bool (true = attend) or undefined
  VarlenBoundaries varlen;      // cu_seqlens over the B * S flattened tokens, or undefined
};

// Builds the boolean attention mask for packed documents; undefined when segment_ids is.
at::Tensor PackedCausalMask(const at::Tensor& segment_ids);

// Self-attention: x [B, S, H] -> [B, S, H]. GQA through SDPA's enable_gqa, or natively in the
// varlen kernel (K/V never repeated). On CUDA the q/k norm and RoPE run as one fused kernel per
// tensor (kernels/rope.h).
at::Tensor Attention(const at::Tensor& x, const AttentionWeights& w, const ModelConfig& config,
                     const AttentionContext& ctx);

// Dense SwiGLU MLP: x [..., H] -> [..., H].
at::Tensor DenseMlp(const at::Tensor& x, const DenseMlpWeights& w);

}  // namespace ftd::engine
