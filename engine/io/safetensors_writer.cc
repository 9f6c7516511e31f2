// SaveSafetensors: deterministic, atomically written safetensors files (sharded past a limit).
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include "absl/memory/memory.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/io/safetensors.h"
#include "engine/io/safetensors_dtype.h"
#include "engine/io/safetensors_header.h"

namespace ftd::engine {
namespace {

absl::Status ErrnoError(const std::string& what, const std::string& path, int err) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(err)));
}

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir.back() == '/') return dir + name;
  return absl::StrCat(dir, "/", name);
}

// A file being written under a temporary name: Commit() fsyncs and renames it into place;
// destruction without Commit() closes and removes it.
class PendingFile {
 public:
  static absl::StatusOr<std::unique_ptr<PendingFile>> Create(const std::string& path) {
    std::string temp_path = absl::StrCat(path, ".tmp.", ::getpid());
    int fd = ::open(temp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoError("cannot create", temp_path, errno);
    return absl::WrapUnique(new PendingFile(path, std::move(temp_path), fd));
  }
  PendingFile(const PendingFile&) = delete;
  PendingFile& operator=(const PendingFile&) = delete;
  ~PendingFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(temp_path_.c_str());
  }

  absl::Status Write(const void* data, size_t size) {
    const char* bytes = static_cast<const char*>(data);
    while (size > 0) {
      ssize_t n = ::write(fd_, bytes, size);
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoError("cannot write", temp_path_, errno);
      }
      bytes += n;
      size -= static_cast<size_t>(n);
    }
    return absl::OkStatus();
  }

  absl::Status Commit() {
    if (::fsync(fd_) != 0) return ErrnoError("cannot fsync", temp_path_, errno);
    int rc = ::close(fd_);
    fd_ = -1;
    if (rc != 0) return ErrnoError("cannot close", temp_path_, errno);
    if (::rename(temp_path_.c_str(), path_.c_str()) != 0) {
      return ErrnoError("cannot rename to", path_, errno);
    }
    committed_ = true;
    return absl::OkStatus();
  }

 private:
  PendingFile(std::string path, std::string temp_path, int fd)
      : path_(std::move(path)), temp_path_(std::move(temp_path)), fd_(fd) {}

  std::string path_;
  std::string temp_path_;
  int fd_;
  bool committed_ = false;
};

struct PlannedTensor {
  const std::string* name;
  const at::Tensor* tensor;
  std::string dtype;
  uint64_t bytes;
};

absl::StatusOr<std::vector<PlannedTensor>> PlanTensors(
    const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  std::vector<PlannedTensor> planned;
  planned.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    if (name.empty() || name == "__metadata__") {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot save a tensor named \"", name, "\" in safetensors"));
    }
    if (!tensor.defined()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor \"", name, "\" is undefined"));
    }
    if (tensor.layout() != at::kStrided) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor \"", name, "\" is not dense: only strided tensors can be saved"));
    }
    auto dtype = SafetensorsDtypeToString(tensor.scalar_type());
    if (!dtype.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor \"", name, "\": ", dtype.status().message()));
    }
    planned.push_back(PlannedTensor{&name, &tensor, *std::move(dtype),
                                    static_cast<uint64_t>(tensor.numel()) * tensor.element_size()});
  }
  std::sort(planned.begin(), planned.end(),
            [](const PlannedTensor& a, const PlannedTensor& b) { return *a.name < *b.name; });
  for (size_t i = 1; i < planned.size(); ++i) {
    if (*planned[i].name == *planned[i - 1].name) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor \"", *planned[i].name, "\" is given twice"));
    }
  }
  return planned;
}

// Greedy, in name order: a shard closes when the next tensor would take it past the limit.
std::vector<std::vector<const PlannedTensor*>> SplitIntoShards(
    const std::vector<PlannedTensor>& planned, uint64_t max_shard_bytes) {
  std::vector<std::vector<const PlannedTensor*>> shards(1);
  uint64_t shard_bytes = 0;
  for (const PlannedTensor& tensor : planned) {
    if (!shards.back().empty() && shard_bytes + tensor.bytes > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(&tensor);
    shard_bytes += tensor.bytes;
  }
  return shards;
}

absl::Status WriteShard(const std::string& path, const std::vector<const PlannedTensor*>& shard,
                        const std::map<std::string, std::string>& metadata) {
  std::vector<SafetensorsEntry> entries;
  uint64_t offset = 0;
  for (const PlannedTensor* tensor : shard) {
    entries.push_back(SafetensorsEntry{*tensor->name, tensor->dtype, tensor->tensor->sizes().vec(),
                                       offset, offset + tensor->bytes});
    offset += tensor->bytes;
  }
  FTD_ASSIGN_OR_RETURN(std::string header, SerializeSafetensorsHeader(entries, metadata));
  FTD_ASSIGN_OR_RETURN(auto file, PendingFile::Create(path));
  FTD_RETURN_IF_ERROR(file->Write(header.data(), header.size()));
  for (const PlannedTensor* tensor : shard) {
    if (tensor->bytes == 0) continue;
    at::Tensor host;
    try {
      // One tensor at a time on the host: saving a GPU model never holds a second full copy.
      host = tensor->tensor->is_cpu() ? tensor->tensor->contiguous()
                                      : tensor->tensor->to(at::kCPU).contiguous();
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat("tensor \"", *tensor->name,
                                              "\": cannot copy to the host: ",
                                              e.what_without_backtrace()));
    }
    FTD_RETURN_IF_ERROR(file->Write(host.data_ptr(), tensor->bytes));
  }
  return file->Commit();
}

std::string ShardName(size_t index, size_t count) {
  return absl::StrFormat("model-%05d-of-%05d.safetensors", index + 1, count);
}

// mkdir -p. (std::filesystem is avoided in code linked with LibTorch: the torch wheel's
// libtorch.so exports its own, partly broken, copies of several std::filesystem functions.)
absl::Status MakeDirectories(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("empty directory name");
  for (size_t pos = dir.find('/', 1);; pos = dir.find('/', pos + 1)) {
    std::string prefix = dir.substr(0, pos);
    if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      return ErrnoError("cannot create directory", prefix, errno);
    }
    if (pos == std::string::npos) break;
  }
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(dir, " exists and is not a directory"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> ListDirectory(const std::string& dir) {
  DIR* handle = ::opendir(dir.c_str());
  if (handle == nullptr) return ErrnoError("cannot list", dir, errno);
  std::vector<std::string> names;
  while (const dirent* item = ::readdir(handle)) names.emplace_back(item->d_name);
  ::closedir(handle);
  return names;
}

bool IsCheckpointFile(const std::string& name) {
  return name == kSafetensorsSingleFile || name == kSafetensorsIndexFile ||
         (absl::StartsWith(name, "model-") && absl::StrContains(name, "-of-") &&
          absl::EndsWith(name, ".safetensors"));
}

// Checkpoint files of an earlier save that the new one does not overwrite.
absl::Status RemoveStaleFiles(const std::string& dir, const std::set<std::string>& written) {
  FTD_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDirectory(dir));
  for (const std::string& name : names) {
    if (!IsCheckpointFile(name) || written.count(name) > 0) continue;
    std::string path = JoinPath(dir, name);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      return ErrnoError("cannot remove stale checkpoint file", path, errno);
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status SaveSafetensors(const std::string& dir,
                             const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                             const SafetensorsWriteOptions& options) {
  if (options.max_shard_bytes == 0) {
    return absl::InvalidArgumentError("max_shard_bytes must be positive");
  }
  FTD_ASSIGN_OR_RETURN(std::vector<PlannedTensor> planned, PlanTensors(tensors));
  FTD_RETURN_IF_ERROR(MakeDirectories(dir));

  auto shards = SplitIntoShards(planned, options.max_shard_bytes);
  std::set<std::string> written;
  if (shards.size() == 1) {
    FTD_RETURN_IF_ERROR(
        WriteShard(JoinPath(dir, kSafetensorsSingleFile), shards[0], options.metadata));
    written.insert(kSafetensorsSingleFile);
  } else {
    nlohmann::json weight_map = nlohmann::json::object();
    uint64_t total_size = 0;
    for (size_t i = 0; i < shards.size(); ++i) {
      std::string name = ShardName(i, shards.size());
      FTD_RETURN_IF_ERROR(WriteShard(JoinPath(dir, name), shards[i], options.metadata));
      written.insert(name);
      for (const PlannedTensor* tensor : shards[i]) {
        weight_map[*tensor->name] = name;
        total_size += tensor->bytes;
      }
    }
    // As transformers writes it: indent 2, sorted keys, trailing newline.
    nlohmann::json index = {{"metadata", {{"total_size", total_size}}},
                            {"weight_map", std::move(weight_map)}};
    std::string text;
    try {
      text = index.dump(2) + "\n";
    } catch (const nlohmann::json::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat("cannot write index: ", e.what()));
    }
    // The index last: it never names a shard that is not in place yet.
    FTD_RETURN_IF_ERROR(WriteFileAtomically(JoinPath(dir, kSafetensorsIndexFile), text));
    written.insert(kSafetensorsIndexFile);
  }
  FTD_RETURN_IF_ERROR(RemoveStaleFiles(dir, written));
  return FsyncDirectory(dir);
}

}  // namespace ftd::engine
