// An Oniguruma regex (the engine HF tokenizers uses for Split patterns: RE2 lacks the lookahead
// of `\s+(?!\S)`), compiled once and safe to search from several threads.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace ftd::data {

class OnigRegex {
 public:
  // Compiles `pattern` (UTF-8, Oniguruma default syntax as the Rust `onig` crate uses);
  // INVALID_ARGUMENT with Oniguruma's message when it does not compile.
  static absl::StatusOr<std::unique_ptr<OnigRegex>> Create(std::string_view pattern);
  ~OnigRegex();
  OnigRegex(const OnigRegex&) = delete;
  OnigRegex& operator=(const OnigRegex&) = delete;

  // Non-overlapping matches in `text` as [start, end) byte offsets, left to right; an empty
  // match advances by one character, as the `onig` crate's find_iter does.
  void FindAll(std::string_view text, std::vector<std::pair<size_t, size_t>>* matches) const;

  // True when the whole of `text` matches from its start (anchored at both ends).
  bool MatchesAt(std::string_view text, size_t pos, size_t* end) const;

  const std::string& pattern() const { return pattern_; }

 private:
  OnigRegex(std::string pattern, void* regex) : pattern_(std::move(pattern)), regex_(regex) {}
  std::string pattern_;
  void* regex_;  // regex_t*, owned; void* keeps <oniguruma.h> out of this header.
};

// `literal` with regex metacharacters escaped, for Split patterns given as {"String": ...}.
std::string EscapeRegexLiteral(std::string_view literal);

}  // namespace ftd::data
