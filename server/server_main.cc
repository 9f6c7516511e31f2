// ftd: the coordinator daemon. Flags may also come from a config file (--config, TOML/INI:
// `data-dir = "/var/lib/ftd"`). SIGHUP re-reads the tokens file; SIGINT/SIGTERM stop it.
#include <signal.h>

#include <cstdio>
#include <cstring>

#include "CLI/CLI.hpp"
#include "common/version.h"
#include "ftd/v1/jobs.pb.h"
#include "server/daemon.h"
#include "spdlog/spdlog.h"

int main(int argc, char** argv) {
  ftd::server::DaemonOptions options;
  CLI::App app{"ftd: the fine-tuning coordinator (job API over gRPC and REST)"};
  app.set_config("--config", "", "read flags from a TOML/INI file");
  app.set_version_flag("--version", std::string("ftd ") + ftd::kVersion + " (api " +
                                        ftd::v1::FineTuneJob::descriptor()->file()->package() + ")");
  app.add_option("--data-dir", options.data_dir, "directory of the job store (created if absent)")
      ->required();
  app.add_option("--grpc-listen", options.grpc_listen, "HOST:PORT for gRPC")->capture_default_str();
  app.add_option("--http-listen", options.http_listen, "HOST:PORT for REST/JSON")
      ->capture_default_str();
  app.add_option("--tokens-file", options.tokens_file, "`TOKEN TENANT ROLE` per line; SIGHUP re-reads")
      ->required();
  app.add_option("--tls-cert", options.tls_cert_file, "PEM certificate chain (with --tls-key)");
  app.add_option("--tls-key", options.tls_key_file, "PEM private key (with --tls-cert)");
  app.add_option("--model-root", options.model_roots,
                 "tenant T's base models must lie under ROOT/T/ of one of these");
  app.add_option("--shared-model-root", options.shared_model_roots,
                 "base models every tenant may read (never written: no output may lie there)");
  app.add_option("--data-root", options.data_roots, "tenant T's datasets must lie under ROOT/T/ of one of these");
  app.add_option("--output-root", options.output_roots,
                 "tenant T's outputs must lie under ROOT/T/ of one of these (default: DATA_DIR/outputs)");
  app.add_option("--webhook-allow", options.webhook_allow,
                 "HOST or HOST:PORT that spec.webhook_url may name (none: webhooks are refused)");
  app.add_option("--webhook-secrets", options.webhooks.secrets_file,
                 "`TENANT SECRET` per line: the key of each tenant's webhook signatures (HMAC-SHA256)");
  app.add_option("--webhook-max-attempts", options.webhooks.max_attempts, "attempts per webhook delivery")
      ->capture_default_str();
  double webhook_backoff = 1, webhook_timeout = 10;
  app.add_option("--webhook-backoff", webhook_backoff, "seconds before the first retry (doubling, at most 60)")
      ->capture_default_str();
  app.add_option("--webhook-timeout", webhook_timeout, "seconds per delivery attempt")->capture_default_str();
  app.add_option("--webhook-ca-file", options.webhooks.ca_file,
                 "PEM CAs trusted for https webhooks instead of the system's");
  app.add_option("--max-world-size", options.limits.max_world_size)->capture_default_str();
  app.add_option("--max-seq-len", options.limits.max_seq_len)->capture_default_str();
  app.add_option("--max-request-bytes", options.max_request_bytes)->capture_default_str();
  app.add_option("--http-threads", options.http_threads,
                 "civetweb worker threads (each open SSE watch holds one)")
      ->capture_default_str();
  app.add_flag("--local-worker", options.local_worker,
               "run an ftd-worker child on this machine (GPUs, else CPU slots)");
  app.add_option("--local-worker-slots", options.local_worker_slots,
                 "CPU slots of the local worker (0: the worker decides)");
  // Workers and scheduling (scheduler.h); durations in seconds.
  double heartbeat_interval = 1, heartbeat_timeout = 10, hang_timeout = 1800, stop_grace = 10,
         adopt_grace = 20;
  app.add_option("--heartbeat-interval", heartbeat_interval, "seconds between worker heartbeats")
      ->capture_default_str();
  app.add_option("--heartbeat-timeout", heartbeat_timeout,
                 "a worker silent this long is lost and its attempts fail")
      ->capture_default_str();
  app.add_option("--hang-timeout", hang_timeout, "an attempt with no step this long fails")
      ->capture_default_str();
  app.add_option("--stop-grace", stop_grace, "SIGTERM to SIGKILL when ranks are stopped")
      ->capture_default_str();
  app.add_option("--adopt-grace", adopt_grace,
                 "after a restart, how long running attempts wait for their workers")
      ->capture_default_str();
  app.add_option("--rendezvous-port-base", options.scheduler.rendezvous_port_base,
                 "MASTER_PORTs are taken from [base, base + 2000)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  options.scheduler.heartbeat_interval = absl::Seconds(heartbeat_interval);
  options.scheduler.heartbeat_timeout = absl::Seconds(heartbeat_timeout);
  options.scheduler.hang_timeout = absl::Seconds(hang_timeout);
  options.scheduler.stop_grace = absl::Seconds(stop_grace);
  options.scheduler.adopt_grace = absl::Seconds(adopt_grace);
  options.webhooks.initial_backoff = absl::Seconds(webhook_backoff);
  options.webhooks.timeout = absl::Seconds(webhook_timeout);

  // Signals are taken synchronously by this thread; every thread started from here on
  // inherits the blocked mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGHUP);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  absl::StatusOr<std::unique_ptr<ftd::server::Daemon>> daemon = ftd::server::Daemon::Start(options);
  if (!daemon.ok()) {
    spdlog::critical("ftd: {}", daemon.status().ToString());
    return 1;
  }
  // Machine-readable for supervisors and tests that pass port 0.
  std::printf("ftd ready grpc_port=%d http_port=%d\n", (*daemon)->grpc_port(),
              (*daemon)->http_port());
  std::fflush(stdout);
  for (;;) {
    int sig = 0;
    if (sigwait(&signals, &sig) != 0) continue;
    if (sig == SIGHUP) {
      (*daemon)->ReloadTokens().IgnoreError();  // logged; the old tokens stay
      continue;
    }
    spdlog::info("ftd: {} received, shutting down", strsignal(sig));
    break;
  }
  (*daemon)->Shutdown();
  (*daemon)->Wait();
  return 0;
}
