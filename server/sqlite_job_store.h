// The embedded JobStore: one SQLite database (WAL) under --data-dir. Writes go through one
// connection under a lock, in BEGIN IMMEDIATE transactions, fsync'd (synchronous=FULL) unless
// the caller asks for Durability::kProcessCrashSafe (synchronous=NORMAL: safe against kill -9,
// not against power loss; used for metric samples). Reads use a small pool of connections, so
// they never wait behind an fsync.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/job_store.h"
#include "server/sqlite_connection.h"

namespace ftd::server {

class SqliteJobStore : public JobStore {
 public:
  // The schema version this build writes; older databases are migrated on open, newer ones
  // are refused (FAILED_PRECONDITION).
  static constexpr int kSchemaVersion = 1;

  // Opens or creates `path` and runs pending migrations.
  static absl::StatusOr<std::unique_ptr<SqliteJobStore>> Open(const std::string& path);

  absl::StatusOr<CreateOutcome> CreateJob(const NewJob& new_job) override;
  absl::StatusOr<ftd::v1::FineTuneJob> GetJob(const std::string& id) override;
  absl::StatusOr<std::optional<ftd::v1::FineTuneJob>> FindByRequestId(const std::string& tenant,
                                                                       const std::string& request_id) override;
  absl::StatusOr<JobPage> ListJobs(const JobQuery& query) override;
  absl::StatusOr<UpdateOutcome> UpdateJob(const std::string& id, const JobMutation& mutate,
                                          Durability durability) override;
  absl::StatusOr<std::vector<ftd::v1::JobEvent>> ReadEvents(const std::string& job_id,
                                                            int64_t after_seq, int limit) override;
  absl::StatusOr<EventPage> ListEvents(const std::string& job_id, int page_size,
                                       const std::string& page_token) override;
  absl::StatusOr<std::optional<ftd::v1::JobEvent>> LatestStatusEvent(
      const std::string& job_id) override;
  absl::StatusOr<int> QueuePosition(const ftd::v1::FineTuneJob& job) override;
  absl::StatusOr<std::vector<std::string>> JobIdsInStates(
      const std::vector<ftd::v1::JobState>& states) override;
  absl::StatusOr<int64_t> CountJobs() override;
  absl::StatusOr<int64_t> CountEvents() override;

  // Called with the latency of every committed CreateJob/UpdateJob transaction (metrics).
  // Set it before the store is shared with other threads.
  void SetCommitObserver(std::function<void(Durability, absl::Duration)> observer) {
    absl::MutexLock lock(&write_mu_);
    commit_observer_ = std::move(observer);
  }

  // The schema version found in the database (after Open: kSchemaVersion).
  absl::StatusOr<int> SchemaVersion();

 private:
  explicit SqliteJobStore(std::string path, std::unique_ptr<SqliteConnection> writer)
      : path_(std::move(path)), writer_(std::move(writer)) {}

  // A pooled read connection, returned to the pool when the lease ends.
  class ReadLease {
   public:
    ReadLease(SqliteJobStore* store, std::unique_ptr<SqliteConnection> conn)
        : store_(store), conn_(std::move(conn)) {}
    ReadLease(ReadLease&&) = default;
    ~ReadLease();
    SqliteConnection* operator->() const { return conn_.get(); }
    SqliteConnection* get() const { return conn_.get(); }

   private:
    SqliteJobStore* store_;
    std::unique_ptr<SqliteConnection> conn_;
  };
  absl::StatusOr<ReadLease> AcquireReader();

  absl::Status Migrate() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  absl::Status SetDurability(Durability durability) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  absl::Status InsertEvent(ftd::v1::JobEvent& event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);
  static absl::StatusOr<ftd::v1::FineTuneJob> LoadJob(SqliteConnection* conn,
                                                      const std::string& id,
                                                      int64_t* last_seq);

  const std::string path_;
  absl::Mutex write_mu_;
  std::unique_ptr<SqliteConnection> writer_ ABSL_GUARDED_BY(write_mu_);
  Durability current_durability_ ABSL_GUARDED_BY(write_mu_) = Durability::kSynchronous;
  std::function<void(Durability, absl::Duration)> commit_observer_ ABSL_GUARDED_BY(write_mu_);
  absl::Status CommitTimed(SqliteTransaction& tx) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu_);

  absl::Mutex pool_mu_;
  std::vector<std::unique_ptr<SqliteConnection>> idle_readers_ ABSL_GUARDED_BY(pool_mu_);
};

}  // namespace ftd::server
