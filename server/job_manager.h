// JobManager: the only writer of jobs. Every change is a store transaction that appends events,
// followed by publication of those events to watchers. The API layer uses Create and Cancel;
// the scheduler drives execution through Transition, RecordProgress,
// RecordEval, AddCheckpoint and AppendMessage, all of which validate against job_state_machine.
#pragma once

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "server/event_hub.h"
#include "server/job_store.h"

namespace ftd::server {

class JobManager {
 public:
  JobManager(JobStore* store, EventHub* hub) : store_(store), hub_(hub) {}

  // Stores a new QUEUED job (see JobStore::CreateJob for idempotency) and publishes its
  // first status event.
  absl::StatusOr<CreateOutcome> Create(NewJob new_job);

  // QUEUED -> CANCELLED, STARTING/RUNNING -> CANCELLING (the scheduler finishes it),
  // CANCELLING stays; FAILED_PRECONDITION for terminal jobs.
  absl::StatusOr<ftd::v1::FineTuneJob> Cancel(const std::string& id, const std::string& reason);

  // A state change decided by the scheduler. `error` is recorded for FAILED; `placement` is
  // set when given (STARTING) and cleared on QUEUED. Entering QUEUED from a started state
  // counts an attempt.
  struct TransitionOptions {
    std::string message;  // recorded as a message event when non-empty
    std::optional<ftd::v1::JobError> error;
    std::optional<ftd::v1::JobStatus::Placement> placement;
  };
  absl::StatusOr<ftd::v1::FineTuneJob> Transition(const std::string& id, ftd::v1::JobState to,
                                                   const TransitionOptions& options);

  // Progress and the latest metric sample; appends a metrics event. Process-crash safe, not
  // fsync'd: samples are frequent and the next one supersedes them. The job's latest eval
  // (eval_loss, eval_step) is kept unless `metrics` carries a newer one (eval_step > 0); the
  // event carries the job's metrics as stored, with step/total_steps of `progress`.
  absl::StatusOr<ftd::v1::FineTuneJob> RecordProgress(
      const std::string& id, const ftd::v1::JobStatus::Progress& progress,
      const ftd::v1::JobMetrics& metrics);

  // An evaluation on the validation set: sets the job's metrics.eval_loss/eval_step and
  // appends an eval event. Synchronous (fsync'd): evaluations are rare and worth keeping.
  absl::StatusOr<ftd::v1::FineTuneJob> RecordEval(const std::string& id,
                                                  const ftd::v1::EvalResult& eval);

  // Adds a checkpoint (newest last); `keep_last` of the spec trims the list.
  absl::StatusOr<ftd::v1::FineTuneJob> AddCheckpoint(const std::string& id,
                                                     const ftd::v1::Checkpoint& checkpoint);

  // A free-form log line in the job's event stream.
  absl::StatusOr<ftd::v1::FineTuneJob> AppendMessage(const std::string& id,
                                                     const std::string& message);

  JobStore* store() const { return store_; }
  EventHub* hub() const { return hub_; }

 private:
  absl::StatusOr<ftd::v1::FineTuneJob> Apply(const std::string& id, const JobMutation& mutate,
                                             Durability durability);

  JobStore* const store_;
  EventHub* const hub_;
};

}  // namespace ftd::server
