// Random access to a dataset's documents by index, tokenized on demand: what the packer reads
// (in a shuffled order) and what the validation split carves up.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/data/dataset_record.h"
#include "engine/data/document_encoder.h"
#include "engine/data/jsonl_file.h"
#include "engine/data/tokenized_document.h"

namespace ftd::data {

class DocumentSource {
 public:
  virtual ~DocumentSource() = default;
  virtual size_t size() const = 0;
  // Thread-safe. Errors name the file and line.
  virtual absl::StatusOr<TokenizedDocument> Get(size_t index) const = 0;
};

// Documents of a JSONL file (indexed once, read with pread, parsed and tokenized per Get).
class JsonlDocumentSource final : public DocumentSource {
 public:
  // `encoder` must outlive the source.
  static absl::StatusOr<std::unique_ptr<JsonlDocumentSource>> Open(const std::string& path, DatasetFormat format,
                                                                   const DocumentEncoder* encoder);
  size_t size() const override { return file_->num_records(); }
  absl::StatusOr<TokenizedDocument> Get(size_t index) const override;

 private:
  JsonlDocumentSource(std::unique_ptr<JsonlFile> file, DatasetFormat format, const DocumentEncoder* encoder)
      : file_(std::move(file)), format_(format), encoder_(encoder) {}
  std::unique_ptr<JsonlFile> file_;
  DatasetFormat format_;
  const DocumentEncoder* encoder_;
};

// Documents held in memory (tests, small evaluation sets).
class InMemoryDocumentSource final : public DocumentSource {
 public:
  explicit InMemoryDocumentSource(std::vector<TokenizedDocument> documents) : documents_(std::move(documents)) {}
  size_t size() const override { return documents_.size(); }
  absl::StatusOr<TokenizedDocument> Get(size_t index) const override;

 private:
  std::vector<TokenizedDocument> documents_;
};

// Documents [begin, end) of `base` (which must outlive the view): e.g. the documents of one
// planned row, so that packing it reads exactly those.
class DocumentRange final : public DocumentSource {
 public:
  DocumentRange(const DocumentSource* base, size_t begin, size_t end) : base_(base), begin_(begin), end_(end) {}
  size_t size() const override { return end_ - begin_; }
  absl::StatusOr<TokenizedDocument> Get(size_t index) const override { return base_->Get(begin_ + index); }

 private:
  const DocumentSource* base_;
  size_t begin_, end_;
};

// A validation split carved from one source; the two sides are disjoint and together are the
// whole source, each in the source's order. Both views keep a pointer to `base`, which must
// outlive them.
class HoldoutView final : public DocumentSource {
 public:
  enum class Side { kTrain, kHeldOut };
  // "Every N-th document": with `holdout_every` = N, the held-out side has documents N-1, 2N-1,
  // ... of `base` and the training side all the others.
  HoldoutView(const DocumentSource* base, size_t holdout_every, Side side);
  // "A fraction drawn by seed" (datasets.validation_fraction): the first round(fraction * N) of
  // a permutation of the N documents drawn from `seed` are held out, at least 1 and at most
  // N - 1 (nothing is held out when N < 2 or fraction <= 0). The same seed gives the same split
  // on every platform.
  HoldoutView(const DocumentSource* base, double fraction, uint64_t seed, Side side);
  size_t size() const override { return indices_.size(); }
  absl::StatusOr<TokenizedDocument> Get(size_t index) const override { return base_->Get(indices_[index]); }
  // The index in `base` of this view's document `index`.
  size_t base_index(size_t index) const { return indices_[index]; }

 private:
  const DocumentSource* base_;
  std::vector<size_t> indices_;
};

}  // namespace ftd::data
