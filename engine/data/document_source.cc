#include "engine/data/document_source.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/data/epoch_order.h"

namespace ftd::data {

absl::StatusOr<std::unique_ptr<JsonlDocumentSource>> JsonlDocumentSource::Open(const std::string& path,
                                                                               DatasetFormat format,
                                                                               const DocumentEncoder* encoder) {
  auto file = JsonlFile::Open(path);
  if (!file.ok()) return file.status();
  if ((*file)->num_records() == 0) return absl::InvalidArgumentError(absl::StrCat(path, ": no records (empty file)"));
  return std::unique_ptr<JsonlDocumentSource>(new JsonlDocumentSource(std::move(*file), format, encoder));
}

absl::StatusOr<TokenizedDocument> JsonlDocumentSource::Get(size_t index) const {
  thread_local std::string line;
  absl::Status read = file_->ReadRecord(index, &line);
  if (!read.ok()) return read;
  const auto located = [&](const absl::Status& status) {
    return absl::Status(status.code(),
                        absl::StrCat(file_->path(), ":", file_->LineNumber(index), ": ", status.message()));
  };
  auto record = ParseDatasetRecord(line, format_, encoder_->vocab_size());
  if (!record.ok()) return located(record.status());
  auto document = encoder_->Encode(*record);
  if (!document.ok()) return located(document.status());
  return document;
}

absl::StatusOr<TokenizedDocument> InMemoryDocumentSource::Get(size_t index) const {
  if (index >= documents_.size()) {
    return absl::OutOfRangeError(absl::StrCat("document ", index, " of ", documents_.size()));
  }
  return documents_[index];
}

HoldoutView::HoldoutView(const DocumentSource* base, size_t holdout_every, Side side) : base_(base) {
  for (size_t i = 0; i < base->size(); ++i) {
    const bool held_out = holdout_every > 0 && i % holdout_every == holdout_every - 1;
    if (held_out == (side == Side::kHeldOut)) indices_.push_back(i);
  }
}

HoldoutView::HoldoutView(const DocumentSource* base, double fraction, uint64_t seed, Side side) : base_(base) {
  const size_t n = base->size();
  std::vector<bool> held_out(n, false);
  if (n >= 2 && fraction > 0 && n <= UINT32_MAX) {
    const auto wanted = static_cast<size_t>(std::llround(fraction * static_cast<double>(n)));
    const size_t count = std::clamp<size_t>(wanted, 1, n - 1);
    // A permutation of its own (salted seed), not epoch 0's training order.
    constexpr uint64_t kHoldoutSalt = 0x686f6c646f7574ULL;  // "holdout"
    const std::vector<uint32_t> order = EpochOrder(static_cast<uint32_t>(n), seed ^ kHoldoutSalt, 0, true);
    for (size_t i = 0; i < count; ++i) held_out[order[i]] = true;
  }
  for (size_t i = 0; i < n; ++i) {
    if (held_out[i] == (side == Side::kHeldOut)) indices_.push_back(i);
  }
}

}  // namespace ftd::data
