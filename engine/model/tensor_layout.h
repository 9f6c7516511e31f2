// The tensors of a model as data (LibTorch-free): every tensor a family's checkpoint holds, with
// its HF name, the engine shape, how it is initialised, whether it is an expert tensor
// (sharded over ep) and whether it is a GEMM weight applied per token. A family builds this
// list once (engine/model/registry.h); loading, saving, initialisation, the parameter list, the
// shape checks, and the parameter and FLOP counts of engine, coordinator plan and ftctl all
// walk it. Routed experts are one entry per layer and projection: the engine keeps them fused
// (gate_up [E, H, 2F] = [gate^T | up^T], down [E, F, H] = down_proj^T) while the checkpoint
// holds HF's per-expert keys <experts module>.<e>.{gate,up,down}_proj.weight ([out, in]).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ftd::engine {

struct ModelConfig;

// Where a tensor lives in the engine's weights (engine/model/weights.h binds each slot).
enum class Slot : uint8_t {
  kEmbed, kFinalNorm, kLmHead,
  kInputNorm, kPostAttnNorm,
  // GQA attention.
  kQProj, kKProj, kVProj, kOProj, kQBias, kKBias, kVBias, kOBias, kQNorm, kKNorm,
  kSinks,  // GPT-OSS: per-head attention sink logits [Hq]
  // MLA attention (q_proj and o_proj/o_bias shared with GQA's slots).
  kQaProj, kQaBias, kQaNorm, kQbProj, kKvaProj, kKvaBias, kKvaNorm, kKvbProj,
  // MoE block.
  kRouter, kRouterBias, kExpertsGateUp, kExpertsDown, kSharedGate, kSharedUp, kSharedDown,
  kRouterLogitBias,    // GPT-OSS: trained bias on the router logits [E]
  kExpertsGateUpBias,  // GPT-OSS: [E, 2F] (engine order: [gate | up])
  kExpertsDownBias,    // GPT-OSS: [E, H]
  kSharedExpertGate,  // Qwen2-MoE's sigmoid gate of the shared expert [1, H]
  // Dense MLP.
  kMlpGate, kMlpUp, kMlpDown,
  // Nemotron-H LatentMoE: fc1_latent_proj [L, H], fc2_latent_proj [H, L] around the routed experts.
  kLatentDown, kLatentUp,
  // Mamba2 mixer (Nemotron-H): in_proj [I + conv_dim + nh, H], conv1d weight [conv_dim, 1, K] and
  // bias [conv_dim], A_log / D / dt_bias [nh], the gated norm [I], out_proj [H, I].
  kMambaInProj, kMambaConvWeight, kMambaConvBias, kMambaALog, kMambaD, kMambaDtBias, kMambaNorm, kMambaOutProj,
};

enum class TensorRole : uint8_t {
  kWeight,  // trained; normal(0, initializer_range) at random init
  kNorm,    // trained; ones
  kBias,    // trained; zeros
  kBuffer,  // not trained by gradient (e_score_correction_bias); zeros; kept in fp32
};

// How a checkpoint names its experts: per expert <module>.<e>.{gate,up,down}_proj.weight
// (Qwen, DeepSeek, OLMoE) or <module>.<e>.{w1,w3,w2}.weight (Mixtral); or fused, one tensor
// per layer under the spec's own name, x @ W like the engine, gate and up interleaved in the
// last dim (gate at even, up at odd columns) (GPT-OSS: gate_up_proj [E, H, 2F], its bias
// [E, 2F], down_proj [E, F, H], its bias [E, H]).
// kUpDown: experts without a gate (Nemotron-H's relu^2 experts): <module>.<e>.{up,down}_proj.weight,
// the gate_up slot then holding up^T alone [E, H, F].
enum class ExpertNames : uint8_t { kGateUpDown, kW1W3W2, kFusedInterleaved, kUpDown };

struct TensorSpec {
  // HF name; for fused experts the engine name <experts module>.gate_up / .down.
  std::string name;
  Slot slot;
  int64_t layer = -1;           // -1: outside the decoder layers
  std::vector<int64_t> shape;   // engine shape; experts: all E experts in dim 0
  TensorRole role = TensorRole::kWeight;
  bool expert = false;          // routed experts: dim 0 sharded over ep
  bool matmul = false;          // a GEMM weight every token passes through (FLOPs)
  ExpertNames expert_names = ExpertNames::kGateUpDown;  // routed experts' per-expert HF keys
  int64_t numel() const;
};

// The per-expert HF key of fused expert tensor `spec` for global expert `e`: `proj` is
// "gate_proj" or "up_proj" (of a gate_up spec) or "down_proj" (of a down spec).
std::string ExpertTensorName(const TensorSpec& spec, int64_t expert, const char* proj);

// Every tensor of `config`'s model (its family's layout), in checkpoint order.
std::vector<TensorSpec> ModelTensorLayout(const ModelConfig& config);

// Counts over a layout. Active: routed experts count top-k of E.
struct ParameterCounts {
  int64_t total = 0;
  int64_t active = 0;
  int64_t expert = 0;        // routed experts, all of them
  int64_t dense = 0;         // everything else that is trained
  int64_t buffers = 0;       // not trained (selection biases)
  int64_t layer_dense = 0;      // trained non-expert parameters of the decoder layers
  int64_t max_layer_dense = 0;  // the largest decoder layer's trained non-expert parameters
};
ParameterCounts CountParameters(const ModelConfig& config);

}  // namespace ftd::engine
