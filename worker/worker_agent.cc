#include "worker/worker_agent.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <thread>

#include <google/protobuf/util/json_util.h>
#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/support/channel_arguments.h>
#include <grpcpp/security/credentials.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "common/version.h"
#include "spdlog/spdlog.h"
#include "worker/step_parser.h"

extern char** environ;

namespace ftd::worker {
namespace {

constexpr size_t kMaxPendingLinesPerRank = 5000;
constexpr char kNameChars[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-";
constexpr int kMaxReportsPerHeartbeat = 2000;
constexpr int kTailLines = 20;
const char* const kDistEnv[] = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES"};

absl::Status MakeDirs(const std::string& path) {
  std::string cur;
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part.empty()) {
      if (cur.empty()) cur = "/";
      continue;
    }
    if (!cur.empty() && cur.back() != '/') cur += "/";
    cur += std::string(part);
    if (::mkdir(cur.c_str(), 0750) != 0 && errno != EEXIST) {
      return absl::FailedPreconditionError(absl::StrCat("mkdir ", cur, ": ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

std::string RunCapture(const std::string& cmd) {
  std::string out;
  FILE* f = ::popen(cmd.c_str(), "r");
  if (f == nullptr) return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  ::pclose(f);
  return out;
}

std::vector<ftd::v1::GpuInfo> DiscoverGpus() {
  std::vector<ftd::v1::GpuInfo> gpus;
  if (::access("/usr/bin/nvidia-smi", X_OK) != 0 && RunCapture("command -v nvidia-smi").empty()) {
    return gpus;
  }
  std::string out = RunCapture(
      "nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader,nounits 2>/dev/null");
  for (absl::string_view line : absl::StrSplit(out, '\n', absl::SkipEmpty())) {
    std::vector<std::string> f = absl::StrSplit(line, ',');
    if (f.size() != 3) continue;
    ftd::v1::GpuInfo g;
    int index = 0;
    int64_t mib = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(f[0]), &index)) continue;
    absl::SimpleAtoi(absl::StripAsciiWhitespace(f[2]), &mib);
    g.set_index(index);
    g.set_model(std::string(absl::StripAsciiWhitespace(f[1])));
    g.set_memory_bytes(mib << 20);
    gpus.push_back(std::move(g));
  }
  return gpus;
}

// The local address of the interface that routes to `coordinator` (no packet is sent).
std::string RoutedAddress(const std::string& coordinator) {
  std::string host = coordinator.substr(0, coordinator.rfind(':'));
  if (host.empty() || host == "localhost") return "127.0.0.1";
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* res = nullptr;
  if (::getaddrinfo(host.c_str(), "9", &hints, &res) != 0 || res == nullptr) return "127.0.0.1";
  std::string out = "127.0.0.1";
  int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd >= 0 && ::connect(fd, res->ai_addr, res->ai_addrlen) == 0) {
    sockaddr_in local{};
    socklen_t len = sizeof(local);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
      char buf[INET_ADDRSTRLEN];
      if (::inet_ntop(AF_INET, &local.sin_addr, buf, sizeof(buf)) != nullptr) out = buf;
    }
  }
  if (fd >= 0) ::close(fd);
  ::freeaddrinfo(res);
  return out;
}

}  // namespace

std::string WorkerAgent::KeyString(const ftd::v1::RankKey& k) {
  return absl::StrCat(k.job_id(), "/", k.attempt(), "/", k.rank());
}

absl::StatusOr<std::unique_ptr<WorkerAgent>> WorkerAgent::Create(WorkerOptions options) {
  if (options.name.empty() || options.name.size() > 63 ||
      options.name.find_first_not_of(kNameChars) != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("--name `", options.name, "` must be 1-63 characters of A-Z a-z 0-9 . _ -"));
  }
  if (options.coordinator.empty()) return absl::InvalidArgumentError("--coordinator is required");
  if (options.engine.empty() || ::access(options.engine.c_str(), X_OK) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--engine ", options.engine, ": not an executable ftd-train"));
  }
  if (options.work_dir.empty()) options.work_dir = absl::StrCat("/tmp/ftd-worker-", options.name);
  FTD_RETURN_IF_ERROR(MakeDirs(options.work_dir));
  std::unique_ptr<WorkerAgent> a(new WorkerAgent(options));
  for (ftd::v1::GpuInfo& g : DiscoverGpus()) *a->resources_.add_gpus() = std::move(g);
  if (a->resources_.gpus_size() == 0) a->resources_.set_cpu_slots(options.slots > 0 ? options.slots : 1);
  if (a->options_.address.empty()) a->options_.address = RoutedAddress(options.coordinator);
  a->engine_has_metrics_out_ =
      absl::StrContains(RunCapture(absl::StrCat("'", options.engine, "' train --help 2>&1")), "--metrics-out");
  // Reconnect quickly after a coordinator restart (gRPC's default backoff grows to 120 s).
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  // And notice a coordinator connection that died without closing within ~40 s.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30'000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10'000);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);  // else only 2 pings on a quiet stream
  a->channel_ = grpc::CreateCustomChannel(options.coordinator, grpc::InsecureChannelCredentials(), args);
  a->stub_ = ftd::v1::WorkerService::NewStub(a->channel_);
  spdlog::info("ftd-worker {}: {} {} slots, address {}, engine {} ({}), work dir {}", options.name,
               a->resources_.gpus_size() > 0 ? a->resources_.gpus_size() : a->resources_.cpu_slots(),
               a->resources_.gpus_size() > 0 ? "GPU" : "CPU", a->options_.address, options.engine,
               a->engine_has_metrics_out_ ? "metrics file" : "stdout metrics", options.work_dir);
  return a;
}

WorkerAgent::~WorkerAgent() = default;

std::vector<ftd::v1::RankProcess> WorkerAgent::RankList() {
  std::vector<ftd::v1::RankProcess> out;
  for (auto& [k, r] : ranks_) {
    ftd::v1::RankProcess p;
    *p.mutable_key() = r.key;
    p.set_local_rank(r.local_rank);
    p.set_pid(r.process != nullptr ? r.process->pid() : 0);
    p.set_stop_requested(r.stop_requested);
    if (r.exit.has_value()) {
      p.set_state(ftd::v1::RANK_EXITED);
      p.set_last_report_seq(r.last_report_seq);
      p.set_exit_code(r.exit->exit_code);
      p.set_term_signal(r.exit->term_signal);
      if (r.process != nullptr) {
        for (std::string& line : r.process->Tail(kTailLines)) p.add_tail(std::move(line));
      }
    } else {
      p.set_state(ftd::v1::RANK_RUNNING);
    }
    out.push_back(std::move(p));
  }
  return out;
}

absl::Status WorkerAgent::Register() {
  ftd::v1::RegisterRequest req;
  req.set_name(options_.name);
  req.set_address(options_.address);
  *req.mutable_resources() = resources_;
  for (ftd::v1::RankProcess& p : RankList()) *req.add_ranks() = std::move(p);
  req.set_version(ftd::kVersion);
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer " + options_.token);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  ftd::v1::RegisterResponse resp;
  grpc::Status st = stub_->Register(&ctx, req, &resp);
  if (!st.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(st.error_code()), st.error_message());
  }
  session_ = resp.session_id();
  if (resp.heartbeat_interval_ms() > 0) interval_ = absl::Milliseconds(resp.heartbeat_interval_ms());
  spdlog::info("ftd-worker {}: registered with {} (session {}, {} ranks reported)", options_.name,
               options_.coordinator, session_, req.ranks_size());
  return absl::OkStatus();
}

absl::Status WorkerAgent::Heartbeat() {
  ftd::v1::HeartbeatRequest req;
  req.set_name(options_.name);
  req.set_session_id(session_);
  for (ftd::v1::RankProcess& p : RankList()) *req.add_ranks() = std::move(p);
  int n = 0;
  for (const ftd::v1::RankReport& r : unacked_) {
    if (++n > kMaxReportsPerHeartbeat) break;
    *req.add_reports() = r;
  }
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer " + options_.token);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  ftd::v1::HeartbeatResponse resp;
  grpc::Status st = stub_->Heartbeat(&ctx, req, &resp);
  if (!st.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(st.error_code()), st.error_message());
  }
  while (!unacked_.empty() && unacked_.front().seq() <= resp.ack_seq()) unacked_.pop_front();
  for (const ftd::v1::RankKey& k : resp.forget()) {
    auto it = ranks_.find(KeyString(k));
    if (it != ranks_.end() && it->second.exit.has_value()) ranks_.erase(it);
  }
  for (const ftd::v1::StopRanks& s : resp.stop()) StopRanks(s);
  for (const ftd::v1::StartRanks& s : resp.start()) StartRanks(s);
  return absl::OkStatus();
}

void WorkerAgent::StopRanks(const ftd::v1::StopRanks& stop) {
  const absl::Duration grace =
      stop.grace_ms() > 0 ? absl::Milliseconds(stop.grace_ms()) : options_.stop_grace_default;
  for (const ftd::v1::RankKey& k : stop.ranks()) {
    auto it = ranks_.find(KeyString(k));
    if (it == ranks_.end() || it->second.exit.has_value() || it->second.process == nullptr) continue;
    if (!it->second.stop_requested) {
      spdlog::info("ftd-worker {}: stopping {} ({}): {}", options_.name, KeyString(k),
                   it->second.process->pid(), stop.reason());
    }
    it->second.stop_requested = true;
    it->second.process->Terminate(grace);
  }
}

void WorkerAgent::StartRanks(const ftd::v1::StartRanks& start) {
  // Fencing on this node: an older attempt of the same job must not run alongside.
  for (auto& [k, r] : ranks_) {
    if (r.key.job_id() == start.job_id() && r.key.attempt() != start.attempt() && !r.exit.has_value() &&
        r.process != nullptr) {
      r.stop_requested = true;
      r.process->Terminate(options_.stop_grace_default);
    }
  }
  if (start.job_id().empty() || start.job_id().find_first_not_of(kNameChars) != std::string::npos ||
      start.job_id().find("..") != std::string::npos) {
    spdlog::error("ftd-worker {}: refusing a start for job id `{}`", options_.name, start.job_id());
    return;
  }
  const std::string dir =
      absl::StrCat(options_.work_dir, "/jobs/", start.job_id(), "/attempt-", start.attempt());
  absl::Status st = MakeDirs(dir);
  // The spec as the engine reads it: JobSpec field names plus device and dtype (bf16 on GPUs,
  // fp32 on CPU workers, where precision auto means fp32 masters).
  std::string json;
  google::protobuf::util::JsonPrintOptions jo;
  jo.preserve_proto_field_names = true;
  ftd::v1::JobSpec spec = start.spec();
  // The API's default name for token-id JSONL (jobs.proto) is not the engine's: leave the
  // format to the engine's detection.
  if (spec.datasets().format() == "jsonl_tokens") spec.mutable_datasets()->clear_format();
  (void)google::protobuf::util::MessageToJsonString(spec, &json, jo);
  const bool gpu = resources_.gpus_size() > 0;
  if (!json.empty() && json.back() == '}') {
    json.pop_back();
    absl::StrAppend(&json, json.size() > 1 ? "," : "", "\"device\":\"", gpu ? "cuda" : "cpu",
                    "\",\"dtype\":\"", gpu ? "bf16" : "fp32", "\"}");
  }
  const std::string spec_path = dir + "/spec.json";
  if (st.ok()) st = WriteFileAtomically(spec_path, json);

  // GPUs: the free ones, in local-rank order (CUDA_VISIBLE_DEVICES lists them all, so that
  // cuda:LOCAL_RANK is this rank's).
  std::vector<std::string> visible;
  if (gpu) {
    std::set<std::string> used;
    for (auto& [k, r] : ranks_) {
      if (!r.exit.has_value()) used.insert(r.gpus.begin(), r.gpus.end());
    }
    for (const auto& g : resources_.gpus()) {
      std::string idx = absl::StrCat(g.index());
      if (used.count(idx) == 0) visible.push_back(idx);
    }
  }
  std::map<std::string, std::string> base_env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::pair<std::string, std::string> kv = absl::StrSplit(*e, absl::MaxSplits('=', 1));
    base_env[kv.first] = kv.second;
  }
  for (const char* k : kDistEnv) base_env.erase(k);
  if (!gpu && base_env.count("OMP_NUM_THREADS") == 0) {
    const long cores = ::sysconf(_SC_NPROCESSORS_ONLN);
    base_env["OMP_NUM_THREADS"] = absl::StrCat(std::max<long>(1, cores / std::max(1, resources_.cpu_slots())));
  }
  for (const auto& [k, v] : start.env()) base_env[k] = v;

  for (const auto& sr : start.ranks()) {
    ftd::v1::RankKey key;
    key.set_job_id(start.job_id());
    key.set_attempt(start.attempt());
    key.set_rank(sr.rank());
    const std::string ks = KeyString(key);
    if (ranks_.count(ks) != 0) continue;  // level-triggered: already started
    Rank r;
    r.key = key;
    r.local_rank = sr.local_rank();
    r.world_size = start.world_size();
    std::map<std::string, std::string> env = base_env;
    env["RANK"] = absl::StrCat(sr.rank());
    env["WORLD_SIZE"] = absl::StrCat(start.world_size());
    env["LOCAL_RANK"] = absl::StrCat(sr.local_rank());
    env["LOCAL_WORLD_SIZE"] = absl::StrCat(start.local_world_size());
    env["MASTER_ADDR"] = start.master_addr();
    env["MASTER_PORT"] = absl::StrCat(start.master_port());
    if (gpu) {
      if (static_cast<int>(visible.size()) >= start.local_world_size()) {
        visible.resize(start.local_world_size());
      }
      env["CUDA_VISIBLE_DEVICES"] = absl::StrJoin(visible, ",");
      if (sr.local_rank() < static_cast<int>(visible.size())) r.gpus = {visible[sr.local_rank()]};
    }
    std::vector<std::string> argv = {options_.engine, "train", "--spec", spec_path};
    if (start.resume()) argv.push_back("--resume");
    if (engine_has_metrics_out_) {
      argv.push_back("--metrics-out");
      argv.push_back(dir + "/metrics.jsonl");
      if (sr.rank() == 0) r.metrics_file = dir + "/metrics.jsonl";
    }
    const int world = start.world_size();
    const bool rank0 = sr.rank() == 0;
    const bool from_file = engine_has_metrics_out_;
    auto on_line = [this, ks, key, world, rank0, from_file](const std::string& line) {
      absl::MutexLock lock(&mu_);
      Pending& p = pending_[ks];
      if (p.log.lines_size() >= static_cast<int>(kMaxPendingLinesPerRank)) {
        p.log.set_dropped(p.log.dropped() + 1);
      } else {
        p.log.add_lines(line);
      }
      if (rank0) {
        std::optional<ftd::v1::RankReport> rep = ParseStdoutLine(line, world, from_file);
        if (rep.has_value()) {
          *rep->mutable_key() = key;
          p.reports.push_back(*std::move(rep));
        }
      }
    };
    absl::StatusOr<std::unique_ptr<RankProcess>> proc =
        st.ok() ? RankProcess::Spawn(argv, env, absl::StrCat(dir, "/rank-", sr.rank(), ".log"), on_line)
                : absl::StatusOr<std::unique_ptr<RankProcess>>(st);
    if (!proc.ok()) {
      spdlog::error("ftd-worker {}: cannot start {}: {}", options_.name, ks, proc.status().ToString());
      r.exit = ExitStatus{127, 0};
      ftd::v1::RankReport rep;
      *rep.mutable_key() = key;
      rep.mutable_log()->add_lines(absl::StrCat("ftd-worker: cannot start the rank: ", proc.status().ToString()));
      Enqueue(r, std::move(rep));
    } else {
      r.process = *std::move(proc);
      spdlog::info("ftd-worker {}: started {} (pid {}, local rank {}, rendezvous {}:{}{})", options_.name,
                   ks, r.process->pid(), sr.local_rank(), start.master_addr(), start.master_port(),
                   start.resume() ? ", resuming" : "");
    }
    ranks_[ks] = std::move(r);
  }
}

void WorkerAgent::TailMetrics(Rank& r) {
  if (r.metrics_file.empty()) return;
  std::ifstream in(r.metrics_file, std::ios::binary);
  if (!in) return;
  in.seekg(r.metrics_offset);
  std::string line;
  while (std::getline(in, line)) {
    if (in.eof()) break;  // a partial last line: read it again when complete
    r.metrics_offset += static_cast<int64_t>(line.size()) + 1;
    std::optional<ftd::v1::RankReport> rep = ParseMetricsLine(line);
    if (!rep.has_value()) continue;
    *rep->mutable_key() = r.key;
    Enqueue(r, *std::move(rep));
  }
}

void WorkerAgent::Enqueue(Rank& r, ftd::v1::RankReport report) {
  report.set_seq(next_seq_++);
  r.last_report_seq = report.seq();
  unacked_.push_back(std::move(report));
}

void WorkerAgent::Reap() {
  for (auto& [k, r] : ranks_) {
    if (r.exit.has_value() || r.process == nullptr) continue;
    std::optional<ExitStatus> e = r.process->Poll();
    if (!e.has_value()) continue;
    r.process->JoinReader();  // every line is in before the exit is reported
    TailMetrics(r);
    r.exit = e;
    spdlog::info("ftd-worker {}: {} exited (code {}, signal {})", options_.name, k, e->exit_code,
                 e->term_signal);
  }
}

void WorkerAgent::CollectReports() {
  std::map<std::string, Pending> taken;
  {
    absl::MutexLock lock(&mu_);
    taken.swap(pending_);
  }
  for (auto& [k, p] : taken) {
    auto it = ranks_.find(k);
    if (it == ranks_.end()) continue;
    if (p.log.lines_size() > 0 || p.log.dropped() > 0) {
      ftd::v1::RankReport rep;
      *rep.mutable_key() = it->second.key;
      *rep.mutable_log() = std::move(p.log);
      Enqueue(it->second, std::move(rep));
    }
    for (ftd::v1::RankReport& rep : p.reports) Enqueue(it->second, std::move(rep));
  }
  for (auto& [k, r] : ranks_) {
    if (!r.exit.has_value()) TailMetrics(r);
  }
  while (static_cast<int>(unacked_.size()) > options_.max_pending_reports) unacked_.pop_front();
}

void WorkerAgent::Run(const std::atomic<bool>& stop) {
  absl::Time next = absl::Now();
  absl::Time last_error_log = absl::InfinitePast();
  while (!stop.load()) {
    Reap();
    CollectReports();
    if (absl::Now() >= next) {
      absl::Status st = session_.empty() ? Register() : Heartbeat();
      if (st.code() == absl::StatusCode::kFailedPrecondition && !session_.empty()) {
        spdlog::warn("ftd-worker {}: {}", options_.name, std::string(st.message()));
        session_.clear();
        st = Register();
      }
      if (!st.ok() && absl::Now() - last_error_log > absl::Seconds(10)) {
        spdlog::warn("ftd-worker {}: coordinator {}: {} (ranks keep running; retrying)", options_.name,
                     options_.coordinator, st.ToString());
        last_error_log = absl::Now();
      }
      next = absl::Now() + interval_;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  // Shutting down: stop every rank, report the exits once if the coordinator is there.
  spdlog::info("ftd-worker {}: stopping {} ranks", options_.name, ranks_.size());
  for (auto& [k, r] : ranks_) {
    if (!r.exit.has_value() && r.process != nullptr) r.process->Terminate(options_.stop_grace_default);
  }
  const absl::Time deadline = absl::Now() + options_.stop_grace_default + absl::Seconds(2);
  for (;;) {
    Reap();
    bool all = true;
    for (auto& [k, r] : ranks_) all &= r.exit.has_value();
    if (all || absl::Now() > deadline) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  CollectReports();
  if (!session_.empty()) Heartbeat().IgnoreError();
}

}  // namespace ftd::worker
