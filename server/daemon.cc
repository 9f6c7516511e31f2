#include "server/daemon.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "server/openapi_endpoint.h"
#include "server/worker_service.h"
#include "server/metrics/grpc_metrics_interceptor.h"
#include "server/metrics/metrics_endpoint.h"
#include "server/metrics/worker_capacity_collector.h"
#include "spdlog/spdlog.h"

namespace ftd::server {
namespace {

absl::Status MakeDirectory(const std::string& path, const char* flag) {
  if (::mkdir(path.c_str(), 0750) == 0 || errno == EEXIST) {
    struct stat st;
    if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(flag, " ", path, ": cannot create directory: ", std::strerror(errno)));
}

constexpr char kJobServiceName[] = "ftd.v1.JobService";

}  // namespace

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(const DaemonOptions& options) {
  std::unique_ptr<Daemon> d(new Daemon());
  d->options_ = options;
  if (options.data_dir.empty()) return absl::InvalidArgumentError("--data-dir is required");
  if (options.tokens_file.empty()) return absl::InvalidArgumentError("--tokens-file is required");
  FTD_RETURN_IF_ERROR(MakeDirectory(options.data_dir, "--data-dir"));

  // Two daemons on one store would interleave job ids and watchers; refuse the second.
  const std::string lock_path = options.data_dir + "/ftd.lock";
  d->lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640);
  if (d->lock_fd_ < 0 || ::flock(d->lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("--data-dir ", options.data_dir, " is in use by another ftd (", lock_path, ")"));
  }

  FTD_ASSIGN_OR_RETURN(d->tokens_, TokenRegistry::LoadFromFile(options.tokens_file));

  ValidatorConfig vc;
  vc.model_roots = options.model_roots;
  vc.shared_model_roots = options.shared_model_roots;
  vc.data_roots = options.data_roots;
  vc.webhook_allow = options.webhook_allow;
  vc.output_roots = options.output_roots;
  if (vc.output_roots.empty()) {
    const std::string outputs = options.data_dir + "/outputs";
    FTD_RETURN_IF_ERROR(MakeDirectory(outputs, "--data-dir"));
    vc.output_roots.push_back(outputs);
  }
  vc.limits = options.limits;
  FTD_ASSIGN_OR_RETURN(SpecValidator validator, SpecValidator::Create(vc));
  d->validator_ = std::make_unique<SpecValidator>(std::move(validator));

  FTD_ASSIGN_OR_RETURN(d->store_, SqliteJobStore::Open(options.data_dir + "/jobs.db"));
  d->metrics_ = std::make_unique<ServiceMetrics>();
  d->store_->SetCommitObserver([m = d->metrics_.get()](Durability durability, absl::Duration t) {
    m->ObserveStoreCommit(durability == Durability::kSynchronous ? "full" : "normal", t);
  });
  d->manager_ = std::make_unique<JobManager>(d->store_.get(), &d->hub_);
  // Before the store is replayed, so recovery's transitions are counted.
  FTD_ASSIGN_OR_RETURN(d->job_metrics_, JobMetricsExporter::Create(d->store_.get(), &d->hub_,
                                                                   &d->metrics_->registry(),
                                                                   options.job_metrics));
  d->api_ = std::make_unique<JobApi>(d->manager_.get(), d->validator_.get(), d->tokens_.get());
  FTD_ASSIGN_OR_RETURN(d->webhooks_, WebhookNotifier::Create(options.webhooks, d->manager_.get(), d->validator_.get()));
  d->api_->SetWebhookTenantCheck([w = d->webhooks_.get()](const std::string& tenant) { return w->CheckTenant(tenant); });
  d->webhooks_->Start();

  // gRPC: JobService, health (NOT_SERVING until replayed) and reflection.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  std::shared_ptr<grpc::ServerCredentials> creds;
  const bool tls = !options.tls_cert_file.empty() || !options.tls_key_file.empty();
  if (tls) {
    if (options.tls_cert_file.empty() || options.tls_key_file.empty()) {
      return absl::InvalidArgumentError("--tls-cert and --tls-key must be given together");
    }
    grpc::SslServerCredentialsOptions ssl;
    grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
    FTD_ASSIGN_OR_RETURN(pair.private_key, ReadFileToString(options.tls_key_file));
    FTD_ASSIGN_OR_RETURN(pair.cert_chain, ReadFileToString(options.tls_cert_file));
    ssl.pem_key_cert_pairs.push_back(std::move(pair));
    creds = grpc::SslServerCredentials(ssl);
  } else {
    creds = grpc::InsecureServerCredentials();
  }
  d->grpc_service_ = std::make_unique<GrpcJobService>(d->api_.get());
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.grpc_listen, creds, &d->grpc_port_);
  builder.RegisterService(d->grpc_service_.get());
  FTD_ASSIGN_OR_RETURN(d->scheduler_, Scheduler::Create(d->manager_.get(), options.scheduler));
  // Read at scrape time; /metrics (rest_) stops before the scheduler goes.
  d->metrics_->AddCollectable(std::make_shared<WorkerCapacityCollector>(&d->scheduler_->workers()));
  d->worker_service_ = std::make_unique<WorkerServiceImpl>(d->scheduler_.get(), d->tokens_.get(), d->api_.get());
  d->log_service_ = std::make_unique<JobLogServiceImpl>(d->scheduler_.get(), d->api_.get());
  builder.RegisterService(d->worker_service_.get());
  builder.RegisterService(d->log_service_.get());
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_request_bytes));
  // Clients (ftctl, ftd-client, workers) ping a quiet connection every 30 s (ftd-client: at
  // least every 10 s) to notice one that died silently (a vanished host, a NAT that dropped the
  // flow); gRPC's default answers pings more often than every 5 min on a call with no data (an
  // idle watch) with GOAWAY. Half the clients' floor, so that timer jitter never counts.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5'000);
  {
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> creators;
    creators.push_back(MakeGrpcMetricsInterceptorFactory(d->metrics_.get()));
    builder.experimental().SetInterceptorCreators(std::move(creators));
  }
  d->grpc_server_ = builder.BuildAndStart();
  if (d->grpc_server_ == nullptr || d->grpc_port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot serve gRPC on --grpc-listen ",
                                               options.grpc_listen));
  }
  grpc::HealthCheckServiceInterface* health = d->grpc_server_->GetHealthCheckService();
  health->SetServingStatus(false);
  health->SetServingStatus(kJobServiceName, false);

  RestGatewayOptions rest;
  rest.listen = options.http_listen;
  rest.tls_cert_file = options.tls_cert_file;
  rest.tls_key_file = options.tls_key_file;
  rest.num_threads = options.http_threads;
  rest.max_request_bytes = options.max_request_bytes;
  rest.request_observer = [m = d->metrics_.get()](const std::string& route, int status,
                                                  absl::Duration latency) {
    m->ObserveHttp(route, status, latency);
  };
  FTD_ASSIGN_OR_RETURN(d->rest_, RestGateway::Start(rest, d->api_.get()));
  d->rest_->AddApiPrefilter([s = d->scheduler_.get(), api = d->api_.get()](mg_connection* conn) {
    return ServeJobLogsHttp(conn, s, api);
  });
  d->rest_->AddHandler("/metrics", [m = d->metrics_.get(), e = d->job_metrics_.get()](
                                       mg_connection* conn) { return ServeMetrics(conn, m, e); });
  ServeOpenApiDocument(d->rest_.get());

  spdlog::info("ftd: gRPC{} on port {}, HTTP{} on port {}; replaying {}", tls ? "+TLS" : "",
               d->grpc_port_, d->rest_->tls() ? "S" : "", d->rest_->port(),
               options.data_dir + "/jobs.db");
  // Running attempts await their workers (adoption, see scheduler.h); workers are served
  // from SetReady on (WorkerServiceImpl), so their first heartbeat finds these attempts.
  FTD_ASSIGN_OR_RETURN(RecoveryReport report, d->scheduler_->Recover());
  spdlog::info("ftd: store replayed: {} jobs, {} events; {} requeued, {} cancelled", report.jobs,
               report.events, report.requeued, report.cancelled);
  d->scheduler_->Start();
  if (options.local_worker) {
    LocalWorkerOptions lw;
    lw.coordinator = absl::StrCat("127.0.0.1:", d->grpc_port_);
    lw.tokens_file = options.tokens_file;
    lw.data_dir = options.data_dir;
    lw.slots = options.local_worker_slots;
    FTD_ASSIGN_OR_RETURN(d->local_worker_, LocalWorker::Start(lw));
  }
  d->api_->SetReady(true);
  health->SetServingStatus(true);
  health->SetServingStatus(kJobServiceName, true);
  return d;
}

Daemon::~Daemon() {
  Shutdown();
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

void Daemon::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  if (api_ != nullptr) api_->SetReady(false);
  if (local_worker_ != nullptr) local_worker_->Stop(absl::Seconds(15));  // stops its ranks
  if (scheduler_ != nullptr) scheduler_->Stop();
  if (webhooks_ != nullptr) webhooks_->Stop();
  if (grpc_server_ != nullptr) {
    grpc_server_->GetHealthCheckService()->SetServingStatus(false);
    grpc_server_->Shutdown(std::chrono::system_clock::now() + absl::ToChronoSeconds(grace));
  }
  if (rest_ != nullptr) rest_->Stop();
}

void Daemon::Wait() {
  if (grpc_server_ != nullptr) grpc_server_->Wait();
}

absl::Status Daemon::ReloadTokens() {
  absl::Status st = tokens_->Reload();
  if (st.ok()) {
    spdlog::info("ftd: reloaded {} tokens from {}", tokens_->size(), tokens_->path());
  } else {
    spdlog::error("ftd: tokens not reloaded, the previous ones stay active: {}", st.ToString());
  }
  return st;
}

}  // namespace ftd::server
