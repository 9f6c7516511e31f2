#include "engine/data/onig_regex.h"

#include <oniguruma.h>

#include <mutex>

#include "absl/strings/str_cat.h"
#include "engine/data/utf8.h"

namespace ftd::data {
namespace {

void InitializeOnigurumaOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    OnigEncoding encodings[] = {ONIG_ENCODING_UTF8};
    onig_initialize(encodings, 1);
  });
}

// A region per thread: searching a compiled regex is reentrant, regions are not shared.
OnigRegion* ThreadRegion() {
  struct RegionHolder {
    OnigRegion* region = onig_region_new();
    ~RegionHolder() { onig_region_free(region, 1); }
  };
  thread_local RegionHolder holder;
  return holder.region;
}

}  // namespace

absl::StatusOr<std::unique_ptr<OnigRegex>> OnigRegex::Create(std::string_view pattern) {
  InitializeOnigurumaOnce();
  regex_t* regex = nullptr;
  OnigErrorInfo error_info;
  const auto* begin = reinterpret_cast<const OnigUChar*>(pattern.data());
  const int rc = onig_new(&regex, begin, begin + pattern.size(), ONIG_OPTION_NONE, ONIG_ENCODING_UTF8,
                          ONIG_SYNTAX_DEFAULT, &error_info);
  if (rc != ONIG_NORMAL) {
    OnigUChar message[ONIG_MAX_ERROR_MESSAGE_LEN];
    onig_error_code_to_str(message, rc, &error_info);
    return absl::InvalidArgumentError(absl::StrCat("regex `", std::string(pattern), "` does not compile: ",
                                                   reinterpret_cast<const char*>(message)));
  }
  return std::unique_ptr<OnigRegex>(new OnigRegex(std::string(pattern), regex));
}

OnigRegex::~OnigRegex() { onig_free(static_cast<regex_t*>(regex_)); }

void OnigRegex::FindAll(std::string_view text,
                        std::vector<std::pair<size_t, size_t>>* matches) const {
  matches->clear();
  auto* regex = static_cast<regex_t*>(regex_);
  OnigRegion* region = ThreadRegion();
  const auto* begin = reinterpret_cast<const OnigUChar*>(text.data());
  const auto* end = begin + text.size();
  size_t pos = 0;
  while (pos <= text.size()) {
    const int found = onig_search(regex, begin, end, begin + pos, end, region, ONIG_OPTION_NONE);
    if (found < 0) break;
    const size_t match_start = static_cast<size_t>(region->beg[0]);
    const size_t match_end = static_cast<size_t>(region->end[0]);
    matches->emplace_back(match_start, match_end);
    if (match_end == match_start) {
      if (match_end >= text.size()) break;
      size_t length;
      DecodeUtf8At(text, match_end, &length);
      pos = match_end + length;
    } else {
      pos = match_end;
    }
  }
}

bool OnigRegex::MatchesAt(std::string_view text, size_t pos, size_t* match_end) const {
  auto* regex = static_cast<regex_t*>(regex_);
  OnigRegion* region = ThreadRegion();
  const auto* begin = reinterpret_cast<const OnigUChar*>(text.data());
  const int length = onig_match(regex, begin, begin + text.size(), begin + pos, region, ONIG_OPTION_NONE);
  if (length < 0) return false;
  *match_end = pos + static_cast<size_t>(length);
  return true;
}

std::string EscapeRegexLiteral(std::string_view literal) {
  std::string out;
  for (char c : literal) {
    switch (c) {
      case '\\': case '^': case '$': case '.': case '|': case '?': case '*': case '+':
      case '(': case ')': case '[': case ']': case '{': case '}': case '-': case '#':
        out.push_back('\\');
        out.push_back(c);
        break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

}  // namespace ftd::data
