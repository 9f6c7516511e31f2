#include "server/job_watch.h"

#include "common/status_macros.h"
#include "server/job_state_machine.h"

namespace ftd::server {

using ftd::v1::JobEvent;

absl::StatusOr<std::unique_ptr<JobWatch>> JobWatch::Open(JobStore* store, EventHub* hub,
                                                         const std::string& job_id,
                                                         int64_t after_seq,
                                                         std::function<void()> wakeup) {
  std::unique_ptr<JobWatch> watch(new JobWatch(store, job_id, std::move(wakeup)));
  // Subscribe before reading history: an event committed in between is then seen twice
  // (dropped by seq), never missed.
  JobWatch* raw = watch.get();
  watch->subscription_ =
      hub->Subscribe(job_id, [raw](const JobEvent& event) { raw->OnLiveEvent(event); });
  if (after_seq == 0) {
    FTD_ASSIGN_OR_RETURN(std::optional<JobEvent> latest, store->LatestStatusEvent(job_id));
    if (latest.has_value()) after_seq = latest->seq() - 1;
  }
  watch->last_seq_ = after_seq;
  return watch;
}

JobWatch::~JobWatch() { subscription_.reset(); }  // no listener call runs after this

void JobWatch::OnLiveEvent(const JobEvent& event) {
  {
    absl::MutexLock lock(&mu_);
    if (live_.size() >= kMaxLiveEvents) {
      // A consumer this far behind reads from the store instead: memory stays bounded and
      // nothing is lost, since every published event is already committed.
      live_.clear();
      caught_up_ = false;
    } else {
      live_.push_back(event);
    }
  }
  if (wakeup_) wakeup_();
}

absl::StatusOr<std::optional<JobEvent>> JobWatch::Next() {
  if (finished_) return std::nullopt;
  for (;;) {
    while (!backlog_.empty()) {
      JobEvent event = std::move(backlog_.front());
      backlog_.pop_front();
      if (event.seq() <= last_seq_) continue;
      last_seq_ = event.seq();
      finished_ = event.kind_case() == JobEvent::kStatus && IsTerminalState(event.status().state());
      return event;
    }
    bool read_store = false;
    {
      absl::MutexLock lock(&mu_);
      if (caught_up_) {
        while (!live_.empty() && live_.front().seq() <= last_seq_) live_.pop_front();
        if (live_.empty()) return std::nullopt;
        if (live_.front().seq() == last_seq_ + 1) {
          backlog_.push_back(std::move(live_.front()));
          live_.pop_front();
        } else {
          caught_up_ = false;  // a gap: the missing events are in the store
          read_store = true;
        }
      } else {
        read_store = true;
      }
    }
    if (read_store) {
      FTD_ASSIGN_OR_RETURN(std::vector<JobEvent> events,
                           store_->ReadEvents(job_id_, last_seq_, kStoreBatch));
      const bool exhausted = static_cast<int>(events.size()) < kStoreBatch;
      for (JobEvent& e : events) backlog_.push_back(std::move(e));
      if (exhausted) {
        absl::MutexLock lock(&mu_);
        caught_up_ = true;
      }
      if (backlog_.empty() && exhausted) {
        absl::MutexLock lock(&mu_);
        while (!live_.empty() && live_.front().seq() <= last_seq_) live_.pop_front();
        if (live_.empty() || live_.front().seq() != last_seq_ + 1) return std::nullopt;
      }
    }
  }
}

void JobWatch::Wait(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (interrupted_ || !caught_up_) return true;
    for (const JobEvent& e : live_) {
      if (e.seq() > last_seq_) return true;
    }
    return false;
  };
  if (!backlog_.empty()) return;
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
}

void JobWatch::Interrupt() {
  absl::MutexLock lock(&mu_);
  interrupted_ = true;
}

bool JobWatch::interrupted() const {
  absl::MutexLock lock(&mu_);
  return interrupted_;
}

}  // namespace ftd::server
