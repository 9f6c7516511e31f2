// One training document after tokenization, before packing.
#pragma once

#include <cstdint>
#include <vector>

namespace ftd::data {

// The id that marks "no loss here" in labels (PyTorch's cross-entropy ignore_index).
inline constexpr int32_t kIgnoreLabel = -100;

// `labels` follow the Hugging Face convention: the same length as `input_ids`, NOT shifted:
// labels[i] is the token the model should produce at position i-1 (normally input_ids[i]), or
// kIgnoreLabel when token i is not a training target (prompt, system/user turns, chat headers).
// The packer does the shift (see sequence_packer.h).
struct TokenizedDocument {
  std::vector<int32_t> input_ids;
  std::vector<int32_t> labels;
};

}  // namespace ftd::data
