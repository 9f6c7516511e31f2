// WorkerRegistry: the workers known to the coordinator (one session per worker name), their
// slots, how many of those are busy, and when each last heartbeated. The scheduler is its only
// writer; Snapshot() is for readers such as the metrics exporter.
#pragma once

#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ftd/v1/worker.pb.h"

namespace ftd::server {

struct WorkerInfo {
  std::string name;
  std::string session_id;
  std::string address;
  ftd::v1::WorkerResources resources;
  int total_slots = 0;  // GPUs, or CPU slots when the worker has no GPU
  int busy_slots = 0;   // ranks placed there that have not exited
  bool has_gpus = false;
  absl::Time registered_at;
  absl::Time last_heartbeat;
};

class WorkerRegistry {
 public:
  // A new session for info.name (replacing an older one); returns the session id.
  std::string Register(WorkerInfo info);
  // Updates the heartbeat time; false when `session_id` is not the current session of `name`.
  bool Touch(const std::string& name, const std::string& session_id, absl::Time now);
  void Remove(const std::string& name);
  void SetBusy(const std::string& name, int busy_slots);
  // Workers whose last heartbeat is older than `deadline`.
  std::vector<std::string> Expired(absl::Time deadline) const;
  bool Has(const std::string& name) const;

  std::vector<WorkerInfo> Snapshot() const;

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, WorkerInfo> workers_ ABSL_GUARDED_BY(mu_);
  uint64_t next_session_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ftd::server
