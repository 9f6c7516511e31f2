// Where a training run is in its data: part of the resumable training state (saved in each
// checkpoint). Resuming from a position continues with exactly the samples that would have
// come next.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace ftd::data {

struct DataPosition {
  int64_t epoch = 0;
  // Index, in the epoch's shuffled order, of the next document not yet (fully) packed.
  int64_t doc_index = 0;
  // Tokens of that document already emitted (non-zero only when long documents are split).
  int64_t token_offset = 0;
  // Samples emitted since the start of training (for logs and checks).
  int64_t samples_emitted = 0;

  bool operator==(const DataPosition& other) const {
    return epoch == other.epoch && doc_index == other.doc_index && token_offset == other.token_offset &&
           samples_emitted == other.samples_emitted;
  }

  // {"epoch":E,"doc_index":D,"token_offset":T,"samples_emitted":S}
  std::string ToJson() const;
  // INVALID_ARGUMENT naming the bad or missing field.
  static absl::StatusOr<DataPosition> FromJson(const std::string& json);
};

}  // namespace ftd::data
