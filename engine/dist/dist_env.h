// The distributed launch environment of one rank, as torchrun and ftd-worker set it:
// RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (+ FTD_DIST_TIMEOUT_SECONDS).
#pragma once

#include <chrono>
#include <functional>
#include <string>

#include "absl/status/statusor.h"

namespace ftd::engine {

struct DistEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  // Rendezvous: a TCPStore hosted by rank 0 at master_addr:master_port; or, when store_file is
  // set, a FileStore on that path (ranks as threads in tests, or a shared filesystem); or, for
  // one process with neither, an in-process store.
  std::string master_addr;
  int master_port = 0;
  // Rank 0 only, from FTD_MASTER_LISTEN_FD: a socket the launcher bound to master_port and is
  // already listening on, inherited by rank 0, whose store takes it over. Binding the port only
  // when rank 0 starts would leave a window in which another process (any outgoing connection
  // draws its source port from the same range) can take it. -1: rank 0 binds master_port itself.
  int master_listen_fd = -1;
  std::string store_file;
  // How long a collective (and the rendezvous) may wait for a peer before failing; zero: the
  // backend's default (kDefaultGlooTimeout, kDefaultNcclTimeout).
  std::chrono::milliseconds timeout{0};
  // How long joining the rendezvous and connecting the groups may take, when that should differ
  // from `timeout` (a short collective timeout must not fail a slow start); zero: `timeout`.
  std::chrono::milliseconds rendezvous_timeout{0};
};

inline constexpr std::chrono::seconds kDefaultGlooTimeout{60};
inline constexpr std::chrono::seconds kDefaultNcclTimeout{600};

// Reads the variables through `getenv` (unset ones are null). Unset RANK/WORLD_SIZE: one
// process. Malformed or inconsistent values are INVALID_ARGUMENT errors naming the variable.
absl::StatusOr<DistEnv> ParseDistEnv(const std::function<const char*(const char*)>& getenv);
absl::StatusOr<DistEnv> DistEnvFromEnvironment();

}  // namespace ftd::engine
