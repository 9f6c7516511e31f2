// SafetensorsReader and CopySafetensors; the writer is in safetensors_writer.cc.
#include "engine/io/safetensors.h"

#include <sys/stat.h>

#include <cstring>
#include <mutex>
#include <set>

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include "absl/memory/memory.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/io/mapped_file.h"
#include "engine/io/safetensors_header.h"

namespace ftd::engine {

// One .safetensors file of the checkpoint: its validated header, and its mapping once a
// tensor of it has been loaded.
struct SafetensorsReader::File {
  std::string path;
  uint64_t data_start = 0;
  uint64_t data_size = 0;
  std::once_flag map_once;
  absl::StatusOr<std::unique_ptr<MappedFile>> mapping = absl::UnknownError("not mapped");
};

namespace {

using Json = nlohmann::json;

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

enum class PathKind { kMissing, kDirectory, kFile };

PathKind Stat(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return PathKind::kMissing;
  return S_ISDIR(st.st_mode) ? PathKind::kDirectory : PathKind::kFile;
}

std::string DirName(const std::string& path) {
  auto pos = path.find_last_of('/');
  if (pos == std::string::npos) return ".";
  if (pos == 0) return "/";
  return path.substr(0, pos);
}

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir.back() == '/') return dir + name;
  return absl::StrCat(dir, "/", name);
}

// weight_map of an index file: tensor name -> shard file name (validated, not yet opened).
absl::StatusOr<std::map<std::string, std::string>> ReadIndex(const std::string& index_path) {
  FTD_ASSIGN_OR_RETURN(std::string text, ReadFileToString(index_path));
  Json root;
  try {
    root = Json::parse(text);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": index is not valid JSON: ", e.what()));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": index is a JSON ", root.type_name(), ", not an object"));
  }
  auto weight_map = root.find("weight_map");
  if (weight_map == root.end() || !weight_map->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": index has no \"weight_map\" object"));
  }
  std::map<std::string, std::string> shard_of;
  for (const auto& [name, shard] : weight_map->items()) {
    if (!shard.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(
          index_path, ": weight_map entry for tensor \"", name, "\" is not a file name"));
    }
    std::string file = shard.get<std::string>();
    // Shards live beside the index; a path elsewhere is corrupt (or hostile).
    if (file.empty() || file.find('/') != std::string::npos || file == "." || file == "..") {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map entry for tensor \"",
                                                     name, "\" names \"", file,
                                                     "\", not a file beside the index"));
    }
    shard_of.emplace(name, std::move(file));
  }
  return shard_of;
}

absl::Status WithContext(const absl::Status& status, const std::string& context) {
  return absl::Status(status.code(), absl::StrCat(context, ": ", status.message()));
}

}  // namespace

SafetensorsReader::SafetensorsReader(std::string path, std::vector<std::unique_ptr<File>> files,
                                     std::map<std::string, Entry> entries,
                                     std::map<std::string, std::string> metadata)
    : path_(std::move(path)),
      files_(std::move(files)),
      entries_(std::move(entries)),
      metadata_(std::move(metadata)) {}

SafetensorsReader::~SafetensorsReader() = default;

absl::StatusOr<std::unique_ptr<SafetensorsReader>> SafetensorsReader::Open(
    const std::string& path) {
  std::string file_path = path;
  PathKind kind = Stat(path);
  if (kind == PathKind::kMissing) {
    return absl::NotFoundError(absl::StrCat("safetensors checkpoint ", path, " does not exist"));
  }
  if (kind == PathKind::kDirectory) {
    std::string single = JoinPath(path, kSafetensorsSingleFile);
    std::string index = JoinPath(path, kSafetensorsIndexFile);
    if (Stat(single) == PathKind::kFile) {
      file_path = single;
    } else if (Stat(index) == PathKind::kFile) {
      file_path = index;
    } else {
      return absl::NotFoundError(absl::StrCat("directory ", path, " has neither ",
                                              kSafetensorsSingleFile, " nor ",
                                              kSafetensorsIndexFile));
    }
  }

  std::vector<std::unique_ptr<File>> files;
  std::map<std::string, Entry> entries;
  std::map<std::string, std::string> metadata;
  auto add_file = [&files](const std::string& file_path, const SafetensorsHeader& header) {
    auto file = std::make_unique<File>();
    file->path = file_path;
    file->data_start = header.data_start;
    file->data_size = header.data_size;
    files.push_back(std::move(file));
    return files.size() - 1;
  };

  if (!absl::EndsWith(file_path, ".json")) {
    FTD_ASSIGN_OR_RETURN(SafetensorsHeader header, ReadSafetensorsHeader(file_path));
    size_t index = add_file(file_path, header);
    for (auto& [name, info] : header.tensors) entries.emplace(name, Entry{std::move(info), index});
    metadata = std::move(header.metadata);
  } else {
    FTD_ASSIGN_OR_RETURN(auto shard_of, ReadIndex(file_path));
    // Each shard once, in file-name order; the first tensor naming it is quoted if it fails.
    std::map<std::string, std::string> first_tensor_of;
    for (const auto& [name, shard] : shard_of) first_tensor_of.emplace(shard, name);
    std::map<std::string, std::pair<size_t, SafetensorsHeader>> headers;
    for (const auto& [shard, tensor] : first_tensor_of) {
      std::string shard_path = JoinPath(DirName(file_path), shard);
      auto header = ReadSafetensorsHeader(shard_path);
      if (!header.ok()) {
        return WithContext(header.status(), absl::StrCat("shard ", shard, " named by index ",
                                                         file_path, " (for tensor \"", tensor,
                                                         "\")"));
      }
      if (headers.empty()) metadata = header->metadata;
      size_t index = add_file(shard_path, *header);
      headers.emplace(shard, std::make_pair(index, *std::move(header)));
    }
    for (const auto& [name, shard] : shard_of) {
      auto& [index, header] = headers.at(shard);
      auto info = header.tensors.find(name);
      if (info == header.tensors.end()) {
        return absl::InvalidArgumentError(absl::StrCat("index ", file_path, " maps tensor \"",
                                                       name, "\" to ", files[index]->path,
                                                       ", which does not contain it"));
      }
      entries.emplace(name, Entry{info->second, index});
    }
  }
  return absl::WrapUnique(
      new SafetensorsReader(path, std::move(files), std::move(entries), std::move(metadata)));
}

std::vector<std::string> SafetensorsReader::Keys() const {
  std::vector<std::string> keys;
  keys.reserve(entries_.size());
  for (const auto& [name, entry] : entries_) keys.push_back(name);
  return keys;
}

bool SafetensorsReader::Has(const std::string& name) const { return entries_.count(name) > 0; }

absl::StatusOr<TensorInfo> SafetensorsReader::Info(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    return absl::NotFoundError(
        absl::StrCat("tensor \"", name, "\" not found in checkpoint ", path_));
  }
  return it->second.info;
}

const std::map<std::string, std::string>& SafetensorsReader::Metadata() const {
  return metadata_;
}

absl::StatusOr<const uint8_t*> SafetensorsReader::TensorBytes(const std::string& name,
                                                              const Entry& entry) const {
  File& file = *files_[entry.file_index];
  std::call_once(file.map_once, [&file] {
    file.mapping = MappedFile::Open(file.path);
    // The file may have changed since Open read its header.
    if (file.mapping.ok() && (*file.mapping)->size() < file.data_start + file.data_size) {
      file.mapping = absl::DataLossError(
          absl::StrCat(file.path, ": file shrank to ", (*file.mapping)->size(),
                       " bytes since its header was read (", file.data_start + file.data_size,
                       " bytes)"));
    }
  });
  if (!file.mapping.ok()) {
    return WithContext(file.mapping.status(), absl::StrCat("loading tensor \"", name, "\""));
  }
  (*file.mapping)->Prefault(file.data_start + entry.info.begin, entry.info.end - entry.info.begin);
  return (*file.mapping)->data() + file.data_start + entry.info.begin;
}

absl::StatusOr<at::Tensor> SafetensorsReader::Load(
    const std::string& name, std::optional<std::vector<int64_t>> expected_shape,
    std::optional<at::ScalarType> dtype) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    return absl::NotFoundError(
        absl::StrCat("tensor \"", name, "\" not found in checkpoint ", path_));
  }
  const TensorInfo& info = it->second.info;
  if (expected_shape.has_value() && *expected_shape != info.shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor \"", name, "\" in ", info.file, " has shape ", ShapeString(info.shape),
        ", expected ", ShapeString(*expected_shape)));
  }
  FTD_ASSIGN_OR_RETURN(const uint8_t* bytes, TensorBytes(name, it->second));
  try {
    at::Tensor tensor = at::empty(info.shape, at::TensorOptions().dtype(info.dtype));
    if (info.end > info.begin) std::memcpy(tensor.data_ptr(), bytes, info.end - info.begin);
    if (dtype.has_value() && *dtype != info.dtype) tensor = tensor.to(*dtype);
    return tensor;
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor \"", name, "\" in ", info.file, ": cannot load as ",
                     c10::toString(dtype.value_or(info.dtype)), ": ", e.what_without_backtrace()));
  }
}

absl::Status CopySafetensors(const std::string& in, const std::string& out,
                             uint64_t max_shard_bytes) {
  FTD_ASSIGN_OR_RETURN(auto reader, SafetensorsReader::Open(in));
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  tensors.reserve(reader->entries_.size());
  for (const auto& [name, entry] : reader->entries_) {
    FTD_ASSIGN_OR_RETURN(const uint8_t* bytes, reader->TensorBytes(name, entry));
    // A view of the read-only mapping: the writer only reads its bytes, and the reader (which
    // owns the mapping) outlives the save.
    tensors.emplace_back(name, at::from_blob(const_cast<uint8_t*>(bytes), entry.info.shape,
                                             at::TensorOptions().dtype(entry.info.dtype)));
  }
  SafetensorsWriteOptions options;
  options.max_shard_bytes = max_shard_bytes;
  options.metadata = reader->Metadata();
  return SaveSafetensors(out, tensors, options);
}

}  // namespace ftd::engine
