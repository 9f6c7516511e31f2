// The parallel layout, as arithmetic on ranks. Every rank is a data-parallel rank (dp = world):
// it trains on its own slice of the global batch. Orthogonally, ep groups of ep_size
// consecutive ranks split the experts: ep rank j of every group holds experts
// [j*E/ep, (j+1)*E/ep), and the world/ep ranks that hold the same experts (one per ep group,
// the "expert replicas") sum those experts' gradients.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace ftd::engine {

class ParallelMesh {
 public:
  // ep_size must divide both world_size and num_experts; errors name parallelism.ep_size.
  static absl::StatusOr<ParallelMesh> Create(int world_size, int rank, int ep_size, int64_t num_experts);

  int world_size() const { return world_size_; }
  int rank() const { return rank_; }
  int ep_size() const { return ep_size_; }
  int ep_rank() const { return rank_ % ep_size_; }
  int ep_group() const { return rank_ / ep_size_; }
  int num_replicas() const { return world_size_ / ep_size_; }
  int64_t num_experts() const { return num_experts_; }
  int64_t experts_per_rank() const { return num_experts_ / ep_size_; }
  int64_t expert_begin() const { return ep_rank() * experts_per_rank(); }
  // The ep rank holding global expert `e`.
  int ExpertOwner(int64_t e) const { return static_cast<int>(e / experts_per_rank()); }
  // Global ranks of this rank's ep group (its position there is ep_rank()).
  std::vector<int> EpGroupRanks() const;
  // Global ranks holding this rank's experts (its position there is ep_group()).
  std::vector<int> ReplicaRanks() const;

 private:
  ParallelMesh(int world_size, int rank, int ep_size, int64_t num_experts)
      : world_size_(world_size), rank_(rank), ep_size_(ep_size), num_experts_(num_experts) {}
  int world_size_, rank_, ep_size_;
  int64_t num_experts_;
};

}  // namespace ftd::engine
