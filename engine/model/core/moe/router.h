// The MoE router (Megatron-Core's TopKRouter): fp32 logits -> scores (softmax | sigmoid) ->
// optional selection bias (DeepSeek-V3's e_score_correction_bias: moves the choice, never the
// weights) -> optional group-limited candidates (n_group groups ranked by their two best scores,
// the top topk_group kept) -> top-k -> optional renormalisation -> times routed_scaling_factor.
// Also the load-balancing loss (Qwen3-MoE) and the aux-loss-free bias update (DeepSeek-V3).
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "engine/model/config.h"

namespace ftd::engine {

enum class GateMode {
  kReal,      // the model's router
  kBalanced,  // benchmark gate: token t -> experts (t*k + j) mod E, weight 1/k
  // Test gates for skewed expert parallelism: the model's router restricted to a prefix of the
  // experts (the routing logits stay unrestricted for the aux loss).
  kSkewFirstK,     // experts [0, k): every token lands on the lowest experts (one EP rank's)
  kSkewLowerHalf,  // experts [0, E/2): the EP ranks holding the upper half receive no tokens
};

struct Routing {
  at::Tensor logits;   // [T, E] fp32 (for the aux loss)
  at::Tensor weights;  // [T, k] in the activation dtype
  at::Tensor experts;  // [T, k] int64
  at::Tensor counts;   // [E] int64 tokens per expert when the fused CUDA router ran, else undefined
};

// x [T, H], router_weight [E, H], selection_bias [E] fp32 or undefined. On CUDA with the real
// gate, one fused kernel (kernels/router.h) that also counts tokens per expert, unless the
// selection is group-limited (then ATen). logit_bias [E] (GPT-OSS's trained router bias) is added
// to the logits, or undefined.
Routing Route(const at::Tensor& x, const at::Tensor& router_weight, const ModelConfig& config, GateMode gate,
              const at::Tensor& selection_bias = {}, const at::Tensor& logit_bias = {});

// HF's load-balancing loss over layers' router logits [T, E] (mean over tokens; no padding mask).
at::Tensor LoadBalancingLoss(const std::vector<at::Tensor>& router_logits, int64_t num_experts, int64_t top_k);

// DeepSeek-V3's auxiliary-loss-free balancing, after an optimizer step: bias_e += speed *
// sign(mean load - load_e) for tokens-per-expert `load` [E] (any dtype). In place, no autograd.
void UpdateSelectionBias(at::Tensor& bias, const at::Tensor& load, double speed);

}  // namespace ftd::engine
