// The dataset check of CreateJob's validate_only (and so of `ftctl plan`): every line of
// spec.datasets.train (and .validation) is parsed, and with the base model's tokenizer.json
// chat records are rendered and tokenized, before any GPU time is spent. Errors name the field,
// the file and the 1-based line.
#pragma once

#include "absl/status/status.h"
#include "ftd/v1/jobs.pb.h"

namespace ftd::server {

// `spec` is validated and normalized (paths resolved, format one of jsonl_tokens | messages |
// prompt_completion | text).
absl::Status CheckDatasets(const ftd::v1::JobSpec& spec);

}  // namespace ftd::server
