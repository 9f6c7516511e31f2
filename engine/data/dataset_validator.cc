#include "engine/data/dataset_validator.h"

#include <filesystem>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/data/document_encoder.h"
#include "engine/data/jsonl_file.h"

namespace ftd::data {
namespace {

absl::Status Validate(const std::string& path, DatasetFormat format, int32_t vocab_size,
                      const DocumentEncoder* encoder, const ValidationOptions& options) {
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) {
    return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  }
  std::vector<std::string> problems;
  int64_t bad_lines = 0;
  int64_t records = 0;
  absl::Status read = ForEachJsonlLine(path, [&](int64_t line_number, const std::string& line) {
    const int64_t record_index = records++;
    absl::Status status;
    auto record = ParseDatasetRecord(line, format, vocab_size);
    if (!record.ok()) {
      status = record.status();
    } else if (encoder != nullptr) {
      auto document = encoder->Encode(*record);
      if (!document.ok()) {
        status = document.status();
      } else if (options.on_document) {
        options.on_document(record_index, *document);
      }
    }
    if (!status.ok()) {
      ++bad_lines;
      if (static_cast<int>(problems.size()) < options.max_errors) {
        problems.push_back(absl::StrCat(path, ":", line_number, ": ", status.message()));
      }
    }
    return true;
  });
  if (!read.ok()) return read;
  if (records == 0) return absl::InvalidArgumentError(absl::StrCat(path, ": no records (empty file)"));
  if (bad_lines == 0) return absl::OkStatus();
  if (bad_lines > static_cast<int64_t>(problems.size())) {
    problems.push_back(absl::StrCat("... and ", bad_lines - problems.size(), " more bad lines (", bad_lines, " of ",
                                    records, ")"));
  }
  return absl::InvalidArgumentError(absl::StrJoin(problems, "\n"));
}

}  // namespace

absl::Status ValidateDataset(const std::string& path, DatasetFormat format, int32_t vocab_size,
                             const ValidationOptions& options) {
  if (!options.on_document) return Validate(path, format, vocab_size, nullptr, options);
  auto encoder = DocumentEncoder::Create(nullptr);  // token-id records only
  if (!encoder.ok()) return encoder.status();
  return Validate(path, format, vocab_size, encoder->get(), options);
}

absl::Status ValidateDataset(const std::string& path, DatasetFormat format, const Tokenizer* tokenizer,
                             const ValidationOptions& options) {
  if (tokenizer == nullptr) return ValidateDataset(path, format, 0, options);
  auto encoder = DocumentEncoder::Create(tokenizer);
  if (!encoder.ok()) return encoder.status();
  return Validate(path, format, tokenizer->vocab_size(), encoder->get(), options);
}

}  // namespace ftd::data
