// The `pre_tokenizer` section of tokenizer.json: how normalized text is cut into words before
// BPE. Supported: Split (Regex or String pattern, every SplitDelimiterBehavior, invert),
// ByteLevel (add_prefix_space, use_regex), Digits, Sequence. Others are refused by name.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace ftd::data {

// Text cut into pieces, each a [begin, end) byte range of `text`. Pieces are never empty.
struct PreTokenizedText {
  std::string text;
  std::vector<std::pair<uint32_t, uint32_t>> pieces;

  void Reset(std::string_view whole) {
    text.assign(whole);
    pieces.clear();
    if (!text.empty()) pieces.emplace_back(0, static_cast<uint32_t>(text.size()));
  }
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits (and for ByteLevel, rewrites) each piece of `io`; `scratch` is working space that
  // callers keep between calls so that the hot loop does not allocate.
  virtual void PreTokenize(PreTokenizedText* io, PreTokenizedText* scratch) const = 0;
};

// nullptr for a JSON null (the whole text is one word).
absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizerFromJson(const nlohmann::json& spec);

}  // namespace ftd::data
