#include "engine/data/jsonl_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace ftd::data {
namespace {

bool IsBlank(const char* data, size_t size) {
  for (size_t i = 0; i < size; ++i) {
    const char c = data[i];
    if (c != ' ' && c != '\t' && c != '\r') return false;
  }
  return true;
}

absl::Status ErrnoError(const std::string& what, const std::string& path) {
  return absl::InternalError(absl::StrCat(path, ": ", what, ": ", std::strerror(errno)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<JsonlFile>> JsonlFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return ErrnoError("open", path);
  }
  std::unique_ptr<JsonlFile> file(new JsonlFile(path, fd));
  std::vector<char> buffer(1 << 20);
  uint64_t file_offset = 0;
  uint64_t line_start = 0;
  int64_t line_number = 1;
  bool line_blank = true;  // so far, only blank characters on the current line
  const auto finish_line = [&](uint64_t end) {
    if (!line_blank) {
      file->offsets_.push_back(line_start);
      file->lengths_.push_back(end - line_start);
      file->line_numbers_.push_back(line_number);
    }
  };
  while (true) {
    const ssize_t got = ::pread(fd, buffer.data(), buffer.size(), static_cast<off_t>(file_offset));
    if (got < 0) return ErrnoError("read", path);
    if (got == 0) break;
    const char* data = buffer.data();
    size_t pos = 0;
    while (pos < static_cast<size_t>(got)) {
      const void* newline = std::memchr(data + pos, '\n', got - pos);
      const size_t end = newline ? static_cast<const char*>(newline) - data : static_cast<size_t>(got);
      if (line_blank && !IsBlank(data + pos, end - pos)) line_blank = false;
      if (!newline) {
        pos = got;
        break;
      }
      finish_line(file_offset + end);
      ++line_number;
      line_start = file_offset + end + 1;
      line_blank = true;
      pos = end + 1;
    }
    file_offset += got;
  }
  finish_line(file_offset);
  return file;
}

JsonlFile::~JsonlFile() { ::close(fd_); }

absl::Status JsonlFile::ReadRecord(size_t index, std::string* line) const {
  if (index >= offsets_.size()) {
    return absl::OutOfRangeError(absl::StrCat(path_, ": record ", index, " of ", offsets_.size()));
  }
  line->resize(lengths_[index]);
  size_t done = 0;
  while (done < line->size()) {
    const ssize_t got = ::pread(fd_, line->data() + done, line->size() - done,
                                static_cast<off_t>(offsets_[index] + done));
    if (got < 0) return ErrnoError("read", path_);
    if (got == 0) return absl::DataLossError(absl::StrCat(path_, ": file shrank while reading line ", line_numbers_[index]));
    done += got;
  }
  if (!line->empty() && line->back() == '\r') line->pop_back();
  return absl::OkStatus();
}

absl::Status ForEachJsonlLine(const std::string& path,
                              const std::function<bool(int64_t line_number, const std::string& line)>& visit) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::string line;
  int64_t line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (IsBlank(line.data(), line.size())) continue;
    if (!visit(line_number, line)) break;
  }
  if (in.bad()) return absl::InternalError(absl::StrCat(path, ": read error after line ", line_number));
  return absl::OkStatus();
}

}  // namespace ftd::data
