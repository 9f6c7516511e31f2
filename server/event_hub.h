// EventHub: in-process fan-out of newly stored job events to live watchers (gRPC WatchJob
// streams, REST SSE). It carries no history; watchers read history from the JobStore and use
// the hub only for what happens next.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "ftd/v1/jobs.pb.h"

namespace ftd::server {

class EventHub {
 public:
  // Called on the publishing thread, under the hub's lock: it must be quick and must not
  // call back into the hub (queue the event and return).
  using Listener = std::function<void(const ftd::v1::JobEvent&)>;

  // Ends the subscription when destroyed; after that the listener is never called again.
  class Subscription {
   public:
    Subscription(EventHub* hub, std::string job_id, uint64_t id)
        : hub_(hub), job_id_(std::move(job_id)), id_(id) {}
    Subscription(const Subscription&) = delete;
    Subscription& operator=(const Subscription&) = delete;
    ~Subscription() { hub_->Unsubscribe(job_id_, id_); }

   private:
    EventHub* hub_;
    std::string job_id_;
    uint64_t id_;
  };

  // An empty `job_id` subscribes to the events of every job (e.g. the metrics exporter).
  std::unique_ptr<Subscription> Subscribe(const std::string& job_id, Listener listener);

  // Delivers `event` to the listeners of event.job_id(). Callers publish a job's events in
  // seq order (JobManager publishes under its per-store write order).
  void Publish(const ftd::v1::JobEvent& event);

  // Live subscriptions, for tests and metrics.
  int64_t SubscriptionCount() const;

 private:
  void Unsubscribe(const std::string& job_id, uint64_t id);

  mutable absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  int64_t count_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<std::string, absl::flat_hash_map<uint64_t, Listener>> listeners_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace ftd::server
