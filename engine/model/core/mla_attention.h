// Multi-head latent attention (DeepSeek-V2/V3, HF DeepseekV3Attention), for training (no cache):
//   q  = q_b(RmsNorm(q_a(x)))  or  q_proj(x)                  [B, S, Hq, d_nope + d_rope]
//   kv = kv_a(x) = [latent | k_rope]                           [B, S, kv_lora + d_rope]
//   [k_nope | v] = kv_b(RmsNorm(latent))                        [B, S, Hq, d_nope + d_v]
//   q_rope, k_rope rotated (k_rope one head shared by all), interleaved pairs with rope_interleave
//   out = o_proj(softmax(q·k * scale) v), scale = d_qk^-0.5 · mscale(factor, mscale_all_dim)^2
// The latent norms use eps 1e-6 whatever rms_norm_eps is, as HF's DeepseekV3RMSNorm default.
// Attention runs through SDPA with d_qk != d_v on the CPU; on CUDA V is zero-padded to d_qk so
// flash (SDPA, or varlen for packed documents) serves it, and the padding is sliced off.
#pragma once

#include <ATen/core/Tensor.h>

#include "engine/model/config.h"
#include "engine/model/core/gqa_attention.h"
#include "engine/model/weights.h"

namespace ftd::engine {

// HF's eps of q_a_layernorm and kv_a_layernorm (DeepseekV3RMSNorm's default).
inline constexpr double kMlaLatentNormEps = 1e-6;

// x [B, S, H] -> [B, S, H].
at::Tensor MlaAttention(const at::Tensor& x, const AttentionWeights& w, const ModelConfig& config,
                        const AttentionContext& ctx);

}  // namespace ftd::engine
