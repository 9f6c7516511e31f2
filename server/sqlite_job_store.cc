#include "server/sqlite_job_store.h"

#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "google/protobuf/util/message_differencer.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "server/time_util.h"

namespace ftd::server {
namespace {

using ftd::v1::FineTuneJob;
using ftd::v1::JobEvent;

// Migration i (0-based) takes the schema from version i to i + 1. Append, never edit.
const char* const kMigrations[] = {
    R"sql(
CREATE TABLE jobs(
  id TEXT PRIMARY KEY,
  tenant TEXT NOT NULL,
  request_id TEXT,
  spec_hash TEXT NOT NULL,
  state INTEGER NOT NULL,
  priority INTEGER NOT NULL,
  create_us INTEGER NOT NULL,
  version INTEGER NOT NULL,
  last_seq INTEGER NOT NULL,
  job BLOB NOT NULL);
CREATE UNIQUE INDEX jobs_by_request ON jobs(tenant, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX jobs_by_time ON jobs(create_us DESC, id DESC);
CREATE INDEX jobs_by_tenant_time ON jobs(tenant, create_us DESC, id DESC);
CREATE INDEX jobs_by_queue ON jobs(state, priority DESC, create_us, id);
CREATE TABLE job_labels(
  job_id TEXT NOT NULL REFERENCES jobs(id),
  key TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY(job_id, key)) WITHOUT ROWID;
CREATE INDEX job_labels_by_kv ON job_labels(key, value, job_id);
CREATE TABLE events(
  job_id TEXT NOT NULL REFERENCES jobs(id),
  seq INTEGER NOT NULL,
  is_status INTEGER NOT NULL,
  time_us INTEGER NOT NULL,
  event BLOB NOT NULL,
  PRIMARY KEY(job_id, seq)) WITHOUT ROWID;
CREATE INDEX events_status ON events(job_id, is_status, seq);
)sql",
};
constexpr int kMigrationCount = sizeof(kMigrations) / sizeof(kMigrations[0]);
static_assert(kMigrationCount == SqliteJobStore::kSchemaVersion);

constexpr char kJobPagePrefix[] = "jobs1:";
constexpr char kEventPagePrefix[] = "events1:";

std::string EncodeToken(const std::string& raw) { return absl::WebSafeBase64Escape(raw); }

absl::StatusOr<std::string> DecodeToken(const std::string& token, absl::string_view prefix) {
  std::string raw;
  if (!absl::WebSafeBase64Unescape(token, &raw) || !absl::StartsWith(raw, prefix)) {
    return absl::InvalidArgumentError("page_token: not a page token of this listing");
  }
  return raw.substr(prefix.size());
}

absl::Status ParseStored(const std::string& blob, google::protobuf::Message* msg,
                         const std::string& what) {
  if (!msg->ParseFromString(blob)) {
    return absl::DataLossError(absl::StrCat("stored ", what, " does not parse"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<SqliteJobStore>> SqliteJobStore::Open(const std::string& path) {
  FTD_ASSIGN_OR_RETURN(std::unique_ptr<SqliteConnection> writer, SqliteConnection::Open(path));
  std::unique_ptr<SqliteJobStore> store(new SqliteJobStore(path, std::move(writer)));
  absl::MutexLock lock(&store->write_mu_);
  FTD_RETURN_IF_ERROR(store->writer_->Exec("PRAGMA synchronous=FULL"));
  FTD_RETURN_IF_ERROR(store->Migrate());
  return store;
}

absl::Status SqliteJobStore::Migrate() {
  FTD_RETURN_IF_ERROR(
      writer_->Exec("CREATE TABLE IF NOT EXISTS schema_version(version INTEGER NOT NULL)"));
  int version = 0;
  {
    FTD_ASSIGN_OR_RETURN(SqliteStatement q, writer_->Prepare("SELECT MAX(version) FROM schema_version"));
    FTD_ASSIGN_OR_RETURN(bool row, q.Step());
    if (row && !q.ColumnIsNull(0)) version = static_cast<int>(q.ColumnInt(0));
  }
  if (version > kSchemaVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("job store ", path_, " has schema version ", version,
                     ", newer than this ftd understands (", kSchemaVersion, ")"));
  }
  for (int v = version; v < kSchemaVersion; ++v) {
    FTD_ASSIGN_OR_RETURN(SqliteTransaction tx, SqliteTransaction::Begin(writer_.get()));
    FTD_RETURN_IF_ERROR(writer_->Exec(kMigrations[v]));
    FTD_RETURN_IF_ERROR(writer_->Exec(absl::StrCat("INSERT INTO schema_version VALUES(", v + 1, ")")));
    FTD_RETURN_IF_ERROR(tx.Commit());
  }
  return absl::OkStatus();
}

absl::StatusOr<int> SqliteJobStore::SchemaVersion() {
  FTD_ASSIGN_OR_RETURN(ReadLease conn, AcquireReader());
  FTD_ASSIGN_OR_RETURN(SqliteStatement q, conn->Prepare("SELECT MAX(version) FROM schema_version"));
  FTD_ASSIGN_OR_RETURN(bool row, q.Step());
  return row ? static_cast<int>(q.ColumnInt(0)) : 0;
}

SqliteJobStore::ReadLease::~ReadLease() {
  if (conn_ == nullptr) return;
  absl::MutexLock lock(&store_->pool_mu_);
  store_->idle_readers_.push_back(std::move(conn_));
}

absl::StatusOr<SqliteJobStore::ReadLease> SqliteJobStore::AcquireReader() {
  {
    absl::MutexLock lock(&pool_mu_);
    if (!idle_readers_.empty()) {
      std::unique_ptr<SqliteConnection> conn = std::move(idle_readers_.back());
      idle_readers_.pop_back();
      return ReadLease(this, std::move(conn));
    }
  }
  FTD_ASSIGN_OR_RETURN(std::unique_ptr<SqliteConnection> conn, SqliteConnection::Open(path_));
  return ReadLease(this, std::move(conn));
}

absl::Status SqliteJobStore::SetDurability(Durability durability) {
  if (durability == current_durability_) return absl::OkStatus();
  FTD_RETURN_IF_ERROR(writer_->Exec(durability == Durability::kSynchronous
                                        ? "PRAGMA synchronous=FULL"
                                        : "PRAGMA synchronous=NORMAL"));
  current_durability_ = durability;
  return absl::OkStatus();
}

absl::Status SqliteJobStore::InsertEvent(JobEvent& event) {
  if (!event.has_time()) *event.mutable_time() = ToProtoTime(absl::Now());
  FTD_ASSIGN_OR_RETURN(
      SqliteStatement ins,
      writer_->Prepare("INSERT INTO events(job_id, seq, is_status, time_us, event) VALUES(?,?,?,?,?)"));
  ins.BindText(1, event.job_id());
  ins.BindInt(2, event.seq());
  ins.BindInt(3, event.kind_case() == JobEvent::kStatus ? 1 : 0);
  ins.BindInt(4, ToUnixMicros(event.time()));
  ins.BindBlob(5, event.SerializeAsString());
  return ins.Run();
}

absl::StatusOr<FineTuneJob> SqliteJobStore::LoadJob(SqliteConnection* conn, const std::string& id,
                                                    int64_t* last_seq) {
  FTD_ASSIGN_OR_RETURN(SqliteStatement q, conn->Prepare("SELECT job, last_seq FROM jobs WHERE id = ?"));
  q.BindText(1, id);
  FTD_ASSIGN_OR_RETURN(bool row, q.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("job ", id, " not found"));
  FineTuneJob job;
  FTD_RETURN_IF_ERROR(ParseStored(q.ColumnBlob(0), &job, absl::StrCat("job ", id)));
  if (last_seq != nullptr) *last_seq = q.ColumnInt(1);
  return job;
}

absl::Status SqliteJobStore::CommitTimed(SqliteTransaction& tx) {
  const absl::Time start = absl::Now();
  FTD_RETURN_IF_ERROR(tx.Commit());
  if (commit_observer_) commit_observer_(current_durability_, absl::Now() - start);
  return absl::OkStatus();
}

absl::StatusOr<CreateOutcome> SqliteJobStore::CreateJob(const NewJob& new_job) {
  absl::MutexLock lock(&write_mu_);
  FTD_RETURN_IF_ERROR(SetDurability(Durability::kSynchronous));
  FTD_ASSIGN_OR_RETURN(SqliteTransaction tx, SqliteTransaction::Begin(writer_.get()));
  CreateOutcome outcome;
  if (!new_job.request_id.empty()) {
    FTD_ASSIGN_OR_RETURN(
        SqliteStatement q,
        writer_->Prepare("SELECT job, spec_hash FROM jobs WHERE tenant = ? AND request_id = ?"));
    q.BindText(1, new_job.job.tenant());
    q.BindText(2, new_job.request_id);
    FTD_ASSIGN_OR_RETURN(bool row, q.Step());
    if (row) {
      FTD_RETURN_IF_ERROR(ParseStored(q.ColumnBlob(0), &outcome.job, "job"));
      outcome.existing_spec_hash = q.ColumnText(1);
      return outcome;  // nothing written; the transaction rolls back
    }
  }
  FineTuneJob job = new_job.job;
  job.set_etag("1");
  JobEvent event = new_job.first_event;
  event.set_job_id(job.id());
  event.set_seq(1);
  {
    FTD_ASSIGN_OR_RETURN(
        SqliteStatement ins,
        writer_->Prepare("INSERT INTO jobs(id, tenant, request_id, spec_hash, state, priority, "
                         "create_us, version, last_seq, job) VALUES(?,?,?,?,?,?,?,1,1,?)"));
    ins.BindText(1, job.id());
    ins.BindText(2, job.tenant());
    if (new_job.request_id.empty()) {
      ins.BindNull(3);
    } else {
      ins.BindText(3, new_job.request_id);
    }
    ins.BindText(4, new_job.spec_hash);
    ins.BindInt(5, job.status().state());
    ins.BindInt(6, job.spec().scheduling().priority());
    ins.BindInt(7, ToUnixMicros(job.create_time()));
    ins.BindBlob(8, job.SerializeAsString());
    FTD_RETURN_IF_ERROR(ins.Run());
  }
  for (const auto& [key, value] : job.labels()) {
    FTD_ASSIGN_OR_RETURN(SqliteStatement ins,
                         writer_->Prepare("INSERT INTO job_labels(job_id, key, value) VALUES(?,?,?)"));
    ins.BindText(1, job.id());
    ins.BindText(2, key);
    ins.BindText(3, value);
    FTD_RETURN_IF_ERROR(ins.Run());
  }
  FTD_RETURN_IF_ERROR(InsertEvent(event));
  FTD_RETURN_IF_ERROR(CommitTimed(tx));
  outcome.created = true;
  outcome.job = std::move(job);
  outcome.events.push_back(std::move(event));
  return outcome;
}

absl::StatusOr<FineTuneJob> SqliteJobStore::GetJob(const std::string& id) {
  FTD_ASSIGN_OR_RETURN(ReadLease conn, AcquireReader());
  return LoadJob(conn.get(), id, nullptr);
}

absl::StatusOr<std::optional<FineTuneJob>> SqliteJobStore::FindByRequestId(const std::string& tenant,
                                                                            const std::string& request_id) {
  FTD_ASSIGN_OR_RETURN(ReadLease conn, AcquireReader());
  FTD_ASSIGN_OR_RETURN(SqliteStatement q, conn->Prepare("SELECT job FROM jobs WHERE tenant = ? AND request_id = ?"));
  q.BindText(1, tenant);
  q.BindText(2, request_id);
  FTD_ASSIGN_OR_RETURN(bool row, q.Step());
  if (!row) return std::optional<FineTuneJob>();
  FineTuneJob job;
  FTD_RETURN_IF_ERROR(ParseStored(q.ColumnBlob(0), &job, "job"));
  return std::optional<FineTuneJob>(std::move(job));
}

absl::StatusOr<JobPage> SqliteJobStore::ListJobs(const JobQuery& query) {
  std::string sql = "SELECT job, create_us, id FROM jobs WHERE 1";
  std::vector<std::string> text_args;  // bound in order after the fixed ones
  if (query.tenant.has_value()) {
    sql += " AND tenant = ?";
    text_args.push_back(*query.tenant);
  }
  int64_t cursor_us = 0;
  std::string cursor_id;
  bool has_cursor = false;
  if (!query.page_token.empty()) {
    FTD_ASSIGN_OR_RETURN(std::string raw, DecodeToken(query.page_token, kJobPagePrefix));
    std::pair<std::string, std::string> parts = absl::StrSplit(raw, absl::MaxSplits('|', 1));
    if (!absl::SimpleAtoi(parts.first, &cursor_us) || parts.second.empty()) {
      return absl::InvalidArgumentError("page_token: not a page token of this listing");
    }
    cursor_id = parts.second;
    has_cursor = true;
    sql += " AND (create_us < ? OR (create_us = ? AND id < ?))";
  }
  if (!query.states.empty()) {
    sql += " AND state IN (";
    for (size_t i = 0; i < query.states.size(); ++i) {
      absl::StrAppend(&sql, i ? "," : "", static_cast<int>(query.states[i]));
    }
    sql += ")";
  }
  for (size_t i = 0; i < query.labels.size(); ++i) {
    sql += " AND EXISTS(SELECT 1 FROM job_labels l WHERE l.job_id = jobs.id AND l.key = ? AND "
           "l.value = ?)";
  }
  sql += " ORDER BY create_us DESC, id DESC LIMIT ?";

  FTD_ASSIGN_OR_RETURN(ReadLease conn, AcquireReader());
  FTD_ASSIGN_OR_RETURN(SqliteStatement q, conn->Prepare(sql));
  int arg = 1;
  for (const std::string& t : text_args) q.BindText(arg++, t);
  if (has_cursor) {
    q.BindInt(arg++, cursor_us);
    q.BindInt(arg++, cursor_us);
    q.BindText(arg++, cursor_id);
  }
  for (const auto& [key, value] : query.labels) {
    q.BindText(arg++, key);
    q.BindText(arg++, value);
  }
  q.BindInt(arg++, query.page_size + 1);  // one more tells whether a next page exists
  JobPage page;
  int64_t last_us = 0;
  std::string last_id;
  for (;;) {
    FTD_ASSIGN_OR_RETURN(bool row, q.Step());
    if (!row) break;
    if (static_cast<int>(page.jobs.size()) == query.page_size) {
      page.next_page_token = EncodeToken(absl::StrCat(kJobPagePrefix, last_us, "|", last_id));
      break;
    }
    FineTuneJob& job = page.jobs.emplace_back();
    FTD_RETURN_IF_ERROR(ParseStored(q.ColumnBlob(0), &job, "job"));
    last_us = q.ColumnInt(1);
    last_id = q.ColumnText(2);
  }
  return page;
}

absl::StatusOr<UpdateOutcome> SqliteJobStore::UpdateJob(const std::string& id,
                                                        const JobMutation& mutate,
                                                        Durability durability) {
  absl::MutexLock lock(&write_mu_);
  FTD_RETURN_IF_ERROR(SetDurability(durability));
  FTD_ASSIGN_OR_RETURN(SqliteTransaction tx, SqliteTransaction::Begin(writer_.get()));
  int64_t last_seq = 0;
  FTD_ASSIGN_OR_RETURN(FineTuneJob job, LoadJob(writer_.get(), id, &last_seq));
  const FineTuneJob before = job;
  UpdateOutcome outcome;
  FTD_RETURN_IF_ERROR(mutate(job, outcome.events));
  if (job.id() != before.id() || job.tenant() != before.tenant() ||
      !google::protobuf::util::MessageDifferencer::Equals(job.create_time(), before.create_time())) {
    return absl::InternalError(absl::StrCat("job ", id, ": a mutation changed id, tenant or create_time"));
  }
  int64_t version = 0;
  absl::SimpleAtoi(before.etag(), &version);
  job.set_etag(absl::StrCat(version + 1));
  *job.mutable_update_time() = ToProtoTime(absl::Now());
  for (JobEvent& event : outcome.events) {
    event.set_job_id(id);
    event.set_seq(++last_seq);
    FTD_RETURN_IF_ERROR(InsertEvent(event));
  }
  {
    FTD_ASSIGN_OR_RETURN(
        SqliteStatement upd,
        writer_->Prepare("UPDATE jobs SET state = ?, priority = ?, version = version + 1, "
                         "last_seq = ?, job = ? WHERE id = ?"));
    upd.BindInt(1, job.status().state());
    upd.BindInt(2, job.spec().scheduling().priority());
    upd.BindInt(3, last_seq);
    upd.BindBlob(4, job.SerializeAsString());
    upd.BindText(5, id);
    FTD_RETURN_IF_ERROR(upd.Run());
  }
  FTD_RETURN_IF_ERROR(CommitTimed(tx));
  outcome.job = std::move(job);
  return outcome;
}

absl::StatusOr<std::vector<JobEvent>> SqliteJobStore::ReadEvents(const std::string& job_id,
                                                                 int64_t after_seq, int limit) {
  FTD_ASSIGN_OR_RETURN(ReadLease conn, AcquireReader());
  FTD_ASSIGN_OR_RETURN(
      SqliteStatement q,
      conn->Prepare("SELECT event FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?"));
  q.BindText(1, job_id);
  q.BindInt(2, after_seq);
  q.BindInt(3, limit);
  std::vector<JobEvent> events;
  for (;;) {
    FTD_ASSIGN_OR_RETURN(bool row, q.Step());
    if (!row) break;
    FTD_RETURN_IF_ERROR(ParseStored(q.ColumnBlob(0), &events.emplace_back(), "event"));
  }
  return events;
}

absl::StatusOr<EventPage> SqliteJobStore::ListEvents(const std::string& job_id, int page_size,
                                                     const std::string& page_token) {
  int64_t after_seq = 0;
  if (!page_token.empty()) {
    FTD_ASSIGN_OR_RETURN(std::string raw, DecodeToken(page_token, kEventPagePrefix));
    std::pair<std::string, std::string> parts = absl::StrSplit(raw, absl::MaxSplits('|', 1));
    if (parts.first != job_id || !absl::SimpleAtoi(parts.second, &after_seq) || after_seq < 0) {
      return absl::InvalidArgumentError("page_token: not a page token of this job's events");
    }
  }
  FTD_ASSIGN_OR_RETURN(std::vector<JobEvent> events, ReadEvents(job_id, after_seq, page_size + 1));
  EventPage page;
  if (static_cast<int>(events.size()) > page_size) {
    events.pop_back();
    page.next_page_token =
        EncodeToken(absl::StrCat(kEventPagePrefix, job_id, "|", events.back().seq()));
  }
  page.events = std::move(events);
  return page;
}

absl::StatusOr<std::optional<JobEvent>> SqliteJobStore::LatestStatusEvent(const std::string& job_id) {
  FTD_ASSIGN_OR_RETURN(ReadLease conn, AcquireReader());
  FTD_ASSIGN_OR_RETURN(SqliteStatement q,
                       conn->Prepare("SELECT event FROM events WHERE job_id = ? AND is_status = 1 "
                                     "ORDER BY seq DESC LIMIT 1"));
  q.BindText(1, job_id);
  FTD_ASSIGN_OR_RETURN(bool row, q.Step());
  if (!row) return std::nullopt;
  JobEvent event;
  FTD_RETURN_IF_ERROR(ParseStored(q.ColumnBlob(0), &event, "event"));
  return event;
}

absl::StatusOr<int> SqliteJobStore::QueuePosition(const FineTuneJob& job) {
  FTD_ASSIGN_OR_RETURN(ReadLease conn, AcquireReader());
  FTD_ASSIGN_OR_RETURN(
      SqliteStatement q,
      conn->Prepare("SELECT COUNT(*) FROM jobs WHERE state = ? AND (priority > ? OR (priority = ? "
                    "AND (create_us < ? OR (create_us = ? AND id < ?))))"));
  const int64_t priority = job.spec().scheduling().priority();
  const int64_t create_us = ToUnixMicros(job.create_time());
  q.BindInt(1, ftd::v1::QUEUED);
  q.BindInt(2, priority);
  q.BindInt(3, priority);
  q.BindInt(4, create_us);
  q.BindInt(5, create_us);
  q.BindText(6, job.id());
  FTD_ASSIGN_OR_RETURN(bool row, q.Step());
  return row ? static_cast<int>(q.ColumnInt(0)) + 1 : 1;
}

absl::StatusOr<std::vector<std::string>> SqliteJobStore::JobIdsInStates(
    const std::vector<ftd::v1::JobState>& states) {
  std::string sql = "SELECT id FROM jobs WHERE state IN (";
  for (size_t i = 0; i < states.size(); ++i) {
    absl::StrAppend(&sql, i ? "," : "", static_cast<int>(states[i]));
  }
  sql += ") ORDER BY create_us, id";
  std::vector<std::string> ids;
  if (states.empty()) return ids;
  FTD_ASSIGN_OR_RETURN(ReadLease conn, AcquireReader());
  FTD_ASSIGN_OR_RETURN(SqliteStatement q, conn->Prepare(sql));
  for (;;) {
    FTD_ASSIGN_OR_RETURN(bool row, q.Step());
    if (!row) break;
    ids.push_back(q.ColumnText(0));
  }
  return ids;
}

absl::StatusOr<int64_t> SqliteJobStore::CountJobs() {
  FTD_ASSIGN_OR_RETURN(ReadLease conn, AcquireReader());
  FTD_ASSIGN_OR_RETURN(SqliteStatement q, conn->Prepare("SELECT COUNT(*) FROM jobs"));
  FTD_ASSIGN_OR_RETURN(bool row, q.Step());
  return row ? q.ColumnInt(0) : 0;
}

absl::StatusOr<int64_t> SqliteJobStore::CountEvents() {
  FTD_ASSIGN_OR_RETURN(ReadLease conn, AcquireReader());
  FTD_ASSIGN_OR_RETURN(SqliteStatement q, conn->Prepare("SELECT COUNT(*) FROM events"));
  FTD_ASSIGN_OR_RETURN(bool row, q.Step());
  return row ? q.ColumnInt(0) : 0;
}

}  // namespace ftd::server
