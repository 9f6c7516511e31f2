#include "server/event_hub.h"

namespace ftd::server {

std::unique_ptr<EventHub::Subscription> EventHub::Subscribe(const std::string& job_id,
                                                            Listener listener) {
  absl::MutexLock lock(&mu_);
  const uint64_t id = next_id_++;
  listeners_[job_id].emplace(id, std::move(listener));
  ++count_;
  return std::make_unique<Subscription>(this, job_id, id);
}

void EventHub::Unsubscribe(const std::string& job_id, uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = listeners_.find(job_id);
  if (it == listeners_.end()) return;
  count_ -= static_cast<int64_t>(it->second.erase(id));
  if (it->second.empty()) listeners_.erase(it);
}

void EventHub::Publish(const ftd::v1::JobEvent& event) {
  absl::MutexLock lock(&mu_);
  auto it = listeners_.find(event.job_id());
  if (it != listeners_.end()) {
    for (auto& [id, listener] : it->second) listener(event);
  }
  auto all = listeners_.find("");  // subscribers to every job
  if (all != listeners_.end() && !event.job_id().empty()) {
    for (auto& [id, listener] : all->second) listener(event);
  }
}

int64_t EventHub::SubscriptionCount() const {
  absl::MutexLock lock(&mu_);
  return count_;
}

}  // namespace ftd::server
