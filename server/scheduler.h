// Scheduler: runs jobs on the registered workers. It owns the attempts in flight and is the
// only caller of JobManager's execution API (Transition, RecordProgress, AddCheckpoint).
//
// - Queue: QUEUED jobs by priority (high first), then creation time. Strict: when the head of
//   the queue does not fit the free slots, nothing behind it starts (no starvation of large
//   jobs). Jobs larger than the whole cluster wait without blocking the others.
// - Placement: all or nothing (scheduler_placement.h); rank 0's worker hosts the rendezvous
//   (MASTER_ADDR = its address, MASTER_PORT from --rendezvous-port-base's range).
// - Workers are level-triggered (worker.proto): each heartbeat answers with the ranks to start
//   and the ranks to stop, computed from the attempts.
// - Failures: a worker that misses heartbeats, a rank that exits non-zero or is killed, or no
//   step for hang_timeout fails the attempt: the whole gang is stopped, and the job is requeued
//   (resuming from its last checkpoint) while attempts <= max_restarts, else FAILED.
// - Deadline: spec.scheduling.max_runtime_seconds after the job's first placement
//   (JobStatus.start_time, kept across restarts) the gang is stopped (SIGTERM: the ranks stop
//   at a step boundary and save a checkpoint) and the job FAILS with DEADLINE_EXCEEDED, never
//   requeued; a queued job past its deadline fails without starting.
// - Restart: Recover() keeps STARTING/RUNNING jobs as orphan attempts for adopt_grace; workers
//   that re-register with their ranks adopt them. What is not adopted by then is requeued.
#pragma once

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "ftd/v1/worker.pb.h"
#include "server/job_manager.h"
#include "server/scheduler_logs.h"
#include "server/worker_registry.h"

namespace ftd::server {

// What Scheduler::Recover found in the store at start.
struct RecoveryReport {
  int requeued = 0;    // STARTING/RUNNING jobs never placed on a worker: back to QUEUED
  int cancelled = 0;   // CANCELLING jobs never placed: CANCELLED
  int64_t jobs = 0;    // jobs in the store
  int64_t events = 0;  // events in the store
};

struct SchedulerOptions {
  absl::Duration tick = absl::Milliseconds(100);
  absl::Duration heartbeat_interval = absl::Seconds(1);
  absl::Duration heartbeat_timeout = absl::Seconds(10);  // a worker silent this long is lost
  absl::Duration hang_timeout = absl::Minutes(30);       // no step for this long fails the attempt
  absl::Duration stop_grace = absl::Seconds(10);         // SIGTERM -> SIGKILL on the workers
  absl::Duration adopt_grace = absl::Seconds(20);        // after a restart, for workers to return
  absl::Duration queue_rescan = absl::Milliseconds(500);  // new jobs start within this
  int rendezvous_port_base = 29500;
  int rendezvous_port_count = 2000;
};

class Scheduler {
 public:
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(JobManager* manager,
                                                           SchedulerOptions options);
  ~Scheduler();  // Stop()s

  // At start, before Start(): CANCELLING jobs with no worker to ask become orphans to stop,
  // STARTING/RUNNING jobs become orphan attempts awaiting adoption (see above).
  absl::StatusOr<RecoveryReport> Recover();
  void Start();
  void Stop();

  // WorkerService handlers (the caller has authenticated the worker).
  absl::StatusOr<ftd::v1::RegisterResponse> Register(const ftd::v1::RegisterRequest& request);
  absl::StatusOr<ftd::v1::HeartbeatResponse> Heartbeat(const ftd::v1::HeartbeatRequest& request);

  const WorkerRegistry& workers() const { return registry_; }
  JobLogs* logs() { return &logs_; }

  // One scheduling pass (the loop runs it every tick); public for tests.
  void Tick();

 private:
  struct RankSlot {
    int rank = 0;
    int local_rank = 0;
    std::string worker;
    bool seen = false;    // the worker has reported the process
    bool exited = false;  // exit recorded (or the process is known gone)
    int exit_code = 0;
    int term_signal = 0;
    std::vector<std::string> tail;
  };
  enum class Phase { kStarting, kRunning, kStopping };
  enum class Outcome { kNone, kSucceeded, kFailed, kCancelled };
  struct Attempt {
    std::string job_id;
    int attempt = 0;
    Phase phase = Phase::kStarting;
    Outcome outcome = Outcome::kNone;
    ftd::v1::JobError error;
    ftd::v1::JobSpec spec;
    std::vector<RankSlot> ranks;
    std::string master_addr;
    int master_port = 0;
    bool resume = false;
    bool orphan = false;  // from before a coordinator restart, not yet adopted
    absl::Time started;
    absl::Time last_progress;
    absl::Time stop_deadline;  // kStopping: finalize by then whatever the workers say
    absl::Time runtime_deadline = absl::InfiniteFuture();  // start_time + max_runtime_seconds
    std::string final_checkpoint;
    std::string lost_worker;  // a worker of the gang that was lost (the root cause of a failure)
    absl::flat_hash_set<int64_t> checkpoint_steps;
  };
  struct WorkerView {
    absl::Time last_report;  // the last heartbeat's time (its rank list is complete)
    int64_t acked_seq = 0;
  };

  Scheduler(JobManager* manager, SchedulerOptions options)
      : manager_(manager), options_(std::move(options)) {}

  void Loop();
  absl::StatusOr<ftd::v1::HeartbeatResponse> HeartbeatLocked(const ftd::v1::HeartbeatRequest& request,
                                                             absl::Time now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ApplyReport(const ftd::v1::RankReport& report) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Evaluate(Attempt& a) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void BeginStop(Attempt& a, Outcome outcome, ftd::v1::JobError error)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends the attempt in the store; the caller erases it.
  void Finalize(Attempt& a) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FailLostWorkers(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void HandleCancels() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ScheduleQueue(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Reap() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Stops attempts whose job has run past spec.scheduling.max_runtime_seconds.
  void EnforceDeadlines(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UpdateBusy() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int NextPort(const std::string& address) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Attempt* FindAttempt(const ftd::v1::RankKey& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  JobManager* const manager_;
  const SchedulerOptions options_;
  WorkerRegistry registry_;
  JobLogs logs_;

  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Attempt> attempts_ ABSL_GUARDED_BY(mu_);  // by job id
  absl::flat_hash_map<std::string, WorkerView> views_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<std::string> too_big_noted_ ABSL_GUARDED_BY(mu_);
  int port_cursor_ ABSL_GUARDED_BY(mu_) = 0;
  // The queue is scanned when something changed (a worker registered, slots were freed) and at
  // least every queue_rescan (new jobs arrive through the API, which does not tell us).
  bool queue_dirty_ ABSL_GUARDED_BY(mu_) = true;
  absl::Time last_queue_scan_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();

  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace ftd::server
