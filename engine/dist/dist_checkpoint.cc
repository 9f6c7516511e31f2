#include "engine/dist/dist_checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <limits>

#include <ATen/ATen.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/io/safetensors.h"
#include "engine/model/hf_checkpoint.h"
#include "nlohmann/json.hpp"

namespace ftd::engine {
namespace fs = std::filesystem;

absl::Status AgreeOnStatus(Communicator& world, const absl::Status& local) {
  at::Tensor failed = at::zeros({world.size()}, at::kFloat);
  if (!local.ok()) failed[world.rank()].fill_(1.0);
  at::Tensor on_device = failed.to(world.device());
  if (absl::Status s = world.AllReduce({on_device}, ReduceKind::kMax); !s.ok()) {
    return local.ok() ? s : local;
  }
  if (!local.ok()) return local;
  std::vector<int> bad;
  at::Tensor cpu = on_device.to(at::kCPU);
  for (int r = 0; r < world.size(); ++r) {
    if (cpu[r].item<float>() > 0) bad.push_back(r);
  }
  if (bad.empty()) return absl::OkStatus();
  return absl::AbortedError(absl::StrCat("rank(s) ", absl::StrJoin(bad, ","), " failed (see their errors)"));
}

std::string RankStateFileName(int rank, int world_size) {
  return absl::StrFormat("rank-%05d-of-%05d.safetensors", rank, world_size);
}

namespace {

// Writes `tensors` as the single file `path` (through a private scratch directory, since
// SaveSafetensors owns the model*.safetensors names of the directory it writes).
absl::Status WriteSingleFile(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  std::string scratch = path + ".scratch";
  FTD_RETURN_IF_ERROR(RemoveTree(scratch));
  SafetensorsWriteOptions opts;
  opts.max_shard_bytes = std::numeric_limits<uint64_t>::max();
  FTD_RETURN_IF_ERROR(SaveSafetensors(scratch, tensors, opts));
  std::error_code ec;
  fs::rename(fs::path(scratch) / kSafetensorsSingleFile, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot move ", scratch, " to ", path, ": ", ec.message()));
  return RemoveTree(scratch);
}

// Rank 0: model.safetensors.index.json over every model-*.safetensors in `dir`.
absl::Status WriteIndex(const std::string& dir) {
  nlohmann::json weight_map = nlohmann::json::object();
  uint64_t total = 0;
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string name = e.path().filename().string();
    if (absl::StartsWith(name, "model-") && absl::EndsWith(name, ".safetensors")) files.push_back(name);
  }
  std::sort(files.begin(), files.end());
  for (const std::string& f : files) {
    FTD_ASSIGN_OR_RETURN(auto reader, SafetensorsReader::Open((fs::path(dir) / f).string()));
    for (const std::string& key : reader->Keys()) {
      FTD_ASSIGN_OR_RETURN(TensorInfo info, reader->Info(key));
      weight_map[key] = f;
      total += info.end - info.begin;
    }
  }
  nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  return WriteFileAtomically((fs::path(dir) / kSafetensorsIndexFile).string(), index.dump(2));
}

absl::Status RenameIntoPlace(const std::string& tmp, const std::string& dir) {
  std::error_code ec;
  fs::path target(dir);
  if (fs::exists(target, ec)) {
    std::string old = dir + ".old";
    FTD_RETURN_IF_ERROR(RemoveTree(old));
    fs::rename(target, old, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot move aside ", dir, ": ", ec.message()));
    fs::rename(tmp, target, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", dir, ": ", ec.message()));
    FTD_RETURN_IF_ERROR(RemoveTree(old));
  } else {
    fs::rename(tmp, target, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", dir, ": ", ec.message()));
  }
  return FsyncDirectory(target.parent_path().empty() ? "." : target.parent_path().string());
}

}  // namespace

absl::Status SaveDistributedCheckpoint(const std::string& dir, const ParallelMesh& mesh, Communicator& world,
                                       DistCheckpointParts parts) {
  const std::string tmp = dir + ".tmp";
  const bool leader = mesh.rank() == 0;
  absl::Status local;
  if (leader) {
    local = RemoveTree(tmp);
    std::error_code ec;
    if (local.ok()) fs::create_directories(fs::path(tmp) / "training_state", ec);
    if (local.ok() && ec) local = absl::InternalError(absl::StrCat("cannot create ", tmp, ": ", ec.message()));
  }
  FTD_RETURN_IF_ERROR(AgreeOnStatus(world, local));

  if (parts.adapter) {
    for (const DistCheckpointParts::AdapterExport& a : parts.adapters) {
      if (!leader || !local.ok()) break;
      const fs::path sub = a.subdir.empty() ? fs::path(tmp) : fs::path(tmp) / a.subdir;
      std::error_code ec;
      fs::create_directories(sub, ec);
      if (ec) local = absl::InternalError(absl::StrCat("cannot create ", sub.string(), ": ", ec.message()));
      if (local.ok()) local = WriteSingleFile((sub / "adapter_model.safetensors").string(), a.tensors);
      if (local.ok()) local = WriteFileAtomically((sub / "adapter_config.json").string(), a.config_json);
    }
  } else if (parts.experts_gathered ? leader : mesh.ep_group() == 0) {
    // The HF tensors: the first ep group holds every expert once (or rank 0 all of them).
    // The leader writes every tensor it holds; the other ranks of the group their experts.
    std::vector<std::pair<std::string, at::Tensor>> mine =
        ToHfTensors(*parts.weights, *parts.config, *parts.options, parts.dtype,
                    leader ? TensorSelection::kAll : TensorSelection::kExperts);
    if (leader) {  // MTP layers, copied as stored
      absl::StatusOr<std::vector<std::pair<std::string, at::Tensor>>> carried = CarriedHfTensors(*parts.weights);
      if (carried.ok()) {
        for (auto& named : *carried) mine.push_back(std::move(named));
      } else {
        local = carried.status();
      }
    }
    const std::string file = mesh.ep_size() == 1 || parts.experts_gathered
                                 ? std::string(kSafetensorsSingleFile)
                                 : absl::StrFormat("model-%05d-of-%05d.safetensors", mesh.ep_rank() + 1, mesh.ep_size());
    if (local.ok()) local = WriteSingleFile((fs::path(tmp) / file).string(), mine);
  }
  if (local.ok() && parts.write_rank_state) {
    local = WriteSingleFile((fs::path(tmp) / "training_state" / RankStateFileName(mesh.rank(), mesh.world_size())).string(),
                            parts.rank_state);
  }
  FTD_RETURN_IF_ERROR(AgreeOnStatus(world, local));

  if (leader) {
    ModelConfig saved = *parts.config;
    saved.dtype = DtypeName(parts.dtype);
    if (!parts.adapter) {
      local = WriteFileAtomically((fs::path(tmp) / "config.json").string(), ModelConfigToJson(saved));
    }
    if (local.ok() && !parts.adapter && mesh.ep_size() > 1 && !parts.experts_gathered) local = WriteIndex(tmp);
    if (local.ok() && parts.finalize) local = parts.finalize(tmp);
    if (local.ok() && parts.write_rank_state) local = FsyncDirectory((fs::path(tmp) / "training_state").string());
    if (local.ok() && !parts.write_rank_state) local = RemoveTree((fs::path(tmp) / "training_state").string());
    if (local.ok()) local = FsyncDirectory(tmp);
    if (local.ok()) local = RenameIntoPlace(tmp, dir);
  }
  FTD_RETURN_IF_ERROR(AgreeOnStatus(world, local));
  // Later saves copy the carried tensors from here: the source may be deleted (keep_last).
  if (!parts.adapter && !parts.weights->carried.names.empty()) parts.weights->carried.source_dir = dir;
  return absl::OkStatus();
}

}  // namespace ftd::engine
