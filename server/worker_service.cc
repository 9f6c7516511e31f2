#include "server/worker_service.h"

#include <civetweb.h>

#include <cstdlib>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "server/grpc_job_service.h"
#include "server/job_state_machine.h"
#include "server/rest_gateway.h"

namespace ftd::server {
namespace {

std::string Metadata(grpc::ServerContext* ctx, const char* key) {
  const auto& md = ctx->client_metadata();
  auto it = md.find(key);
  return it == md.end() ? "" : std::string(it->second.data(), it->second.size());
}

// Whether the job has ended (a follower stops once it has read everything).
bool JobEnded(JobManager* manager, const std::string& id) {
  absl::StatusOr<ftd::v1::FineTuneJob> job = manager->store()->GetJob(id);
  return !job.ok() || IsTerminalState(job->status().state());
}

}  // namespace

absl::Status WorkerServiceImpl::AuthenticateWorker(grpc::ServerContext* ctx) const {
  if (!api_->ready()) {
    return absl::UnavailableError("the coordinator is recovering its jobs; register again shortly");
  }
  absl::StatusOr<Principal> who = tokens_->Authenticate(Metadata(ctx, "authorization"));
  if (!who.ok()) return who.status();
  if (!who->is_admin()) {
    return absl::PermissionDeniedError("workers must present a worker (admin-role) token");
  }
  return absl::OkStatus();
}

grpc::Status WorkerServiceImpl::Register(grpc::ServerContext* ctx,
                                         const ftd::v1::RegisterRequest* request,
                                         ftd::v1::RegisterResponse* response) {
  if (absl::Status st = AuthenticateWorker(ctx); !st.ok()) return ToGrpcStatus(st);
  absl::StatusOr<ftd::v1::RegisterResponse> r = scheduler_->Register(*request);
  if (!r.ok()) return ToGrpcStatus(r.status());
  *response = *std::move(r);
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::Heartbeat(grpc::ServerContext* ctx,
                                          const ftd::v1::HeartbeatRequest* request,
                                          ftd::v1::HeartbeatResponse* response) {
  if (absl::Status st = AuthenticateWorker(ctx); !st.ok()) return ToGrpcStatus(st);
  absl::StatusOr<ftd::v1::HeartbeatResponse> r = scheduler_->Heartbeat(*request);
  if (!r.ok()) return ToGrpcStatus(r.status());
  *response = *std::move(r);
  return grpc::Status::OK;
}

grpc::Status JobLogServiceImpl::StreamLogs(grpc::ServerContext* ctx,
                                           const ftd::v1::StreamLogsRequest* request,
                                           grpc::ServerWriter<ftd::v1::LogLine>* writer) {
  absl::StatusOr<Principal> who = api_->Authenticate(Metadata(ctx, "authorization"));
  if (!who.ok()) return ToGrpcStatus(who.status());
  ftd::v1::GetJobRequest get;
  get.set_id(request->id());
  if (auto job = api_->GetJob(*who, get); !job.ok()) return ToGrpcStatus(job.status());
  int64_t next = 0;
  int tail = request->tail();
  for (;;) {
    const bool ended = JobEnded(api_->manager(), request->id());
    std::vector<ftd::v1::LogLine> lines = scheduler_->logs()->Read(
        request->id(), &next, tail, request->follow() && !ended ? absl::Milliseconds(500) : absl::ZeroDuration());
    tail = 0;
    for (const ftd::v1::LogLine& line : lines) {
      if (!writer->Write(line)) return grpc::Status(grpc::StatusCode::CANCELLED, "client went away");
    }
    if (!request->follow() || ctx->IsCancelled()) break;
    if (ended && lines.empty()) break;
  }
  return grpc::Status::OK;
}

int ServeJobLogsHttp(mg_connection* conn, Scheduler* scheduler, JobApi* api) {
  const mg_request_info* info = mg_get_request_info(conn);
  const std::string path = info->local_uri != nullptr ? info->local_uri : "";
  std::vector<std::string> parts = absl::StrSplit(path, '/');  // "", v1, jobs, ID, logs
  if (parts.size() != 5 || parts[1] != "v1" || parts[2] != "jobs" || parts[4] != "logs" ||
      parts[3].empty()) {
    return 0;
  }
  if (std::string(info->request_method) != "GET") {
    return RestGateway::SendError(conn, absl::UnimplementedError("method is not allowed"));
  }
  const char* authorization = mg_get_header(conn, "Authorization");
  absl::StatusOr<Principal> who = api->Authenticate(authorization != nullptr ? authorization : "");
  if (!who.ok()) return RestGateway::SendError(conn, who.status());
  ftd::v1::GetJobRequest get;
  get.set_id(parts[3]);
  if (auto job = api->GetJob(*who, get); !job.ok()) return RestGateway::SendError(conn, job.status());
  bool follow = false;
  int tail = 0;
  if (info->query_string != nullptr) {
    for (absl::string_view kv : absl::StrSplit(info->query_string, '&', absl::SkipEmpty())) {
      std::pair<std::string, std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
      if (p.first == "follow") {
        follow = p.second == "true" || p.second == "1";
      } else if (p.first == "tail") {
        if (!absl::SimpleAtoi(p.second, &tail) || tail < 0) {
          return RestGateway::SendError(conn, absl::InvalidArgumentError("tail: not a count"));
        }
      } else {
        return RestGateway::SendError(
            conn, absl::InvalidArgumentError(absl::StrCat("unknown query parameter `", p.first, "`")));
      }
    }
  }
  mg_printf(conn,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nCache-Control: no-store\r\n"
            "Transfer-Encoding: chunked\r\n\r\n");
  int64_t next = 0;
  for (;;) {
    const bool ended = JobEnded(api->manager(), parts[3]);
    std::vector<ftd::v1::LogLine> lines = scheduler->logs()->Read(
        parts[3], &next, tail, follow && !ended ? absl::Milliseconds(500) : absl::ZeroDuration());
    tail = 0;
    std::string chunk;
    for (const ftd::v1::LogLine& line : lines) {
      absl::StrAppend(&chunk, "[rank ", line.rank(), "] ", line.text(), "\n");
    }
    if (!chunk.empty() && mg_send_chunk(conn, chunk.data(), static_cast<unsigned>(chunk.size())) < 0) {
      return 200;
    }
    if (!follow || (ended && lines.empty())) break;
  }
  mg_send_chunk(conn, "", 0);
  return 200;
}

}  // namespace ftd::server
