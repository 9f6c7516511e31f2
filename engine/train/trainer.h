// The training loop of one rank of a (possibly one-rank) distributed run, configured by the
// launch environment (engine/dist/dist_env.h): every rank trains on its own slice of each global
// batch (data parallelism over the world), experts are sharded over ep groups (expert
// parallelism, all-to-all token dispatch), the dense parameters' optimizer state is sharded
// over the world (ZeRO-2). Loads the HF checkpoint straight into shards, runs optimizer steps
// (gradient accumulation, global-norm clipping, schedule) whose losses equal one process
// training on the whole global batch, and writes HF checkpoints plus the resumable state.
#pragma once

#include <functional>
#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "engine/train/train_spec.h"

namespace ftd::engine {

// What one optimizer step measured; also what the worker reports upstream.
struct StepReport {
  int rank = 0;
  int world_size = 1;
  int64_t step = 0;
  int64_t total_steps = 0;
  double loss = 0;
  double grad_norm = 0;
  double lr = 0;
  int64_t tokens = 0;          // input tokens processed in the step (all ranks)
  double all_to_all_seconds = 0;  // this rank's time in expert-parallel token exchanges
  double step_seconds = 0;
  // This rank's forward passes, backward passes and optimizer step (gradient reduction,
  // clipping, update, parameter all-gather); on CUDA the device is synchronised around each.
  double forward_seconds = 0;
  double backward_seconds = 0;
  double optimizer_seconds = 0;
  double tokens_per_second = 0;          // all ranks' tokens / step seconds
  double tokens_per_second_per_gpu = 0;  // tokens_per_second / world size
  double tflops_per_gpu = 0;
  double mfu = 0;
  int64_t peak_memory_bytes = 0;      // this rank's device, max allocated in the step (0 on CPU)
  int64_t reserved_memory_bytes = 0;  // held by the caching allocator after the step (0 on CPU)
  // Over the global batch: the busiest expert's tokens over the mean per expert, averaged over
  // the MoE layers (1 = perfectly balanced; 0 when the model has no MoE layer).
  double expert_load_imbalance = 0;
  int64_t epoch = 0;
};

struct TrainOptions {
  bool resume = false;
  // Called after every optimizer step (progress reporting); may be empty.
  std::function<void(const StepReport&)> on_step;
  // Stops after this many optimizer steps in this run (0: run to the end), for tests of
  // interrupted training.
  int64_t stop_after = 0;
  // The per-step metrics file (CONTRACT.md): JSON lines, rank 0 to this path, rank R > 0 to
  // PATH.rank<R>. Empty: none.
  std::string metrics_out;
};

// Trains per `spec`; logs a line per step to `log`. Returns the final checkpoint's directory.
absl::StatusOr<std::string> RunTraining(const TrainSpec& spec, const TrainOptions& options, std::ostream& log);

}  // namespace ftd::engine
