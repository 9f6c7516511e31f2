// The training spec of one rank (`ftd-train train --spec job.yaml`). Field names follow
// proto/ftd/v1/jobs.proto's JobSpec (snake_case), so the coordinator's spec, dumped as JSON,
// is a valid file here (YAML is a superset of JSON). Engine-only fields: precision, device.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace ftd::engine {

// parallelism.recompute_expert_grads forms each expert weight's gradient again after the clip
// factor is known, whole experts at a time, at most this many bytes together (at least one
// expert): a layer's whole gate_up gradient (1.9 GB on Mixtral-8x7B) would sit on the step's
// peak. The trainer sets it as AdamWConfig::deferred_update_chunk_bytes; the coordinator's plan
// counts one such chunk.
inline constexpr int64_t kRecomputedExpertGradChunkBytes = int64_t{512} << 20;

struct TrainSpec {
  std::string base_model;       // HF directory
  std::string train_data;       // datasets.train: JSONL
  std::string data_format = "tokens";  // datasets.format
  std::string validation_data;  // datasets.validation: JSONL in the same format (optional)
  // datasets.validation_fraction: instead of a validation file, hold out this fraction of
  // datasets.train's documents (drawn by hyperparameters.seed; never trained on). 0: none.
  double validation_fraction = 0;
  int64_t eval_every = 0;       // hyperparameters.eval_every: eval loss every N steps (0: never)
  std::string output;           // checkpoints go to OUTPUT/checkpoint-<step>
  int64_t max_steps = 0;
  int64_t epochs = 0;           // used when max_steps is 0
  int64_t global_batch = 8;     // sequences per optimizer step, over all data-parallel ranks
  int64_t micro_batch = 1;      // sequences per forward/backward on one rank
  int64_t seq_len = 2048;
  double lr = 1e-5;
  std::string schedule = "cosine";
  int64_t warmup_steps = 0;
  double weight_decay = 0.0;
  double grad_clip = 1.0;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_eps = 1e-8;
  uint64_t seed = 0;
  int64_t ep_size = 1;
  // parallelism.zero_stage: 2 or 3 (0 in a spec means unset: 2). With several ranks, 2 shards the
  // dense parameters' gradients and optimizer state over the world; 3 also gathers each layer's
  // dense parameters for its forward and backward and frees them after. Stage 1 is refused.
  int64_t zero_stage = 2;
  // hyperparameters.router_bias_update_speed (engine-only): DeepSeek-V3's aux-loss-free
  // balancing of the selection bias after every step; 0 (default): the bias stays as loaded.
  double router_bias_update_speed = 0;
  bool activation_checkpointing = false;
  bool recompute_expert_grads = false;  // parallelism.recompute_expert_grads (jobs.proto)
  std::string gate = "real";    // backends.gate: real | balanced (tests: skew_first_k | skew_lower_half)
  // method and backends.{attention, experts, dispatcher}: the one implementation of each that
  // exists; any other value is refused (ParseTrainSpec) rather than silently ignored.
  std::string method = "full";   // full | lora
  // lora.* (method lora): adapters of this rank and scale lora_alpha / lora_rank (alpha /
  // sqrt(rank) with use_rslora) on the module families of lora_targets (attention, mlp, experts,
  // shared_experts); lora_merge also writes OUTPUT/merged, a full HF checkpoint of base + adapter.
  int64_t lora_rank = 16;       // 0 (as in jobs.proto): 16
  double lora_alpha = 0;        // 0: 2 x rank
  double lora_dropout = 0;
  std::vector<std::string> lora_targets;  // empty: attention, experts
  bool lora_use_rslora = false;
  bool lora_merge = false;
  // lora.init_adapter: start from this PEFT adapter directory (its rank, alpha and rslora must
  // match lora.*) instead of fresh adapters (A random, B zero); empty: fresh.
  std::string lora_init_adapter;
  std::string attention = "sdpa";
  std::string experts = "grouped_mm";
  std::string dispatcher = "alltoall";
  int64_t checkpoint_every = 0; // checkpointing.every_n_steps (0: only at the end)
  int64_t keep_last = 0;        // checkpointing.keep_last (0: keep all)
  std::string precision = "auto";  // auto | compact | compact_sr | fp32_master | bf16_pure (common/precision_policy.h)
  // Engine-only: capture the step as a CUDA graph and replay it where the shapes allow
  // (engine/train/train_step.h); false runs every step eagerly.
  bool cuda_graphs = true;
  std::string device = "auto";            // auto | cpu | cuda
  std::string dtype = "auto";             // parameter dtype: auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
  int64_t log_every = 1;
};

// Parses YAML (or JSON) text; errors name the field (e.g. "hyperparameters.seq_len").
absl::StatusOr<TrainSpec> ParseTrainSpec(const std::string& text, const std::string& source);
absl::StatusOr<TrainSpec> LoadTrainSpec(const std::string& path);

}  // namespace ftd::engine
