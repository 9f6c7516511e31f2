// Runs W ranks as threads of the test process, each with its own process groups (Gloo) over a
// shared FileStore rendezvous: real c10d collectives, without spawning processes.
#pragma once

#include <chrono>
#include <functional>
#include <string>

#include "engine/dist/process_groups.h"

namespace ftd::engine::testing {

struct RanksOptions {
  int world_size = 2;
  int ep_size = 1;
  int64_t num_experts = 0;
  std::chrono::milliseconds timeout{20000};
};

// Calls body(rank, groups) on `world_size` threads and joins them. Failures to create the
// groups are reported as test failures.
void RunRanks(const RanksOptions& options, const std::function<void(int rank, ProcessGroups& groups)>& body);

// A fresh empty directory under the test temp dir.
std::string FreshTempDir(const std::string& name);

}  // namespace ftd::engine::testing
