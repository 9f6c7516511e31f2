// Rotary position embeddings: inverse frequencies of the config's rope type (default, linear,
// llama3, yarn with DeepSeek's mscale), cos/sin per position, and the rotation in HF's
// rotate-half layout (MLA's, with DeepSeek-V3's interleaved pairs, is in kernels/mla_qkv.h).
#pragma once

#include <utility>

#include <ATen/core/Tensor.h>

#include "engine/model/config.h"

namespace ftd::engine {

// Inverse frequencies [rope_dim/2] fp32 and the cos/sin scaling (yarn's attention factor) of
// the config's rope type, over config.rope_dim() rotary dimensions.
std::pair<at::Tensor, double> RopeInverseFrequencies(const ModelConfig& config);

// cos, sin [B, S, rope_dim] in `dtype` for positions [B, S].
std::pair<at::Tensor, at::Tensor> RopeCosSin(const at::Tensor& inv_freq, double attention_scaling,
                                             const at::Tensor& position_ids, at::ScalarType dtype);

// x [B, heads, S, D] rotated by cos/sin [B, S, D]. On CUDA, when x is the heads-transposed view
// of a contiguous [B, S, heads, D] tensor (as in GQA attention), the fused kernel.
at::Tensor ApplyRope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace ftd::engine
