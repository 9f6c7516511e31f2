// Added (and special) tokens of tokenizer.json: found in the text before pre-tokenization and
// emitted as their own ids, as HF's AddedVocabulary does (leftmost-longest match, honouring
// single_word, lstrip and rstrip).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/data/onig_regex.h"

namespace ftd::data {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
};

// A piece of text: either plain text or one added token (`token` is its index in the list the
// matcher was built from).
struct TextSegment {
  size_t begin;
  size_t end;
  int32_t token = -1;
};

// Finds a set of patterns (each an added token's content, or its normalized form) in text.
class AddedTokenMatcher {
 public:
  // `patterns[i]` is what to look for for `tokens[i]`; an empty pattern is never matched.
  AddedTokenMatcher(const std::vector<AddedToken>* tokens, const std::vector<std::string>& patterns);

  bool empty() const { return nodes_.size() == 1; }

  // Cuts `text` into plain and added-token segments (replacing `out`). Empty plain segments are
  // left out.
  void Split(std::string_view text, std::vector<TextSegment>* out) const;

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;
    int32_t token = -1;
  };
  int32_t Child(int32_t node, unsigned char byte) const;
  bool IsWordCharBefore(std::string_view text, size_t pos) const;
  bool IsWordCharAt(std::string_view text, size_t pos) const;

  const std::vector<AddedToken>* tokens_;
  std::vector<Node> nodes_;
  bool first_byte_[256] = {};
  std::unique_ptr<OnigRegex> word_char_;
};

// Rust's char::is_whitespace (the White_Space property).
bool IsUnicodeWhitespace(char32_t cp);

}  // namespace ftd::data
