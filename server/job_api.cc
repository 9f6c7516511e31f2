#include "server/job_api.h"

#include <filesystem>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "server/dataset_check.h"
#include "server/job_plan.h"
#include "server/sha256.h"
#include "server/time_util.h"

namespace ftd::server {
namespace {

using ftd::v1::FineTuneJob;

constexpr int kDefaultJobPageSize = 50;
constexpr int kMaxJobPageSize = 500;
constexpr int kDefaultEventPageSize = 100;
constexpr int kMaxEventPageSize = 1000;

absl::Status CheckJobId(const std::string& id) {
  if (id.empty()) return absl::InvalidArgumentError("id: is required");
  bool ok = id.size() <= 64;
  for (char c : id) ok = ok && (absl::ascii_isalnum(c) || c == '-' || c == '_');
  if (!ok) return absl::InvalidArgumentError("id: must be 1-64 characters of [A-Za-z0-9_-]");
  return absl::OkStatus();
}

absl::StatusOr<int> PageSize(int requested, int fallback, int max, const char* field) {
  if (requested < 0) return absl::InvalidArgumentError(absl::StrCat(field, ": must not be negative"));
  if (requested == 0) return fallback;
  return std::min(requested, max);
}

}  // namespace

absl::Status JobApi::CheckReady() const {
  if (ready()) return absl::OkStatus();
  return absl::UnavailableError("the coordinator is replaying its job store; retry shortly");
}

absl::StatusOr<Principal> JobApi::Authenticate(absl::string_view authorization) const {
  return tokens_->Authenticate(authorization);
}

std::string JobApi::NewJobId() {
  absl::MutexLock lock(&id_mu_);
  return absl::StrFormat("job-%016x", absl::Uniform<uint64_t>(id_gen_));
}

absl::StatusOr<FineTuneJob> JobApi::LoadVisibleJob(const Principal& who, const std::string& id) {
  FTD_RETURN_IF_ERROR(CheckJobId(id));
  absl::StatusOr<FineTuneJob> job = manager_->store()->GetJob(id);
  if (!job.ok()) return job.status();
  if (!who.is_admin() && job->tenant() != who.tenant) {
    return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  }
  return job;
}

absl::Status JobApi::Decorate(FineTuneJob* job) {
  if (job->status().state() != ftd::v1::QUEUED) return absl::OkStatus();
  FTD_ASSIGN_OR_RETURN(int position, manager_->store()->QueuePosition(*job));
  job->mutable_status()->set_queue_position(position);
  return absl::OkStatus();
}

absl::Status JobApi::CheckOutputOwnership(const std::string& tenant, const std::string& output) {
  if (output.empty()) return absl::InvalidArgumentError("spec.output: is required (no output root is configured)");
  auto overlaps = [](const std::string& a, const std::string& b) {
    return SpecValidator::PathWithin(a, b) || SpecValidator::PathWithin(b, a);
  };
  FTD_ASSIGN_OR_RETURN(std::vector<std::string> live,
                       manager_->store()->JobIdsInStates(
                           {ftd::v1::QUEUED, ftd::v1::STARTING, ftd::v1::RUNNING, ftd::v1::CANCELLING}));
  for (const std::string& id : live) {
    absl::StatusOr<FineTuneJob> other = manager_->store()->GetJob(id);
    if (!other.ok() || !overlaps(output, other->spec().output())) continue;
    const bool same = other->spec().output() == output;
    return absl::FailedPreconditionError(absl::StrCat(
        "spec.output: ", output, same ? " is" : " overlaps", " the output directory of ",
        other->tenant() == tenant ? absl::StrCat("live job ", id, " (", ftd::v1::JobState_Name(other->status().state()), ")")
                                  : std::string("another live job"),
        "; two live jobs never share one"));
  }
  // An existing, non-empty directory: only an earlier job of this tenant may have written it.
  std::error_code ec;
  const bool exists = std::filesystem::exists(output, ec);
  if (!exists) return absl::OkStatus();
  if (!std::filesystem::is_directory(output, ec)) {
    return absl::FailedPreconditionError(absl::StrCat("spec.output: ", output, " exists and is not a directory"));
  }
  if (std::filesystem::is_empty(output, ec)) return absl::OkStatus();
  JobQuery query;
  query.tenant = tenant;
  query.page_size = 500;
  for (;;) {
    FTD_ASSIGN_OR_RETURN(JobPage page, manager_->store()->ListJobs(query));
    for (const FineTuneJob& earlier : page.jobs) {
      if (earlier.spec().output() == output) return absl::OkStatus();
    }
    if (page.next_page_token.empty()) break;
    query.page_token = page.next_page_token;
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "spec.output: ", output, " already exists and is not the output of an earlier job of tenant ", tenant,
      "; name a new directory"));
}

absl::StatusOr<ftd::v1::CreateJobResponse> JobApi::CreateJob(
    const Principal& who, const ftd::v1::CreateJobRequest& request) {
  FTD_RETURN_IF_ERROR(CheckReady());
  FTD_RETURN_IF_ERROR(SpecValidator::ValidateRequestId(request.request_id()));
  FTD_RETURN_IF_ERROR(validator_->ValidateLabels(request.labels()));
  if (!request.has_spec()) return absl::InvalidArgumentError("spec: is required");
  ftd::v1::JobSpec spec = request.spec();
  std::vector<std::string> notes;
  FTD_RETURN_IF_ERROR(validator_->ValidateAndNormalize(who.tenant, &spec, &notes));
  FTD_RETURN_IF_ERROR(CheckLoraTargets(spec));
  if (!spec.webhook_url().empty()) {
    if (!webhook_tenant_check_) {
      return absl::InvalidArgumentError("spec.webhook_url: webhooks are disabled on this coordinator");
    }
    if (absl::Status st = webhook_tenant_check_(who.tenant); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("spec.webhook_url: ", st.message()));
    }
  }

  ftd::v1::CreateJobResponse response;
  ftd::v1::JobPlan& plan = *response.mutable_plan();
  plan = PlanJob(spec);
  for (std::string& note : notes) plan.add_notes(std::move(note));
  if (request.validate_only()) {
    // A full pass over the data: only when asked for a plan (the ranks validate again anyway).
    FTD_RETURN_IF_ERROR(CheckDatasets(spec));
    return response;
  }

  absl::MutexLock create_lock(&create_mu_);
  FineTuneJob& job = *response.mutable_job();
  job.set_id(NewJobId());
  job.set_tenant(who.tenant);
  *job.mutable_spec() = spec;
  *job.mutable_labels() = request.labels();
  const auto now = ToProtoTime(absl::Now());
  *job.mutable_create_time() = now;
  *job.mutable_update_time() = now;
  job.mutable_status()->set_state(ftd::v1::QUEUED);
  job.mutable_status()->mutable_progress()->set_total_steps(spec.hyperparameters().max_steps());
  if (job.spec().output().empty()) {
    job.mutable_spec()->set_output(validator_->DefaultOutput(who.tenant, job.id()));
  }
  // A retry of an earlier request (same request_id) is answered by the store; anything else
  // must own its output directory.
  bool retry = false;
  if (!request.request_id().empty()) {
    FTD_ASSIGN_OR_RETURN(std::optional<FineTuneJob> earlier,
                         manager_->store()->FindByRequestId(who.tenant, request.request_id()));
    retry = earlier.has_value();
  }
  if (!retry) FTD_RETURN_IF_ERROR(CheckOutputOwnership(who.tenant, job.spec().output()));

  // The idempotency hash covers what the caller sent after normalization, not the generated
  // id or times: a retry of the same request hashes the same.
  ftd::v1::CreateJobRequest canonical;
  *canonical.mutable_spec() = spec;
  *canonical.mutable_labels() = request.labels();
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream out(&bytes);
    google::protobuf::io::CodedOutputStream coded(&out);
    coded.SetSerializationDeterministic(true);
    canonical.SerializeToCodedStream(&coded);
  }
  const std::string spec_hash = Sha256Hex(bytes);
  NewJob new_job;
  new_job.job = job;
  new_job.request_id = request.request_id();
  new_job.spec_hash = spec_hash;
  FTD_ASSIGN_OR_RETURN(CreateOutcome outcome, manager_->Create(std::move(new_job)));
  if (!outcome.created && outcome.existing_spec_hash != spec_hash) {
    return absl::AlreadyExistsError(absl::StrCat(
        "request_id ", request.request_id(), " was already used for job ", outcome.job.id(),
        " with a different spec or labels"));
  }
  job = std::move(outcome.job);
  FTD_RETURN_IF_ERROR(Decorate(&job));
  return response;
}

absl::StatusOr<FineTuneJob> JobApi::GetJob(const Principal& who,
                                           const ftd::v1::GetJobRequest& request) {
  FTD_RETURN_IF_ERROR(CheckReady());
  FTD_ASSIGN_OR_RETURN(FineTuneJob job, LoadVisibleJob(who, request.id()));
  FTD_RETURN_IF_ERROR(Decorate(&job));
  return job;
}

absl::StatusOr<ftd::v1::ListJobsResponse> JobApi::ListJobs(const Principal& who,
                                                           const ftd::v1::ListJobsRequest& request) {
  FTD_RETURN_IF_ERROR(CheckReady());
  JobQuery query;
  if (!who.is_admin()) query.tenant = who.tenant;
  FTD_ASSIGN_OR_RETURN(query.page_size,
                       PageSize(request.page_size(), kDefaultJobPageSize, kMaxJobPageSize, "page_size"));
  if (request.page_token().size() > 512) {
    return absl::InvalidArgumentError("page_token: not a page token of this listing");
  }
  query.page_token = request.page_token();
  for (int i = 0; i < request.states_size(); ++i) {
    const int state = request.states(i);
    if (!ftd::v1::JobState_IsValid(state) || state == ftd::v1::JOB_STATE_UNSPECIFIED) {
      return absl::InvalidArgumentError(absl::StrCat("states[", i, "]: not a job state"));
    }
    query.states.push_back(static_cast<ftd::v1::JobState>(state));
  }
  if (request.labels_size() > 16) return absl::InvalidArgumentError("labels: at most 16 selectors");
  for (int i = 0; i < request.labels_size(); ++i) {
    std::pair<std::string, std::string> kv =
        absl::StrSplit(request.labels(i), absl::MaxSplits('=', 1));
    if (kv.first.empty() || request.labels(i).find('=') == std::string::npos ||
        request.labels(i).size() > 512) {
      return absl::InvalidArgumentError(absl::StrCat("labels[", i, "]: expected key=value"));
    }
    query.labels.push_back(std::move(kv));
  }
  FTD_ASSIGN_OR_RETURN(JobPage page, manager_->store()->ListJobs(query));
  ftd::v1::ListJobsResponse response;
  for (FineTuneJob& job : page.jobs) {
    FTD_RETURN_IF_ERROR(Decorate(&job));
    *response.add_jobs() = std::move(job);
  }
  response.set_next_page_token(page.next_page_token);
  return response;
}

absl::StatusOr<FineTuneJob> JobApi::CancelJob(const Principal& who,
                                              const ftd::v1::CancelJobRequest& request) {
  FTD_RETURN_IF_ERROR(CheckReady());
  if (request.reason().size() > 1024) {
    return absl::InvalidArgumentError("reason: longer than 1024 bytes");
  }
  FTD_RETURN_IF_ERROR(LoadVisibleJob(who, request.id()).status());
  FTD_ASSIGN_OR_RETURN(FineTuneJob job, manager_->Cancel(request.id(), request.reason()));
  FTD_RETURN_IF_ERROR(Decorate(&job));
  return job;
}

absl::StatusOr<ftd::v1::ListJobEventsResponse> JobApi::ListJobEvents(
    const Principal& who, const ftd::v1::ListJobEventsRequest& request) {
  FTD_RETURN_IF_ERROR(CheckReady());
  FTD_ASSIGN_OR_RETURN(int page_size, PageSize(request.page_size(), kDefaultEventPageSize,
                                               kMaxEventPageSize, "page_size"));
  if (request.page_token().size() > 512) {
    return absl::InvalidArgumentError("page_token: not a page token of this job's events");
  }
  FTD_RETURN_IF_ERROR(LoadVisibleJob(who, request.id()).status());
  FTD_ASSIGN_OR_RETURN(EventPage page,
                       manager_->store()->ListEvents(request.id(), page_size, request.page_token()));
  ftd::v1::ListJobEventsResponse response;
  for (auto& event : page.events) *response.add_events() = std::move(event);
  response.set_next_page_token(page.next_page_token);
  return response;
}

absl::StatusOr<ftd::v1::ListCheckpointsResponse> JobApi::ListCheckpoints(
    const Principal& who, const ftd::v1::ListCheckpointsRequest& request) {
  FTD_RETURN_IF_ERROR(CheckReady());
  FTD_ASSIGN_OR_RETURN(FineTuneJob job, LoadVisibleJob(who, request.id()));
  ftd::v1::ListCheckpointsResponse response;
  *response.mutable_checkpoints() = job.status().checkpoints();
  return response;
}

absl::StatusOr<std::unique_ptr<JobWatch>> JobApi::WatchJob(const Principal& who,
                                                           const ftd::v1::WatchJobRequest& request,
                                                           std::function<void()> wakeup) {
  FTD_RETURN_IF_ERROR(CheckReady());
  if (request.after_seq() < 0) return absl::InvalidArgumentError("after_seq: must not be negative");
  FTD_RETURN_IF_ERROR(LoadVisibleJob(who, request.id()).status());
  return JobWatch::Open(manager_->store(), manager_->hub(), request.id(), request.after_seq(),
                        std::move(wakeup));
}

}  // namespace ftd::server
