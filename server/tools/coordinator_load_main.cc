// ftd-coordinator-load: a load benchmark of the coordinator (not a test). It starts the real
// `ftd` binary on loopback (or targets a running one), holds N concurrent WatchJob streams and
// issues CreateJob at a fixed rate for a fixed time, cancelling one watched job per second so
// that watch fan-out is measured under the create load. It reports create latency
// percentiles, watch delivery latency (event time to receipt) and the daemon's memory
// (VmRSS, VmHWM from /proc) and CPU time.
//
//   ftd-coordinator-load --ftd build-server/bin/ftd --watchers 1000 --rate 200 --seconds 30
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "ftd/v1/jobs.grpc.pb.h"
#include "server/time_util.h"

namespace {

constexpr char kToken[] = "load-test-token-0123456789";

struct Percentiles {
  double p50 = 0, p90 = 0, p99 = 0, max = 0;
  size_t n = 0;
};

Percentiles Summarize(std::vector<double> v) {
  Percentiles p;
  p.n = v.size();
  if (v.empty()) return p;
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return v[std::min(v.size() - 1, size_t(q * (v.size() - 1) + 0.5))]; };
  p.p50 = at(0.50);
  p.p90 = at(0.90);
  p.p99 = at(0.99);
  p.max = v.back();
  return p;
}

// kB from /proc/<pid>/status.
long ProcStatusKb(pid_t pid, const std::string& key) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::stol(line.substr(key.size() + 1));
  }
  return -1;
}

// User + system CPU seconds of `pid`.
double ProcCpuSeconds(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t close = all.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(all.substr(close + 2));
  std::string field;
  std::vector<std::string> fields;
  while (rest >> field) fields.push_back(field);
  // After ")": state(0) ... utime is field 14 overall -> index 11 here, stime index 12.
  if (fields.size() < 13) return 0;
  return (std::stod(fields[11]) + std::stod(fields[12])) / sysconf(_SC_CLK_TCK);
}

class Watcher : public grpc::ClientReadReactor<ftd::v1::JobEvent> {
 public:
  Watcher(ftd::v1::JobService::Stub* stub, const std::string& job_id, std::atomic<int>* open,
          absl::Mutex* mu, std::vector<double>* delivery_ms)
      : open_(open), mu_(mu), delivery_ms_(delivery_ms) {
    ctx_.AddMetadata("authorization", absl::StrCat("Bearer ", kToken));
    request_.set_id(job_id);
    stub->async()->WatchJob(&ctx_, &request_, this);
    StartRead(&event_);
    StartCall();
  }
  void OnReadInitialMetadataDone(bool ok) override {
    if (ok) {
      counted_ = true;
      open_->fetch_add(1);
    }
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    const double ms =
        absl::ToDoubleMilliseconds(absl::Now() - absl::FromUnixMicros(ftd::server::ToUnixMicros(event_.time())));
    // The first event replays the job's current state (written before the stream opened):
    // only live events measure delivery latency.
    if (events_++ > 0) {
      absl::MutexLock lock(mu_);
      delivery_ms_->push_back(ms);
    }
    StartRead(&event_);
  }
  void OnDone(const grpc::Status& status) override {
    if (counted_) open_->fetch_sub(1);
    absl::MutexLock lock(&done_mu_);
    status_ = status;
    done_ = true;
  }
  void Cancel() { ctx_.TryCancel(); }
  void AwaitDone() {
    absl::MutexLock lock(&done_mu_);
    done_mu_.Await(absl::Condition(&done_));
  }
  int events() const { return events_; }
  const grpc::Status& status() const { return status_; }

 private:
  grpc::ClientContext ctx_;
  ftd::v1::WatchJobRequest request_;
  ftd::v1::JobEvent event_;
  std::atomic<int>* open_;
  absl::Mutex* mu_;
  std::vector<double>* delivery_ms_;
  std::atomic<int> events_{0};
  bool counted_ = false;  // set before OnDone, on the same reactor
  absl::Mutex done_mu_;
  bool done_ = false;
  grpc::Status status_;
};

}  // namespace

int main(int argc, char** argv) {
  std::string ftd_binary, target;
  int watchers = 1000, rate = 200, seconds = 30, watched_jobs = 100, channels = 8;
  pid_t daemon_pid = -1;
  CLI::App app{"ftd-coordinator-load: WatchJob fan-out and CreateJob rate against ftd"};
  app.add_option("--ftd", ftd_binary, "start this ftd binary on loopback (temporary data dir)");
  app.add_option("--target", target, "or: HOST:PORT of a running ftd whose tokens include "
                                      "`load-test-token-0123456789 load admin`");
  app.add_option("--daemon-pid", daemon_pid, "with --target: pid for RSS readings");
  app.add_option("--watchers", watchers)->capture_default_str();
  app.add_option("--watched-jobs", watched_jobs, "jobs the watchers spread over")->capture_default_str();
  app.add_option("--rate", rate, "CreateJob per second")->capture_default_str();
  app.add_option("--seconds", seconds)->capture_default_str();
  app.add_option("--channels", channels, "client connections")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (ftd_binary.empty() == target.empty()) {
    std::fprintf(stderr, "give exactly one of --ftd or --target\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);

  std::string root;
  if (!ftd_binary.empty()) {
    char tmpl[] = "/tmp/ftd-load-XXXXXX";
    root = mkdtemp(tmpl);
    mkdir((root + "/models").c_str(), 0755);
    mkdir((root + "/models/m").c_str(), 0755);
    mkdir((root + "/data").c_str(), 0755);
    std::ofstream(root + "/tokens") << kToken << " load admin\n";
    std::ofstream(root + "/models/m/config.json")
        << R"({"hidden_size": 2048, "num_hidden_layers": 48, "vocab_size": 151936,
              "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
              "moe_intermediate_size": 768, "num_experts": 128})";
    std::ofstream(root + "/data/train.jsonl") << "{}\n";
    int out[2];
    if (pipe(out) != 0) return 1;
    daemon_pid = fork();
    if (daemon_pid == 0) {
      dup2(out[1], 1);
      close(out[0]);
      const std::string dd = root + "/db", tok = root + "/tokens", mr = root + "/models",
                        dr = root + "/data";
      execl(ftd_binary.c_str(), ftd_binary.c_str(), "--data-dir", dd.c_str(), "--grpc-listen",
            "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--tokens-file", tok.c_str(),
            "--model-root", mr.c_str(), "--data-root", dr.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    close(out[1]);
    std::string text;
    char buf[256];
    int grpc_port = 0, http_port = 0;
    while (true) {
      ssize_t n = read(out[0], buf, sizeof(buf));
      if (n <= 0) break;
      text.append(buf, size_t(n));
      size_t pos = text.find("ftd ready ");
      if (pos != std::string::npos && text.find('\n', pos) != std::string::npos) {
        std::sscanf(text.c_str() + pos, "ftd ready grpc_port=%d http_port=%d", &grpc_port, &http_port);
        break;
      }
    }
    close(out[0]);
    if (grpc_port == 0) {
      std::fprintf(stderr, "ftd did not start: %s\n", text.c_str());
      return 1;
    }
    target = absl::StrCat("127.0.0.1:", grpc_port);
  }

  std::vector<std::unique_ptr<ftd::v1::JobService::Stub>> stubs;
  for (int i = 0; i < channels; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("ftd.load.channel", i);  // distinct args: distinct connections
    stubs.push_back(ftd::v1::JobService::NewStub(
        grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args)));
  }
  ftd::v1::CreateJobRequest create;
  auto* spec = create.mutable_spec();
  spec->set_base_model(root.empty() ? "m" : root + "/models/m");
  spec->mutable_datasets()->set_train(root.empty() ? "train.jsonl" : root + "/data/train.jsonl");
  spec->mutable_hyperparameters()->set_max_steps(1000);
  spec->mutable_hyperparameters()->set_global_batch(8);
  spec->mutable_hyperparameters()->set_micro_batch(1);
  spec->mutable_hyperparameters()->set_seq_len(4096);
  spec->mutable_hyperparameters()->set_lr(1e-5);
  spec->mutable_parallelism()->set_ep_size(8);
  spec->mutable_resources()->set_gpus_per_node(8);

  auto create_sync = [&](ftd::v1::JobService::Stub* stub) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", absl::StrCat("Bearer ", kToken));
    ftd::v1::CreateJobResponse resp;
    grpc::Status st = stub->CreateJob(&ctx, create, &resp);
    if (!st.ok()) std::fprintf(stderr, "CreateJob: %s\n", st.error_message().c_str());
    return resp.job().id();
  };
  std::vector<std::string> watched;
  for (int i = 0; i < watched_jobs; ++i) watched.push_back(create_sync(stubs[0].get()));
  const long rss_idle_kb = daemon_pid > 0 ? ProcStatusKb(daemon_pid, "VmRSS") : -1;

  std::atomic<int> open{0};
  absl::Mutex delivery_mu;
  std::vector<double> delivery_ms;
  std::vector<std::unique_ptr<Watcher>> streams;
  const absl::Time watch_start = absl::Now();
  for (int i = 0; i < watchers; ++i) {
    streams.push_back(std::make_unique<Watcher>(stubs[i % channels].get(), watched[i % watched.size()],
                                                &open, &delivery_mu, &delivery_ms));
  }
  while (open.load() < watchers && absl::Now() - watch_start < absl::Seconds(30)) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  const double open_seconds = absl::ToDoubleSeconds(absl::Now() - watch_start);
  const long rss_watching_kb = daemon_pid > 0 ? ProcStatusKb(daemon_pid, "VmRSS") : -1;
  const double cpu_before = daemon_pid > 0 ? ProcCpuSeconds(daemon_pid) : 0;

  // Paced CreateJob calls (async, callback API): latency from send to response.
  absl::Mutex lat_mu;
  std::vector<double> create_ms;
  std::atomic<int> ok{0}, failed{0}, inflight{0};
  long rss_peak_kb = 0;
  const absl::Time start = absl::Now();
  const int total = rate * seconds;
  int cancels = 0;
  for (int i = 0; i < total; ++i) {
    const absl::Time due = start + absl::Seconds(double(i) / rate);
    absl::SleepFor(due - absl::Now());
    struct Call {
      grpc::ClientContext ctx;
      ftd::v1::CreateJobResponse resp;
      absl::Time sent;
    };
    auto call = std::make_shared<Call>();
    call->ctx.AddMetadata("authorization", absl::StrCat("Bearer ", kToken));
    call->sent = absl::Now();
    inflight.fetch_add(1);
    stubs[i % channels]->async()->CreateJob(&call->ctx, &create, &call->resp, [&, call](grpc::Status st) {
      const double ms = absl::ToDoubleMilliseconds(absl::Now() - call->sent);
      (st.ok() ? ok : failed).fetch_add(1);
      {
        absl::MutexLock lock(&lat_mu);
        create_ms.push_back(ms);
      }
      inflight.fetch_sub(1);
    });
    if (i % rate == rate - 1) {
      // Once a second: a watched job is cancelled (3 events to each of its watchers), and
      // the daemon's RSS is sampled.
      if (cancels < int(watched.size())) {
        std::thread([&, id = watched[cancels]] {
          grpc::ClientContext ctx;
          ctx.AddMetadata("authorization", absl::StrCat("Bearer ", kToken));
          ftd::v1::CancelJobRequest req;
          req.set_id(id);
          ftd::v1::FineTuneJob job;
          stubs[0]->CancelJob(&ctx, req, &job);
        }).detach();
        ++cancels;
      }
      if (daemon_pid > 0) rss_peak_kb = std::max(rss_peak_kb, ProcStatusKb(daemon_pid, "VmRSS"));
    }
  }
  const double send_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  while (inflight.load() > 0) absl::SleepFor(absl::Milliseconds(5));
  const double wall = absl::ToDoubleSeconds(absl::Now() - start);
  absl::SleepFor(absl::Milliseconds(500));  // last cancels' events
  const double cpu_after = daemon_pid > 0 ? ProcCpuSeconds(daemon_pid) : 0;
  const int still_open = open.load();
  const long hwm_kb = daemon_pid > 0 ? ProcStatusKb(daemon_pid, "VmHWM") : -1;
  long events = 0;
  for (auto& s : streams) events += s->events();
  for (auto& s : streams) s->Cancel();
  for (auto& s : streams) s->AwaitDone();

  Percentiles c = Summarize(create_ms);
  Percentiles d;
  {
    absl::MutexLock lock(&delivery_mu);
    d = Summarize(delivery_ms);
  }
  std::printf("coordinator load: %d watch streams over %d jobs (all open after %.2f s), "
              "CreateJob at %d/s for %d s\n",
              watchers, watched_jobs, open_seconds, rate, seconds);
  std::printf("CreateJob: %d ok, %d failed, %.1f/s achieved (%.2f s to send, %.2f s to drain)\n",
              ok.load(), failed.load(), ok.load() / wall, send_seconds, wall);
  std::printf("CreateJob latency ms: p50 %.2f  p90 %.2f  p99 %.2f  max %.2f  (n=%zu)\n", c.p50,
              c.p90, c.p99, c.max, c.n);
  std::printf("WatchJob: %d streams still open at the end (the %d watchers of the %d cancelled "
              "jobs saw their streams end), %ld events received\n",
              still_open, cancels * watchers / watched_jobs, cancels, events);
  std::printf("live watch delivery latency ms (event time -> client): p50 %.2f  p99 %.2f  max %.2f "
              "(n=%zu)\n",
              d.p50, d.p99, d.max, d.n);
  if (daemon_pid > 0) {
    std::printf("daemon RSS MiB: %.1f idle (%d jobs), %.1f with %d watchers, %.1f peak sampled "
                "under load, VmHWM %.1f; daemon CPU %.1f s over the %.1f s run (%.0f%% of a core)\n",
                rss_idle_kb / 1024.0, watched_jobs, rss_watching_kb / 1024.0, watchers,
                rss_peak_kb / 1024.0, hwm_kb / 1024.0, cpu_after - cpu_before, wall,
                100.0 * (cpu_after - cpu_before) / wall);
  }
  if (!ftd_binary.empty()) {
    kill(daemon_pid, SIGTERM);
    int status;
    waitpid(daemon_pid, &status, 0);
    std::system(absl::StrCat("rm -rf '", root, "'").c_str());
  }
  return failed.load() == 0 ? 0 : 1;
}
