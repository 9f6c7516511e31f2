#include "engine/dist/launcher.h"

#include <algorithm>
#include <arpa/inet.h>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <optional>
#include <netinet/in.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

extern char** environ;

namespace ftd::engine {
namespace {

struct Rank {
  pid_t pid = -1;
  int fd = -1;          // read end of the rank's stdout+stderr
  std::string partial;  // an unfinished line
  bool exited = false;
  int status = 0;
};

std::string DescribeExit(int status) {
  if (WIFEXITED(status)) return absl::StrCat("exited with status ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return absl::StrCat("was killed by signal ", WTERMSIG(status), " (", strsignal(WTERMSIG(status)), ")");
  return "ended abnormally";
}

// listen_fd: the store's socket, for rank 0 when the launcher chose the port; else -1.
std::vector<std::string> RankEnvironment(const LaunchOptions& o, int rank, int port, int listen_fd) {
  std::vector<std::string> env;
  const char* kOwn[] = {"RANK=", "WORLD_SIZE=", "LOCAL_RANK=", "LOCAL_WORLD_SIZE=", "MASTER_ADDR=", "MASTER_PORT=",
                        "FTD_MASTER_LISTEN_FD="};
  bool has_omp = false;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string v(*e);
    bool own = false;
    for (const char* k : kOwn) own = own || v.rfind(k, 0) == 0;
    if (v.rfind("OMP_NUM_THREADS=", 0) == 0) has_omp = true;
    if (!own) env.push_back(v);
  }
  env.push_back(absl::StrCat("RANK=", rank));
  env.push_back(absl::StrCat("WORLD_SIZE=", o.nproc));
  env.push_back(absl::StrCat("LOCAL_RANK=", rank));
  env.push_back(absl::StrCat("LOCAL_WORLD_SIZE=", o.nproc));
  env.push_back(absl::StrCat("MASTER_ADDR=", o.master_addr));
  env.push_back(absl::StrCat("MASTER_PORT=", port));
  if (listen_fd >= 0) env.push_back(absl::StrCat("FTD_MASTER_LISTEN_FD=", listen_fd));
  if (!has_omp) {
    // As torchrun: ranks sharing a host share its cores.
    unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    env.push_back(absl::StrCat("OMP_NUM_THREADS=", std::max(1u, cores / static_cast<unsigned>(o.nproc))));
  }
  return env;
}

// listen_fd (close-on-exec in the launcher) stays open across rank 0's exec only.
absl::StatusOr<Rank> Spawn(const LaunchOptions& o, int rank, int port, int listen_fd) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return absl::InternalError(absl::StrCat("pipe: ", strerror(errno)));
  const int inherited_fd = rank == 0 ? listen_fd : -1;
  std::vector<std::string> env = RankEnvironment(o, rank, port, inherited_fd);
  std::vector<char*> envp, argv;
  for (std::string& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::string program = o.program;
  std::vector<std::string> args = o.args;
  argv.push_back(program.data());
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  if (pid == 0) {
    // The rank dies with the launcher, whatever kills it.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    dup2(fds[1], STDOUT_FILENO);
    dup2(fds[1], STDERR_FILENO);
    if (inherited_fd >= 0) fcntl(inherited_fd, F_SETFD, 0);
    execve(program.c_str(), argv.data(), envp.data());
    const char msg[] = "launch: cannot execute the rank program\n";
    (void)!write(STDERR_FILENO, msg, sizeof(msg) - 1);
    _exit(127);
  }
  close(fds[1]);
  Rank r;
  r.pid = pid;
  r.fd = fds[0];
  return r;
}

void EmitLines(Rank& r, int rank, const char* data, size_t n, std::ostream& out, bool flush_partial) {
  r.partial.append(data, n);
  size_t start = 0, nl;
  while ((nl = r.partial.find('\n', start)) != std::string::npos) {
    out << "[rank " << rank << "] " << r.partial.substr(start, nl - start) << "\n";
    start = nl + 1;
  }
  r.partial.erase(0, start);
  if (flush_partial && !r.partial.empty()) {
    out << "[rank " << rank << "] " << r.partial << "\n";
    r.partial.clear();
  }
  out.flush();
}

}  // namespace

absl::StatusOr<ListeningSocket> ListeningSocket::Create(const std::string& addr) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = 0;
  if (inet_pton(AF_INET, addr == "localhost" ? "127.0.0.1" : addr.c_str(), &sa.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("master address ", addr, " is not an IPv4 address"));
  }
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return absl::InternalError(absl::StrCat("socket: ", strerror(errno)));
  ListeningSocket sock(s, 0);
  if (bind(s, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot bind to ", addr, ": ", strerror(errno)));
  }
  if (listen(s, SOMAXCONN) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", addr, ": ", strerror(errno)));
  }
  socklen_t len = sizeof(sa);
  if (getsockname(s, reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
    return absl::InternalError(absl::StrCat("getsockname: ", strerror(errno)));
  }
  sock.port_ = static_cast<int>(ntohs(sa.sin_port));
  return sock;
}

ListeningSocket::ListeningSocket(ListeningSocket&& other) noexcept : fd_(other.fd_), port_(other.port_) {
  other.fd_ = -1;
}

ListeningSocket::~ListeningSocket() {
  if (fd_ >= 0) close(fd_);
}

absl::Status LaunchLocalRanks(const LaunchOptions& o, std::ostream& out) {
  if (o.nproc < 1) return absl::InvalidArgumentError(absl::StrCat("--nproc must be >= 1 (got ", o.nproc, ")"));
  if (o.args.empty()) return absl::InvalidArgumentError("nothing to launch: give the rank command after --");
  int port = o.master_port;
  std::optional<ListeningSocket> store_socket;
  if (port == 0) {
    auto sock = ListeningSocket::Create(o.master_addr);
    if (!sock.ok()) return sock.status();
    store_socket.emplace(std::move(*sock));
    port = store_socket->port();
  }
  std::vector<Rank> ranks;
  for (int i = 0; i < o.nproc; ++i) {
    auto r = Spawn(o, i, port, store_socket ? store_socket->fd() : -1);
    if (!r.ok()) {
      for (Rank& started : ranks) kill(started.pid, SIGKILL);
      for (Rank& started : ranks) waitpid(started.pid, nullptr, 0);
      return r.status();
    }
    ranks.push_back(*r);
  }
  store_socket.reset();  // rank 0 holds it now
  int first_failed = -1;
  std::chrono::steady_clock::time_point kill_at;
  bool terminated = false, killed = false;
  int running = o.nproc;
  char buf[65536];
  while (running > 0) {
    std::vector<pollfd> pfds;
    std::vector<int> who;
    for (int i = 0; i < o.nproc; ++i) {
      if (ranks[i].fd >= 0) {
        pfds.push_back({ranks[i].fd, POLLIN, 0});
        who.push_back(i);
      }
    }
    if (!pfds.empty()) poll(pfds.data(), pfds.size(), 100);
    else std::this_thread::sleep_for(std::chrono::milliseconds(50));
    for (size_t j = 0; j < pfds.size(); ++j) {
      if ((pfds[j].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      Rank& r = ranks[who[j]];
      ssize_t n = read(r.fd, buf, sizeof(buf));
      if (n > 0) {
        EmitLines(r, who[j], buf, static_cast<size_t>(n), out, false);
      } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        EmitLines(r, who[j], "", 0, out, true);
        close(r.fd);
        r.fd = -1;
      }
    }
    for (int i = 0; i < o.nproc; ++i) {
      Rank& r = ranks[i];
      if (r.exited) continue;
      int status = 0;
      if (waitpid(r.pid, &status, WNOHANG) == r.pid) {
        r.exited = true;
        r.status = status;
        --running;
        const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (!ok && first_failed < 0) {
          first_failed = i;
          out << "[launch] rank " << i << " " << DescribeExit(status) << "; stopping the other ranks\n";
          out.flush();
        }
      }
    }
    if (first_failed >= 0 && !terminated) {
      for (Rank& r : ranks) {
        if (!r.exited) kill(r.pid, SIGTERM);
      }
      terminated = true;
      kill_at = std::chrono::steady_clock::now() + o.grace;
    }
    if (terminated && !killed && std::chrono::steady_clock::now() >= kill_at) {
      for (Rank& r : ranks) {
        if (!r.exited) kill(r.pid, SIGKILL);
      }
      killed = true;
    }
  }
  // Whatever is still buffered in the pipes.
  for (int i = 0; i < o.nproc; ++i) {
    Rank& r = ranks[i];
    while (r.fd >= 0) {
      ssize_t n = read(r.fd, buf, sizeof(buf));
      if (n > 0) {
        EmitLines(r, i, buf, static_cast<size_t>(n), out, false);
        continue;
      }
      EmitLines(r, i, "", 0, out, true);
      close(r.fd);
      r.fd = -1;
    }
  }
  if (first_failed >= 0) {
    return absl::AbortedError(absl::StrCat("rank ", first_failed, " ", DescribeExit(ranks[first_failed].status)));
  }
  return absl::OkStatus();
}

}  // namespace ftd::engine
