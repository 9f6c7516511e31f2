// Pre-tokenized JSONL ({"input_ids": [...], "labels": [...]?} per line) and the deterministic,
// resumable order in which training visits it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"

namespace ftd::engine {

struct TokenSequence {
  std::vector<int64_t> input_ids;
  std::vector<int64_t> labels;  // empty: labels = input_ids (HF convention, shifted in the loss)
  // Packed rows (engine/train/training_data.h): several documents in one row. When set, these
  // have input_ids' length and `labels` is unused: targets are already shifted, positions
  // restart per document and segment ids keep attention inside each document.
  std::vector<int64_t> targets, position_ids, segment_ids;
  bool packed() const { return !targets.empty(); }
};

// Reads every line; errors name the file, the 1-based line and the reason. Ids must be in
// [0, vocab_size).
absl::StatusOr<std::vector<TokenSequence>> ReadTokenJsonl(const std::string& path, int64_t vocab_size);

// Where training is in the data: epoch and the next sample index in that epoch's order.
struct DataPosition {
  int64_t epoch = 0;
  int64_t index = 0;
};

// Epoch-wise shuffled order over N samples: epoch e is a Fisher-Yates permutation seeded by
// (seed, e), the same on every platform and every rank.
class SampleOrder {
 public:
  SampleOrder(int64_t num_samples, uint64_t seed) : n_(num_samples), seed_(seed) {}
  // The next `count` sample ids, advancing `pos` (crossing epochs as needed).
  std::vector<int64_t> Take(int64_t count, DataPosition* pos);

 private:
  const std::vector<int64_t>& EpochOrder(int64_t epoch);
  int64_t n_;
  uint64_t seed_;
  int64_t cached_epoch_ = -1;
  std::vector<int64_t> cached_;
};

// Right-padded micro-batch of sequences truncated to seq_len: input_ids [B, S] (pad 0) and
// targets [B, S] (shifted labels; -100 at padding and at each sequence's last position).
// With packed rows also position_ids and segment_ids [B, S] (undefined otherwise; padding rows
// of a mixed batch get positions 0.. and a segment of their own).
struct MicroBatchTensors {
  at::Tensor input_ids;
  at::Tensor targets;
  at::Tensor position_ids;
  at::Tensor segment_ids;
};
MicroBatchTensors CollateMicroBatch(const std::vector<const TokenSequence*>& seqs, int64_t seq_len);

}  // namespace ftd::engine
