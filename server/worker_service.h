// The coordinator's side of worker.proto: WorkerService (register, heartbeat) authenticated
// with worker tokens, and JobLogService (rank output of a job) for users, plus the REST form
// of the latter (GET /v1/jobs/{id}/logs). Both are synchronous gRPC services: calls are short,
// except a followed log stream, which holds one server thread while it lasts.
#pragma once

#include <string>

#include "ftd/v1/worker.grpc.pb.h"
#include "server/job_api.h"
#include "server/scheduler.h"
#include "server/token_registry.h"

struct mg_connection;

namespace ftd::server {

class WorkerServiceImpl final : public ftd::v1::WorkerService::Service {
 public:
  // Workers are served once `api` is ready: the store's running attempts have been recovered,
  // so a worker's first heartbeat finds the attempts it reports (else its reports would be
  // fenced off as stale and lost).
  WorkerServiceImpl(Scheduler* scheduler, const TokenRegistry* tokens, const JobApi* api)
      : scheduler_(scheduler), tokens_(tokens), api_(api) {}

  grpc::Status Register(grpc::ServerContext* ctx, const ftd::v1::RegisterRequest* request,
                        ftd::v1::RegisterResponse* response) override;
  grpc::Status Heartbeat(grpc::ServerContext* ctx, const ftd::v1::HeartbeatRequest* request,
                         ftd::v1::HeartbeatResponse* response) override;

 private:
  // Workers present an admin-role token (the chart's worker token).
  absl::Status AuthenticateWorker(grpc::ServerContext* ctx) const;

  Scheduler* const scheduler_;
  const TokenRegistry* const tokens_;
  const JobApi* const api_;
};

class JobLogServiceImpl final : public ftd::v1::JobLogService::Service {
 public:
  JobLogServiceImpl(Scheduler* scheduler, JobApi* api) : scheduler_(scheduler), api_(api) {}

  grpc::Status StreamLogs(grpc::ServerContext* ctx, const ftd::v1::StreamLogsRequest* request,
                          grpc::ServerWriter<ftd::v1::LogLine>* writer) override;

 private:
  Scheduler* const scheduler_;
  JobApi* const api_;
};

// Serves GET /v1/jobs/{id}/logs[?follow=true&tail=N] as text/plain, one `[rank R] line` per
// line; returns 0 when `conn` is not such a request (for chaining), else the HTTP status sent.
int ServeJobLogsHttp(mg_connection* conn, Scheduler* scheduler, JobApi* api);

}  // namespace ftd::server
