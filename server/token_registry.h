// Bearer-token authentication: a tokens file maps each token to a tenant and a role. The file
// is re-read on demand (SIGHUP); a file that fails to parse leaves the previous tokens active.
#pragma once

#include <memory>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace ftd::server {

enum class Role { kUser, kAdmin };

// Who is calling: the tenant owns the jobs it creates; admins see and cancel every tenant's.
struct Principal {
  std::string tenant;
  Role role = Role::kUser;
  bool is_admin() const { return role == Role::kAdmin; }
};

class TokenRegistry {
 public:
  // Loads `path`; INVALID_ARGUMENT naming `path:line` for a malformed line.
  static absl::StatusOr<std::unique_ptr<TokenRegistry>> LoadFromFile(const std::string& path);

  // Parses a tokens file's contents: one `TOKEN TENANT ROLE` per line, `#` starts a comment.
  // Keys of the result are SHA-256 digests of the tokens (see Authenticate).
  static absl::StatusOr<absl::flat_hash_map<std::string, Principal>> Parse(
      absl::string_view contents, const std::string& path);

  // Re-reads the file; on error the previous tokens stay active and the error is returned.
  absl::Status Reload();

  // `authorization` is the Authorization header/metadata value ("Bearer TOKEN").
  // UNAUTHENTICATED when missing, malformed or unknown (the message never echoes the token).
  absl::StatusOr<Principal> Authenticate(absl::string_view authorization) const;

  size_t size() const;
  const std::string& path() const { return path_; }

 private:
  explicit TokenRegistry(std::string path) : path_(std::move(path)) {}

  const std::string path_;
  mutable absl::Mutex mu_;
  // Keyed by SHA-256 of the token: lookups then take no time that depends on how much of a
  // guessed token matches a real one.
  absl::flat_hash_map<std::string, Principal> by_digest_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ftd::server
