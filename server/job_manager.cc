#include "server/job_manager.h"

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "server/job_state_machine.h"
#include "server/time_util.h"

namespace ftd::server {

using ftd::v1::FineTuneJob;
using ftd::v1::JobEvent;
using ftd::v1::JobState;

namespace {

JobEvent StatusEvent(const ftd::v1::JobStatus& status) {
  JobEvent event;
  *event.mutable_time() = ToProtoTime(absl::Now());
  *event.mutable_status() = status;
  return event;
}

JobEvent MessageEvent(const std::string& message) {
  JobEvent event;
  *event.mutable_time() = ToProtoTime(absl::Now());
  event.set_message(message);
  return event;
}

absl::Status WithJobId(const absl::Status& st, const std::string& id) {
  if (st.ok()) return st;
  return absl::Status(st.code(), absl::StrCat("job ", id, ": ", st.message()));
}

}  // namespace

absl::StatusOr<CreateOutcome> JobManager::Create(NewJob new_job) {
  if (new_job.first_event.kind_case() == JobEvent::KIND_NOT_SET) {
    new_job.first_event = StatusEvent(new_job.job.status());
  }
  FTD_ASSIGN_OR_RETURN(CreateOutcome outcome, store_->CreateJob(new_job));
  for (const JobEvent& event : outcome.events) hub_->Publish(event);
  return outcome;
}

absl::StatusOr<FineTuneJob> JobManager::Apply(const std::string& id, const JobMutation& mutate,
                                              Durability durability) {
  FTD_ASSIGN_OR_RETURN(UpdateOutcome outcome, store_->UpdateJob(id, mutate, durability));
  for (const JobEvent& event : outcome.events) hub_->Publish(event);
  return std::move(outcome.job);
}

absl::StatusOr<FineTuneJob> JobManager::Cancel(const std::string& id, const std::string& reason) {
  return Apply(
      id,
      [&](FineTuneJob& job, std::vector<JobEvent>& events) -> absl::Status {
        const JobState from = job.status().state();
        absl::StatusOr<JobState> to = CancelTarget(from);
        if (!to.ok()) return WithJobId(to.status(), id);
        if (*to == from) return absl::OkStatus();  // already CANCELLING
        job.mutable_status()->set_state(*to);
        job.mutable_status()->set_queue_position(0);
        if (!reason.empty()) events.push_back(MessageEvent(absl::StrCat("cancel requested: ", reason)));
        events.push_back(StatusEvent(job.status()));
        return absl::OkStatus();
      },
      Durability::kSynchronous);
}

absl::StatusOr<FineTuneJob> JobManager::Transition(const std::string& id, JobState to,
                                                   const TransitionOptions& options) {
  return Apply(
      id,
      [&](FineTuneJob& job, std::vector<JobEvent>& events) -> absl::Status {
        const JobState from = job.status().state();
        FTD_RETURN_IF_ERROR(WithJobId(CheckTransition(from, to), id));
        ftd::v1::JobStatus& status = *job.mutable_status();
        status.set_state(to);
        if (to == ftd::v1::QUEUED) {
          status.clear_placement();
          status.set_attempt(status.attempt() + 1);
        }
        if (to != ftd::v1::QUEUED) status.set_queue_position(0);
        // The runtime limit counts from the first placement, across requeues and restarts.
        if (to == ftd::v1::STARTING && !status.has_start_time()) *status.mutable_start_time() = ToProtoTime(absl::Now());
        if (options.placement.has_value()) *status.mutable_placement() = *options.placement;
        if (options.error.has_value()) *status.mutable_error() = *options.error;
        if (!options.message.empty()) events.push_back(MessageEvent(options.message));
        events.push_back(StatusEvent(status));
        return absl::OkStatus();
      },
      Durability::kSynchronous);
}

absl::StatusOr<FineTuneJob> JobManager::RecordProgress(const std::string& id,
                                                       const ftd::v1::JobStatus::Progress& progress,
                                                       const ftd::v1::JobMetrics& metrics) {
  return Apply(
      id,
      [&](FineTuneJob& job, std::vector<JobEvent>& events) -> absl::Status {
        if (IsTerminalState(job.status().state())) {
          return absl::FailedPreconditionError(absl::StrCat(
              "job ", id, " is ", ftd::v1::JobState_Name(job.status().state()),
              "; progress is no longer recorded"));
        }
        ftd::v1::JobMetrics& stored = *job.mutable_status()->mutable_metrics();
        ftd::v1::JobMetrics merged = metrics;
        if (merged.eval_step() <= 0) {  // a step sample: the latest eval stays
          merged.set_eval_step(stored.eval_step());
          merged.set_eval_loss(stored.eval_loss());
        }
        merged.set_step(progress.step());
        merged.set_total_steps(progress.total_steps());
        *job.mutable_status()->mutable_progress() = progress;
        stored = merged;
        JobEvent event;
        *event.mutable_time() = ToProtoTime(absl::Now());
        *event.mutable_metrics() = std::move(merged);
        events.push_back(std::move(event));
        return absl::OkStatus();
      },
      Durability::kProcessCrashSafe);
}

absl::StatusOr<FineTuneJob> JobManager::RecordEval(const std::string& id,
                                                   const ftd::v1::EvalResult& eval) {
  return Apply(
      id,
      [&](FineTuneJob& job, std::vector<JobEvent>& events) -> absl::Status {
        if (IsTerminalState(job.status().state())) {
          return absl::FailedPreconditionError(absl::StrCat(
              "job ", id, " is ", ftd::v1::JobState_Name(job.status().state()),
              "; evaluations are no longer recorded"));
        }
        if (eval.step() <= 0) {
          return absl::InvalidArgumentError(
              absl::StrCat("job ", id, ": eval step must be > 0 (got ", eval.step(), ")"));
        }
        ftd::v1::JobMetrics& m = *job.mutable_status()->mutable_metrics();
        m.set_eval_loss(eval.loss());
        m.set_eval_step(eval.step());
        JobEvent event;
        *event.mutable_time() = ToProtoTime(absl::Now());
        *event.mutable_eval() = eval;
        events.push_back(std::move(event));
        return absl::OkStatus();
      },
      Durability::kSynchronous);
}

absl::StatusOr<FineTuneJob> JobManager::AddCheckpoint(const std::string& id,
                                                      const ftd::v1::Checkpoint& checkpoint) {
  return Apply(
      id,
      [&](FineTuneJob& job, std::vector<JobEvent>& events) -> absl::Status {
        auto* list = job.mutable_status()->mutable_checkpoints();
        ftd::v1::Checkpoint& added = *list->Add();
        added = checkpoint;
        if (added.kind().empty()) added.set_kind(job.spec().method() == "lora" ? "adapter" : "full");
        const int keep = job.spec().checkpointing().keep_last();
        if (keep > 0 && list->size() > keep) list->DeleteSubrange(0, list->size() - keep);
        JobEvent event;
        *event.mutable_time() = ToProtoTime(absl::Now());
        *event.mutable_checkpoint() = added;
        events.push_back(std::move(event));
        return absl::OkStatus();
      },
      Durability::kSynchronous);
}

absl::StatusOr<FineTuneJob> JobManager::AppendMessage(const std::string& id,
                                                      const std::string& message) {
  return Apply(
      id,
      [&](FineTuneJob&, std::vector<JobEvent>& events) -> absl::Status {
        events.push_back(MessageEvent(message));
        return absl::OkStatus();
      },
      Durability::kSynchronous);
}

}  // namespace ftd::server
