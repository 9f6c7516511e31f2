#include "server/metrics/job_metrics_exporter.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "server/job_state_machine.h"
#include "server/time_util.h"
#include "spdlog/spdlog.h"

namespace ftd::server {
namespace {

using ftd::v1::JobEvent;
using ftd::v1::JobState;

struct GaugeDef {
  const char* name;
  const char* help;
  const char* phase;  // non-null: one series of ftd_job_step_phase_seconds
};

// Indexed by JobMetricsExporter::GaugeIndex.
constexpr GaugeDef kGauges[] = {
    {"ftd_job_tokens_per_second_per_gpu",
     "Training throughput of the latest reported step: input tokens per second per GPU.", nullptr},
    {"ftd_job_model_tflops_per_gpu",
     "Model TFLOP/s per GPU of the latest reported step (DESIGN.md FLOPs formula).", nullptr},
    {"ftd_job_mfu_ratio", "Model FLOPs utilisation of the latest step (TFLOP/s per GPU / 989).",
     nullptr},
    {"ftd_job_peak_memory_bytes", "Peak allocated GPU memory of rank 0 (max_memory_allocated).",
     nullptr},
    {"ftd_job_reserved_memory_bytes", "GPU memory reserved by the caching allocator on rank 0.",
     nullptr},
    {"ftd_job_loss", "Training loss of the latest reported step.", nullptr},
    {"ftd_job_grad_norm", "Gradient norm (before clipping) of the latest reported step.", nullptr},
    {"ftd_job_learning_rate", "Learning rate of the latest reported step.", nullptr},
    {"ftd_job_all_to_all_seconds",
     "Time spent in expert-parallel all-to-all exchanges during the latest reported step.", nullptr},
    {"ftd_job_step_phase_seconds", "Duration of a phase of the latest reported step.", "forward"},
    {"ftd_job_step_phase_seconds", "Duration of a phase of the latest reported step.", "backward"},
    {"ftd_job_step_phase_seconds", "Duration of a phase of the latest reported step.", "optimizer"},
    {"ftd_job_expert_load_imbalance_ratio",
     "MoE load imbalance of the latest step: max over experts of routed tokens / mean (1 = "
     "balanced).",
     nullptr},
    {"ftd_job_gpus", "GPUs (ranks) the job runs on.", nullptr},
    {"ftd_job_step", "Optimizer steps completed.", nullptr},
    {"ftd_job_total_steps", "Optimizer steps the job will run in total.", nullptr},
    {"ftd_job_last_sample_timestamp_seconds", "Unix time of the latest metric sample.", nullptr},
};
static_assert(sizeof(kGauges) / sizeof(kGauges[0]) == 17, "one definition per GaugeIndex");

const prometheus::Histogram::BucketBoundaries& StepBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60, 120, 300};
  return *b;
}

// A model label: the last component of base_model (no directories of the server's layout),
// bounded in length.
std::string ModelLabel(absl::string_view base_model) {
  absl::ConsumePrefix(&base_model, "file://");
  while (absl::EndsWith(base_model, "/")) base_model.remove_suffix(1);
  const size_t slash = base_model.rfind('/');
  if (slash != absl::string_view::npos) base_model.remove_prefix(slash + 1);
  if (base_model.size() > 128) base_model = base_model.substr(0, 128);
  return base_model.empty() ? "unknown" : std::string(base_model);
}

}  // namespace

JobMetricsExporter::JobMetricsExporter(JobStore* store, prometheus::Registry* registry,
                                       const JobMetricsExporterOptions& options)
    : store_(store), options_(options) {
  for (int i = 0; i < kNumGauges; ++i) {
    gauge_families_[i] =
        &prometheus::BuildGauge().Name(kGauges[i].name).Help(kGauges[i].help).Register(*registry);
  }
  step_duration_ = &prometheus::BuildHistogram()
                        .Name("ftd_job_step_duration_seconds")
                        .Help("Optimizer step wall time, over the steps reported by the job.")
                        .Register(*registry);
  tokens_ = &prometheus::BuildCounter()
                 .Name("ftd_job_tokens_total")
                 .Help("Input tokens processed in the steps the job reported (all ranks).")
                 .Register(*registry);
  restarts_ = &prometheus::BuildCounter()
                   .Name("ftd_job_restarts_total")
                   .Help("Times the job was requeued after it had started (attempts - 1).")
                   .Register(*registry);
  eval_loss_ = &prometheus::BuildGauge()
                    .Name("ftd_job_eval_loss")
                    .Help("Loss on the validation set (datasets.validation) at the latest "
                          "evaluation: mean over every validation target.")
                    .Register(*registry);
  eval_step_ = &prometheus::BuildGauge()
                    .Name("ftd_job_eval_step")
                    .Help("Optimizer step of the latest evaluation on the validation set.")
                    .Register(*registry);
  rank_info_ = &prometheus::BuildGauge()
                    .Name("ftd_job_rank_info")
                    .Help("1 for each rank of a placed job: the worker (its pod name under the "
                          "Helm chart) and local rank (GPU index on that worker) it runs on.")
                    .Register(*registry);
  jobs_by_state_ = &prometheus::BuildGauge()
                        .Name("ftd_jobs")
                        .Help("Jobs in the store, by state.")
                        .Register(*registry);
  for (int s = ftd::v1::QUEUED; s <= ftd::v1::CANCELLED; ++s) {
    state_gauges_[s] = &jobs_by_state_->Add({{"state", JobState_Name(static_cast<JobState>(s))}});
  }
  queue_wait_ = &prometheus::BuildHistogram()
                     .Name("ftd_job_queue_wait_seconds")
                     .Help("Time jobs waited in QUEUED before they started.")
                     .Register(*registry)
                     .Add({}, prometheus::Histogram::BucketBoundaries{
                                  0.1, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600,
                                  86400});
  tracked_gauge_ = &prometheus::BuildGauge()
                        .Name("ftd_metrics_tracked_jobs")
                        .Help("Jobs that currently have per-job series.")
                        .Register(*registry)
                        .Add({});
  evicted_ = &prometheus::BuildCounter()
                  .Name("ftd_metrics_evicted_jobs_total")
                  .Help("Jobs whose series were removed early to keep under the job limit.")
                  .Register(*registry)
                  .Add({});
  dropped_ = &prometheus::BuildCounter()
                  .Name("ftd_metrics_dropped_events_total")
                  .Help("Job events the exporter dropped because its queue was full.")
                  .Register(*registry)
                  .Add({});
}

absl::StatusOr<std::unique_ptr<JobMetricsExporter>> JobMetricsExporter::Create(
    JobStore* store, EventHub* hub, prometheus::Registry* registry,
    const JobMetricsExporterOptions& options) {
  if (options.max_jobs < 1) return absl::InvalidArgumentError("metrics: max_jobs must be >= 1");
  std::unique_ptr<JobMetricsExporter> e(new JobMetricsExporter(store, registry, options));
  FTD_RETURN_IF_ERROR(e->ScanStore());
  JobMetricsExporter* self = e.get();
  e->subscription_ = hub->Subscribe("", [self](const JobEvent& event) {
    // Runs under the hub's lock: queue and return.
    absl::MutexLock lock(&self->mu_);
    if (static_cast<int>(self->queue_.size()) >= self->options_.max_queued_events) {
      self->dropped_->Increment();
      return;
    }
    self->queue_.push_back(event);
    ++self->enqueued_;
  });
  e->thread_ = std::thread([self] { self->Run(); });
  return e;
}

JobMetricsExporter::~JobMetricsExporter() {
  subscription_.reset();
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

absl::Status JobMetricsExporter::ScanStore() {
  for (int s = ftd::v1::QUEUED; s <= ftd::v1::CANCELLED; ++s) {
    const auto state = static_cast<JobState>(s);
    FTD_ASSIGN_OR_RETURN(std::vector<std::string> ids, store_->JobIdsInStates({state}));
    state_gauges_[s]->Set(static_cast<double>(ids.size()));
    if (IsTerminalState(state)) continue;
    for (const std::string& id : ids) {
      ActiveJob& job = active_[id];
      job.state = state;
      if (state != ftd::v1::QUEUED) continue;
      FTD_ASSIGN_OR_RETURN(std::optional<JobEvent> last, store_->LatestStatusEvent(id));
      if (last.has_value() && last->has_time()) job.queued_since = FromProtoTime(last->time());
    }
  }
  return absl::OkStatus();
}

bool JobMetricsExporter::Flush(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  const uint64_t target = enqueued_;
  auto done = [this, target]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return applied_ >= target || stop_;
  };
  return mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
}

void JobMetricsExporter::Run() {
  for (;;) {
    std::deque<JobEvent> batch;
    uint64_t upto = 0;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !queue_.empty() || stop_; };
      // Wakes at least once a second to expire ended jobs' series.
      mu_.AwaitWithTimeout(absl::Condition(&ready), absl::Seconds(1));
      if (stop_) return;
      batch.swap(queue_);
      upto = enqueued_;
    }
    for (const JobEvent& event : batch) Apply(event);
    RefreshProgress();
    Sweep(absl::Now());
    tracked_jobs_ = static_cast<int64_t>(series_.size());
    tracked_gauge_->Set(static_cast<double>(series_.size()));
    absl::MutexLock lock(&mu_);
    applied_ = upto;
  }
}

void JobMetricsExporter::Apply(const JobEvent& event) {
  const absl::Time time = event.has_time() ? FromProtoTime(event.time()) : absl::Now();
  switch (event.kind_case()) {
    case JobEvent::kStatus:
      ApplyStatus(event.job_id(), event.status(), time);
      break;
    case JobEvent::kMetrics:
      ApplyMetrics(event.job_id(), event.metrics(), time);
      break;
    case JobEvent::kEval:
      if (event.eval().step() > 0) {
        if (JobSeries* s = EnsureSeries(event.job_id()); s != nullptr) {
          SetEval(s, event.eval().step(), event.eval().loss());
        }
      }
      break;
    default:
      break;
  }
}

void JobMetricsExporter::ApplyStatus(const std::string& id, const ftd::v1::JobStatus& status,
                                     absl::Time time) {
  const JobState to = status.state();
  if (to < ftd::v1::QUEUED || to > ftd::v1::CANCELLED) return;
  auto it = active_.find(id);
  if (it != active_.end()) {
    state_gauges_[it->second.state]->Decrement();
    if (to != ftd::v1::QUEUED && it->second.queued_since != absl::InfinitePast() &&
        (to == ftd::v1::STARTING || to == ftd::v1::RUNNING)) {
      queue_wait_->Observe(std::max(0.0, absl::ToDoubleSeconds(time - it->second.queued_since)));
      it->second.queued_since = absl::InfinitePast();
    }
  }
  state_gauges_[to]->Increment();
  if (IsTerminalState(to)) {
    if (it != active_.end()) active_.erase(it);
  } else {
    ActiveJob& job = active_[id];
    if (to == ftd::v1::QUEUED && job.state != ftd::v1::QUEUED) job.queued_since = time;
    job.state = to;
  }

  // Per-job series: created when the job starts, closed when it ends.
  auto series = series_.find(id);
  JobSeries* s = nullptr;
  if (series != series_.end()) {
    s = &series->second;
  } else if (to == ftd::v1::STARTING || to == ftd::v1::RUNNING) {
    s = EnsureSeries(id);
  }
  if (s == nullptr) return;
  const double restarts = status.attempt();
  if (restarts > s->restarts->Value()) s->restarts->Increment(restarts - s->restarts->Value());
  if (status.has_placement() || to == ftd::v1::QUEUED || IsTerminalState(to)) {
    SetPlacement(s, IsTerminalState(to) ? ftd::v1::JobStatus::Placement() : status.placement());
  }
  s->last_update = absl::Now();
  s->ended = IsTerminalState(to) ? absl::Now() : absl::InfiniteFuture();
}

void JobMetricsExporter::SetPlacement(JobSeries* s, const ftd::v1::JobStatus::Placement& placement) {
  for (prometheus::Gauge* g : s->ranks) rank_info_->Remove(g);
  s->ranks.clear();
  for (const auto& rank : placement.ranks()) {
    prometheus::Labels l = s->labels;
    l["rank"] = absl::StrCat(rank.rank());
    l["worker"] = rank.worker().substr(0, 253);
    l["local_rank"] = absl::StrCat(rank.local_rank());
    prometheus::Gauge* g = &rank_info_->Add(l);
    g->Set(1);
    s->ranks.push_back(g);
  }
}

void JobMetricsExporter::ApplyMetrics(const std::string& id, const ftd::v1::JobMetrics& m,
                                      absl::Time time) {
  JobSeries* s = EnsureSeries(id);
  if (s == nullptr) return;
  auto set = [s](GaugeIndex i, double v) { s->gauges[i]->Set(v); };
  set(kTokensPerSecondPerGpu, m.tokens_per_second_per_gpu());
  set(kTflopsPerGpu, m.model_tflops_per_gpu());
  set(kMfu, m.mfu());
  set(kPeakMemory, static_cast<double>(m.peak_memory_bytes()));
  set(kReservedMemory, static_cast<double>(m.reserved_memory_bytes()));
  set(kLoss, m.loss());
  set(kGradNorm, m.grad_norm());
  set(kLearningRate, m.lr());
  set(kAllToAll, m.all_to_all_seconds());
  set(kForward, m.forward_seconds());
  set(kBackward, m.backward_seconds());
  set(kOptimizer, m.optimizer_seconds());
  set(kImbalance, m.expert_load_imbalance());
  if (m.world_size() > 0) set(kGpus, m.world_size());
  set(kLastSample, absl::ToDoubleSeconds(time - absl::UnixEpoch()));
  if (m.eval_step() > 0) SetEval(s, m.eval_step(), m.eval_loss());
  if (m.step_seconds() > 0) s->step_duration->Observe(m.step_seconds());
  if (m.tokens() > 0) s->tokens->Increment(static_cast<double>(m.tokens()));
  s->last_update = absl::Now();
  if (m.step() > 0) {  // the sample's own step: the gauges above and the step agree
    set(kStep, static_cast<double>(m.step()));
    if (m.total_steps() > 0) set(kTotalSteps, static_cast<double>(m.total_steps()));
  } else {
    s->needs_progress = true;
  }
}

void JobMetricsExporter::SetEval(JobSeries* s, int64_t step, double loss) {
  if (s->eval_loss == nullptr) {
    s->eval_loss = &eval_loss_->Add(s->labels);
    s->eval_step = &eval_step_->Add(s->labels);
  }
  s->eval_loss->Set(loss);
  s->eval_step->Set(static_cast<double>(step));
  s->last_update = absl::Now();
}

void JobMetricsExporter::RefreshProgress() {
  for (auto& [id, s] : series_) {
    if (!s.needs_progress) continue;
    s.needs_progress = false;
    absl::StatusOr<ftd::v1::FineTuneJob> job = store_->GetJob(id);
    if (!job.ok()) continue;
    s.gauges[kStep]->Set(static_cast<double>(job->status().progress().step()));
    s.gauges[kTotalSteps]->Set(static_cast<double>(job->status().progress().total_steps()));
  }
}

JobMetricsExporter::JobSeries* JobMetricsExporter::EnsureSeries(const std::string& id) {
  auto it = series_.find(id);
  if (it != series_.end()) return &it->second;
  absl::StatusOr<ftd::v1::FineTuneJob> job = store_->GetJob(id);
  if (!job.ok()) {
    spdlog::warn("metrics: job {}: {}", id, job.status().ToString());
    return nullptr;
  }
  while (static_cast<int>(series_.size()) >= options_.max_jobs) EvictOne();
  const prometheus::Labels labels = {
      {"job_id", id}, {"tenant", job->tenant()}, {"model", ModelLabel(job->spec().base_model())}};
  JobSeries& s = series_[id];
  s.labels = labels;
  for (int i = 0; i < kNumGauges; ++i) {
    prometheus::Labels l = labels;
    if (kGauges[i].phase != nullptr) l["phase"] = kGauges[i].phase;
    s.gauges[i] = &gauge_families_[i]->Add(l);
  }
  const auto& spec = job->spec();
  const int world = spec.resources().nodes() * spec.resources().gpus_per_node();
  if (world > 0) s.gauges[kGpus]->Set(world);
  s.gauges[kStep]->Set(static_cast<double>(job->status().progress().step()));
  s.gauges[kTotalSteps]->Set(static_cast<double>(job->status().progress().total_steps()));
  if (job->status().metrics().eval_step() > 0) {  // e.g. a job evaluated before a restart
    SetEval(&s, job->status().metrics().eval_step(), job->status().metrics().eval_loss());
  }
  s.step_duration = &step_duration_->Add(labels, StepBuckets());
  s.tokens = &tokens_->Add(labels);
  s.restarts = &restarts_->Add(labels);
  if (job->status().attempt() > 0) s.restarts->Increment(job->status().attempt());
  if (IsTerminalState(job->status().state())) {
    s.ended = absl::Now();
  } else {
    SetPlacement(&s, job->status().placement());
  }
  s.last_update = absl::Now();
  return &s;
}

void JobMetricsExporter::EvictOne() {
  // The job that ended longest ago, else the one idle longest.
  auto victim = series_.end();
  for (auto it = series_.begin(); it != series_.end(); ++it) {
    if (victim == series_.end()) {
      victim = it;
      continue;
    }
    const JobSeries& a = it->second;
    const JobSeries& b = victim->second;
    const bool a_ended = a.ended != absl::InfiniteFuture();
    const bool b_ended = b.ended != absl::InfiniteFuture();
    if (a_ended != b_ended ? a_ended
                           : (a_ended ? a.ended < b.ended : a.last_update < b.last_update)) {
      victim = it;
    }
  }
  if (victim == series_.end()) return;
  spdlog::warn("metrics: more than {} jobs with series; dropping job {}'s", options_.max_jobs,
               victim->first);
  evicted_->Increment();
  RemoveSeries(victim);
}

void JobMetricsExporter::RemoveSeries(absl::flat_hash_map<std::string, JobSeries>::iterator it) {
  JobSeries& s = it->second;
  for (int i = 0; i < kNumGauges; ++i) gauge_families_[i]->Remove(s.gauges[i]);
  step_duration_->Remove(s.step_duration);
  tokens_->Remove(s.tokens);
  restarts_->Remove(s.restarts);
  if (s.eval_loss != nullptr) {
    eval_loss_->Remove(s.eval_loss);
    eval_step_->Remove(s.eval_step);
  }
  for (prometheus::Gauge* g : s.ranks) rank_info_->Remove(g);
  series_.erase(it);
}

void JobMetricsExporter::Sweep(absl::Time now) {
  for (auto it = series_.begin(); it != series_.end();) {
    auto next = std::next(it);
    if (it->second.ended != absl::InfiniteFuture() && now - it->second.ended >= options_.retention) {
      RemoveSeries(it);
    }
    it = next;
  }
}

}  // namespace ftd::server
