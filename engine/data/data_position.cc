#include "engine/data/data_position.h"

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace ftd::data {

std::string DataPosition::ToJson() const {
  nlohmann::json json = {{"epoch", epoch},
                         {"doc_index", doc_index},
                         {"token_offset", token_offset},
                         {"samples_emitted", samples_emitted}};
  return json.dump();
}

absl::StatusOr<DataPosition> DataPosition::FromJson(const std::string& text) {
  nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError("data position: not a JSON object");
  }
  DataPosition position;
  for (auto [name, field] : {std::pair{"epoch", &position.epoch}, std::pair{"doc_index", &position.doc_index},
                             std::pair{"token_offset", &position.token_offset},
                             std::pair{"samples_emitted", &position.samples_emitted}}) {
    auto it = json.find(name);
    if (it == json.end()) return absl::InvalidArgumentError(absl::StrCat("data position: \"", name, "\" is missing"));
    if (!it->is_number_integer() || it->get<int64_t>() < 0) {
      return absl::InvalidArgumentError(absl::StrCat("data position: \"", name, "\" must be a non-negative integer"));
    }
    *field = it->get<int64_t>();
  }
  return position;
}

}  // namespace ftd::data
