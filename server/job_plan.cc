#include "server/job_plan.h"

#include <algorithm>
#include <cmath>

#include "common/precision_policy.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "absl/strings/match.h"
#include "engine/model/config.h"
#include "engine/train/train_spec.h"
#include "engine/model/lora_targets.h"
#include "engine/model/registry.h"
#include "engine/model/tensor_layout.h"

namespace ftd::server {

absl::StatusOr<ModelSize> CountParameters(const std::string& config_json) {
  absl::StatusOr<engine::ModelConfig> config = engine::ParseModelConfig(config_json, "config.json");
  if (!config.ok()) return config.status();
  const engine::ParameterCounts counts = engine::CountParameters(*config);
  ModelSize size;
  const engine::ModelFamily* family = engine::FindModelFamily(config->model_type);
  size.family = family != nullptr ? family->display_name() : config->model_type;
  size.hidden_size = config->hidden_size;
  size.num_layers = config->num_hidden_layers;
  size.vocab_size = config->vocab_size;
  size.expert_parameters = counts.expert;
  size.dense_parameters = counts.dense;
  size.layer_dense_parameters = counts.layer_dense;
  size.max_layer_dense_parameters = counts.max_layer_dense;
  for (int64_t l = 0; l < config->num_hidden_layers; ++l) {
    if (!config->IsMoeLayer(l)) continue;
    size.expert_operand_elements_per_token +=
        config->num_experts_per_tok * (2 * config->hidden_size + 3 * config->moe_intermediate_size);
    // gate_up's gradient, formed whole experts at a time (engine::kRecomputedExpertGradChunkBytes).
    const int64_t per_expert = config->hidden_size * 2 * config->moe_intermediate_size;
    const int64_t experts = std::clamp<int64_t>(engine::kRecomputedExpertGradChunkBytes / (2 * per_expert), 1,
                                                std::max<int64_t>(1, config->num_experts));
    size.largest_expert_grad_chunk = std::max(size.largest_expert_grad_chunk, experts * per_expert);
  }
  return size;
}

namespace {

absl::StatusOr<uint32_t> LoraTargetBits(const ftd::v1::JobSpec& spec) {
  uint32_t bits = 0;
  for (const std::string& t : spec.lora().targets()) {
    uint32_t bit = 0;
    if (!engine::LoraTargetFromName(t, &bit)) {
      return absl::InvalidArgumentError(absl::StrCat("spec.lora.targets: `", t, "` is not a target"));
    }
    bits |= bit;
  }
  return bits == 0 ? engine::kDefaultLoraTargets : bits;
}

// The policy the job's AdamW state is kept under on the workers (bf16 parameters on GPUs, where
// auto is compact; fp32_master for LoRA adapters); a bad name was rejected by the validator.
PrecisionPolicy PlannedPrecision(const ftd::v1::JobSpec& spec) {
  return ResolveJobPrecision(spec.precision(), /*fp32_params=*/false, spec.method() == "lora")
      .value_or(PrecisionPolicy::kCompact);
}

}  // namespace

absl::StatusOr<ModelSize> CountParameters(const std::string& config_json, const ftd::v1::JobSpec& spec) {
  FTD_ASSIGN_OR_RETURN(ModelSize size, CountParameters(config_json));
  if (spec.method() != "lora") return size;
  absl::StatusOr<engine::ModelConfig> config = engine::ParseModelConfig(config_json, "config.json");
  if (!config.ok()) return config.status();
  FTD_ASSIGN_OR_RETURN(uint32_t bits, LoraTargetBits(spec));
  FTD_RETURN_IF_ERROR(engine::CheckLoraTargets(*config, bits, "spec.lora.targets"));
  const engine::LoraParameterCounts lora =
      engine::CountLoraParameters(*config, spec.lora().rank() > 0 ? spec.lora().rank() : 16, bits);
  size.lora_dense_parameters = lora.dense;
  size.lora_expert_parameters = lora.expert;
  return size;
}

absl::Status CheckLoraTargets(const ftd::v1::JobSpec& spec) {
  if (spec.method() != "lora") return absl::OkStatus();
  absl::StatusOr<std::string> config = ReadFileToString(spec.base_model() + "/config.json");
  if (!config.ok()) return absl::OkStatus();
  absl::StatusOr<ModelSize> size = CountParameters(*config, spec);
  if (!size.ok() && absl::StrContains(size.status().message(), "spec.lora.targets")) return size.status();
  return absl::OkStatus();
}

int64_t EstimateMemoryPerGpu(const ModelSize& size, const ftd::v1::JobSpec& spec) {
  const double world = double(spec.resources().nodes()) * spec.resources().gpus_per_node();
  const double ep = std::max(1, spec.parallelism().ep_size());
  const int zero = spec.parallelism().zero_stage();
  const double pd = double(size.dense_parameters), pe = double(size.expert_parameters) / ep;
  const double s_g = zero >= 2 ? world : 1, s_o = zero >= 1 ? world : 1;
  double weights = 2 * (pd + pe);
  if (zero >= 3 && world > 1) {
    const double pl = double(size.layer_dense_parameters), lmax = double(size.max_layer_dense_parameters);
    weights = 2 * (pd - pl + pl / world + 2 * lmax + pe);
  }
  // The optimizer steps inside backward without clipping, accumulation or other ranks: then no
  // gradient outlives its update (engine/train/train_step.h); otherwise all of them are held.
  const auto& hp = spec.hyperparameters();
  const double clip = hp.has_grad_clip() ? hp.grad_clip() : 1.0;
  const bool in_backward = clip <= 0 && world <= 1 && hp.global_batch() <= hp.micro_batch();
  const double tokens = double(spec.hyperparameters().micro_batch()) * spec.hyperparameters().seq_len();
  // recompute_expert_grads (one GPU, one micro-batch): the experts' GEMM operands instead of their
  // gradients, and one chunk of an expert weight's gradient at a time (the largest, bf16).
  const double moe_grads = spec.parallelism().recompute_expert_grads()
                               ? 2 * tokens * double(size.expert_operand_elements_per_token) +
                                     2 * double(size.largest_expert_grad_chunk)
                               : 2 * pe;
  const double grads = in_backward ? 0 : 2 * pd / s_g + moe_grads;
  const PrecisionPolicy policy = PlannedPrecision(spec);
  const double optimizer = OptimizerStateBytesPerParameter(policy, 2) * (pd / s_o + pe);
  const double h = double(size.hidden_size), layers = double(size.num_layers);
  const double per_layer_full = 34 * h * tokens;
  const double activations = spec.parallelism().activation_checkpointing()
                                 ? layers * 2 * h * tokens + per_layer_full
                                 : layers * per_layer_full;
  const double logits = 4 * double(size.vocab_size) * tokens;
  if (spec.method() == "lora") {
    // The frozen base: bf16, unsharded, no gradients or optimizer state; the adapters train.
    const double ad = double(size.lora_dense_parameters), ae = double(size.lora_expert_parameters) / ep;
    const double base = 2 * (pd + pe) + 2 * (ad + ae);
    const double adapter_grads = in_backward ? 0 : 2 * (ad / s_g + ae);
    const double adapter_state = OptimizerStateBytesPerParameter(policy, 2) * (ad / s_o + ae);
    return static_cast<int64_t>(base + adapter_grads + adapter_state + activations + logits);
  }
  return static_cast<int64_t>(weights + grads + optimizer + activations + logits);
}

ftd::v1::JobPlan PlanJob(const ftd::v1::JobSpec& spec) {
  ftd::v1::JobPlan plan;
  const int64_t world = int64_t{spec.resources().nodes()} * spec.resources().gpus_per_node();
  plan.set_world_size(static_cast<int32_t>(world));
  const int ep = std::max(1, spec.parallelism().ep_size());
  plan.set_data_parallel_size(static_cast<int32_t>(world / ep));
  const int64_t per_step = int64_t{spec.hyperparameters().micro_batch()} * world;
  if (per_step > 0) {
    plan.set_gradient_accumulation_steps(
        static_cast<int32_t>(spec.hyperparameters().global_batch() / per_step));
  }
  const std::string config_path = spec.base_model() + "/config.json";
  absl::StatusOr<std::string> config = ReadFileToString(config_path);
  if (!config.ok()) {
    plan.add_notes(absl::StrCat("memory estimate unavailable: cannot read ", config_path));
    return plan;
  }
  absl::StatusOr<ModelSize> size = CountParameters(*config, spec);
  if (!size.ok()) {
    plan.add_notes(absl::StrCat("memory estimate unavailable: ", size.status().message()));
    return plan;
  }
  plan.set_parameter_count(size->total());
  plan.set_memory_bytes_per_gpu(EstimateMemoryPerGpu(*size, spec));
  if (spec.method() == "lora") {
    plan.add_notes(absl::StrCat(
        "method lora: ", absl::StrFormat("%.2fM", double(size->lora_dense_parameters + size->lora_expert_parameters) / 1e6),
        " trainable adapter parameters (", absl::StrFormat("%.2fM", double(size->lora_expert_parameters) / 1e6),
        " on the routed experts, sharded with them); the base is frozen: bf16 weights only, no gradients or "
        "optimizer state; adapters with fp32 AdamW state"));
    return plan;
  }
  // The same estimate under the engine's two sharding modes, to choose one.
  std::string by_stage;
  for (int stage : {2, 3}) {
    ftd::v1::JobSpec other = spec;
    other.mutable_parallelism()->set_zero_stage(stage);
    absl::StrAppend(&by_stage, stage == 2 ? "" : ", ", stage, ": ",
                    absl::StrFormat("%.1f GiB", double(EstimateMemoryPerGpu(*size, other)) / (1ull << 30)));
  }
  plan.add_notes(absl::StrCat(size->family, ", ", absl::StrFormat("%.2fB", double(size->total()) / 1e9),
                              " parameters (", absl::StrFormat("%.2fB", double(size->expert_parameters) / 1e9),
                              " in routed experts); memory per GPU by parallelism.zero_stage: ", by_stage));
  // The clipped step on one GPU holds every expert gradient: name the setting that avoids it.
  const auto& hp = spec.hyperparameters();
  const bool clipped = !hp.has_grad_clip() || hp.grad_clip() > 0;
  if (clipped && world == 1 && hp.global_batch() <= hp.micro_batch() && size->expert_parameters > 0) {
    ftd::v1::JobSpec other = spec;
    const bool on = spec.parallelism().recompute_expert_grads();
    other.mutable_parallelism()->set_recompute_expert_grads(!on);
    const double gib = std::abs(double(EstimateMemoryPerGpu(*size, other)) - double(plan.memory_bytes_per_gpu())) /
                       (1ull << 30);
    plan.add_notes(on ? absl::StrFormat("parallelism.recompute_expert_grads: the expert GEMMs' operands are held "
                                        "instead of the experts' gradients (%.1f GiB less)", gib)
                      : absl::StrFormat("parallelism.recompute_expert_grads (with backends.experts ftd) would hold the "
                                        "expert GEMMs' operands instead of the experts' gradients: %.1f GiB less, "
                                        "one more weight-gradient GEMM per expert weight", gib));
  }
  plan.add_notes(absl::StrCat("memory_bytes_per_gpu: bf16 weights, gradients, AdamW state under precision ",
                              PrecisionPolicyName(PlannedPrecision(spec)),
                              ", activations; a lower bound (see server/job_plan.h)"));
  return plan;
}

}  // namespace ftd::server
