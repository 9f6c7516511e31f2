#include "server/job_recovery.h"

#include "common/status_macros.h"

namespace ftd::server {

absl::StatusOr<RecoveryReport> RecoverJobs(JobManager* manager) {
  RecoveryReport report;
  FTD_ASSIGN_OR_RETURN(std::vector<std::string> running,
                       manager->store()->JobIdsInStates({ftd::v1::STARTING, ftd::v1::RUNNING}));
  for (const std::string& id : running) {
    JobManager::TransitionOptions options;
    options.message = "requeued: the coordinator restarted while the job was running";
    FTD_RETURN_IF_ERROR(manager->Transition(id, ftd::v1::QUEUED, options).status());
    ++report.requeued;
  }
  FTD_ASSIGN_OR_RETURN(std::vector<std::string> cancelling,
                       manager->store()->JobIdsInStates({ftd::v1::CANCELLING}));
  for (const std::string& id : cancelling) {
    JobManager::TransitionOptions options;
    options.message = "cancelled: the coordinator restarted while the job was being cancelled";
    FTD_RETURN_IF_ERROR(manager->Transition(id, ftd::v1::CANCELLED, options).status());
    ++report.cancelled;
  }
  FTD_ASSIGN_OR_RETURN(report.jobs, manager->store()->CountJobs());
  FTD_ASSIGN_OR_RETURN(report.events, manager->store()->CountEvents());
  return report;
}

}  // namespace ftd::server
