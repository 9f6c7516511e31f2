#include "server/token_registry.h"

#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "server/sha256.h"

namespace ftd::server {
namespace {

bool IsTenantName(absl::string_view s) {
  if (s.empty() || s.size() > 63) return false;
  for (char c : s) {
    if (!(absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.')) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<absl::flat_hash_map<std::string, Principal>> TokenRegistry::Parse(
    absl::string_view contents, const std::string& path) {
  absl::flat_hash_map<std::string, Principal> result;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(contents, '\n')) {
    ++line_no;
    if (size_t hash = line.find('#'); hash != absl::string_view::npos) line = line.substr(0, hash);
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (fields.empty()) continue;
    auto error = [&](absl::string_view what) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", line_no, ": ", what));
    };
    if (fields.size() != 3) return error("expected `TOKEN TENANT ROLE`");
    if (fields[0].size() < 16) return error("token shorter than 16 characters");
    if (!IsTenantName(fields[1])) {
      return error("tenant must be 1-63 characters of [A-Za-z0-9._-]");
    }
    Principal principal;
    principal.tenant = std::string(fields[1]);
    if (fields[2] == "user") {
      principal.role = Role::kUser;
    } else if (fields[2] == "admin") {
      principal.role = Role::kAdmin;
    } else {
      return error(absl::StrCat("role must be `user` or `admin`, not `", fields[2], "`"));
    }
    if (!result.emplace(Sha256Hex(fields[0]), principal).second) {
      return error("token appears twice");
    }
  }
  return result;
}

absl::StatusOr<std::unique_ptr<TokenRegistry>> TokenRegistry::LoadFromFile(const std::string& path) {
  std::unique_ptr<TokenRegistry> registry(new TokenRegistry(path));
  FTD_RETURN_IF_ERROR(registry->Reload());
  return registry;
}

absl::Status TokenRegistry::Reload() {
  FTD_ASSIGN_OR_RETURN(std::string contents, ReadFileToString(path_));
  FTD_ASSIGN_OR_RETURN(auto parsed, Parse(contents, path_));
  absl::MutexLock lock(&mu_);
  by_digest_ = std::move(parsed);
  return absl::OkStatus();
}

absl::StatusOr<Principal> TokenRegistry::Authenticate(absl::string_view authorization) const {
  if (authorization.empty()) {
    return absl::UnauthenticatedError("missing `authorization: Bearer <token>`");
  }
  constexpr absl::string_view kBearer = "bearer ";
  if (authorization.size() <= kBearer.size() ||
      !absl::EqualsIgnoreCase(authorization.substr(0, kBearer.size()), kBearer)) {
    return absl::UnauthenticatedError("authorization must be `Bearer <token>`");
  }
  absl::string_view token = absl::StripAsciiWhitespace(authorization.substr(kBearer.size()));
  const std::string digest = Sha256Hex(token);
  absl::MutexLock lock(&mu_);
  auto it = by_digest_.find(digest);
  if (it == by_digest_.end()) return absl::UnauthenticatedError("unknown bearer token");
  return it->second;
}

size_t TokenRegistry::size() const {
  absl::MutexLock lock(&mu_);
  return by_digest_.size();
}

}  // namespace ftd::server
