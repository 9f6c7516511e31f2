#include "server/worker_registry.h"

#include <algorithm>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"

namespace ftd::server {

std::string WorkerRegistry::Register(WorkerInfo info) {
  absl::MutexLock lock(&mu_);
  // Unique across coordinator restarts too: a restarted coordinator knows no session.
  static absl::BitGen gen;
  info.session_id = absl::StrCat(absl::Hex(absl::Uniform<uint64_t>(gen)), "-", ++next_session_);
  std::string session = info.session_id;
  workers_[info.name] = std::move(info);
  return session;
}

bool WorkerRegistry::Touch(const std::string& name, const std::string& session_id, absl::Time now) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(name);
  if (it == workers_.end() || it->second.session_id != session_id) return false;
  it->second.last_heartbeat = now;
  return true;
}

void WorkerRegistry::Remove(const std::string& name) {
  absl::MutexLock lock(&mu_);
  workers_.erase(name);
}

void WorkerRegistry::SetBusy(const std::string& name, int busy_slots) {
  absl::MutexLock lock(&mu_);
  auto it = workers_.find(name);
  if (it != workers_.end()) it->second.busy_slots = busy_slots;
}

std::vector<std::string> WorkerRegistry::Expired(absl::Time deadline) const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> out;
  for (const auto& [name, w] : workers_) {
    if (w.last_heartbeat < deadline) out.push_back(name);
  }
  return out;
}

bool WorkerRegistry::Has(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  return workers_.contains(name);
}

std::vector<WorkerInfo> WorkerRegistry::Snapshot() const {
  absl::MutexLock lock(&mu_);
  std::vector<WorkerInfo> out;
  out.reserve(workers_.size());
  for (const auto& [name, w] : workers_) out.push_back(w);
  std::sort(out.begin(), out.end(),
            [](const WorkerInfo& a, const WorkerInfo& b) { return a.name < b.name; });
  return out;
}

}  // namespace ftd::server
