// WorkerAgent: the loop of ftd-worker. It registers with the coordinator, heartbeats its rank
// processes and their reports (level-triggered, worker.proto), starts and stops ranks as the
// answers say, and keeps its ranks running while the coordinator is unreachable (it registers
// again, with its ranks, when the coordinator is back, which adopts them).
#pragma once

#include <atomic>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/channel.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ftd/v1/worker.grpc.pb.h"
#include "worker/rank_process.h"

namespace ftd::worker {

struct WorkerOptions {
  std::string coordinator;  // HOST:PORT
  std::string token;
  std::string name;
  std::string address;   // empty: the local address that routes to the coordinator
  int slots = 0;         // CPU slots; 0: GPUs if any, else 1
  std::string engine;    // ftd-train
  std::string work_dir;  // per-rank logs and spec files
  absl::Duration stop_grace_default = absl::Seconds(10);
  int max_pending_reports = 20000;
};

class WorkerAgent {
 public:
  static absl::StatusOr<std::unique_ptr<WorkerAgent>> Create(WorkerOptions options);
  ~WorkerAgent();

  // Runs until `stop` is set; then stops every rank (SIGTERM, SIGKILL after the grace period).
  void Run(const std::atomic<bool>& stop);

 private:
  struct Rank {
    ftd::v1::RankKey key;
    int local_rank = 0;
    int world_size = 1;
    std::unique_ptr<RankProcess> process;
    std::optional<ExitStatus> exit;
    bool stop_requested = false;
    int64_t last_report_seq = 0;  // the seq of its latest numbered report
    std::string metrics_file;  // rank 0 with --metrics-out: tailed for reports
    int64_t metrics_offset = 0;
    std::vector<std::string> gpus;  // physical GPU indices it holds
  };
  struct Pending {  // reports of a rank from its reader thread, not yet numbered
    std::vector<ftd::v1::RankReport> reports;
    ftd::v1::LogLines log;
  };

  explicit WorkerAgent(WorkerOptions options) : options_(std::move(options)) {}

  absl::Status Register();
  absl::Status Heartbeat();
  void StartRanks(const ftd::v1::StartRanks& start);
  void StopRanks(const ftd::v1::StopRanks& stop);
  void Reap();
  void CollectReports();
  void TailMetrics(Rank& r);
  // Numbers `report` (of rank `r`) and queues it for the coordinator.
  void Enqueue(Rank& r, ftd::v1::RankReport report);
  std::vector<ftd::v1::RankProcess> RankList();
  static std::string KeyString(const ftd::v1::RankKey& k);

  WorkerOptions options_;
  ftd::v1::WorkerResources resources_;
  bool engine_has_metrics_out_ = false;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<ftd::v1::WorkerService::Stub> stub_;
  std::string session_;
  absl::Duration interval_ = absl::Seconds(1);

  std::map<std::string, Rank> ranks_;  // by KeyString
  std::deque<ftd::v1::RankReport> unacked_;
  int64_t next_seq_ = 1;

  absl::Mutex mu_;  // reader threads -> agent
  std::map<std::string, Pending> pending_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ftd::worker
