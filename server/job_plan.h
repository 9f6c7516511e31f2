// The resolved plan of a validated JobSpec: world size, data-parallel degree, gradient
// accumulation and an estimate of peak memory per GPU.
//
// Memory estimate (bytes per GPU), from the base model's config.json, counted by the model
// family's tensor layout (engine/model/tensor_layout.h, the code the engine counts with):
//   P_e = routed expert parameters, P_d = all other trained parameters, of which P_l are the
//   decoder layers' and L_max the largest layer's.
//   Experts are sharded over ep (never gathered); dense parameters over the world (ZeRO):
//   s_g = world if zero_stage >= 2, s_o = world if >= 1.
//   weights    2·(P_d + P_e/ep)         bf16; zero_stage 3 (several GPUs): the layers' dense
//                                       parameters are sharded and gathered one layer at a time,
//                                       2·(P_d - P_l + P_l/world + 2·L_max + P_e/ep) (the layer
//                                       computed and the next gathered)
//   grads      2·(P_d/s_g + P_e/ep)     bf16; 0 when the optimizer steps inside backward (one
//                                       GPU, grad_clip 0, one micro-batch a step)
//   optimizer  b·(P_d/s_o + P_e/ep)     b = AdamW state bytes per parameter of spec.precision
//                                       (common/precision_policy.h): 12 fp32_master, ~4.03
//                                       compact (the default), ~2.03 compact_sr, 4 bf16_pure
//   activations per micro batch of T = micro_batch·seq_len tokens (Korthikanti et al. 2022,
//     flash attention, no s² term): 34·H·T per layer; with activation checkpointing
//     2·H·T per layer (the saved layer inputs) + 34·H·T for the layer being recomputed;
//     plus 4·V·T for fp32 logits.
// Method lora: the base is frozen (bf16, not sharded, no gradients, no optimizer state); the
// adapters (A_d on linears, A_e on the routed experts, engine/model/lora_targets.h) add
//   weights 2·(A_d + A_e/ep), grads 2·(A_d/s_g + A_e/ep), optimizer b·(A_d/s_o + A_e/ep) with
//   b of spec.precision, whose auto is fp32_master for adapters.
// It ignores allocator fragmentation, communication buffers and routing imbalance: a lower
// bound to plan with, not a promise.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "ftd/v1/jobs.pb.h"

namespace ftd::server {

struct ModelSize {
  std::string family;             // "DeepSeek-V3"
  int64_t expert_parameters = 0;
  int64_t dense_parameters = 0;
  int64_t layer_dense_parameters = 0;      // of dense_parameters: the decoder layers'
  int64_t max_layer_dense_parameters = 0;  // the largest layer's
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t vocab_size = 0;
  // Method lora: the adapters' parameters (0 for a full fine-tune).
  int64_t lora_dense_parameters = 0;
  int64_t lora_expert_parameters = 0;
  // Per token: the elements of the expert GEMMs' operands that parallelism.recompute_expert_grads
  // holds instead of the expert weight gradients, summed over the MoE layers: top_k x (2 hidden +
  // 3 moe_intermediate) (gate_up's rows and output gradient, down's input and output gradient).
  int64_t expert_operand_elements_per_token = 0;
  // The most elements of an expert weight's gradient that setting forms at one time: whole
  // experts of a layer's gate_up (hidden x 2 moe_intermediate each), as many as fit
  // engine::kRecomputedExpertGradChunkBytes in bf16 (at least one).
  int64_t largest_expert_grad_chunk = 0;
  int64_t total() const { return expert_parameters + dense_parameters; }
};

// Parameter counts from an HF config.json's text, for the model families the engine trains
// (engine/model/registry.h). INVALID_ARGUMENT naming the missing or bad field, or the model_type
// no family supports.
absl::StatusOr<ModelSize> CountParameters(const std::string& config_json);
// The same, with the adapters of `spec` when its method is lora (spec.lora.targets checked
// against the model: INVALID_ARGUMENT naming spec.lora.targets when one matches nothing).
absl::StatusOr<ModelSize> CountParameters(const std::string& config_json, const ftd::v1::JobSpec& spec);

// A method lora spec's targets against <base_model>/config.json (OK when it cannot be read: the
// ranks check again when they load the model).
absl::Status CheckLoraTargets(const ftd::v1::JobSpec& spec);

// Bytes per GPU by the formula above.
int64_t EstimateMemoryPerGpu(const ModelSize& size, const ftd::v1::JobSpec& spec);

// The plan of a validated, normalized spec. Reads <base_model>/config.json when it exists;
// otherwise memory_bytes_per_gpu is 0 and a note says why.
ftd::v1::JobPlan PlanJob(const ftd::v1::JobSpec& spec);

}  // namespace ftd::server
