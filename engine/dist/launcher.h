// A local launcher (torchrun's role, for tests and single-node users): starts N copies of a
// program as ranks 0..N-1 with the distributed environment (RANK, WORLD_SIZE, LOCAL_RANK,
// LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT — a free port unless given), prefixes every line
// they print with "[rank R] ", and when one rank fails stops the others: the launch fails if any
// rank does. A free port is held from the moment it is chosen: the launcher listens on it and
// hands the socket to rank 0 (FTD_MASTER_LISTEN_FD), whose store takes it over.
#pragma once

#include <chrono>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace ftd::engine {

struct LaunchOptions {
  int nproc = 1;
  std::string program;            // path of the executable (e.g. /proc/self/exe's target)
  std::vector<std::string> args;  // its arguments (without argv[0])
  std::string master_addr = "127.0.0.1";
  int master_port = 0;            // 0: a free port on master_addr
  // After one rank fails, how long the others get after SIGTERM before SIGKILL.
  std::chrono::milliseconds grace{3000};
};

// Runs the ranks to completion, writing their prefixed output to `out` as it comes. OK when
// every rank exits 0; otherwise an error naming the first rank that failed and how.
absl::Status LaunchLocalRanks(const LaunchOptions& options, std::ostream& out);

// A TCP socket bound to a port the kernel chose on `addr` and listening there; closes on
// destruction.
class ListeningSocket {
 public:
  static absl::StatusOr<ListeningSocket> Create(const std::string& addr);
  ListeningSocket(ListeningSocket&& other) noexcept;
  ListeningSocket& operator=(ListeningSocket&&) = delete;
  ListeningSocket(const ListeningSocket&) = delete;
  ~ListeningSocket();

  int fd() const { return fd_; }
  int port() const { return port_; }

 private:
  ListeningSocket(int fd, int port) : fd_(fd), port_(port) {}
  int fd_;
  int port_;
};

}  // namespace ftd::engine
