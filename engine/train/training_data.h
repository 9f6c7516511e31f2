// The training samples of a spec's dataset (datasets.train, datasets.format):
// - "tokens" / "input_ids": pre-tokenized JSONL, one unpacked, right-padded row per line (the
//   layout the HF parity tests use);
// - "messages" | "prompt_completion" | "text" | "auto": records tokenized with the base model's
//   tokenizer.json (chat template from its files, loss on assistant turns / completions), then
//   packed into seq_len rows with document boundaries kept (engine/data/sequence_packer.h).
// Every record is validated first; a bad line fails with its file, line and reason.
#pragma once

#include <cstdint>
#include <ostream>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/train/token_dataset.h"
#include "engine/train/train_spec.h"

namespace ftd::engine {

absl::StatusOr<std::vector<TokenSequence>> LoadTrainingSequences(const TrainSpec& spec, int64_t vocab_size,
                                                                 std::ostream& log);

}  // namespace ftd::engine
