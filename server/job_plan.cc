#include "server/job_plan.h"

#include "common/precision_policy.h"

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"

namespace ftd::server {
namespace {

// The first of `keys` present as a non-negative integer, or `fallback`.
int64_t IntField(const nlohmann::json& j, std::initializer_list<const char*> keys, int64_t fallback) {
  for (const char* key : keys) {
    auto it = j.find(key);
    if (it != j.end() && it->is_number_integer() && it->get<int64_t>() >= 0) return it->get<int64_t>();
  }
  return fallback;
}

}  // namespace

absl::StatusOr<ModelSize> CountParameters(const std::string& config_json) {
  nlohmann::json j = nlohmann::json::parse(config_json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError("config.json: not a JSON object");
  }
  const int64_t hidden = IntField(j, {"hidden_size", "d_model"}, 0);
  const int64_t layers = IntField(j, {"num_hidden_layers", "n_layer"}, 0);
  const int64_t vocab = IntField(j, {"vocab_size"}, 0);
  const int64_t heads = IntField(j, {"num_attention_heads"}, 0);
  for (auto [name, v] : {std::pair{"hidden_size", hidden}, {"num_hidden_layers", layers},
                         {"vocab_size", vocab}, {"num_attention_heads", heads}}) {
    if (v <= 0 || v > (int64_t{1} << 24)) {
      return absl::InvalidArgumentError(absl::StrCat("config.json: ", name, " missing or out of range"));
    }
  }
  const int64_t kv_heads = IntField(j, {"num_key_value_heads"}, heads);
  const int64_t head_dim = IntField(j, {"head_dim"}, hidden / heads);
  const int64_t dense_ffn = IntField(j, {"intermediate_size"}, 4 * hidden);
  const int64_t experts = IntField(j, {"num_experts", "n_routed_experts", "num_local_experts"}, 0);
  const int64_t expert_ffn = IntField(j, {"moe_intermediate_size"}, dense_ffn);
  const int64_t shared_ffn = IntField(j, {"shared_expert_intermediate_size"}, 0) +
                             IntField(j, {"n_shared_experts"}, 0) * expert_ffn;
  const int64_t dense_layers =
      experts > 0 ? std::min(layers, IntField(j, {"first_k_dense_replace"}, 0)) : layers;
  const int64_t moe_layers = layers - dense_layers;
  const bool tied = j.value("tie_word_embeddings", false);

  ModelSize size;
  size.hidden_size = hidden;
  size.num_layers = layers;
  size.vocab_size = vocab;
  const int64_t attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim;
  const int64_t norms = 2 * hidden;
  size.expert_parameters = moe_layers * experts * 3 * hidden * expert_ffn;
  size.dense_parameters = layers * (attention + norms) + dense_layers * 3 * hidden * dense_ffn +
                          moe_layers * (hidden * experts + 3 * hidden * shared_ffn) +
                          vocab * hidden * (tied ? 1 : 2) + hidden;
  return size;
}

int64_t EstimateMemoryPerGpu(const ModelSize& size, const ftd::v1::JobSpec& spec) {
  const double world = double(spec.resources().nodes()) * spec.resources().gpus_per_node();
  const double ep = std::max(1, spec.parallelism().ep_size());
  const int zero = spec.parallelism().zero_stage();
  const double pd = double(size.dense_parameters), pe = double(size.expert_parameters) / ep;
  const double s_w = zero >= 3 ? world : 1, s_g = zero >= 2 ? world : 1, s_o = zero >= 1 ? world : 1;
  const double weights = 2 * (pd / s_w + pe);
  // The optimizer steps inside backward without clipping, accumulation or other ranks: then no
  // gradient outlives its update (engine/train/train_step.h); otherwise all of them are held.
  const auto& hp = spec.hyperparameters();
  const double clip = hp.has_grad_clip() ? hp.grad_clip() : 1.0;
  const bool in_backward = clip <= 0 && world <= 1 && hp.global_batch() <= hp.micro_batch();
  const double grads = in_backward ? 0 : 2 * (pd / s_g + pe);
  // Workers run bf16 parameters on GPUs (the state of auto is compact there).
  const PrecisionPolicy policy = ParsePrecisionPolicy(spec.precision(), /*fp32_params=*/false).value_or(PrecisionPolicy::kCompact);
  const double optimizer = OptimizerStateBytesPerParameter(policy, 2) * (pd / s_o + pe);
  const double tokens = double(spec.hyperparameters().micro_batch()) * spec.hyperparameters().seq_len();
  const double h = double(size.hidden_size), layers = double(size.num_layers);
  const double per_layer_full = 34 * h * tokens;
  const double activations = spec.parallelism().activation_checkpointing()
                                 ? layers * 2 * h * tokens + per_layer_full
                                 : layers * per_layer_full;
  const double logits = 4 * double(size.vocab_size) * tokens;
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
  absl::StatusOr<ModelSize> size = CountParameters(*config);
  if (!size.ok()) {
    plan.add_notes(absl::StrCat("memory estimate unavailable: ", size.status().message()));
    return plan;
  }
  plan.set_parameter_count(size->total());
  plan.set_memory_bytes_per_gpu(EstimateMemoryPerGpu(*size, spec));
  plan.add_notes(absl::StrCat("memory_bytes_per_gpu: bf16 weights, gradients, AdamW state under precision ",
                              PrecisionPolicyName(ParsePrecisionPolicy(spec.precision(), false)
                                                      .value_or(PrecisionPolicy::kCompact)),
                              ", activations; a lower bound (see server/job_plan.h)"));
  return plan;
}

}  // namespace ftd::server
