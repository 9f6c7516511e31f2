// What one rank holds for training, in bytes, by kind: parameters (dense, replicated on every
// rank; experts, this rank's E/ep only), gradients (the full dense gradients exist during
// backward until the reduce-scatter; the expert gradients of the local experts) and optimizer
// state (this rank's ZeRO slice of the dense masters and moments; the local experts' moments
// and masters). Logged at start by every rank.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "engine/model/weights.h"
#include "engine/train/optimizer.h"

namespace ftd::engine {

struct RankMemory {
  int64_t dense_param_bytes = 0;
  int64_t expert_param_bytes = 0;
  int64_t dense_grad_bytes = 0;       // full dense gradients (parameter dtype), during backward
  int64_t dense_grad_slice_bytes = 0; // the reduced fp32 slice
  int64_t expert_grad_bytes = 0;
  int64_t dense_optimizer_bytes = 0;
  int64_t expert_optimizer_bytes = 0;
  // ZeRO-3: decoder layers' dense parameters (and their gradients) not resident between uses;
  // not counted above (one layer's worth is gathered at a time).
  int64_t dense_released_bytes = 0;

  int64_t param_bytes() const { return dense_param_bytes + expert_param_bytes; }
  int64_t grad_bytes() const { return dense_grad_bytes + dense_grad_slice_bytes + expert_grad_bytes; }
  int64_t optimizer_bytes() const { return dense_optimizer_bytes + expert_optimizer_bytes; }
};

// Parameters and gradients from `params`; the expert optimizer state as AdamW keeps it under
// `policy` (common/precision_policy.h); the dense optimizer bytes as given (a ZeRO slice) or,
// when negative, as an unsharded AdamW keeps them; the slice bytes as given.
RankMemory AccountRankMemory(const std::vector<NamedParam>& params, PrecisionPolicy policy,
                             int64_t dense_optimizer_bytes, int64_t dense_grad_slice_bytes);

// One log line: "rank R/W memory: parameters ... (dense ..., experts ...), gradients ..., optimizer ...".
std::string FormatRankMemory(const RankMemory& m, int rank, int world_size);

}  // namespace ftd::engine
