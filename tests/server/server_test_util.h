// Shared fixtures for the coordinator tests: a scratch environment (data dir, model and data
// roots, tokens file), an in-process or spawned `ftd`, a small blocking HTTP/1.1 + SSE client
// over real sockets, and gRPC helpers.
#pragma once

#include <sys/types.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "ftd/v1/jobs.grpc.pb.h"
#include "server/daemon.h"

namespace ftd::testing {

inline constexpr char kTokenA[] = "token-tenant-a-0123456789";
inline constexpr char kTokenB[] = "token-tenant-b-0123456789";
inline constexpr char kTokenAdmin[] = "token-admin-000-0123456789";
inline constexpr char kTenantA[] = "tenant-a";
inline constexpr char kTenantB[] = "tenant-b";
inline constexpr char kTenantAdmin[] = "ops";

// A scratch tree: root/{data, models/tiny-moe (the shared model root), datasets/<tenant>/
// train.jsonl for each of the three tenants, tokens}. Removed on exit.
class TestEnv {
 public:
  TestEnv();
  ~TestEnv();
  const std::string& root() const { return root_; }
  std::string data_dir() const { return root_ + "/data"; }
  std::string model_root() const { return root_ + "/models"; }
  std::string model_dir() const { return root_ + "/models/tiny-moe"; }
  std::string data_root() const { return root_ + "/datasets"; }
  std::string output_root() const { return root_ + "/outputs"; }  // for validators built by hand
  std::string train_file(const std::string& tenant = kTenantA) const {
    return root_ + "/datasets/" + tenant + "/train.jsonl";
  }
  std::string tokens_file() const { return root_ + "/tokens"; }
  server::DaemonOptions Options() const;  // loopback, port 0

 private:
  std::string root_;
};

// A spec that validates against TestEnv's roots for any of its tenants (its dataset path is
// relative: the submitting tenant's train.jsonl).
ftd::v1::JobSpec ValidSpec(const TestEnv& env);

// --- gRPC
std::unique_ptr<ftd::v1::JobService::Stub> MakeStub(int port);
void Authorize(grpc::ClientContext* ctx, const std::string& token);
// grpc.health.v1.Health/Check for `service`: 1 SERVING, 2 NOT_SERVING, or -code on error.
int HealthCheck(int port, const std::string& service);
// Service names listed by grpc.reflection.v1alpha.ServerReflection.
absl::StatusOr<std::vector<std::string>> ReflectionServices(int port);
// A unary call with arbitrary request bytes (for malformed-message tests).
grpc::Status RawUnaryCall(grpc::ChannelInterface* channel, const std::string& method,
                          const std::string& token, const std::string& request_bytes);

// --- HTTP
struct HttpResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
};
// One request on a fresh connection (Connection: close).
absl::StatusOr<HttpResponse> HttpCall(int port, const std::string& method, const std::string& target,
                                      const std::string& body = "",
                                      const std::string& token = "",
                                      const std::vector<std::string>& extra_headers = {});
// Sends `raw` bytes verbatim and returns what comes back (status 0 when unparsable).
absl::StatusOr<HttpResponse> HttpRaw(int port, const std::string& raw);

struct SseEvent {
  std::string id, event, data;
};
// A server-sent-event stream: GET on connect, then events read as they arrive.
class SseStream {
 public:
  static absl::StatusOr<std::unique_ptr<SseStream>> Open(int port, const std::string& target,
                                                         const std::string& token,
                                                         const std::vector<std::string>& headers = {});
  ~SseStream();
  int status() const { return status_; }
  // Up to `n` events, waiting at most `timeout` overall; fewer when the stream ends.
  std::vector<SseEvent> Read(int n, absl::Duration timeout);
  bool ended() const { return ended_; }

 private:
  int fd_ = -1;
  int status_ = 0;
  bool ended_ = false;
  std::string buffer_;
};

// JSON field access for tests (nlohmann under the hood).
std::string JsonGet(const std::string& json, const std::string& dotted_path);

// --- the real binary
struct SpawnedDaemon {
  pid_t pid = -1;
  int grpc_port = 0;
  int http_port = 0;
};
// Starts build/bin/ftd with `args`; waits for its "ftd ready" line.
absl::StatusOr<SpawnedDaemon> SpawnDaemon(const std::vector<std::string>& args);
// SIGKILL and reap.
void KillHard(const SpawnedDaemon& d);

// A loopback TCP port with nothing bound to it now, below Linux's ephemeral range (32768+):
// a port from that range can, while its daemon is down for a restart, become the source port
// of an outgoing connection (even one reconnecting to it). For daemons restarted on a fixed
// port, and for "nothing listens here" checks.
int UnusedLoopbackPort();

}  // namespace ftd::testing
