#include "engine/data/pre_tokenizer.h"

#include <algorithm>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "engine/data/byte_level.h"
#include "engine/data/onig_regex.h"
#include "nlohmann/json.hpp"

namespace ftd::data {
namespace {

// The GPT-2 pattern that ByteLevel(use_regex=true) splits with, as in HF tokenizers.
constexpr char kGpt2Pattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

absl::StatusOr<SplitBehavior> ParseBehavior(const std::string& name) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  return absl::InvalidArgumentError(absl::StrCat("pre_tokenizer Split: unknown behavior \"", name, "\""));
}

struct Segment {
  size_t begin, end;
  bool flag;  // is a match (input) / is removed (output)
};

// HF's NormalizedString::split: the regex matches of `piece` combined with the behavior into
// the pieces kept, appended (offset by `base`) to `out`.
void SplitPiece(const OnigRegex& regex, SplitBehavior behavior, bool invert, std::string_view piece,
                uint32_t base, std::vector<std::pair<size_t, size_t>>* matches,
                std::vector<Segment>* segments, std::vector<Segment>* merged,
                std::vector<std::pair<uint32_t, uint32_t>>* out) {
  regex.FindAll(piece, matches);
  segments->clear();
  size_t previous = 0;
  for (const auto& [begin, end] : *matches) {
    if (previous != begin) segments->push_back({previous, begin, invert});
    segments->push_back({begin, end, !invert});
    previous = end;
  }
  if (previous != piece.size()) segments->push_back({previous, piece.size(), invert});

  merged->clear();
  switch (behavior) {
    case SplitBehavior::kRemoved:
      *merged = *segments;
      break;
    case SplitBehavior::kIsolated:
      for (const auto& s : *segments) merged->push_back({s.begin, s.end, false});
      break;
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const auto& s : *segments) {
        if (s.flag && !previous_match && !merged->empty()) {
          merged->back().end = s.end;
        } else {
          merged->push_back({s.begin, s.end, false});
        }
        previous_match = s.flag;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = segments->rbegin(); it != segments->rend(); ++it) {
        if (it->flag && !previous_match && !merged->empty()) {
          merged->back().begin = it->begin;
        } else {
          merged->push_back({it->begin, it->end, false});
        }
        previous_match = it->flag;
      }
      std::reverse(merged->begin(), merged->end());
      break;
    }
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const auto& s : *segments) {
        if (s.flag == previous_match && !merged->empty()) {
          merged->back().end = s.end;
        } else {
          merged->push_back({s.begin, s.end, false});
        }
        previous_match = s.flag;
      }
      break;
    }
  }
  for (const auto& s : *merged) {
    if (!s.flag && s.end > s.begin) {
      out->emplace_back(base + static_cast<uint32_t>(s.begin), base + static_cast<uint32_t>(s.end));
    }
  }
}

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(std::unique_ptr<OnigRegex> regex, SplitBehavior behavior, bool invert)
      : regex_(std::move(regex)), behavior_(behavior), invert_(invert) {}

  void PreTokenize(PreTokenizedText* io, PreTokenizedText* scratch) const override {
    thread_local std::vector<std::pair<size_t, size_t>> matches;
    thread_local std::vector<Segment> segments, merged;
    scratch->pieces.clear();
    const std::string_view text = io->text;
    for (const auto& [begin, end] : io->pieces) {
      SplitPiece(*regex_, behavior_, invert_, text.substr(begin, end - begin), begin, &matches,
                 &segments, &merged, &scratch->pieces);
    }
    io->pieces.swap(scratch->pieces);
  }

 private:
  std::unique_ptr<OnigRegex> regex_;
  SplitBehavior behavior_;
  bool invert_;
};

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<OnigRegex> regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}

  void PreTokenize(PreTokenizedText* io, PreTokenizedText* scratch) const override {
    thread_local std::vector<std::pair<size_t, size_t>> matches;
    thread_local std::vector<Segment> segments, merged;
    thread_local std::vector<std::pair<uint32_t, uint32_t>> words;
    thread_local std::string prefixed;
    scratch->text.clear();
    scratch->pieces.clear();
    const std::string_view text = io->text;
    for (const auto& [begin, end] : io->pieces) {
      std::string_view piece = text.substr(begin, end - begin);
      if (add_prefix_space_ && piece.front() != ' ') {
        prefixed.assign(" ");
        prefixed.append(piece);
        piece = prefixed;
      }
      words.clear();
      if (regex_ != nullptr) {
        SplitPiece(*regex_, SplitBehavior::kIsolated, false, piece, 0, &matches, &segments, &merged,
                   &words);
      } else {
        words.emplace_back(0, static_cast<uint32_t>(piece.size()));
      }
      for (const auto& [word_begin, word_end] : words) {
        const auto out_begin = static_cast<uint32_t>(scratch->text.size());
        AppendByteLevel(piece.substr(word_begin, word_end - word_begin), &scratch->text);
        scratch->pieces.emplace_back(out_begin, static_cast<uint32_t>(scratch->text.size()));
      }
    }
    std::swap(*io, *scratch);
  }

 private:
  bool add_prefix_space_;
  std::unique_ptr<OnigRegex> regex_;  // null when use_regex is false
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void PreTokenize(PreTokenizedText* io, PreTokenizedText* scratch) const override {
    for (const auto& step : steps_) step->PreTokenize(io, scratch);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

bool BoolField(const nlohmann::json& spec, const char* name, bool fallback) {
  auto it = spec.find(name);
  return it != spec.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

}  // namespace

absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizerFromJson(const nlohmann::json& spec) {
  if (spec.is_null()) return std::unique_ptr<PreTokenizer>();
  if (!spec.is_object() || !spec.contains("type") || !spec["type"].is_string()) {
    return absl::InvalidArgumentError("pre_tokenizer: expected an object with a string \"type\"");
  }
  const std::string type = spec["type"].get<std::string>();
  if (type == "Split") {
    if (!spec.contains("pattern") || !spec["pattern"].is_object()) {
      return absl::InvalidArgumentError("pre_tokenizer Split: \"pattern\" must be an object");
    }
    const auto& pattern = spec["pattern"];
    std::string regex_text;
    if (pattern.contains("Regex") && pattern["Regex"].is_string()) {
      regex_text = pattern["Regex"].get<std::string>();
    } else if (pattern.contains("String") && pattern["String"].is_string()) {
      regex_text = EscapeRegexLiteral(pattern["String"].get<std::string>());
    } else {
      return absl::InvalidArgumentError(
          "pre_tokenizer Split: \"pattern\" needs a string \"Regex\" or \"String\"");
    }
    auto regex = OnigRegex::Create(regex_text);
    if (!regex.ok()) return regex.status();
    const std::string behavior_name =
        spec.contains("behavior") && spec["behavior"].is_string() ? spec["behavior"].get<std::string>() : "Isolated";
    auto behavior = ParseBehavior(behavior_name);
    if (!behavior.ok()) return behavior.status();
    return std::unique_ptr<PreTokenizer>(std::make_unique<SplitPreTokenizer>(
        std::move(*regex), *behavior, BoolField(spec, "invert", false)));
  }
  if (type == "ByteLevel") {
    std::unique_ptr<OnigRegex> regex;
    if (BoolField(spec, "use_regex", true)) {
      auto compiled = OnigRegex::Create(kGpt2Pattern);
      if (!compiled.ok()) return compiled.status();
      regex = std::move(*compiled);
    }
    return std::unique_ptr<PreTokenizer>(std::make_unique<ByteLevelPreTokenizer>(
        BoolField(spec, "add_prefix_space", true), std::move(regex)));
  }
  if (type == "Digits") {
    const bool individual = BoolField(spec, "individual_digits", false);
    auto regex = OnigRegex::Create(R"(\p{N})");
    if (!regex.ok()) return regex.status();
    return std::unique_ptr<PreTokenizer>(std::make_unique<SplitPreTokenizer>(
        std::move(*regex), individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous, false));
  }
  if (type == "Sequence") {
    if (!spec.contains("pretokenizers") || !spec["pretokenizers"].is_array()) {
      return absl::InvalidArgumentError("pre_tokenizer Sequence: \"pretokenizers\" must be an array");
    }
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (const auto& child : spec["pretokenizers"]) {
      auto step = PreTokenizerFromJson(child);
      if (!step.ok()) return step.status();
      if (*step) steps.push_back(std::move(*step));
    }
    return std::unique_ptr<PreTokenizer>(std::make_unique<SequencePreTokenizer>(std::move(steps)));
  }
  return absl::UnimplementedError(absl::StrCat("pre_tokenizer type \"", type,
                                               "\" is not supported (supported: Split, ByteLevel, "
                                               "Digits, Sequence, null)"));
}

}  // namespace ftd::data
