// Packed samples and a stream of them in training order: what PackedBatchProducer runs ahead of
// the trainer. SequencePacker is one (documents packed in each epoch's order); a trainer can
// supply its own (e.g. rows packed once, visited in a per-epoch order). The sample layout is
// described in engine/data/sequence_packer.h.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/data/data_position.h"

namespace ftd::data {

struct PackedSample {
  std::vector<int32_t> input_ids;
  std::vector<int32_t> labels;
  std::vector<int32_t> position_ids;
  std::vector<int32_t> cu_seqlens;
  int32_t num_documents = 0;    // real documents (padding not counted)
  int32_t num_real_tokens = 0;  // tokens that are not padding
  int32_t num_loss_tokens = 0;  // labels != -100
  int64_t epoch = 0;
  // Resume from here to continue with the sample that follows this one.
  DataPosition next_position;
};

class SampleStream {
 public:
  virtual ~SampleStream() = default;
  // The next sample, or nullopt at the end of the data. Errors (a bad line met on the way) name
  // the file and line.
  virtual absl::StatusOr<std::optional<PackedSample>> Next() = 0;
  // A sample of padding only (no loss), for ranks that run out of data one step early.
  virtual PackedSample PaddingSample() const = 0;
};

}  // namespace ftd::data
