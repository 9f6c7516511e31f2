// The checkpoints a run keeps under its output directory: OUTPUT/checkpoint-<step>/ (HF files,
// training_state/ for --resume), the newest resumable one, pruning to keep_last, and the
// tokenizer files copied beside the weights so each checkpoint loads on its own.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "engine/train/token_dataset.h"

namespace ftd::engine {

struct ResumePoint {
  std::string dir;
  int64_t step = 0;
  DataPosition position;
  int64_t world_size = 1;
  int64_t ep_size = 1;
};

// The newest OUTPUT/checkpoint-N that has a complete training state.
std::optional<ResumePoint> FindResumePoint(const std::string& output);

// Removes all but the newest `keep_last` checkpoints (keep_last <= 0: keeps all).
void PruneCheckpoints(const std::string& output, int64_t keep_last);

// tokenizer.json, tokenizer_config.json, chat_template.jinja ... from `from` into `to`, where present.
void CopyTokenizerFiles(const std::string& from, const std::string& to);

}  // namespace ftd::engine
