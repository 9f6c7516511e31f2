// Checks a JSONL training file before any GPU time is spent (the coordinator's validate_only and
// `ftctl plan` call it): every line must parse as the dataset format, with token ids in range.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "engine/data/dataset_record.h"
#include "engine/data/tokenized_document.h"
#include "engine/data/tokenizer.h"

namespace ftd::data {

struct ValidationOptions {
  // How many bad lines to list before stopping the report.
  int max_errors = 10;
  // Called with every good record's tokenized document, in file order (`record_index` counts
  // non-blank lines from 0, as JsonlFile does), so one pass both checks the file and learns what
  // a trainer needs to plan it. Without a tokenizer only token-id records encode; others are
  // reported as bad lines.
  std::function<void(int64_t record_index, const TokenizedDocument& document)> on_document;
};

// OK, or INVALID_ARGUMENT listing the first bad lines, one per line of the message, each as
// `path:LINE: reason` (LINE 1-based), e.g.
//   data.jsonl:17: "messages"[2].role must be one of system|user|assistant|tool|developer, not "bot"
// NOT_FOUND when the file does not exist; INVALID_ARGUMENT when it has no records.
// `vocab_size` bounds token ids (0: unchecked). With a tokenizer, chat records are also checked
// against its chat format (rendered and tokenized).
absl::Status ValidateDataset(const std::string& path, DatasetFormat format, int32_t vocab_size,
                             const ValidationOptions& options = {});
absl::Status ValidateDataset(const std::string& path, DatasetFormat format, const Tokenizer* tokenizer,
                             const ValidationOptions& options = {});

}  // namespace ftd::data
