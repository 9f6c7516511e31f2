// Unicode canonical composition (NFC), as the HF `NFC` normalizer (Qwen2/Qwen3) applies it.
#pragma once

#include <string>
#include <string_view>

namespace ftd::data {

// `text` (valid UTF-8) in Normalization Form C. ASCII and text without any decomposable or
// combining code point take a fast path that returns it unchanged.
std::string NormalizeNfc(std::string_view text);

// Form D (canonical decomposition), for the `NFD` normalizer.
std::string NormalizeNfd(std::string_view text);

// The Unicode version of the tables compiled in.
const char* UnicodeTablesVersion();

}  // namespace ftd::data
