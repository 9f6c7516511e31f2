// A JSONL file read without loading it: an index of where each line starts (8 bytes a line), so
// that documents can be read in any (shuffled) order with pread, and a streaming line reader.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace ftd::data {

class JsonlFile {
 public:
  // Scans `path` once and indexes its non-blank lines (blank and whitespace-only lines are
  // skipped everywhere, with their line numbers still counted).
  static absl::StatusOr<std::unique_ptr<JsonlFile>> Open(const std::string& path);
  ~JsonlFile();
  JsonlFile(const JsonlFile&) = delete;
  JsonlFile& operator=(const JsonlFile&) = delete;

  size_t num_records() const { return offsets_.size(); }
  // Line `index` among the non-blank lines, without its newline.
  absl::Status ReadRecord(size_t index, std::string* line) const;
  // 1-based line number in the file of record `index`, for error messages.
  int64_t LineNumber(size_t index) const { return line_numbers_[index]; }
  const std::string& path() const { return path_; }

 private:
  JsonlFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::string path_;
  int fd_;
  std::vector<uint64_t> offsets_;
  std::vector<uint64_t> lengths_;
  std::vector<int64_t> line_numbers_;
};

// Calls `visit(line_number, line)` for every non-blank line of `path`, streaming (constant
// memory). Stops early, returning OK, when `visit` returns false.
absl::Status ForEachJsonlLine(const std::string& path,
                              const std::function<bool(int64_t line_number, const std::string& line)>& visit);

}  // namespace ftd::data
