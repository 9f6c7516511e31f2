// tokenizer_config.json: the model's special tokens (bos/eos/pad) and its chat template.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace ftd::data {

struct TokenizerConfig {
  std::optional<std::string> bos_token;
  std::optional<std::string> eos_token;
  std::optional<std::string> pad_token;
  // The other named special tokens transformers passes to chat templates.
  std::optional<std::string> unk_token;
  std::optional<std::string> sep_token;
  std::optional<std::string> cls_token;
  std::optional<std::string> mask_token;
  // The default chat template (Jinja source); empty when the model has none.
  std::string chat_template;
  // Named templates when the file lists several ({"name", "template"} entries), e.g. "tool_use".
  std::vector<std::pair<std::string, std::string>> named_chat_templates;
  // Llama-style flags; unset when the file does not say.
  std::optional<bool> add_bos_token;
  std::optional<bool> add_eos_token;
};

// Parses tokenizer_config.json text; `source` names the file in errors. Token fields may be a
// string, null, or an AddedToken object with "content"; chat_template may be a string or a
// list of {"name", "template"} (the one named "default" wins, else the first).
absl::StatusOr<TokenizerConfig> ParseTokenizerConfig(const std::string& json_text, const std::string& source);

}  // namespace ftd::data
