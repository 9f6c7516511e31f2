// JobWatch: one consumer's ordered view of a job's events, from a starting sequence number on,
// gap-free: history comes from the JobStore, live events from the EventHub, and a seq gap in
// the live feed (events published out of order) is filled from the store.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/event_hub.h"
#include "server/job_store.h"

namespace ftd::server {

class JobWatch {
 public:
  // after_seq > 0: events with seq > after_seq; 0: the latest status event, then newer ones.
  // `wakeup` (may be empty) runs on a publishing thread whenever a live event arrives; it must
  // be quick and must not destroy the watch.
  static absl::StatusOr<std::unique_ptr<JobWatch>> Open(JobStore* store, EventHub* hub,
                                                        const std::string& job_id,
                                                        int64_t after_seq,
                                                        std::function<void()> wakeup);
  JobWatch(const JobWatch&) = delete;
  JobWatch& operator=(const JobWatch&) = delete;
  ~JobWatch();

  // The next event in seq order, or nullopt when none is available yet. One consumer at a
  // time. May read the store.
  absl::StatusOr<std::optional<ftd::v1::JobEvent>> Next();

  // Blocks until Next() may return an event, Interrupt() is called, or `timeout` passes.
  void Wait(absl::Duration timeout);
  // Wakes Wait() for good (shutdown).
  void Interrupt();
  bool interrupted() const;

  // True once Next() has returned the job's terminal status event: nothing follows it.
  bool finished() const { return finished_; }
  int64_t last_seq() const { return last_seq_; }

 private:
  JobWatch(JobStore* store, std::string job_id, std::function<void()> wakeup)
      : store_(store), job_id_(std::move(job_id)), wakeup_(std::move(wakeup)) {}
  void OnLiveEvent(const ftd::v1::JobEvent& event);

  static constexpr int kStoreBatch = 256;
  static constexpr size_t kMaxLiveEvents = 4096;

  JobStore* const store_;
  const std::string job_id_;
  const std::function<void()> wakeup_;
  std::unique_ptr<EventHub::Subscription> subscription_;

  // Consumer-side state (one consumer at a time).
  int64_t last_seq_ = 0;
  bool finished_ = false;
  std::deque<ftd::v1::JobEvent> backlog_;  // read from the store, seq ascending

  mutable absl::Mutex mu_;
  std::deque<ftd::v1::JobEvent> live_ ABSL_GUARDED_BY(mu_);
  // False while the store may hold events newer than what backlog_ and live_ cover.
  bool caught_up_ ABSL_GUARDED_BY(mu_) = false;
  bool interrupted_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace ftd::server
