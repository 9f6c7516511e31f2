#include "engine/data/tokenizer_config.h"

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace ftd::data {
namespace {

absl::StatusOr<std::optional<std::string>> TokenField(const nlohmann::json& config, const char* name,
                                                      const std::string& source) {
  auto it = config.find(name);
  if (it == config.end() || it->is_null()) return std::optional<std::string>();
  if (it->is_string()) return std::optional<std::string>(it->get<std::string>());
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return std::optional<std::string>((*it)["content"].get<std::string>());
  }
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": \"", name, "\" must be a string, null or an object with \"content\""));
}

}  // namespace

absl::StatusOr<TokenizerConfig> ParseTokenizerConfig(const std::string& json_text, const std::string& source) {
  nlohmann::json config = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  }
  TokenizerConfig out;
  for (auto [name, field] : {std::pair{"bos_token", &out.bos_token}, std::pair{"eos_token", &out.eos_token},
                             std::pair{"pad_token", &out.pad_token}, std::pair{"unk_token", &out.unk_token},
                             std::pair{"sep_token", &out.sep_token}, std::pair{"cls_token", &out.cls_token},
                             std::pair{"mask_token", &out.mask_token}}) {
    auto value = TokenField(config, name, source);
    if (!value.ok()) return value.status();
    *field = *value;
  }
  for (auto [name, field] : {std::pair{"add_bos_token", &out.add_bos_token},
                             std::pair{"add_eos_token", &out.add_eos_token}}) {
    auto it = config.find(name);
    if (it != config.end() && it->is_boolean()) *field = it->get<bool>();
  }
  auto it = config.find("chat_template");
  if (it != config.end() && !it->is_null()) {
    if (it->is_string()) {
      out.chat_template = it->get<std::string>();
    } else if (it->is_array()) {
      for (const auto& entry : *it) {
        if (!entry.is_object() || !entry.contains("template") || !entry["template"].is_string()) {
          return absl::InvalidArgumentError(
              absl::StrCat(source, ": \"chat_template\" entries must be {\"name\", \"template\"}"));
        }
        const bool is_default = entry.contains("name") && entry["name"] == "default";
        if (entry.contains("name") && entry["name"].is_string()) {
          out.named_chat_templates.emplace_back(entry["name"].get<std::string>(), entry["template"].get<std::string>());
        }
        if (out.chat_template.empty() || is_default) out.chat_template = entry["template"].get<std::string>();
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat(source, ": \"chat_template\" must be a string or a list"));
    }
  }
  return out;
}

}  // namespace ftd::data
