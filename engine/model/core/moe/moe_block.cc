#include "engine/model/core/moe/moe_block.h"

#include <ATen/ATen.h>

#include "engine/model/core/dense_mlp.h"
#include "engine/model/lora.h"

namespace ftd::engine {

MoeOutput MoeBlock(const at::Tensor& x, const MoeWeights& w, const ModelConfig& c, GateMode gate,
                   TokenDispatcher* dispatcher) {
  const int64_t B = x.size(0), S = x.size(1), H = x.size(2);
  at::Tensor flat = x.reshape({B * S, H});
  Routing routing = Route(flat, w.router, c, gate, w.router_bias, w.router_logit_bias);
  LocalTokenDispatcher local;
  // LatentMoE (Nemotron-H): the routed experts, and the tokens sent to them, are L wide.
  at::Tensor expert_in =
      w.latent_down.defined() ? LinearWithLora(flat, w.latent_down, {}, w.latent_down_lora) : flat;  // [T, L or H]
  DispatchResult routed = (dispatcher != nullptr ? dispatcher : &local)->Dispatch(expert_in, routing, w);
  at::Tensor out =
      w.latent_up.defined() ? LinearWithLora(routed.out, w.latent_up, {}, w.latent_up_lora) : routed.out;  // [T, H]
  if (w.shared.up_proj.defined()) {
    at::Tensor shared = DenseMlp(flat, w.shared);  // [T, H]
    if (w.shared_expert_gate.defined()) shared = at::sigmoid(at::linear(flat, w.shared_expert_gate)) * shared;
    out = out + shared;
  }
  at::Tensor counts = routed.counts.defined() ? routed.counts
                      : routing.counts.defined() ? routing.counts
                                                 : at::bincount(routing.experts.reshape({-1}), {}, c.num_experts);
  return {out.view({B, S, H}), routing.logits, counts};
}

}  // namespace ftd::engine
