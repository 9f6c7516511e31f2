// The `normalizer` section of tokenizer.json. Supported: NFC, NFD, Sequence (of supported ones),
// null. Anything else is refused by name when the tokenizer loads.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace ftd::data {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // `text` normalized into `out` (replaced).
  virtual void Normalize(std::string_view text, std::string* out) const = 0;
};

// nullptr for a JSON null (no normalization).
absl::StatusOr<std::unique_ptr<Normalizer>> NormalizerFromJson(const nlohmann::json& spec);

}  // namespace ftd::data
