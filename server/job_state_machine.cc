#include "server/job_state_machine.h"

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace ftd::server {

using ftd::v1::JobState;

bool IsTerminalState(JobState state) {
  return state == ftd::v1::SUCCEEDED || state == ftd::v1::FAILED || state == ftd::v1::CANCELLED;
}

bool IsLegalTransition(JobState from, JobState to) {
  switch (from) {
    case ftd::v1::QUEUED:
      return to == ftd::v1::STARTING || to == ftd::v1::CANCELLED || to == ftd::v1::FAILED;
    case ftd::v1::STARTING:
      return to == ftd::v1::RUNNING || to == ftd::v1::QUEUED || to == ftd::v1::CANCELLING ||
             to == ftd::v1::FAILED;
    case ftd::v1::RUNNING:
      return to == ftd::v1::SUCCEEDED || to == ftd::v1::FAILED || to == ftd::v1::QUEUED ||
             to == ftd::v1::CANCELLING;
    case ftd::v1::CANCELLING:
      return to == ftd::v1::CANCELLED || to == ftd::v1::FAILED;
    default:
      return false;
  }
}

absl::Status CheckTransition(JobState from, JobState to) {
  if (IsLegalTransition(from, to)) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat("illegal state transition ",
                                                    ftd::v1::JobState_Name(from), " -> ",
                                                    ftd::v1::JobState_Name(to)));
}

absl::StatusOr<JobState> CancelTarget(JobState from) {
  if (from == ftd::v1::QUEUED) return ftd::v1::CANCELLED;
  if (from == ftd::v1::STARTING || from == ftd::v1::RUNNING) return ftd::v1::CANCELLING;
  if (from == ftd::v1::CANCELLING) return ftd::v1::CANCELLING;  // idempotent
  return absl::FailedPreconditionError(
      absl::StrCat("job is already ", ftd::v1::JobState_Name(from), "; only QUEUED, STARTING "
                   "and RUNNING jobs can be cancelled"));
}

}  // namespace ftd::server
