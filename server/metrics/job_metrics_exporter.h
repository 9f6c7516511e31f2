// JobMetricsExporter: turns the coordinator's job events into Prometheus series. It subscribes
// to every job's events on the EventHub (status and metrics events, whoever publishes them:
// the scheduler, a worker RPC, a test), so it needs no worker-specific path.
//
// Exported (registered in the given registry):
// - per job, labels {job_id, tenant, model}: the latest sample's gauges
//   (ftd_job_tokens_per_second_per_gpu, ftd_job_model_tflops_per_gpu, ftd_job_mfu_ratio,
//   ftd_job_peak_memory_bytes, ftd_job_reserved_memory_bytes, ftd_job_loss, ftd_job_grad_norm,
//   ftd_job_learning_rate, ftd_job_all_to_all_seconds, ftd_job_step_phase_seconds{phase},
//   ftd_job_expert_load_imbalance_ratio, ftd_job_gpus, ftd_job_step, ftd_job_total_steps,
//   ftd_job_last_sample_timestamp_seconds), ftd_job_eval_loss and ftd_job_eval_step (the
//   latest evaluation on the validation set; present once the job has reported one, from eval
//   events or the eval fields of metrics), ftd_job_step_duration_seconds (histogram over the
//   reported steps), ftd_job_tokens_total and ftd_job_restarts_total (counters), and
//   ftd_job_rank_info{rank, worker, local_rank} = 1 per placed rank (to join with GPU exporters'
//   per-pod series: the worker name is its pod name under the Helm chart). A job's series
//   appear with its first metric sample or when it starts, and are removed `retention` after
//   it ends; at most `max_jobs` jobs have series (the longest-ended, else the longest-idle,
//   job is evicted first), so label cardinality is bounded.
// - service-wide: ftd_jobs{state} (every state, from a store scan at creation plus status
//   events) and ftd_job_queue_wait_seconds (QUEUED until STARTING/RUNNING).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ftd/v1/jobs.pb.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "server/event_hub.h"
#include "server/job_store.h"

namespace ftd::server {

struct JobMetricsExporterOptions {
  absl::Duration retention = absl::Minutes(10);  // how long an ended job's series stay
  int max_jobs = 500;                            // jobs with per-job series, at most
  int max_queued_events = 100000;                // beyond this, events are dropped (counted)
};

class JobMetricsExporter {
 public:
  // Counts the stored jobs by state, registers the families and subscribes to the hub. Create
  // it before jobs are changed concurrently (the daemon does so before replaying the store).
  static absl::StatusOr<std::unique_ptr<JobMetricsExporter>> Create(
      JobStore* store, EventHub* hub, prometheus::Registry* registry,
      const JobMetricsExporterOptions& options);
  ~JobMetricsExporter();  // unsubscribes and joins its thread
  JobMetricsExporter(const JobMetricsExporter&) = delete;
  JobMetricsExporter& operator=(const JobMetricsExporter&) = delete;

  // Waits (up to `timeout`) until every event published before the call has been applied;
  // /metrics calls it so that a scrape reflects what the API has already reported.
  bool Flush(absl::Duration timeout = absl::Seconds(1));

  // Jobs that currently have per-job series.
  int64_t tracked_jobs() const { return tracked_jobs_.load(); }

 private:
  enum GaugeIndex {
    kTokensPerSecondPerGpu, kTflopsPerGpu, kMfu, kPeakMemory, kReservedMemory, kLoss, kGradNorm,
    kLearningRate, kAllToAll, kForward, kBackward, kOptimizer, kImbalance, kGpus, kStep,
    kTotalSteps, kLastSample, kNumGauges
  };
  struct JobSeries {
    std::array<prometheus::Gauge*, kNumGauges> gauges{};
    prometheus::Histogram* step_duration = nullptr;
    prometheus::Counter* tokens = nullptr;
    prometheus::Counter* restarts = nullptr;
    prometheus::Gauge* eval_loss = nullptr;  // created with the job's first evaluation
    prometheus::Gauge* eval_step = nullptr;
    std::vector<prometheus::Gauge*> ranks;  // ftd_job_rank_info, one per placed rank
    prometheus::Labels labels;              // job_id, tenant, model
    absl::Time ended = absl::InfiniteFuture();
    absl::Time last_update;
    bool needs_progress = false;  // a sample arrived; re-read step/total_steps from the store
  };
  struct ActiveJob {  // a job in a non-terminal state
    ftd::v1::JobState state = ftd::v1::JOB_STATE_UNSPECIFIED;
    absl::Time queued_since = absl::InfinitePast();  // InfinitePast: unknown
  };

  JobMetricsExporter(JobStore* store, prometheus::Registry* registry,
                     const JobMetricsExporterOptions& options);
  absl::Status ScanStore();
  void Run();
  void Apply(const ftd::v1::JobEvent& event);
  void ApplyStatus(const std::string& id, const ftd::v1::JobStatus& status, absl::Time time);
  void ApplyMetrics(const std::string& id, const ftd::v1::JobMetrics& metrics, absl::Time time);
  void SetEval(JobSeries* s, int64_t step, double loss);
  void RefreshProgress();
  // The job's series, created on first use (reads tenant and model from the store); null when
  // the job cannot be read.
  JobSeries* EnsureSeries(const std::string& id);
  void SetPlacement(JobSeries* s, const ftd::v1::JobStatus::Placement& placement);
  void EvictOne();
  void RemoveSeries(absl::flat_hash_map<std::string, JobSeries>::iterator it);
  void Sweep(absl::Time now);

  JobStore* const store_;
  const JobMetricsExporterOptions options_;

  // Families (owned by the registry).
  std::array<prometheus::Family<prometheus::Gauge>*, kNumGauges> gauge_families_{};
  prometheus::Family<prometheus::Histogram>* step_duration_;
  prometheus::Family<prometheus::Counter>* tokens_;
  prometheus::Family<prometheus::Counter>* restarts_;
  prometheus::Family<prometheus::Gauge>* eval_loss_;
  prometheus::Family<prometheus::Gauge>* eval_step_;
  prometheus::Family<prometheus::Gauge>* rank_info_;
  prometheus::Family<prometheus::Gauge>* jobs_by_state_;
  prometheus::Histogram* queue_wait_;
  prometheus::Gauge* tracked_gauge_;
  prometheus::Counter* evicted_;
  prometheus::Counter* dropped_;
  absl::flat_hash_map<int, prometheus::Gauge*> state_gauges_;  // by JobState

  // Touched by the exporter thread only (and by Create before it starts).
  absl::flat_hash_map<std::string, JobSeries> series_;
  absl::flat_hash_map<std::string, ActiveJob> active_;
  std::atomic<int64_t> tracked_jobs_{0};

  absl::Mutex mu_;
  std::deque<ftd::v1::JobEvent> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t enqueued_ ABSL_GUARDED_BY(mu_) = 0;  // events accepted so far
  uint64_t applied_ ABSL_GUARDED_BY(mu_) = 0;   // of which applied
  bool stop_ ABSL_GUARDED_BY(mu_) = false;

  std::unique_ptr<EventHub::Subscription> subscription_;
  std::thread thread_;
};

}  // namespace ftd::server
