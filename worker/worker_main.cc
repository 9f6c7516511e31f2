// ftd-worker: the node agent. Registers with the coordinator, runs the ranks it is assigned
// (one ftd-train process per GPU, or per CPU slot with Gloo) and reports them (worker.proto).
//
//   ftd-worker --coordinator HOST:PORT --token-file FILE --name NAME [--slots N]
//              [--address ADDR] [--engine PATH] [--work-dir DIR] [--stop-grace S]
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstdio>
#include <cstdlib>

#include "CLI/CLI.hpp"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/version.h"
#include "ftd/v1/worker.pb.h"
#include "spdlog/spdlog.h"
#include "worker/worker_agent.h"

namespace {

std::atomic<bool> g_stop{false};

void OnSignal(int) { g_stop.store(true); }

std::string SelfDir() {
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  std::string p(buf, static_cast<size_t>(n));
  return p.substr(0, p.rfind('/'));
}

}  // namespace

int main(int argc, char** argv) {
  ftd::worker::WorkerOptions options;
  std::string token_file;
  double stop_grace = 10;
  bool exit_with_parent = false;
  CLI::App app{"ftd-worker: runs training ranks for the ftd coordinator"};
  app.set_version_flag("--version", std::string("ftd-worker ") + ftd::kVersion + " (api " +
                                        ftd::v1::RegisterRequest::descriptor()->file()->package() + ")");
  app.add_option("--coordinator", options.coordinator, "HOST:PORT of the coordinator's gRPC")->required();
  app.add_option("--token-file", token_file, "file holding the worker token")->required();
  app.add_option("--name", options.name, "this node's name (unique in the cluster)")->required();
  app.add_option("--slots", options.slots, "CPU slots when the node has no GPU (default 1)");
  app.add_option("--address", options.address,
                 "address other nodes reach this one at (default: the one routing to the coordinator)");
  app.add_option("--engine", options.engine,
                 "ftd-train binary (default: $FTD_TRAIN_BIN, else ftd-train next to ftd-worker)");
  app.add_option("--work-dir", options.work_dir, "rank logs and specs (default /tmp/ftd-worker-NAME)");
  app.add_option("--stop-grace", stop_grace, "seconds from SIGTERM to SIGKILL on shutdown")
      ->capture_default_str();
  app.add_flag("--exit-with-parent", exit_with_parent, "stop when the parent process dies (ftd --local-worker)");
  CLI11_PARSE(app, argc, argv);

  if (exit_with_parent) {
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() == 1) return 0;
  }
  absl::StatusOr<std::string> token_text = ftd::ReadFileToString(token_file);
  if (!token_text.ok()) {
    spdlog::critical("ftd-worker: --token-file: {}", token_text.status().ToString());
    return 2;
  }
  for (absl::string_view line : absl::StrSplit(*token_text, '\n')) {
    line = line.substr(0, line.find('#'));
    std::vector<std::string> f = absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (!f.empty()) {
      options.token = f[0];
      break;
    }
  }
  if (options.token.empty()) {
    spdlog::critical("ftd-worker: --token-file {} holds no token", token_file);
    return 2;
  }
  if (options.engine.empty()) {
    const char* env = std::getenv("FTD_TRAIN_BIN");
    options.engine = env != nullptr && *env != '\0' ? env : SelfDir() + "/ftd-train";
  }
  options.stop_grace_default = absl::Seconds(stop_grace);

  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  absl::StatusOr<std::unique_ptr<ftd::worker::WorkerAgent>> agent =
      ftd::worker::WorkerAgent::Create(options);
  if (!agent.ok()) {
    spdlog::critical("ftd-worker: {}", agent.status().ToString());
    return 2;
  }
  (*agent)->Run(g_stop);
  return 0;
}
