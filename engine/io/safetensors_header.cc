#include "engine/io/safetensors_header.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "engine/io/safetensors_dtype.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors stores little-endian data; this reader copies bytes as they are"
#endif

namespace ftd::engine {
namespace {

using Json = nlohmann::json;

constexpr char kMetadataKey[] = "__metadata__";

// Closes the descriptor on every return path.
class ScopedFd {
 public:
  explicit ScopedFd(int fd) : fd_(fd) {}
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  ~ScopedFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

absl::Status ErrnoError(const std::string& what, const std::string& path, int err) {
  std::string msg = absl::StrCat(what, " ", path, ": ", std::strerror(err));
  return err == ENOENT ? absl::NotFoundError(msg) : absl::InternalError(msg);
}

// Reads exactly `size` bytes at `offset`; fewer means the file shrank under us.
absl::Status ReadAt(int fd, const std::string& path, uint64_t offset, size_t size, char* out) {
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::pread(fd, out + done, size - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("cannot read", path, errno);
    }
    if (n == 0) {
      return absl::DataLossError(
          absl::StrCat(path, ": unexpected end of file at byte ", offset + done));
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::Status EntryError(const std::string& path, const std::string& name,
                        const std::string& what) {
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": tensor \"", name, "\": ", what));
}

// A non-negative integer that fits in uint64 (JSON floats and negative numbers are not).
bool AsUnsigned(const Json& value, uint64_t* out) {
  if (value.is_number_unsigned()) {
    *out = value.get<uint64_t>();
    return true;
  }
  if (value.is_number_integer() && value.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(value.get<int64_t>());
    return true;
  }
  return false;
}

absl::StatusOr<TensorInfo> ParseEntry(const std::string& path, const std::string& name,
                                      const Json& entry, uint64_t data_size) {
  if (!entry.is_object()) {
    return EntryError(path, name, absl::StrCat("entry is ", entry.type_name(), ", not an object"));
  }
  TensorInfo info;
  info.file = path;

  auto dtype_it = entry.find("dtype");
  if (dtype_it == entry.end()) return EntryError(path, name, "missing \"dtype\"");
  if (!dtype_it->is_string()) return EntryError(path, name, "\"dtype\" is not a string");
  auto dtype = SafetensorsDtypeFromString(dtype_it->get<std::string>());
  if (!dtype.ok()) return EntryError(path, name, std::string(dtype.status().message()));
  info.dtype = *dtype;

  auto shape_it = entry.find("shape");
  if (shape_it == entry.end()) return EntryError(path, name, "missing \"shape\"");
  if (!shape_it->is_array()) return EntryError(path, name, "\"shape\" is not an array");
  // numel in bytes, overflow-checked: a corrupt header must not wrap around to a small size.
  uint64_t expected_bytes = c10::elementSize(info.dtype);
  for (const Json& dim : *shape_it) {
    if (dim.is_number_integer() && !dim.is_number_unsigned() && dim.get<int64_t>() < 0) {
      return EntryError(path, name, absl::StrCat("negative dimension ", dim.get<int64_t>(),
                                                 " in shape ", shape_it->dump()));
    }
    uint64_t extent = 0;
    if (!AsUnsigned(dim, &extent) || extent > static_cast<uint64_t>(INT64_MAX)) {
      return EntryError(path, name,
                        absl::StrCat("shape ", shape_it->dump(), " has a non-integer dimension"));
    }
    if (__builtin_mul_overflow(expected_bytes, extent, &expected_bytes)) {
      return EntryError(path, name, absl::StrCat("shape ", shape_it->dump(), " overflows"));
    }
    info.shape.push_back(static_cast<int64_t>(extent));
  }

  auto offsets_it = entry.find("data_offsets");
  if (offsets_it == entry.end()) return EntryError(path, name, "missing \"data_offsets\"");
  if (!offsets_it->is_array() || offsets_it->size() != 2 ||
      !AsUnsigned((*offsets_it)[0], &info.begin) || !AsUnsigned((*offsets_it)[1], &info.end)) {
    return EntryError(path, name,
                      absl::StrCat("\"data_offsets\" ", offsets_it->dump(),
                                   " is not a pair of non-negative integers"));
  }
  if (info.begin > info.end) {
    return EntryError(path, name,
                      absl::StrCat("data_offsets ", offsets_it->dump(), " end before they begin"));
  }
  if (info.end - info.begin != expected_bytes) {
    return EntryError(
        path, name,
        absl::StrCat("data_offsets ", offsets_it->dump(), " span ", info.end - info.begin,
                     " bytes, but dtype ", dtype_it->get<std::string>(), " with shape ",
                     ShapeString(info.shape), " needs ", expected_bytes));
  }
  if (info.end > data_size) {
    return absl::DataLossError(absl::StrCat(
        path, ": tensor \"", name, "\": data_offsets ", offsets_it->dump(),
        " lie past the end of the data section (", data_size,
        " bytes): the file is truncated or its header is corrupt"));
  }
  return info;
}

absl::StatusOr<std::map<std::string, std::string>> ParseMetadata(const std::string& path,
                                                                 const Json& value) {
  if (!value.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": \"", kMetadataKey, "\" is ", value.type_name(), ", not an object"));
  }
  std::map<std::string, std::string> metadata;
  for (const auto& [key, item] : value.items()) {
    if (!item.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": \"", kMetadataKey, "\" entry \"",
                                                     key, "\" is not a string"));
    }
    metadata.emplace(key, item.get<std::string>());
  }
  return metadata;
}

// Two tensors may not share bytes; empty tensors occupy none.
absl::Status CheckNoOverlap(const std::string& path,
                            const std::map<std::string, TensorInfo>& tensors) {
  std::vector<std::pair<const std::string*, const TensorInfo*>> by_offset;
  for (const auto& [name, info] : tensors) {
    if (info.end > info.begin) by_offset.emplace_back(&name, &info);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](const auto& a, const auto& b) {
    return a.second->begin < b.second->begin;
  });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const auto& [prev_name, prev] = by_offset[i - 1];
    const auto& [name, info] = by_offset[i];
    if (info->begin < prev->end) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor \"", *name, "\" (bytes ", info->begin, "..", info->end,
          ") overlaps tensor \"", *prev_name, "\" (bytes ", prev->begin, "..", prev->end, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(const std::string& path,
                                                         const std::string& json_text,
                                                         uint64_t data_size) {
  Json root;
  try {
    root = Json::parse(json_text);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header is not valid JSON: ", e.what()));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header is a JSON ", root.type_name(), ", not an object"));
  }
  SafetensorsHeader header;
  header.data_size = data_size;
  for (const auto& [name, entry] : root.items()) {
    if (name == kMetadataKey) {
      FTD_ASSIGN_OR_RETURN(header.metadata, ParseMetadata(path, entry));
      continue;
    }
    FTD_ASSIGN_OR_RETURN(TensorInfo info, ParseEntry(path, name, entry, data_size));
    header.tensors.emplace(name, std::move(info));
  }
  FTD_RETURN_IF_ERROR(CheckNoOverlap(path, header.tensors));
  return header;
}

absl::StatusOr<SafetensorsHeader> ReadSafetensorsHeader(const std::string& path) {
  ScopedFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return ErrnoError("cannot open", path, errno);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoError("cannot stat", path, errno);
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    return absl::DataLossError(absl::StrCat(
        path, ": file is ", file_size, " bytes, shorter than the 8-byte header length"));
  }
  unsigned char length_bytes[8];
  FTD_RETURN_IF_ERROR(ReadAt(fd.get(), path, 0, 8, reinterpret_cast<char*>(length_bytes)));
  uint64_t header_length = 0;
  for (int i = 7; i >= 0; --i) header_length = (header_length << 8) | length_bytes[i];
  if (header_length > kMaxSafetensorsHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header length ", header_length,
                                                   " is absurd (limit ",
                                                   kMaxSafetensorsHeaderBytes, " bytes)"));
  }
  if (header_length > file_size - 8) {
    return absl::DataLossError(absl::StrCat(path, ": header length ", header_length,
                                            " runs past the end of the file (", file_size,
                                            " bytes)"));
  }
  std::string json_text(header_length, '\0');
  FTD_RETURN_IF_ERROR(ReadAt(fd.get(), path, 8, header_length, json_text.data()));
  FTD_ASSIGN_OR_RETURN(SafetensorsHeader header,
                       ParseSafetensorsHeader(path, json_text, file_size - 8 - header_length));
  header.data_start = 8 + header_length;
  return header;
}

absl::StatusOr<std::string> SerializeSafetensorsHeader(
    const std::vector<SafetensorsEntry>& entries,
    const std::map<std::string, std::string>& metadata) {
  // nlohmann::json objects are std::maps: dump() writes keys sorted, with no whitespace.
  Json root = Json::object();
  for (const SafetensorsEntry& entry : entries) {
    root[entry.name] = Json{{"dtype", entry.dtype},
                            {"shape", entry.shape},
                            {"data_offsets", {entry.begin, entry.end}}};
  }
  if (!metadata.empty()) root[kMetadataKey] = metadata;
  std::string json_text;
  try {
    json_text = root.dump();
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot write safetensors header: ", e.what()));
  }
  json_text.append((8 - json_text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  uint64_t length = json_text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((length >> (8 * i)) & 0xff);
  out += json_text;
  return out;
}

}  // namespace ftd::engine
