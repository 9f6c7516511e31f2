// The training loop of one rank: load the HF checkpoint, run optimizer steps over the dataset
// (gradient accumulation, clipping, schedule), write HF checkpoints and the resumable state.
#pragma once

#include <functional>
#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "engine/train/train_spec.h"

namespace ftd::engine {

// What one optimizer step measured; also what the worker reports upstream.
struct StepReport {
  int64_t step = 0;
  int64_t total_steps = 0;
  double loss = 0;
  double grad_norm = 0;
  double lr = 0;
  int64_t tokens = 0;          // input tokens processed in the step (all ranks)
  double step_seconds = 0;
  double tokens_per_second = 0;
  double tflops_per_gpu = 0;
  double mfu = 0;
  int64_t peak_memory_bytes = 0;
  int64_t epoch = 0;
};

struct TrainOptions {
  bool resume = false;
  // Called after every optimizer step (progress reporting); may be empty.
  std::function<void(const StepReport&)> on_step;
  // Stops after this many optimizer steps in this run (0: run to the end), for tests of
  // interrupted training.
  int64_t stop_after = 0;
};

// Trains per `spec`; logs a line per step to `log`. Returns the final checkpoint's directory.
absl::StatusOr<std::string> RunTraining(const TrainSpec& spec, const TrainOptions& options, std::ostream& log);

}  // namespace ftd::engine
