// Restart recovery: after the coordinator restarts, no rank it had started is known to be
// alive (worker reconciliation arrives with the worker issue), so jobs that were STARTING or
// RUNNING go back to QUEUED (an attempt is counted) and CANCELLING jobs become CANCELLED.
#pragma once

#include "absl/status/statusor.h"
#include "server/job_manager.h"

namespace ftd::server {

struct RecoveryReport {
  int requeued = 0;
  int cancelled = 0;
  int64_t jobs = 0;    // jobs in the store
  int64_t events = 0;  // events in the store
};

absl::StatusOr<RecoveryReport> RecoverJobs(JobManager* manager);

}  // namespace ftd::server
