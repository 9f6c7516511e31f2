// Gang placement: where the ranks of a job go, all or nothing. A job asks for `nodes` groups of
// `gpus_per_node` ranks; a group never spans workers (its ranks share a node), and several
// groups may share a worker that has room for them (packing onto the fewest workers). Workers
// with the most free slots are filled first, which for equal-sized groups uses the fewest
// workers. When the groups do not all fit, nothing is placed.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace ftd::server {

struct FreeSlots {
  std::string worker;
  int free = 0;
};

struct PlacedRank {
  int rank = 0;
  std::string worker;
  int local_rank = 0;
};

struct GangPlacement {
  std::vector<PlacedRank> ranks;  // by rank; rank 0 is on the first (fullest) worker
  int world_size = 0;
  // Ranks on each worker, in the order the workers were chosen.
  std::vector<std::pair<std::string, int>> per_worker;
};

// nullopt when the gang cannot be placed on `free` now. Ties are broken by worker name, so the
// result is deterministic.
std::optional<GangPlacement> PlaceGang(std::vector<FreeSlots> free, int nodes, int gpus_per_node);

// Whether the gang could ever be placed on workers with these total slots (all idle).
bool GangFitsCapacity(const std::vector<FreeSlots>& total, int nodes, int gpus_per_node);

}  // namespace ftd::server
