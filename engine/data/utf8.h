// UTF-8 decoding/encoding helpers shared by the tokenizer pieces.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/string_view.h"

namespace ftd::data {

// Debian's Abseil has its own string_view type; hash-map lookups by view need it.
inline absl::string_view AsAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Decodes one code point at `text[pos]`; sets `length` to the bytes it used. An ill-formed
// sequence decodes as U+FFFD covering its maximal well-formed prefix (at least one byte), with
// `*valid` (when given) set to false.
char32_t DecodeUtf8At(std::string_view text, size_t pos, size_t* length, bool* valid = nullptr);

// Appends the UTF-8 encoding of `cp`.
void AppendUtf8(char32_t cp, std::string* out);

// True when `text` is well-formed UTF-8.
bool IsValidUtf8(std::string_view text);

// `text` with every ill-formed sequence replaced by U+FFFD (HF tokenizers only ever sees valid
// Rust strings; Python's decode(errors="replace") makes the same choice).
std::string ToValidUtf8(std::string_view text);

std::vector<char32_t> DecodeUtf8(std::string_view text);
std::string EncodeUtf8(const std::vector<char32_t>& code_points);

}  // namespace ftd::data
