// Runs W ranks as threads of the test process, each with its own process groups (Gloo) over a
// FileStore rendezvous of its own (a fresh directory per call): real c10d collectives, without
// spawning processes.
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
  // How long a collective waits for a peer (tests of timeouts set it short).
  std::chrono::milliseconds timeout{20000};
  // How long the ranks may take to rendezvous and connect their groups: generous, so that a
  // loaded machine (CI with both cores busy) starts slowly instead of failing.
  std::chrono::milliseconds rendezvous_timeout{180000};
};

// Creates every rank's groups, then, only if all ranks have theirs, calls body(rank, groups) on
// `world_size` threads; every rank's groups are torn down only after every body has returned
// (no rank closes its connections while a peer may still use them). Failures to create the
// groups, and exceptions escaping a body, are reported as test failures naming the rank.
void RunRanks(const RanksOptions& options, const std::function<void(int rank, ProcessGroups& groups)>& body);

// A fresh empty directory under the test temp dir.
std::string FreshTempDir(const std::string& name);

}  // namespace ftd::engine::testing
