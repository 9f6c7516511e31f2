// JobApi: the JobService handlers, independent of transport. The gRPC service and the REST
// gateway both authenticate with it and call the same methods, so they cannot disagree on
// validation, tenancy or errors.
#pragma once

#include <atomic>
#include <functional>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "ftd/v1/jobs.pb.h"
#include "server/job_manager.h"
#include "server/job_watch.h"
#include "server/spec_validator.h"
#include "server/token_registry.h"

namespace ftd::server {

class JobApi {
 public:
  JobApi(JobManager* manager, const SpecValidator* validator, const TokenRegistry* tokens)
      : manager_(manager), validator_(validator), tokens_(tokens) {}

  // Checks that a tenant may have webhooks delivered (its signing secret is configured); jobs
  // with spec.webhook_url are refused with the returned error. Unset: webhooks are refused.
  void SetWebhookTenantCheck(std::function<absl::Status(const std::string& tenant)> check) {
    webhook_tenant_check_ = std::move(check);
  }

  // Every call but health is refused with UNAVAILABLE until the store has been replayed.
  void SetReady(bool ready) { ready_.store(ready, std::memory_order_release); }
  bool ready() const { return ready_.load(std::memory_order_acquire); }

  // From an `authorization` header or metadata value.
  absl::StatusOr<Principal> Authenticate(absl::string_view authorization) const;

  absl::StatusOr<ftd::v1::CreateJobResponse> CreateJob(const Principal& who,
                                                       const ftd::v1::CreateJobRequest& request);
  absl::StatusOr<ftd::v1::FineTuneJob> GetJob(const Principal& who,
                                              const ftd::v1::GetJobRequest& request);
  absl::StatusOr<ftd::v1::ListJobsResponse> ListJobs(const Principal& who,
                                                     const ftd::v1::ListJobsRequest& request);
  absl::StatusOr<ftd::v1::FineTuneJob> CancelJob(const Principal& who,
                                                 const ftd::v1::CancelJobRequest& request);
  absl::StatusOr<ftd::v1::ListJobEventsResponse> ListJobEvents(
      const Principal& who, const ftd::v1::ListJobEventsRequest& request);
  absl::StatusOr<ftd::v1::ListCheckpointsResponse> ListCheckpoints(
      const Principal& who, const ftd::v1::ListCheckpointsRequest& request);
  // A watch positioned per request.after_seq; see JobWatch::Open for `wakeup`.
  absl::StatusOr<std::unique_ptr<JobWatch>> WatchJob(const Principal& who,
                                                     const ftd::v1::WatchJobRequest& request,
                                                     std::function<void()> wakeup);

  JobManager* manager() const { return manager_; }

 private:
  absl::Status CheckReady() const;
  // The job if `who` may see it. Another tenant's job is NOT_FOUND, exactly like a missing
  // one, so ids of other tenants' jobs cannot be probed.
  absl::StatusOr<ftd::v1::FineTuneJob> LoadVisibleJob(const Principal& who, const std::string& id);
  // Fills queue_position of a QUEUED job.
  absl::Status Decorate(ftd::v1::FineTuneJob* job);
  // spec.output of a new job of `tenant`: no live job writes to it (or inside it, or around
  // it), and an existing non-empty directory must be the output of an earlier job of the same
  // tenant. FAILED_PRECONDITION naming spec.output otherwise.
  absl::Status CheckOutputOwnership(const std::string& tenant, const std::string& output)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(create_mu_);
  std::string NewJobId();

  JobManager* const manager_;
  const SpecValidator* const validator_;
  const TokenRegistry* const tokens_;
  std::atomic<bool> ready_{false};
  std::function<absl::Status(const std::string& tenant)> webhook_tenant_check_;

  // Creates are serialized: the output checks and the insert act as one.
  absl::Mutex create_mu_;

  absl::Mutex id_mu_;
  absl::BitGen id_gen_ ABSL_GUARDED_BY(id_mu_);
};

}  // namespace ftd::server
