#include "worker/rank_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace ftd::worker {
namespace {
constexpr size_t kRingLines = 200;
constexpr size_t kMaxLine = 64 * 1024;
}  // namespace

absl::StatusOr<std::unique_ptr<RankProcess>> RankProcess::Spawn(
    const std::vector<std::string>& argv, const std::map<std::string, std::string>& env,
    const std::string& log_path, LineCallback on_line) {
  if (argv.empty()) return absl::InvalidArgumentError("rank: empty command");
  FILE* log = std::fopen(log_path.c_str(), "ae");
  if (log == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("rank log ", log_path, ": ", std::strerror(errno)));
  }
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) {
    std::fclose(log);
    return absl::InternalError(absl::StrCat("pipe: ", std::strerror(errno)));
  }
  // Everything the child needs is prepared before fork (no allocation after it).
  std::vector<char*> cargv;
  for (const std::string& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  std::vector<std::string> env_strings;
  for (const auto& [k, v] : env) env_strings.push_back(k + "=" + v);
  std::vector<char*> cenv;
  for (std::string& e : env_strings) cenv.push_back(e.data());
  cenv.push_back(nullptr);
  const pid_t parent = ::getpid();

  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(pipe_fds[0]);
    ::close(pipe_fds[1]);
    std::fclose(log);
    return absl::InternalError(absl::StrCat("fork: ", std::strerror(errno)));
  }
  if (pid == 0) {
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);  // the worker died before the prctl
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGPIPE, SIG_DFL);
    ::signal(SIGTERM, SIG_DFL);
    ::signal(SIGINT, SIG_DFL);
    int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, 0);
    ::dup2(pipe_fds[1], 1);
    ::dup2(pipe_fds[1], 2);
    ::execve(cargv[0], cargv.data(), cenv.data());
    const char msg[] = "ftd-worker: exec of the rank failed\n";
    (void)!::write(2, msg, sizeof(msg) - 1);
    ::_exit(127);
  }
  ::setpgid(pid, pid);  // also from the parent: no race with a kill before the child's setpgid
  ::close(pipe_fds[1]);
  std::unique_ptr<RankProcess> p(new RankProcess(pid, pipe_fds[0]));
  p->reader_ = std::thread([raw = p.get(), log, cb = std::move(on_line)] { raw->ReadLoop(log, cb); });
  return p;
}

void RankProcess::ReadLoop(FILE* log, LineCallback on_line) {
  std::string pending;
  char buf[8192];
  auto emit = [&](std::string line) {
    std::fwrite(line.data(), 1, line.size(), log);
    std::fputc('\n', log);
    std::fflush(log);
    {
      absl::MutexLock lock(&mu_);
      ring_.push_back(line);
      if (ring_.size() > kRingLines) ring_.pop_front();
    }
    if (on_line) on_line(line);
  };
  for (;;) {
    ssize_t n = ::read(fd_, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    pending.append(buf, static_cast<size_t>(n));
    size_t start = 0;
    for (size_t nl; (nl = pending.find('\n', start)) != std::string::npos; start = nl + 1) {
      emit(pending.substr(start, nl - start));
    }
    pending.erase(0, start);
    if (pending.size() > kMaxLine) {
      emit(pending);
      pending.clear();
    }
  }
  if (!pending.empty()) emit(pending);
  std::fclose(log);
  ::close(fd_);
}

std::optional<ExitStatus> RankProcess::Poll() {
  if (exit_.has_value()) return exit_;
  int status = 0;
  pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    ExitStatus e;
    if (WIFEXITED(status)) e.exit_code = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) e.term_signal = WTERMSIG(status);
    exit_ = e;
    ::kill(-pid_, SIGKILL);  // leftovers of the rank's group
    return exit_;
  }
  Escalate();
  return std::nullopt;
}

void RankProcess::Terminate(absl::Duration grace) {
  if (exit_.has_value() || kill_at_.has_value()) return;
  ::kill(-pid_, SIGTERM);
  kill_at_ = absl::Now() + grace;
}

void RankProcess::Escalate() {
  if (!exit_.has_value() && kill_at_.has_value() && absl::Now() >= *kill_at_) {
    ::kill(-pid_, SIGKILL);
  }
}

std::vector<std::string> RankProcess::Tail(size_t n) const {
  absl::MutexLock lock(&mu_);
  const size_t k = std::min(n, ring_.size());
  return std::vector<std::string>(ring_.end() - static_cast<long>(k), ring_.end());
}

void RankProcess::JoinReader() {
  if (reader_.joinable()) reader_.join();
}

RankProcess::~RankProcess() {
  if (!exit_.has_value()) {
    ::kill(-pid_, SIGKILL);
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
  JoinReader();
}

}  // namespace ftd::worker
