// The REST/JSON face of JobService over civetweb: routes from the proto's google.api.http
// annotations, bodies and responses in the protobuf JSON mapping, WatchJob as server-sent
// events, plus /healthz (liveness) and /readyz (store replayed). Other components add their
// own endpoints (e.g. /metrics) with AddHandler.
#pragma once

#include <civetweb.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/http_rule_router.h"
#include "server/job_api.h"
#include "server/tls_terminator.h"

namespace ftd::server {

struct RestGatewayOptions {
  std::string listen = "127.0.0.1:0";  // HOST:PORT; port 0 picks a free one
  // PEM files; both set: HTTPS only.
  std::string tls_cert_file;
  std::string tls_key_file;
  int num_threads = 64;  // each open SSE stream holds one
  int64_t max_request_bytes = 1 << 20;
  absl::Duration sse_keepalive = absl::Seconds(15);
  // Called after every handled request (metrics): the RPC a /v1 route maps to (CreateJob, ...,
  // "unmatched") or the handler's URI (/healthz, /metrics), the HTTP status and the latency.
  std::function<void(const std::string& route, int http_status, absl::Duration latency)>
      request_observer;
};

class RestGateway {
 public:
  // Handles one request on `conn`; returns the HTTP status sent (civetweb's convention).
  using Handler = std::function<int(mg_connection* conn)>;

  static absl::StatusOr<std::unique_ptr<RestGateway>> Start(const RestGatewayOptions& options,
                                                            JobApi* api);
  ~RestGateway();  // Stop()s
  RestGateway(const RestGateway&) = delete;
  RestGateway& operator=(const RestGateway&) = delete;

  // Serves `uri` (and everything below it) with `handler`; may be called while running.
  void AddHandler(const std::string& uri, Handler handler);

  // Tried before the annotated routes for every request under /v1 (routes that are not in
  // JobService, e.g. GET /v1/jobs/{id}/logs); a handler returns 0 to pass the request on.
  void AddApiPrefilter(Handler handler);

  // Ends open SSE streams and stops the listener. Idempotent.
  void Stop();

  int port() const { return port_; }
  bool tls() const { return tls_; }

  // JSON helpers, shared with handlers added from outside.
  static int SendJson(mg_connection* conn, int http_status, const std::string& json,
                      const std::string& extra_headers = "");
  static int SendError(mg_connection* conn, const absl::Status& status);

 private:
  using UnaryHandler = std::function<absl::StatusOr<std::unique_ptr<google::protobuf::Message>>(
      const Principal&, const google::protobuf::Message&)>;

  RestGateway(JobApi* api, HttpRuleRouter router, RestGatewayOptions options)
      : api_(api), router_(std::move(router)), options_(std::move(options)) {}

  static int Trampoline(mg_connection* conn, void* handler);
  int HandleApi(mg_connection* conn);
  int ServeWatch(mg_connection* conn, const Principal& who,
                 const ftd::v1::WatchJobRequest& request);
  absl::StatusOr<std::string> ReadBody(mg_connection* conn);
  absl::Status BindHandlers();

  JobApi* const api_;
  const HttpRuleRouter router_;
  const RestGatewayOptions options_;
  std::map<std::string, UnaryHandler> unary_handlers_;  // by method name; set before start

  mg_context* ctx_ = nullptr;
  std::unique_ptr<TlsTerminator> tls_terminator_;
  int port_ = 0;        // what clients connect to
  int civet_port_ = 0;  // civetweb's own listener (differs from port_ behind TLS)
  bool tls_ = false;
  std::atomic<bool> stopping_{false};

  absl::Mutex mu_;
  // Stable addresses for civetweb's cbdata.
  std::vector<std::unique_ptr<Handler>> handlers_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<JobWatch*> open_watches_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<Handler>> api_prefilters_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ftd::server
