#include "engine/dist/dist_env.h"

#include <cstdlib>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace ftd::engine {
namespace {

absl::Status ReadInt(const std::function<const char*(const char*)>& getenv, const char* name, int min_value,
                     int* out) {
  const char* v = getenv(name);
  if (v == nullptr || *v == '\0') return absl::OkStatus();
  int parsed = 0;
  if (!absl::SimpleAtoi(v, &parsed) || parsed < min_value) {
    return absl::InvalidArgumentError(
        absl::StrCat("environment variable ", name, "=\"", v, "\" is not an integer >= ", min_value));
  }
  *out = parsed;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DistEnv> ParseDistEnv(const std::function<const char*(const char*)>& getenv) {
  DistEnv env;
  if (auto s = ReadInt(getenv, "WORLD_SIZE", 1, &env.world_size); !s.ok()) return s;
  if (auto s = ReadInt(getenv, "RANK", 0, &env.rank); !s.ok()) return s;
  if (auto s = ReadInt(getenv, "LOCAL_RANK", 0, &env.local_rank); !s.ok()) return s;
  if (auto s = ReadInt(getenv, "MASTER_PORT", 1, &env.master_port); !s.ok()) return s;
  if (env.master_port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("environment variable MASTER_PORT=", env.master_port,
                                                   " is not a TCP port"));
  }
  int timeout_seconds = 0;
  if (auto s = ReadInt(getenv, "FTD_DIST_TIMEOUT_SECONDS", 1, &timeout_seconds); !s.ok()) return s;
  env.timeout = std::chrono::seconds(timeout_seconds);
  if (const char* a = getenv("MASTER_ADDR"); a != nullptr) env.master_addr = a;
  if (const char* f = getenv("FTD_DIST_STORE_FILE"); f != nullptr) env.store_file = f;
  if (auto s = ReadInt(getenv, "FTD_MASTER_LISTEN_FD", 0, &env.master_listen_fd); !s.ok()) return s;
  if (env.rank >= env.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("environment variable RANK=", env.rank, " is not below WORLD_SIZE=", env.world_size));
  }
  if (env.world_size > 1 && env.store_file.empty()) {
    if (env.master_addr.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("WORLD_SIZE=", env.world_size, " needs MASTER_ADDR (the host of rank 0's store)"));
    }
    if (env.master_port == 0) {
      return absl::InvalidArgumentError(absl::StrCat("WORLD_SIZE=", env.world_size, " needs MASTER_PORT"));
    }
  }
  if (env.master_listen_fd >= 0 && env.rank != 0) {
    return absl::InvalidArgumentError(absl::StrCat("environment variable FTD_MASTER_LISTEN_FD is for rank 0 (the "
                                                   "store's host) only; this is rank ",
                                                   env.rank));
  }
  return env;
}

absl::StatusOr<DistEnv> DistEnvFromEnvironment() {
  return ParseDistEnv([](const char* name) { return std::getenv(name); });
}

}  // namespace ftd::engine
