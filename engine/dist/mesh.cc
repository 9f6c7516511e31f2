#include "engine/dist/mesh.h"

#include "absl/strings/str_cat.h"

namespace ftd::engine {

absl::StatusOr<ParallelMesh> ParallelMesh::Create(int world_size, int rank, int ep_size, int64_t num_experts) {
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " is not in a world of ", world_size));
  }
  if (ep_size < 1) return absl::InvalidArgumentError(absl::StrCat("parallelism.ep_size (", ep_size, ") must be >= 1"));
  if (world_size % ep_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("parallelism.ep_size (", ep_size, ") must divide the world size (", world_size, ")"));
  }
  if (num_experts > 0 && num_experts % ep_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("parallelism.ep_size (", ep_size, ") must divide the number of experts (", num_experts, ")"));
  }
  if (num_experts == 0 && ep_size != 1) {
    return absl::InvalidArgumentError("parallelism.ep_size > 1 needs a model with experts");
  }
  return ParallelMesh(world_size, rank, ep_size, num_experts);
}

std::vector<int> ParallelMesh::EpGroupRanks() const {
  std::vector<int> ranks;
  for (int j = 0; j < ep_size_; ++j) ranks.push_back(ep_group() * ep_size_ + j);
  return ranks;
}

std::vector<int> ParallelMesh::ReplicaRanks() const {
  std::vector<int> ranks;
  for (int g = 0; g < num_replicas(); ++g) ranks.push_back(g * ep_size_ + ep_rank());
  return ranks;
}

}  // namespace ftd::engine
