#include "engine/data/normalizer.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/data/unicode_nfc.h"
#include "nlohmann/json.hpp"

namespace ftd::data {
namespace {

class NfcNormalizer final : public Normalizer {
 public:
  void Normalize(std::string_view text, std::string* out) const override { *out = NormalizeNfc(text); }
};

class NfdNormalizer final : public Normalizer {
 public:
  void Normalize(std::string_view text, std::string* out) const override { *out = NormalizeNfd(text); }
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps) : steps_(std::move(steps)) {}
  void Normalize(std::string_view text, std::string* out) const override {
    *out = std::string(text);
    std::string next;
    for (const auto& step : steps_) {
      step->Normalize(*out, &next);
      out->swap(next);
    }
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Normalizer>> NormalizerFromJson(const nlohmann::json& spec) {
  if (spec.is_null()) return std::unique_ptr<Normalizer>();
  if (!spec.is_object() || !spec.contains("type") || !spec["type"].is_string()) {
    return absl::InvalidArgumentError("normalizer: expected an object with a string \"type\"");
  }
  const std::string type = spec["type"].get<std::string>();
  if (type == "NFC") return std::unique_ptr<Normalizer>(std::make_unique<NfcNormalizer>());
  if (type == "NFD") return std::unique_ptr<Normalizer>(std::make_unique<NfdNormalizer>());
  if (type == "Sequence") {
    if (!spec.contains("normalizers") || !spec["normalizers"].is_array()) {
      return absl::InvalidArgumentError("normalizer Sequence: \"normalizers\" must be an array");
    }
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (const auto& child : spec["normalizers"]) {
      auto step = NormalizerFromJson(child);
      if (!step.ok()) return step.status();
      if (*step) steps.push_back(std::move(*step));
    }
    if (steps.empty()) return std::unique_ptr<Normalizer>();
    return std::unique_ptr<Normalizer>(std::make_unique<SequenceNormalizer>(std::move(steps)));
  }
  return absl::UnimplementedError(absl::StrCat(
      "normalizer type \"", type, "\" is not supported (supported: NFC, NFD, Sequence, null)"));
}

}  // namespace ftd::data
