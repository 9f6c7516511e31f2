// JobStore: the durable record of jobs and their append-only event logs. The coordinator keeps
// no state that a JobStore does not hold, so a restart (or kill -9) loses nothing that a
// caller has seen acknowledged.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "ftd/v1/jobs.pb.h"

namespace ftd::server {

// How hard a write must be on disk before it is acknowledged.
enum class Durability {
  // fsync'd before returning (state transitions, creates, cancels).
  kSynchronous,
  // Survives a crash of the process but maybe not of the machine (metric samples).
  kProcessCrashSafe,
};

struct NewJob {
  ftd::v1::FineTuneJob job;  // id, tenant, spec, status, labels, times filled in by the caller
  std::string request_id;    // empty: not idempotent
  std::string spec_hash;     // hash of (spec, labels): what makes a retry "the same request"
  ftd::v1::JobEvent first_event;  // seq is assigned by the store
};

struct CreateOutcome {
  ftd::v1::FineTuneJob job;
  // False when (tenant, request_id) already named a job: `job` is that job, and
  // `existing_spec_hash` is the hash it was created with.
  bool created = false;
  std::string existing_spec_hash;
  std::vector<ftd::v1::JobEvent> events;  // the appended events, with seq (when created)
};

struct JobQuery {
  std::optional<std::string> tenant;  // nullopt: every tenant (admins)
  std::vector<ftd::v1::JobState> states;  // any of; empty: all
  std::vector<std::pair<std::string, std::string>> labels;  // all must match
  int page_size = 50;
  std::string page_token;  // opaque, from JobPage::next_page_token
};

struct JobPage {
  std::vector<ftd::v1::FineTuneJob> jobs;
  std::string next_page_token;  // empty on the last page
};

struct EventPage {
  std::vector<ftd::v1::JobEvent> events;
  std::string next_page_token;
};

// Mutates a job inside the store's write transaction; may append events (their seq and job_id
// are assigned by the store). A non-OK status aborts the transaction and is returned as is.
using JobMutation =
    std::function<absl::Status(ftd::v1::FineTuneJob& job, std::vector<ftd::v1::JobEvent>& events)>;

struct UpdateOutcome {
  ftd::v1::FineTuneJob job;
  std::vector<ftd::v1::JobEvent> events;  // as stored, with seq
};

class JobStore {
 public:
  virtual ~JobStore() = default;

  // Inserts a job and its first event atomically, unless (tenant, request_id) is taken.
  virtual absl::StatusOr<CreateOutcome> CreateJob(const NewJob& new_job) = 0;

  // NOT_FOUND naming the id when absent.
  virtual absl::StatusOr<ftd::v1::FineTuneJob> GetJob(const std::string& id) = 0;

  // The job created under (tenant, request_id), or nullopt.
  virtual absl::StatusOr<std::optional<ftd::v1::FineTuneJob>> FindByRequestId(const std::string& tenant,
                                                                               const std::string& request_id) = 0;

  // Newest first. INVALID_ARGUMENT naming page_token when it is not one of ours.
  virtual absl::StatusOr<JobPage> ListJobs(const JobQuery& query) = 0;

  // Read-modify-write of one job under the store's write lock; the job's update_time, etag
  // and version advance. NOT_FOUND when absent.
  virtual absl::StatusOr<UpdateOutcome> UpdateJob(const std::string& id, const JobMutation& mutate,
                                                  Durability durability) = 0;

  // Events with seq > after_seq, oldest first, at most `limit`.
  virtual absl::StatusOr<std::vector<ftd::v1::JobEvent>> ReadEvents(const std::string& job_id,
                                                                    int64_t after_seq,
                                                                    int limit) = 0;

  // Paged ReadEvents for ListJobEvents; page_token is opaque.
  virtual absl::StatusOr<EventPage> ListEvents(const std::string& job_id, int page_size,
                                               const std::string& page_token) = 0;

  // The most recent event of kind `status`, or nullopt when the job has none.
  virtual absl::StatusOr<std::optional<ftd::v1::JobEvent>> LatestStatusEvent(
      const std::string& job_id) = 0;

  // 1-based position of a QUEUED job among QUEUED jobs (higher priority first, then older).
  virtual absl::StatusOr<int> QueuePosition(const ftd::v1::FineTuneJob& job) = 0;

  // Ids of every job in one of `states` (recovery and the scheduler), oldest first.
  virtual absl::StatusOr<std::vector<std::string>> JobIdsInStates(
      const std::vector<ftd::v1::JobState>& states) = 0;

  // Jobs and events stored (startup report, tests).
  virtual absl::StatusOr<int64_t> CountJobs() = 0;
  virtual absl::StatusOr<int64_t> CountEvents() = 0;
};

}  // namespace ftd::server
