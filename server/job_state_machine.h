// The legal life cycle of a job. Every state change in the coordinator goes through
// CheckTransition, so the scheduler and the API cannot drift apart on what is allowed.
//
//   QUEUED ──► STARTING ──► RUNNING ──► SUCCEEDED | FAILED
//     │  ▲        │  │         │
//     │  └────────┴──┴─────────┘ (requeue: restart after a worker loss / coordinator restart)
//     │           ▼            ▼
//     └──────► CANCELLING ──► CANCELLED      QUEUED ──► CANCELLED (nothing to stop)
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "ftd/v1/jobs.pb.h"

namespace ftd::server {

// SUCCEEDED, FAILED, CANCELLED: no transition leaves them.
bool IsTerminalState(ftd::v1::JobState state);

// True when `from -> to` is a legal transition.
bool IsLegalTransition(ftd::v1::JobState from, ftd::v1::JobState to);

// OK, or FAILED_PRECONDITION naming both states (the job id is added by callers).
absl::Status CheckTransition(ftd::v1::JobState from, ftd::v1::JobState to);

// The state a cancel request moves a job in `from` to: CANCELLED when nothing runs yet
// (QUEUED), CANCELLING when ranks must be stopped first; FAILED_PRECONDITION when terminal.
absl::StatusOr<ftd::v1::JobState> CancelTarget(ftd::v1::JobState from);

}  // namespace ftd::server
