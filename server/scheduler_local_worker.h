// LocalWorker: `ftd --local-worker` runs an ftd-worker child next to the coordinator, so one
// command gives a working system. The child gets the first admin token of the tokens file
// (written to DATA_DIR/local-worker.token, mode 0600), dies with the daemon (it is started with
// --exit-with-parent), and is SIGTERMed (its ranks stopped) on shutdown, SIGKILLed after a
// grace period.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace ftd::server {

struct LocalWorkerOptions {
  std::string binary;  // empty: ftd-worker next to this executable
  std::string coordinator;  // HOST:PORT of this daemon's gRPC
  std::string tokens_file;
  std::string data_dir;
  int slots = 0;  // 0: the worker decides (its GPUs, else one CPU slot per 2 cores)
  std::vector<std::string> extra_args;
};

class LocalWorker {
 public:
  static absl::StatusOr<std::unique_ptr<LocalWorker>> Start(const LocalWorkerOptions& options);
  ~LocalWorker();  // Stop(absl::Seconds(15))
  void Stop(absl::Duration grace);
  pid_t pid() const { return pid_; }

 private:
  explicit LocalWorker(pid_t pid) : pid_(pid) {}
  pid_t pid_;
};

}  // namespace ftd::server
