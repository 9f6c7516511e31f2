// Token dispatch of a MoE layer (Megatron-Core's token dispatcher): sends each routed token to
// its experts, runs them, and brings the weighted outputs back summed per token. Expert
// parallelism is applied to the MoE block by giving it another dispatcher (the all-to-all one,
// engine/dist/expert_parallel.h), not by changing the model.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "engine/model/core/moe/router.h"
#include "engine/model/weights.h"

namespace ftd::engine {

struct DispatchResult {
  at::Tensor out;     // [T, H]: sum over each token's k experts of weight · expert(token)
  at::Tensor counts;  // [E] tokens per expert (all experts), or undefined (the caller counts)
};

class TokenDispatcher {
 public:
  virtual ~TokenDispatcher() = default;
  // tokens [T, H] (each once) routed by `routing` (global expert ids); `experts` holds this
  // rank's experts. Collective for distributed dispatchers: every rank calls it for the same
  // layers in the same order.
  virtual DispatchResult Dispatch(const at::Tensor& tokens, const Routing& routing, const MoeWeights& experts) = 0;
};

// Tokens grouped by expert: rows of `x` gathered so that each expert's rows are contiguous.
struct Permutation {
  at::Tensor token_index;  // [T*k] source token of each sorted row
  at::Tensor weights;      // [T*k] routing weight of each sorted row
  at::Tensor counts;       // [E] rows per expert (int64)
  // CUDA (counting sort): sorted row -> flat index t*k+j, and flat index -> sorted row; the
  // fused PermuteRows / UnpermuteSum use them. Undefined on CPU.
  at::Tensor order, inverse;
};
Permutation PermuteByExpert(const Routing& routing, int64_t num_experts);

// Every expert on this rank: permute -> grouped experts -> unpermute-sum. On CUDA (bf16) the
// whole path is one autograd op that saves only the gate_up output
// (engine/model/core/moe/expert_mlp.h).
class LocalTokenDispatcher final : public TokenDispatcher {
 public:
  // save_expert_activation: see ExpertMlpRecompute.
  explicit LocalTokenDispatcher(bool save_expert_activation = false)
      : save_expert_activation_(save_expert_activation) {}
  DispatchResult Dispatch(const at::Tensor& tokens, const Routing& routing, const MoeWeights& experts) override;

 private:
  bool save_expert_activation_;
};

}  // namespace ftd::engine
