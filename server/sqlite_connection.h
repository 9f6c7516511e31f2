// A thin RAII layer over one sqlite3 connection: prepared-statement cache, typed binds and
// columns, transactions, and errors as absl::Status naming the SQL and the database file.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace ftd::server {

class SqliteConnection;

// A cached prepared statement in use; resets and clears its bindings when it goes away, so
// the next user of the same SQL starts clean. Not copyable.
class SqliteStatement {
 public:
  SqliteStatement(SqliteConnection* conn, sqlite3_stmt* stmt) : conn_(conn), stmt_(stmt) {}
  SqliteStatement(SqliteStatement&& other) noexcept
      : conn_(other.conn_), stmt_(std::exchange(other.stmt_, nullptr)) {}
  SqliteStatement(const SqliteStatement&) = delete;
  SqliteStatement& operator=(const SqliteStatement&) = delete;
  ~SqliteStatement();

  // Parameters are 1-based, as in sqlite3_bind_*.
  void BindInt(int index, int64_t value);
  void BindText(int index, absl::string_view value);
  void BindBlob(int index, absl::string_view value);
  void BindNull(int index);

  // True when a row is available, false when done.
  absl::StatusOr<bool> Step();
  // Steps to completion; for statements that return no rows.
  absl::Status Run();

  int64_t ColumnInt(int index) const;
  std::string ColumnText(int index) const;
  std::string ColumnBlob(int index) const;
  bool ColumnIsNull(int index) const;

 private:
  SqliteConnection* conn_;
  sqlite3_stmt* stmt_;
};

class SqliteConnection {
 public:
  // Opens (creating when absent) `path` in WAL mode with a busy timeout.
  static absl::StatusOr<std::unique_ptr<SqliteConnection>> Open(const std::string& path);
  ~SqliteConnection();
  SqliteConnection(const SqliteConnection&) = delete;
  SqliteConnection& operator=(const SqliteConnection&) = delete;

  // Runs one or more statements that return no rows.
  absl::Status Exec(absl::string_view sql);
  // A statement from the cache (prepared on first use).
  absl::StatusOr<SqliteStatement> Prepare(const std::string& sql);

  // INTERNAL naming the database, `what` and sqlite's message.
  absl::Status Error(absl::string_view what) const;
  const std::string& path() const { return path_; }

 private:
  SqliteConnection(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}

  struct StatementDeleter {
    void operator()(sqlite3_stmt* s) const { sqlite3_finalize(s); }
  };
  sqlite3* db_;
  std::string path_;
  std::map<std::string, std::unique_ptr<sqlite3_stmt, StatementDeleter>, std::less<>> cache_;
};

// BEGIN IMMEDIATE ... COMMIT, rolled back unless Commit() succeeded.
class SqliteTransaction {
 public:
  static absl::StatusOr<SqliteTransaction> Begin(SqliteConnection* conn);
  SqliteTransaction(SqliteTransaction&& other) noexcept
      : conn_(std::exchange(other.conn_, nullptr)) {}
  SqliteTransaction(const SqliteTransaction&) = delete;
  SqliteTransaction& operator=(const SqliteTransaction&) = delete;
  ~SqliteTransaction();
  absl::Status Commit();

 private:
  explicit SqliteTransaction(SqliteConnection* conn) : conn_(conn) {}
  SqliteConnection* conn_;
};

}  // namespace ftd::server
