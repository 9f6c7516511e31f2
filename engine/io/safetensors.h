// Reading and writing Hugging Face safetensors checkpoints: one model.safetensors, or shards
// (model-00001-of-00003.safetensors, ...) listed by model.safetensors.index.json.
//
// Error codes, every message naming the file (and the tensor where one is involved):
//   NOT_FOUND         a file, shard or tensor that does not exist;
//   DATA_LOSS         a file shorter than its header says (truncated);
//   INVALID_ARGUMENT  malformed content (header or index JSON, entry fields, dtype, dims,
//                     offsets), an index that disagrees with its shards, a shape mismatch on
//                     Load, or tensors the writer cannot store.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"

namespace ftd::engine {

struct TensorInfo {
  std::string file;             // the .safetensors file holding it
  at::ScalarType dtype;         // BF16, F16, F32 (also F64, I64, I32, I16, I8, U8, BOOL,
                                // U16, U32, U64, F8_E4M3, F8_E5M2 accepted)
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte range inside the file's data section
};

inline constexpr char kSafetensorsSingleFile[] = "model.safetensors";
inline constexpr char kSafetensorsIndexFile[] = "model.safetensors.index.json";

// A memory-mapped safetensors checkpoint: one file, or a directory with model.safetensors or
// model.safetensors.index.json (+ its shards). Every header is read and validated by Open;
// the files are mapped lazily (on the first Load from each), read-only. Thread-safe.
class SafetensorsReader {
 public:
  // path: a .safetensors file, an index .json file, or a directory containing either
  // (model.safetensors is preferred when both exist, as transformers does).
  static absl::StatusOr<std::unique_ptr<SafetensorsReader>> Open(const std::string& path);
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;
  ~SafetensorsReader();

  std::vector<std::string> Keys() const;  // sorted
  bool Has(const std::string& name) const;
  absl::StatusOr<TensorInfo> Info(const std::string& name) const;
  // A CPU tensor that owns its memory (copied out of the mapping), in the file's dtype unless
  // `dtype` is given (then converted). If `expected_shape` is given, a different shape is an
  // error naming the tensor, file, expected and actual shapes.
  absl::StatusOr<at::Tensor> Load(const std::string& name,
                                  std::optional<std::vector<int64_t>> expected_shape = std::nullopt,
                                  std::optional<at::ScalarType> dtype = std::nullopt) const;
  // __metadata__ of the first file (of the first shard, by file name, when sharded).
  const std::map<std::string, std::string>& Metadata() const;
  // The path given to Open, as messages name the checkpoint.
  const std::string& path() const { return path_; }

 private:
  struct File;
  struct Entry {
    TensorInfo info;
    size_t file_index;
  };
  SafetensorsReader(std::string path, std::vector<std::unique_ptr<File>> files,
                    std::map<std::string, Entry> entries,
                    std::map<std::string, std::string> metadata);
  // The bytes of `name`'s tensor inside its file's mapping (mapped on first use). They stay
  // valid for this reader's lifetime.
  absl::StatusOr<const uint8_t*> TensorBytes(const std::string& name, const Entry& entry) const;

  friend absl::Status CopySafetensors(const std::string& in, const std::string& out,
                                      uint64_t max_shard_bytes);

  std::string path_;
  std::vector<std::unique_ptr<File>> files_;  // sorted by path
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

struct SafetensorsWriteOptions {
  uint64_t max_shard_bytes = 5ull << 30;  // past it: model-0000i-of-0000n.safetensors + index
  std::map<std::string, std::string> metadata = {{"format", "pt"}};
};

// Writes `tensors` (CPU or not; contiguous copies are made as needed, one tensor at a time)
// into directory `dir` (created if missing) as model.safetensors, or as shards named as HF does
// (model-00001-of-00003.safetensors) with model.safetensors.index.json
// ({"metadata": {"total_size": N}, "weight_map": {name: file}}) when the total exceeds
// max_shard_bytes (shards are filled greedily in name order; a tensor larger than the limit
// gets a shard of its own). Deterministic: tensors sorted by name, the header JSON with sorted
// keys and no whitespace, padded so the data starts 8-byte aligned, so that saving the same
// tensors twice gives byte-identical files. Each file is written to a temp name, fsynced and
// renamed; then model*.safetensors files and an index left in `dir` by an earlier save with a
// different sharding are removed (as transformers' save_pretrained does), and `dir` is fsynced.
absl::Status SaveSafetensors(const std::string& dir,
                             const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                             const SafetensorsWriteOptions& options = {});

// Reads every tensor of the checkpoint at `in` (as SafetensorsReader::Open takes it) and
// writes them with SaveSafetensors into directory `out`, keeping the first file's
// __metadata__. Tensors are written straight from the mapping: no copy of the whole model.
absl::Status CopySafetensors(const std::string& in, const std::string& out,
                             uint64_t max_shard_bytes);

}  // namespace ftd::engine
