// The MoE block: router -> permute tokens by expert -> grouped GEMM gate_up -> SwiGLU with the
// routing weight folded in -> grouped GEMM down -> unpermute-sum. The dispatch between
// permute and the expert GEMMs is pluggable so expert parallelism can exchange tokens there.
#pragma once

#include <cstdint>
#include <functional>

#include <ATen/core/Tensor.h>

#include "engine/model/config.h"
#include "engine/model/weights.h"

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

// Router in fp32: scores (softmax or sigmoid), top-k, optional renormalisation. On CUDA with the
// real gate, one fused kernel (kernels/router.h) that also counts tokens per expert.
Routing Route(const at::Tensor& x, const at::Tensor& router_weight, const ModelConfig& config, GateMode gate);

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

// out[r] = rows[r] @ w[e(r)] where rows of expert e are the e-th contiguous group of `counts`.
// rows [N, K], w [E, K, M] -> [N, M]. bf16 CUDA uses at::_grouped_mm; otherwise a loop of mm.
at::Tensor GroupedMatmul(const at::Tensor& rows, const at::Tensor& w, const at::Tensor& counts);

// Expert compute on already-grouped rows: [N, H] -> [N, H] (SwiGLU, weight folded in).
at::Tensor ExpertsForward(const at::Tensor& rows, const at::Tensor& row_weights, const at::Tensor& counts,
                          const MoeWeights& w);

// Token-level form of the dispatch: the layer's tokens [T, H] (each once) and their routing in,
// the combined expert output [T, H] out. Expert parallelism uses it to send each token once per
// destination rank and expand it to its experts there.
using TokenDispatch = std::function<at::Tensor(const at::Tensor& tokens, const Routing& routing, const MoeWeights& w)>;

struct MoeOutput {
  at::Tensor out;            // [B, S, H]
  at::Tensor router_logits;  // [T, E] fp32
  at::Tensor expert_counts;  // [E] tokens routed to each expert
};

// This rank's experts on all of the layer's tokens (no expert parallelism).
// save_expert_activation: see ExpertMlpRecompute (engine/model/expert_mlp.h).
MoeOutput MoeBlock(const at::Tensor& x, const MoeWeights& w, const ModelConfig& config, GateMode gate,
                   bool save_expert_activation = false);

// MoeBlock with a token-level dispatch in place of permute -> experts -> unpermute.
MoeOutput MoeBlockByToken(const at::Tensor& x, const MoeWeights& w, const ModelConfig& config, GateMode gate,
                          const TokenDispatch& dispatch);

// HF's load-balancing loss over layers' router logits [T, E] (mean over tokens; no padding mask).
at::Tensor LoadBalancingLoss(const std::vector<at::Tensor>& router_logits, int64_t num_experts, int64_t top_k);

}  // namespace ftd::engine
