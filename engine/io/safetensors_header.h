// The header of a safetensors file: an 8-byte little-endian length N, then N bytes of JSON
// {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ...,
//  "__metadata__": {"key": "value"}}, then the data section that the offsets index into.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/io/safetensors.h"

namespace ftd::engine {

// The format's limit (as the reference implementation): longer headers are corrupt.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

struct SafetensorsHeader {
  std::map<std::string, TensorInfo> tensors;  // by name; TensorInfo::file is set
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // file offset of the data section: 8 + header length
  uint64_t data_size = 0;   // bytes from data_start to the end of the file
};

// Reads and validates the header of the file at `path` (reads only the header; no mapping).
// Errors name `path`, and the tensor where one is involved:
//   NOT_FOUND         the file does not exist;
//   DATA_LOSS         the file is shorter than its header or its tensors say (truncated);
//   INVALID_ARGUMENT  anything malformed: JSON, entry fields and their types, dtype, negative
//                     dims, offsets that do not match dtype size x numel, overlapping tensors.
absl::StatusOr<SafetensorsHeader> ReadSafetensorsHeader(const std::string& path);

// Validates the JSON text of a header against a data section of `data_size` bytes. `path`
// is used in messages and stored in each TensorInfo. Errors as ReadSafetensorsHeader.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(const std::string& path,
                                                         const std::string& json_text,
                                                         uint64_t data_size);

// One tensor of a file being written, laid out back to back in the order given.
struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // the format's name, e.g. "BF16"
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
};

// The header bytes to write before the data section: the 8-byte length, then compact JSON
// with sorted keys, padded with spaces so that the data section starts 8-byte aligned (as the
// reference implementation pads). `metadata` is written as __metadata__ when not empty.
// INVALID_ARGUMENT when a name or metadata string is not valid UTF-8 (JSON cannot hold it).
absl::StatusOr<std::string> SerializeSafetensorsHeader(const std::vector<SafetensorsEntry>& entries,
                                       const std::map<std::string, std::string>& metadata);

}  // namespace ftd::engine
