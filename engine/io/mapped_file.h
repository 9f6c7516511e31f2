// A read-only memory mapping of a whole file, owned (fd + mapping) and released on destruction.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace ftd::engine {

class MappedFile {
 public:
  // Maps `path` read-only (MAP_PRIVATE). NOT_FOUND when the file does not exist, INTERNAL on
  // other system errors; both name the path. An empty file maps to size() == 0, data() null.
  static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);

  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // Maps the pages of [offset, offset + size) in one call before they are read, instead of one
  // page fault per 4 KiB page (several times faster for a large tensor). A hint only: kernels
  // without MADV_POPULATE_READ (before Linux 5.14) fall back to faulting pages in on access.
  void Prefault(size_t offset, size_t size) const;

 private:
  MappedFile(std::string path, int fd, const uint8_t* data, size_t size)
      : path_(std::move(path)), fd_(fd), data_(data), size_(size) {}

  std::string path_;
  int fd_;
  const uint8_t* data_;
  size_t size_;
};

}  // namespace ftd::engine
