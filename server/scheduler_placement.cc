#include "server/scheduler_placement.h"

#include <algorithm>

namespace ftd::server {

std::optional<GangPlacement> PlaceGang(std::vector<FreeSlots> free, int nodes, int gpus_per_node) {
  if (nodes <= 0 || gpus_per_node <= 0) return std::nullopt;
  std::sort(free.begin(), free.end(), [](const FreeSlots& a, const FreeSlots& b) {
    return a.free != b.free ? a.free > b.free : a.worker < b.worker;
  });
  GangPlacement placement;
  int groups_left = nodes;
  for (const FreeSlots& w : free) {
    if (groups_left == 0) break;
    const int groups = std::min(groups_left, w.free / gpus_per_node);
    if (groups == 0) continue;
    const int n = groups * gpus_per_node;
    for (int local = 0; local < n; ++local) {
      placement.ranks.push_back(
          PlacedRank{static_cast<int>(placement.ranks.size()), w.worker, local});
    }
    placement.per_worker.emplace_back(w.worker, n);
    groups_left -= groups;
  }
  if (groups_left > 0) return std::nullopt;
  placement.world_size = static_cast<int>(placement.ranks.size());
  return placement;
}

bool GangFitsCapacity(const std::vector<FreeSlots>& total, int nodes, int gpus_per_node) {
  return PlaceGang(total, nodes, gpus_per_node).has_value();
}

}  // namespace ftd::server
