// RankProcess: one ftd-train rank. It runs in its own process group (so a stop reaches the
// rank's children too), dies with the worker (PR_SET_PDEATHSIG: a lost node takes its ranks
// along), and its stdout and stderr go through one pipe to a reader thread that appends every
// line to the rank's log file, keeps the last lines in a bounded ring, and hands each line to
// a callback (step parsing, shipping to the coordinator).
#pragma once

#include <sys/types.h>

#include <cstdio>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace ftd::worker {

struct ExitStatus {
  int exit_code = 0;
  int term_signal = 0;
};

class RankProcess {
 public:
  using LineCallback = std::function<void(const std::string& line)>;

  // Must be called from a thread that outlives the process (the death signal follows the
  // thread that forked). `env` is the complete environment.
  static absl::StatusOr<std::unique_ptr<RankProcess>> Spawn(
      const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
      const std::string& log_path, LineCallback on_line);
  ~RankProcess();  // SIGKILLs the group if still running, joins the reader
  RankProcess(const RankProcess&) = delete;
  RankProcess& operator=(const RankProcess&) = delete;

  pid_t pid() const { return pid_; }
  // Non-blocking: the exit status once the process has ended (the group is then SIGKILLed, so
  // no child of the rank outlives it).
  std::optional<ExitStatus> Poll();
  // SIGTERM to the group now, SIGKILL once `grace` has passed (on a later Poll/Escalate).
  void Terminate(absl::Duration grace);
  // Sends the pending SIGKILL when its time has come.
  void Escalate();
  bool terminating() const { return kill_at_.has_value(); }
  // The last `n` output lines.
  std::vector<std::string> Tail(size_t n) const;
  // Waits for the reader to drain the pipe (after exit), up to `timeout`.
  void JoinReader();

 private:
  RankProcess(pid_t pid, int fd) : pid_(pid), fd_(fd) {}
  void ReadLoop(FILE* log, LineCallback on_line);

  const pid_t pid_;
  int fd_;
  std::optional<ExitStatus> exit_;
  std::optional<absl::Time> kill_at_;
  std::thread reader_;
  mutable absl::Mutex mu_;
  std::deque<std::string> ring_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ftd::worker
