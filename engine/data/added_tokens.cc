#include "engine/data/added_tokens.h"

#include <algorithm>

#include "engine/data/utf8.h"

namespace ftd::data {

bool IsUnicodeWhitespace(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

AddedTokenMatcher::AddedTokenMatcher(const std::vector<AddedToken>* tokens,
                                     const std::vector<std::string>& patterns)
    : tokens_(tokens) {
  nodes_.emplace_back();
  for (size_t i = 0; i < patterns.size(); ++i) {
    const std::string& pattern = patterns[i];
    if (pattern.empty()) continue;
    first_byte_[static_cast<unsigned char>(pattern[0])] = true;
    int32_t node = 0;
    for (unsigned char byte : pattern) {
      int32_t next = Child(node, byte);
      if (next < 0) {
        next = static_cast<int32_t>(nodes_.size());
        nodes_[node].children.emplace_back(byte, next);
        nodes_.emplace_back();
      }
      node = next;
    }
    // The first token with this content keeps it (HF maps content to one id).
    if (nodes_[node].token < 0) nodes_[node].token = static_cast<int32_t>(i);
  }
  auto regex = OnigRegex::Create(R"([\p{Alphabetic}\p{N}_])");
  if (regex.ok()) word_char_ = std::move(*regex);
}

int32_t AddedTokenMatcher::Child(int32_t node, unsigned char byte) const {
  for (const auto& [b, child] : nodes_[node].children) {
    if (b == byte) return child;
  }
  return -1;
}

bool AddedTokenMatcher::IsWordCharAt(std::string_view text, size_t pos) const {
  size_t end;
  return pos < text.size() && word_char_ != nullptr && word_char_->MatchesAt(text, pos, &end);
}

bool AddedTokenMatcher::IsWordCharBefore(std::string_view text, size_t pos) const {
  if (pos == 0) return false;
  size_t start = pos - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
  return IsWordCharAt(text, start);
}

void AddedTokenMatcher::Split(std::string_view text, std::vector<TextSegment>* out) const {
  out->clear();
  size_t plain_start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    if (!first_byte_[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    // Longest pattern starting here.
    int32_t node = 0;
    int32_t best_token = -1;
    size_t best_end = 0;
    for (size_t i = pos; i < text.size(); ++i) {
      node = Child(node, static_cast<unsigned char>(text[i]));
      if (node < 0) break;
      if (nodes_[node].token >= 0) {
        best_token = nodes_[node].token;
        best_end = i + 1;
      }
    }
    if (best_token < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = (*tokens_)[best_token];
    size_t start = pos;
    size_t stop = best_end;
    if (token.single_word && (IsWordCharBefore(text, start) || IsWordCharAt(text, stop))) {
      // HF skips the match (the matcher does not retry inside it).
      pos = best_end;
      continue;
    }
    if (token.lstrip) {
      size_t new_start = start;
      while (new_start > 0) {
        size_t char_start = new_start - 1;
        while (char_start > 0 && (static_cast<unsigned char>(text[char_start]) & 0xC0) == 0x80) --char_start;
        size_t length;
        if (!IsUnicodeWhitespace(DecodeUtf8At(text, char_start, &length))) break;
        new_start = char_start;
      }
      start = std::max(new_start, plain_start);
    }
    if (token.rstrip) {
      while (stop < text.size()) {
        size_t length;
        if (!IsUnicodeWhitespace(DecodeUtf8At(text, stop, &length))) break;
        stop += length;
      }
    }
    if (plain_start < start) out->push_back({plain_start, start, -1});
    out->push_back({start, stop, best_token});
    plain_start = stop;
    pos = stop;
  }
  if (plain_start < text.size()) out->push_back({plain_start, text.size(), -1});
}

}  // namespace ftd::data
