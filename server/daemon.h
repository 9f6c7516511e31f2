// Daemon: the assembled coordinator: store, job manager, gRPC (JobService, health,
// reflection) and REST, started in the order that keeps health NOT_SERVING until the store
// has been replayed. server_main.cc parses flags into DaemonOptions and calls Start.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/server.h>

#include "absl/status/statusor.h"
#include "server/event_hub.h"
#include "server/grpc_job_service.h"
#include "server/job_api.h"
#include "server/job_manager.h"
#include "server/metrics/job_metrics_exporter.h"
#include "server/metrics/service_metrics.h"
#include "server/rest_gateway.h"
#include "server/scheduler.h"
#include "server/scheduler_local_worker.h"
#include "server/spec_validator.h"
#include "server/sqlite_job_store.h"
#include "server/token_registry.h"
#include "server/webhook_notifier.h"

namespace ftd::server {

struct DaemonOptions {
  std::string data_dir;                      // holds jobs.db; created when absent
  std::string grpc_listen = "127.0.0.1:7070";  // HOST:PORT, port 0: any free port
  std::string http_listen = "127.0.0.1:7080";
  std::string tokens_file;
  std::string tls_cert_file;  // PEM; with tls_key_file: gRPC and HTTP both use TLS
  std::string tls_key_file;
  // Tenant T's paths lie in <root>/T/ of these; shared model roots are readable by every tenant.
  std::vector<std::string> model_roots;
  std::vector<std::string> shared_model_roots;
  std::vector<std::string> data_roots;
  std::vector<std::string> output_roots;  // empty: <data_dir>/outputs
  // spec.webhook_url: allowed destinations (HOST or HOST:PORT; empty: webhooks refused) and
  // delivery settings, the tenants' secrets among them (webhook_notifier.h).
  std::vector<std::string> webhook_allow;
  WebhookOptions webhooks;
  ValidationLimits limits;
  int64_t max_request_bytes = 1 << 20;
  int http_threads = 64;
  bool local_worker = false;
  int local_worker_slots = 0;  // 0: the worker decides
  SchedulerOptions scheduler;  // workers, heartbeats, restarts (scheduler.h)
  // /metrics: how long an ended job's series stay, and how many jobs have series at most.
  JobMetricsExporterOptions job_metrics;
};

class Daemon {
 public:
  // Returns once both listeners are up and the store has been replayed.
  static absl::StatusOr<std::unique_ptr<Daemon>> Start(const DaemonOptions& options);
  ~Daemon();  // Shutdown()s
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Graceful stop: health NOT_SERVING, SSE streams closed, gRPC calls given `grace`.
  void Shutdown(absl::Duration grace = absl::Seconds(2));
  // Blocks until the gRPC server has shut down.
  void Wait();
  // SIGHUP: re-read the tokens file (the previous tokens stay on error).
  absl::Status ReloadTokens();

  int grpc_port() const { return grpc_port_; }
  int http_port() const { return rest_->port(); }

  // For the scheduler and metrics issues.
  JobManager* jobs() { return manager_.get(); }
  JobStore* store() { return store_.get(); }
  EventHub* events() { return &hub_; }
  RestGateway* http() { return rest_.get(); }
  // Workers and their slots (WorkerRegistry::Snapshot for gauges).
  Scheduler* scheduler() { return scheduler_.get(); }
  ServiceMetrics* metrics() { return metrics_.get(); }
  JobMetricsExporter* job_metrics() { return job_metrics_.get(); }

 private:
  Daemon() = default;

  DaemonOptions options_;
  int lock_fd_ = -1;  // flock on <data_dir>/ftd.lock: one daemon per data dir
  std::unique_ptr<ServiceMetrics> metrics_;  // outlives the store, gRPC and REST that feed it
  std::unique_ptr<TokenRegistry> tokens_;
  std::unique_ptr<SpecValidator> validator_;
  std::unique_ptr<SqliteJobStore> store_;
  EventHub hub_;
  std::unique_ptr<JobManager> manager_;
  std::unique_ptr<JobMetricsExporter> job_metrics_;  // before hub_ and store_ go
  std::unique_ptr<WebhookNotifier> webhooks_;        // likewise
  std::unique_ptr<JobApi> api_;
  std::unique_ptr<GrpcJobService> grpc_service_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<grpc::Service> worker_service_;
  std::unique_ptr<grpc::Service> log_service_;
  std::unique_ptr<LocalWorker> local_worker_;
  std::unique_ptr<grpc::Server> grpc_server_;
  int grpc_port_ = 0;
  std::unique_ptr<RestGateway> rest_;
  bool shut_down_ = false;
};

}  // namespace ftd::server
