// The module families LoRA can adapt (a job's lora.targets) and what they cost, LibTorch-free:
// the engine (engine/model/lora.h), the coordinator's validation and memory plan read the same
// model layout (engine/model/tensor_layout.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/model/tensor_layout.h"

namespace ftd::engine {

struct ModelConfig;

enum LoraTarget : uint32_t {
  kLoraNone = 0,
  // q/k/v/o, or MLA's q_a/q_b (q)/kv_a/kv_b/o projections. Softmax attention only: Nemotron-H's
  // Mamba2 in_proj/out_proj are no target (no family names them; an adapter on them is refused).
  kLoraAttention = 1,
  kLoraMlp = 2,            // the dense MLP of dense layers (gate/up/down; relu^2: up/down)
  kLoraExperts = 4,        // routed experts: gate_up (relu^2: up) and down; LatentMoE's fc1/fc2_latent_proj
  kLoraSharedExperts = 8,  // shared experts' gate/up/down (DeepSeek-V3, Qwen2-MoE, Nemotron-H: up/down)
};

// "attention" | "mlp" | "experts" | "shared_experts" -> its bit; false for any other name (the
// router included: it is never adapted).
bool LoraTargetFromName(const std::string& name, uint32_t* bit);
std::vector<std::string> LoraTargetNames(uint32_t targets);
// The default when a spec names none.
constexpr uint32_t kDefaultLoraTargets = kLoraAttention | kLoraExperts;

// The target family a layout entry belongs to, or kLoraNone (norms, router, embeddings, ...).
LoraTarget LoraTargetOfSlot(Slot slot);

struct LoraParameterCounts {
  int64_t dense = 0;   // adapters of linears (attention, dense MLPs, shared experts, latent projections)
  int64_t expert = 0;  // adapters of the routed experts, all experts (sharded with them over ep)
  int64_t total() const { return dense + expert; }
};
// Rank-r adapters on every entry of `targets`: r·(in + out) a linear, E·r·(in + out) the experts.
LoraParameterCounts CountLoraParameters(const ModelConfig& config, int64_t rank, uint32_t targets);

// INVALID_ARGUMENT naming `field` (e.g. "lora.targets") when a target matches nothing in the model.
absl::Status CheckLoraTargets(const ModelConfig& config, uint32_t targets, const std::string& field);

}  // namespace ftd::engine
