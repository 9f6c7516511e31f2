#include "server/scheduler_local_worker.h"

#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "spdlog/spdlog.h"

extern char** environ;

namespace ftd::server {
namespace {

absl::StatusOr<std::string> FirstAdminToken(const std::string& tokens_file) {
  FTD_ASSIGN_OR_RETURN(std::string text, ReadFileToString(tokens_file));
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    line = line.substr(0, line.find('#'));
    std::vector<absl::string_view> f = absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (f.size() == 3 && f[2] == "admin") return std::string(f[0]);
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "--local-worker: ", tokens_file, " has no admin-role token for the local worker to present"));
}

std::string SelfDir() {
  char buf[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) return ".";
  std::string p(buf, static_cast<size_t>(n));
  return p.substr(0, p.rfind('/'));
}

}  // namespace

absl::StatusOr<std::unique_ptr<LocalWorker>> LocalWorker::Start(const LocalWorkerOptions& options) {
  FTD_ASSIGN_OR_RETURN(std::string token, FirstAdminToken(options.tokens_file));
  const std::string token_file = options.data_dir + "/local-worker.token";
  FTD_RETURN_IF_ERROR(WriteFileAtomically(token_file, token + "\n"));
  ::chmod(token_file.c_str(), 0600);
  const std::string binary = options.binary.empty() ? SelfDir() + "/ftd-worker" : options.binary;
  std::vector<std::string> args = {binary, "--coordinator", options.coordinator, "--token-file",
                                   token_file, "--name", "local", "--address", "127.0.0.1",
                                   "--work-dir", options.data_dir + "/worker", "--exit-with-parent"};
  if (options.slots > 0) {
    args.push_back("--slots");
    args.push_back(absl::StrCat(options.slots));
  }
  args.insert(args.end(), options.extra_args.begin(), options.extra_args.end());
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  // The daemon blocks SIGTERM/SIGINT/SIGHUP for sigwait; the child gets a clean mask.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t empty;
  sigemptyset(&empty);
  posix_spawnattr_setsigmask(&attr, &empty);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  pid_t pid = 0;
  const int rc = ::posix_spawn(&pid, binary.c_str(), nullptr, &attr, argv.data(), environ);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("--local-worker: cannot start ", binary, ": ", std::strerror(rc)));
  }
  spdlog::info("ftd: local worker started (pid {}, {})", pid, binary);
  return std::unique_ptr<LocalWorker>(new LocalWorker(pid));
}

LocalWorker::~LocalWorker() { Stop(absl::Seconds(15)); }

void LocalWorker::Stop(absl::Duration grace) {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGTERM);
  const absl::Time deadline = absl::Now() + grace;
  int status = 0;
  while (::waitpid(pid_, &status, WNOHANG) == 0) {
    if (absl::Now() > deadline) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
      break;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  pid_ = -1;
}

}  // namespace ftd::server
