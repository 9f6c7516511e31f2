// The MoE block: router -> token dispatcher (local or expert-parallel) -> [+ shared experts].
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "engine/model/config.h"
#include "engine/model/core/moe/router.h"
#include "engine/model/core/moe/token_dispatcher.h"
#include "engine/model/weights.h"

namespace ftd::engine {

struct MoeOutput {
  at::Tensor out;            // [B, S, H]
  at::Tensor router_logits;  // [T, E] fp32
  at::Tensor expert_counts;  // [E] tokens routed to each expert
};

// x [B, S, H]. `dispatcher` null: every expert local (LocalTokenDispatcher).
MoeOutput MoeBlock(const at::Tensor& x, const MoeWeights& w, const ModelConfig& config, GateMode gate,
                   TokenDispatcher* dispatcher);

}  // namespace ftd::engine
