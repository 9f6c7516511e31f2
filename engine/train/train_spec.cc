#include "engine/train/train_spec.h"

#include <algorithm>
#include <cmath>
#include <iterator>

#include <yaml-cpp/yaml.h>

#include "absl/strings/str_cat.h"
#include "common/precision_policy.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/model/core/backends.h"

namespace ftd::engine {
namespace {

// Reads `node[key]` into `out` when present; a value of the wrong type names `path.key`.
template <typename T>
absl::Status Read(const YAML::Node& node, const char* key, const std::string& path, T* out) {
  if (!node || !node.IsMap()) return absl::OkStatus();
  YAML::Node v = node[key];
  if (!v || v.IsNull()) return absl::OkStatus();
  try {
    *out = v.as<T>();
  } catch (const YAML::Exception&) {
    return absl::InvalidArgumentError(absl::StrCat(path.empty() ? "" : path + ".", key, ": invalid value \"",
                                                   v.IsScalar() ? v.Scalar() : std::string("<non-scalar>"), "\""));
  }
  return absl::OkStatus();
}

// The lora section of a method lora spec; errors name the field.
absl::Status ValidateLora(TrainSpec& s) {
  auto bad = [](const std::string& msg) { return absl::InvalidArgumentError(msg); };
  if (s.lora_rank == 0) s.lora_rank = 16;
  if (s.lora_alpha == 0) s.lora_alpha = 2.0 * static_cast<double>(s.lora_rank);
  if (s.lora_targets.empty()) s.lora_targets = {"attention", "experts"};
  if (s.lora_rank < 1 || s.lora_rank > 4096) {
    return bad(absl::StrCat("lora.rank must be in [1, 4096] (got ", s.lora_rank, ")"));
  }
  if (!(s.lora_alpha > 0) || !std::isfinite(s.lora_alpha)) {
    return bad(absl::StrCat("lora.alpha must be a positive number (got ", s.lora_alpha, ")"));
  }
  if (s.lora_dropout != 0) {
    return bad(absl::StrCat("lora.dropout ", s.lora_dropout,
                            " is not supported: only 0 (PEFT cannot apply dropout to fused experts' adapters either)"));
  }
  for (const std::string& t : s.lora_targets) {
    if (t == "router") return bad("lora.targets: router cannot be adapted (the router stays frozen)");
    if (t != "attention" && t != "mlp" && t != "experts" && t != "shared_experts") {
      return bad("lora.targets: \"" + t + "\" is not one of attention, mlp, experts, shared_experts");
    }
  }
  if (s.zero_stage == 3) return bad("parallelism.zero_stage 3 is not supported with method lora (use 2)");
  return absl::OkStatus();
}

absl::Status Positive(const char* field, int64_t v) {
  if (v <= 0) return absl::InvalidArgumentError(absl::StrCat(field, " must be positive (got ", v, ")"));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TrainSpec> ParseTrainSpec(const std::string& text, const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ":", e.mark.line + 1, ": ", e.msg));
  }
  if (!root.IsMap()) return absl::InvalidArgumentError(absl::StrCat(source, ": the spec must be a mapping"));
  TrainSpec s;
  auto prefix = [&](absl::Status st) {
    return st.ok() ? st : absl::InvalidArgumentError(absl::StrCat(source, ": ", st.message()));
  };
  FTD_RETURN_IF_ERROR(prefix(Read(root, "base_model", "", &s.base_model)));
  FTD_RETURN_IF_ERROR(prefix(Read(root, "output", "", &s.output)));
  FTD_RETURN_IF_ERROR(prefix(Read(root, "precision", "", &s.precision)));
  if (!IsPrecisionPolicyName(s.precision)) {
    return prefix(ParsePrecisionPolicy(s.precision, false).status());
  }
  FTD_RETURN_IF_ERROR(prefix(Read(root, "cuda_graphs", "", &s.cuda_graphs)));
  FTD_RETURN_IF_ERROR(prefix(Read(root, "device", "", &s.device)));
  FTD_RETURN_IF_ERROR(prefix(Read(root, "dtype", "", &s.dtype)));
  FTD_RETURN_IF_ERROR(prefix(Read(root, "log_every", "", &s.log_every)));
  YAML::Node data = root["datasets"];
  FTD_RETURN_IF_ERROR(prefix(Read(data, "train", "datasets", &s.train_data)));
  FTD_RETURN_IF_ERROR(prefix(Read(data, "format", "datasets", &s.data_format)));
  FTD_RETURN_IF_ERROR(prefix(Read(data, "validation", "datasets", &s.validation_data)));
  FTD_RETURN_IF_ERROR(prefix(Read(data, "validation_fraction", "datasets", &s.validation_fraction)));
  YAML::Node hp = root["hyperparameters"];
  const std::string h = "hyperparameters";
  FTD_RETURN_IF_ERROR(prefix(Read(hp, "max_steps", h, &s.max_steps)));
  FTD_RETURN_IF_ERROR(prefix(Read(hp, "eval_every", h, &s.eval_every)));
  FTD_RETURN_IF_ERROR(prefix(Read(hp, "epochs", h, &s.epochs)));
  FTD_RETURN_IF_ERROR(prefix(Read(hp, "global_batch", h, &s.global_batch)));
  FTD_RETURN_IF_ERROR(prefix(Read(hp, "micro_batch", h, &s.micro_batch)));
  FTD_RETURN_IF_ERROR(prefix(Read(hp, "seq_len", h, &s.seq_len)));
  FTD_RETURN_IF_ERROR(prefix(Read(hp, "lr", h, &s.lr)));
  FTD_RETURN_IF_ERROR(prefix(Read(hp, "schedule", h, &s.schedule)));
  FTD_RETURN_IF_ERROR(prefix(Read(hp, "warmup_steps", h, &s.warmup_steps)));
  FTD_RETURN_IF_ERROR(prefix(Read(hp, "weight_decay", h, &s.weight_decay)));
  FTD_RETURN_IF_ERROR(prefix(Read(hp, "grad_clip", h, &s.grad_clip)));
  FTD_RETURN_IF_ERROR(prefix(Read(hp, "adam_beta1", h, &s.adam_beta1)));
  FTD_RETURN_IF_ERROR(prefix(Read(hp, "adam_beta2", h, &s.adam_beta2)));
  FTD_RETURN_IF_ERROR(prefix(Read(hp, "adam_eps", h, &s.adam_eps)));
  FTD_RETURN_IF_ERROR(prefix(Read(hp, "seed", h, &s.seed)));
  FTD_RETURN_IF_ERROR(prefix(Read(hp, "router_bias_update_speed", h, &s.router_bias_update_speed)));
  YAML::Node par = root["parallelism"];
  FTD_RETURN_IF_ERROR(prefix(Read(par, "ep_size", "parallelism", &s.ep_size)));
  FTD_RETURN_IF_ERROR(prefix(Read(par, "zero_stage", "parallelism", &s.zero_stage)));
  FTD_RETURN_IF_ERROR(prefix(Read(par, "activation_checkpointing", "parallelism", &s.activation_checkpointing)));
  FTD_RETURN_IF_ERROR(prefix(Read(par, "recompute_expert_grads", "parallelism", &s.recompute_expert_grads)));
  FTD_RETURN_IF_ERROR(prefix(Read(root["backends"], "gate", "backends", &s.gate)));
  FTD_RETURN_IF_ERROR(prefix(Read(root["backends"], "attention", "backends", &s.attention)));
  std::string experts;  // empty: not given
  FTD_RETURN_IF_ERROR(prefix(Read(root["backends"], "experts", "backends", &experts)));
  FTD_RETURN_IF_ERROR(prefix(Read(root["backends"], "dispatcher", "backends", &s.dispatcher)));
  FTD_RETURN_IF_ERROR(prefix(Read(root, "method", "", &s.method)));
  YAML::Node lora = root["lora"];
  FTD_RETURN_IF_ERROR(prefix(Read(lora, "rank", "lora", &s.lora_rank)));
  FTD_RETURN_IF_ERROR(prefix(Read(lora, "alpha", "lora", &s.lora_alpha)));
  FTD_RETURN_IF_ERROR(prefix(Read(lora, "dropout", "lora", &s.lora_dropout)));
  FTD_RETURN_IF_ERROR(prefix(Read(lora, "targets", "lora", &s.lora_targets)));
  FTD_RETURN_IF_ERROR(prefix(Read(lora, "use_rslora", "lora", &s.lora_use_rslora)));
  FTD_RETURN_IF_ERROR(prefix(Read(lora, "merge", "lora", &s.lora_merge)));
  FTD_RETURN_IF_ERROR(prefix(Read(lora, "init_adapter", "lora", &s.lora_init_adapter)));
  YAML::Node ck = root["checkpointing"];
  FTD_RETURN_IF_ERROR(prefix(Read(ck, "every_n_steps", "checkpointing", &s.checkpoint_every)));
  FTD_RETURN_IF_ERROR(prefix(Read(ck, "keep_last", "checkpointing", &s.keep_last)));

  auto bad = [&](const std::string& msg) { return absl::InvalidArgumentError(absl::StrCat(source, ": ", msg)); };
  if (s.base_model.empty()) return bad("base_model is required");
  if (s.train_data.empty()) return bad("datasets.train is required");
  if (s.output.empty()) return bad("output is required");
  if (s.max_steps <= 0 && s.epochs <= 0) return bad("hyperparameters.max_steps or hyperparameters.epochs must be set");
  FTD_RETURN_IF_ERROR(prefix(Positive("hyperparameters.global_batch", s.global_batch)));
  FTD_RETURN_IF_ERROR(prefix(Positive("hyperparameters.micro_batch", s.micro_batch)));
  FTD_RETURN_IF_ERROR(prefix(Positive("hyperparameters.seq_len", s.seq_len)));
  FTD_RETURN_IF_ERROR(prefix(Positive("parallelism.ep_size", s.ep_size)));
  if (s.lr <= 0) return bad("hyperparameters.lr must be positive");
  if (s.zero_stage < 0 || s.zero_stage > 3) return bad("parallelism.zero_stage must be 0, 1, 2 or 3");
  if (s.router_bias_update_speed < 0) return bad("hyperparameters.router_bias_update_speed must be >= 0");
  if (s.grad_clip < 0) return bad("hyperparameters.grad_clip must be >= 0");
  if (s.gate != "real" && s.gate != "balanced" && s.gate != "skew_first_k" && s.gate != "skew_lower_half") {
    return bad("backends.gate must be real or balanced (or the test gates skew_first_k, skew_lower_half)");
  }
  // Settings with one implementation: an empty value means it; any other is refused by name.
  if (s.method.empty()) s.method = "full";
  if (s.method != "full" && s.method != "lora") return bad("method \"" + s.method + "\" is not one of full, lora");
  if (s.method == "full" && lora && !lora.IsNull()) return bad("lora: only with method lora (method is full)");
  if (s.method == "lora") FTD_RETURN_IF_ERROR(prefix(ValidateLora(s)));
  if (s.zero_stage == 0) s.zero_stage = 2;
  if (s.zero_stage != 2 && s.zero_stage != 3) {
    return bad(absl::StrCat("parallelism.zero_stage ", s.zero_stage,
                            " is not supported: use 2 (dense gradients reduce-scattered, optimizer state sharded over "
                            "the world) or 3 (dense parameters sharded too, gathered per layer)"));
  }
  if (s.attention.empty()) s.attention = "sdpa";
  if (auto a = ParseAttentionBackend(s.attention); !a.ok()) return bad(std::string(a.status().message()));
  // Unset: grouped_mm, or ftd with parallelism.recompute_expert_grads (the one backend it runs on).
  s.experts = !experts.empty() ? experts : s.recompute_expert_grads ? "ftd" : "grouped_mm";
  if (auto e = ParseExpertsBackend(s.experts); !e.ok()) return bad(std::string(e.status().message()));
  if (s.recompute_expert_grads && s.method == "lora") {
    return bad("parallelism.recompute_expert_grads applies to method full (LoRA trains no expert weights)");
  }
  if (s.recompute_expert_grads && s.experts != "ftd") {
    return bad("parallelism.recompute_expert_grads needs backends.experts ftd (its grouped GEMM takes the gradient's "
               "norm and forms it again), got " + s.experts);
  }
  if (s.dispatcher.empty()) s.dispatcher = "alltoall";
  if (s.dispatcher == "fused") return bad("backends.dispatcher: fused is not supported yet (no fused dispatch kernel); use alltoall");
  if (s.dispatcher != "alltoall") return bad("backends.dispatcher \"" + s.dispatcher + "\" is not one of alltoall, fused");
  if (s.device != "auto" && s.device != "cpu" && s.device != "cuda") return bad("device must be auto, cpu or cuda");
  if (s.dtype != "auto" && s.dtype != "fp32" && s.dtype != "bf16") return bad("dtype must be auto, fp32 or bf16");
  if (s.data_format == "jsonl_tokens") s.data_format = "tokens";
  if (s.eval_every < 0) return bad("hyperparameters.eval_every must be >= 0");
  if (!(s.validation_fraction >= 0 && s.validation_fraction < 1)) {
    return bad(absl::StrCat("datasets.validation_fraction must be in [0, 1) (got ", s.validation_fraction, ")"));
  }
  if (s.validation_fraction > 0 && !s.validation_data.empty()) {
    return bad("datasets.validation_fraction and datasets.validation exclude each other (a held-out split or a file)");
  }
  if (s.eval_every > 0 && s.validation_data.empty() && s.validation_fraction == 0) {
    return bad("hyperparameters.eval_every needs datasets.validation (a file) or datasets.validation_fraction");
  }
  static const char* const kFormats[] = {"tokens", "input_ids", "auto", "messages", "chat", "prompt_completion", "text"};
  if (std::find(std::begin(kFormats), std::end(kFormats), s.data_format) == std::end(kFormats)) {
    return bad("datasets.format \"" + s.data_format +
               "\" is not one of tokens|input_ids|auto|messages|chat|prompt_completion|text");
  }
  return s;
}

absl::StatusOr<TrainSpec> LoadTrainSpec(const std::string& path) {
  FTD_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return ParseTrainSpec(text, path);
}

}  // namespace ftd::engine
