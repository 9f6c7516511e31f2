// /metrics of an in-process daemon: per-job series fed from the EventHub (samples recorded
// through JobManager, as the scheduler records them), job counts by state, queue wait,
// retention and the cardinality bound, and the request/store series; `promtool check metrics`
// on the live scrape.
#include <cstdio>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/server/metrics_test_util.h"
#include "tests/server/server_test_util.h"

namespace ftd::testing {
namespace {

using ftd::v1::JobState;

class MetricsExporterTest : public ::testing::Test {
 protected:
  void StartDaemon(const server::JobMetricsExporterOptions& metrics = {}) {
    server::DaemonOptions options = env_.Options();
    options.job_metrics = metrics;
    auto d = server::Daemon::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = *std::move(d);
  }

  // CreateJob over gRPC (so the request series see it), as `token`'s tenant.
  std::string CreateJob(const std::string& token = kTokenA) {
    auto stub = MakeStub(daemon_->grpc_port());
    grpc::ClientContext ctx;
    Authorize(&ctx, token);
    ftd::v1::CreateJobRequest req;
    *req.mutable_spec() = ValidSpec(env_);
    ftd::v1::CreateJobResponse resp;
    grpc::Status st = stub->CreateJob(&ctx, req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return resp.job().id();
  }

  void Move(const std::string& id, JobState to) {
    auto st = daemon_->jobs()->Transition(id, to, {});
    ASSERT_TRUE(st.ok()) << st.status();
  }

  void Report(const std::string& id, int step, int total = 20) {
    ftd::v1::JobStatus::Progress p;
    p.set_step(step);
    p.set_total_steps(total);
    p.set_tokens(int64_t{4096} * step);
    auto st = daemon_->jobs()->RecordProgress(id, p, StepSample(step));
    ASSERT_TRUE(st.ok()) << st.status();
  }

  // An evaluation on the validation set, recorded as the scheduler records rank 0's report.
  void Eval(const std::string& id, int step, double loss) {
    ftd::v1::EvalResult e;
    e.set_step(step);
    e.set_loss(loss);
    e.set_targets(640);
    auto st = daemon_->jobs()->RecordEval(id, e);
    ASSERT_TRUE(st.ok()) << st.status();
  }

  std::vector<Sample> ScrapeOrDie(std::string* raw = nullptr) {
    absl::StatusOr<std::vector<Sample>> s = Scrape(daemon_->http_port(), raw);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *s : std::vector<Sample>{};
  }

  // Scrapes until `pred` holds, up to `timeout`; returns the last scrape.
  template <typename Pred>
  std::vector<Sample> ScrapeUntil(Pred pred, absl::Duration timeout) {
    const absl::Time deadline = absl::Now() + timeout;
    std::vector<Sample> s = ScrapeOrDie();
    while (!pred(s) && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(100));
      s = ScrapeOrDie();
    }
    return s;
  }

  TestEnv env_;
  std::unique_ptr<server::Daemon> daemon_;
};

TEST_F(MetricsExporterTest, PerJobSeriesFollowTheLatestSample) {
  StartDaemon();
  const std::string id = CreateJob();
  Move(id, ftd::v1::STARTING);
  Move(id, ftd::v1::RUNNING);
  for (int step = 1; step <= 5; ++step) Report(id, step);

  // /metrics applies every event already acknowledged before rendering: no wait needed.
  const std::vector<Sample> s = ScrapeOrDie();
  const std::map<std::string, std::string> job = {
      {"job_id", id}, {"tenant", "tenant-a"}, {"model", "tiny-moe"}};
  const ftd::v1::JobMetrics last = StepSample(5);
  EXPECT_THAT(FindSample(s, "ftd_job_loss", job), ::testing::Optional(::testing::DoubleNear(last.loss(), 1e-9)));
  EXPECT_THAT(FindSample(s, "ftd_job_tokens_per_second_per_gpu", job),
              ::testing::Optional(::testing::DoubleNear(last.tokens_per_second_per_gpu(), 1e-6)));
  EXPECT_EQ(FindSample(s, "ftd_job_model_tflops_per_gpu", job), 1.5);
  EXPECT_THAT(FindSample(s, "ftd_job_mfu_ratio", job), ::testing::Optional(::testing::DoubleNear(1.5 / 989, 1e-12)));
  EXPECT_EQ(FindSample(s, "ftd_job_peak_memory_bytes", job), double(int64_t{3} << 30));
  EXPECT_EQ(FindSample(s, "ftd_job_reserved_memory_bytes", job), double(int64_t{4} << 30));
  EXPECT_EQ(FindSample(s, "ftd_job_grad_norm", job), 0.9);
  EXPECT_EQ(FindSample(s, "ftd_job_learning_rate", job), 1e-5);
  EXPECT_EQ(FindSample(s, "ftd_job_all_to_all_seconds", job), 0.02);
  EXPECT_EQ(FindSample(s, "ftd_job_expert_load_imbalance_ratio", job), 1.25);
  auto phase = [&](const char* p) {
    auto l = job;
    l["phase"] = p;
    return FindSample(s, "ftd_job_step_phase_seconds", l);
  };
  EXPECT_EQ(phase("forward"), 0.1);
  EXPECT_EQ(phase("backward"), 0.2);
  EXPECT_EQ(phase("optimizer"), 0.05);
  EXPECT_EQ(FindSample(s, "ftd_job_gpus", job), 2);
  EXPECT_EQ(FindSample(s, "ftd_job_step", job), 5);
  EXPECT_EQ(FindSample(s, "ftd_job_total_steps", job), 20);
  EXPECT_EQ(FindSample(s, "ftd_job_tokens_total", job), 5 * 4096);
  EXPECT_EQ(FindSample(s, "ftd_job_restarts_total", job), 0);
  // The step histogram holds all five steps: 0.41, 0.42, 0.40, 0.41, 0.42 s.
  EXPECT_EQ(FindSample(s, "ftd_job_step_duration_seconds_count", job), 5);
  EXPECT_THAT(FindSample(s, "ftd_job_step_duration_seconds_sum", job),
              ::testing::Optional(::testing::DoubleNear(2.06, 1e-9)));
  auto bucket = job;
  bucket["le"] = "0.25";
  EXPECT_EQ(FindSample(s, "ftd_job_step_duration_seconds_bucket", bucket), 0);
  bucket["le"] = "0.5";
  EXPECT_EQ(FindSample(s, "ftd_job_step_duration_seconds_bucket", bucket), 5);
  const double now = absl::ToUnixSeconds(absl::Now());
  EXPECT_THAT(FindSample(s, "ftd_job_last_sample_timestamp_seconds", job),
              ::testing::Optional(::testing::DoubleNear(now, 30)));
}

TEST_F(MetricsExporterTest, EvalLossGaugeFollowsTheLatestEvaluation) {
  StartDaemon();
  const std::string id = CreateJob(), other = CreateJob(kTokenB);
  for (const std::string& j : {id, other}) {
    Move(j, ftd::v1::STARTING);
    Move(j, ftd::v1::RUNNING);
  }
  Report(id, 1);
  Report(id, 2);
  Report(other, 1);
  const std::map<std::string, std::string> job = {
      {"job_id", id}, {"tenant", "tenant-a"}, {"model", "tiny-moe"}};
  // Before any evaluation there is no eval series (not a misleading 0).
  std::vector<Sample> s = ScrapeOrDie();
  EXPECT_EQ(CountSamples(s, "ftd_job_eval_loss"), 0);
  EXPECT_EQ(CountSamples(s, "ftd_job_eval_step"), 0);

  Eval(id, 2, 2.5);
  Report(id, 3);  // a later step sample keeps the latest eval
  s = ScrapeOrDie();
  EXPECT_EQ(FindSample(s, "ftd_job_eval_loss", job), 2.5);
  EXPECT_EQ(FindSample(s, "ftd_job_eval_step", job), 2);
  EXPECT_THAT(FindSample(s, "ftd_job_loss", job), ::testing::Optional(::testing::DoubleNear(StepSample(3).loss(), 1e-9)));

  Report(id, 4);
  Eval(id, 4, 2.25);
  s = ScrapeOrDie();
  EXPECT_EQ(FindSample(s, "ftd_job_eval_loss", job), 2.25);
  EXPECT_EQ(FindSample(s, "ftd_job_eval_step", job), 4);
  EXPECT_EQ(CountSamples(s, "ftd_job_eval_loss"), 1);  // the job without a validation set has none
  EXPECT_EQ(CountSamples(s, "ftd_job_eval_loss", {{"job_id", other}}), 0);
  // Evaluations are not steps: the histogram and the token counter saw the 4 steps only.
  EXPECT_EQ(FindSample(s, "ftd_job_step_duration_seconds_count", job), 4);
  EXPECT_EQ(FindSample(s, "ftd_job_tokens_total", job), 4 * 4096);
  // The stored job says the same (GetJob/REST).
  EXPECT_EQ(daemon_->jobs()->store()->GetJob(id)->status().metrics().eval_loss(), 2.25);
}

TEST_F(MetricsExporterTest, JobsByStateAndQueueWait) {
  StartDaemon();
  const std::string a = CreateJob(), b = CreateJob(), c = CreateJob(kTokenB);
  std::vector<Sample> s = ScrapeOrDie();
  EXPECT_EQ(FindSample(s, "ftd_jobs", {{"state", "QUEUED"}}), 3);
  EXPECT_EQ(FindSample(s, "ftd_jobs", {{"state", "RUNNING"}}), 0);
  EXPECT_EQ(FindSample(s, "ftd_job_queue_wait_seconds_count"), 0);
  // No per-job series for jobs that only wait.
  EXPECT_EQ(CountSamples(s, "ftd_job_restarts_total"), 0);

  absl::SleepFor(absl::Milliseconds(200));
  Move(a, ftd::v1::STARTING);
  Move(a, ftd::v1::RUNNING);
  Move(b, ftd::v1::CANCELLED);
  s = ScrapeOrDie();
  EXPECT_EQ(FindSample(s, "ftd_jobs", {{"state", "QUEUED"}}), 1);
  EXPECT_EQ(FindSample(s, "ftd_jobs", {{"state", "RUNNING"}}), 1);
  EXPECT_EQ(FindSample(s, "ftd_jobs", {{"state", "CANCELLED"}}), 1);
  EXPECT_EQ(FindSample(s, "ftd_job_queue_wait_seconds_count"), 1);
  EXPECT_THAT(FindSample(s, "ftd_job_queue_wait_seconds_sum"),
              ::testing::Optional(::testing::AllOf(::testing::Ge(0.2), ::testing::Le(60))));
  // A started job has series before its first sample (restarts, GPUs from the spec).
  EXPECT_EQ(FindSample(s, "ftd_job_restarts_total", {{"job_id", a}}), 0);
  EXPECT_EQ(FindSample(s, "ftd_job_gpus", {{"job_id", a}}), 8);  // the spec's 1 x 8

  // A requeue (worker lost) counts a restart; the second wait is observed too.
  Move(a, ftd::v1::QUEUED);
  Move(a, ftd::v1::STARTING);
  s = ScrapeOrDie();
  EXPECT_EQ(FindSample(s, "ftd_job_restarts_total", {{"job_id", a}}), 1);
  EXPECT_EQ(FindSample(s, "ftd_job_queue_wait_seconds_count"), 2);
  EXPECT_EQ(FindSample(s, "ftd_jobs", {{"state", "STARTING"}}), 1);
  EXPECT_EQ(FindSample(s, "ftd_jobs", {{"state", "QUEUED"}}), 1);
  (void)c;
}

TEST_F(MetricsExporterTest, CountsSurviveARestartOfTheDaemon) {
  StartDaemon();
  const std::string a = CreateJob(), b = CreateJob();
  Move(a, ftd::v1::STARTING);
  Move(a, ftd::v1::RUNNING);
  Move(b, ftd::v1::CANCELLED);
  daemon_.reset();
  StartDaemon();
  // The new daemon counts the stored jobs; replay requeues the running one.
  // (Whether replay requeues the running job at once or after an adoption grace is the
  // scheduler's business: it is in one of the two states.)
  const std::vector<Sample> s = ScrapeOrDie();
  EXPECT_EQ(*FindSample(s, "ftd_jobs", {{"state", "QUEUED"}}) +
                *FindSample(s, "ftd_jobs", {{"state", "RUNNING"}}),
            1);
  EXPECT_EQ(FindSample(s, "ftd_jobs", {{"state", "CANCELLED"}}), 1);
  double total = 0;
  for (const Sample& x : s) total += x.name == "ftd_jobs" ? x.value : 0;
  EXPECT_EQ(total, 2);
}

TEST_F(MetricsExporterTest, RankInfoFollowsThePlacement) {
  StartDaemon();
  const std::string id = CreateJob();
  server::JobManager::TransitionOptions starting;
  starting.placement.emplace();
  for (int r = 0; r < 3; ++r) {
    auto* rank = starting.placement->add_ranks();
    rank->set_rank(r);
    rank->set_worker(r < 2 ? "worker-0" : "worker-1");
    rank->set_local_rank(r % 2);
  }
  ASSERT_TRUE(daemon_->jobs()->Transition(id, ftd::v1::STARTING, starting).ok());
  std::vector<Sample> s = ScrapeOrDie();
  EXPECT_EQ(CountSamples(s, "ftd_job_rank_info", {{"job_id", id}}), 3);
  EXPECT_EQ(FindSample(s, "ftd_job_rank_info",
                       {{"job_id", id}, {"rank", "2"}, {"worker", "worker-1"}, {"local_rank", "0"}}),
            1);
  // Requeued: no placement, no rank series.
  Move(id, ftd::v1::QUEUED);
  s = ScrapeOrDie();
  EXPECT_EQ(CountSamples(s, "ftd_job_rank_info", {{"job_id", id}}), 0);
  EXPECT_EQ(FindSample(s, "ftd_job_restarts_total", {{"job_id", id}}), 1);
}

TEST_F(MetricsExporterTest, EndedJobsSeriesAreRemovedAfterTheRetention) {
  server::JobMetricsExporterOptions options;
  options.retention = absl::Seconds(3);  // long enough for the first scrape on a loaded machine
  StartDaemon(options);
  const std::string done = CreateJob(), running = CreateJob();
  for (const std::string& id : {done, running}) {
    Move(id, ftd::v1::STARTING);
    Move(id, ftd::v1::RUNNING);
    Report(id, 1);
  }
  Move(done, ftd::v1::SUCCEEDED);
  // Still there right after the end (a last look at the final values) ...
  std::vector<Sample> s = ScrapeOrDie();
  EXPECT_EQ(CountSamples(s, "ftd_job_loss", {{"job_id", done}}), 1);
  // ... and gone a retention later; the running job keeps its series.
  s = ScrapeUntil([&](const auto& x) { return CountSamples(x, "ftd_job_loss", {{"job_id", done}}) == 0; },
                  absl::Seconds(30));
  EXPECT_EQ(CountSamples(s, "ftd_job_loss", {{"job_id", done}}), 0);
  EXPECT_EQ(CountSamples(s, "ftd_job_step_duration_seconds_count", {{"job_id", done}}), 0);
  EXPECT_EQ(CountSamples(s, "ftd_job_tokens_total", {{"job_id", done}}), 0);
  EXPECT_EQ(CountSamples(s, "ftd_job_step_phase_seconds", {{"job_id", done}}), 0);
  EXPECT_EQ(CountSamples(s, "ftd_job_loss", {{"job_id", running}}), 1);
  EXPECT_EQ(FindSample(s, "ftd_metrics_tracked_jobs"), 1);
  EXPECT_EQ(FindSample(s, "ftd_jobs", {{"state", "SUCCEEDED"}}), 1);
}

TEST_F(MetricsExporterTest, SeriesAreBoundedByMaxJobs) {
  server::JobMetricsExporterOptions options;
  options.max_jobs = 2;
  StartDaemon(options);
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) {
    ids.push_back(CreateJob());
    Move(ids.back(), ftd::v1::STARTING);
    Move(ids.back(), ftd::v1::RUNNING);
    Report(ids.back(), 1);
    if (i == 0) Move(ids[0], ftd::v1::FAILED);  // ended: evicted first
  }
  const std::vector<Sample> s = ScrapeOrDie();
  EXPECT_EQ(CountSamples(s, "ftd_job_loss"), 2);
  // ids[0] ended first, then ids[1] was the idlest running job.
  EXPECT_EQ(CountSamples(s, "ftd_job_loss", {{"job_id", ids[2]}}), 1);
  EXPECT_EQ(CountSamples(s, "ftd_job_loss", {{"job_id", ids[3]}}), 1);
  EXPECT_EQ(FindSample(s, "ftd_metrics_evicted_jobs_total"), 2);
  EXPECT_EQ(FindSample(s, "ftd_metrics_tracked_jobs"), 2);
}

TEST_F(MetricsExporterTest, RequestAndStoreSeries) {
  StartDaemon();
  const std::string id = CreateJob();
  ASSERT_EQ(HttpCall(daemon_->http_port(), "GET", "/v1/jobs/" + id, "", kTokenA)->status, 200);
  ASSERT_EQ(HttpCall(daemon_->http_port(), "GET", "/v1/jobs/nope", "", kTokenA)->status, 404);
  ASSERT_EQ(HttpCall(daemon_->http_port(), "GET", "/v1/jobs", "", "bad-token")->status, 401);
  ASSERT_EQ(HttpCall(daemon_->http_port(), "GET", "/healthz")->status, 200);
  {
    auto stub = MakeStub(daemon_->grpc_port());
    grpc::ClientContext ctx;  // no token
    ftd::v1::GetJobRequest req;
    req.set_id(id);
    ftd::v1::FineTuneJob job;
    ASSERT_EQ(stub->GetJob(&ctx, req, &job).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", daemon_->grpc_port()),
                                     grpc::InsecureChannelCredentials());
  EXPECT_EQ(RawUnaryCall(channel.get(), "/ftd.v1.JobService/NoSuchMethod", kTokenA, "").error_code(),
            grpc::StatusCode::UNIMPLEMENTED);
  Move(id, ftd::v1::STARTING);
  Move(id, ftd::v1::RUNNING);
  Report(id, 1);

  ScrapeOrDie();
  std::string raw;
  const std::vector<Sample> s = ScrapeOrDie(&raw);
  const std::string create = "/ftd.v1.JobService/CreateJob";
  EXPECT_EQ(FindSample(s, "ftd_grpc_requests_total", {{"method", create}, {"code", "OK"}}), 1);
  EXPECT_EQ(FindSample(s, "ftd_grpc_request_duration_seconds_count", {{"method", create}}), 1);
  EXPECT_EQ(FindSample(s, "ftd_grpc_requests_total",
                       {{"method", "/ftd.v1.JobService/GetJob"}, {"code", "UNAUTHENTICATED"}}),
            1);
  // Unknown methods never become label values.
  EXPECT_THAT(raw, ::testing::Not(::testing::HasSubstr("NoSuchMethod")));
  EXPECT_EQ(FindSample(s, "ftd_http_requests_total", {{"method", "GetJob"}, {"code", "200"}}), 1);
  EXPECT_EQ(FindSample(s, "ftd_http_requests_total", {{"method", "GetJob"}, {"code", "404"}}), 1);
  EXPECT_EQ(FindSample(s, "ftd_http_requests_total", {{"method", "ListJobs"}, {"code", "401"}}), 1);
  EXPECT_EQ(FindSample(s, "ftd_http_requests_total", {{"method", "/healthz"}, {"code", "200"}}), 1);
  EXPECT_EQ(FindSample(s, "ftd_http_requests_total", {{"method", "/metrics"}, {"code", "200"}}), 1);
  EXPECT_EQ(FindSample(s, "ftd_http_request_duration_seconds_count", {{"method", "GetJob"}}), 2);
  // Creates and transitions are fsync'd commits, samples are not.
  EXPECT_THAT(FindSample(s, "ftd_store_commit_duration_seconds_count", {{"durability", "full"}}),
              ::testing::Optional(::testing::Ge(3)));
  EXPECT_EQ(FindSample(s, "ftd_store_commit_duration_seconds_count", {{"durability", "normal"}}), 1);
}

TEST_F(MetricsExporterTest, AnEmptyWatchIdIsNotASubscriptionToEveryJob) {
  // The exporter subscribes to the hub with "" (every job); clients cannot.
  StartDaemon();
  const int64_t before = daemon_->events()->SubscriptionCount();
  auto stub = MakeStub(daemon_->grpc_port());
  grpc::ClientContext ctx;
  Authorize(&ctx, kTokenAdmin);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  ftd::v1::WatchJobRequest req;  // id ""
  auto reader = stub->WatchJob(&ctx, req);
  ftd::v1::JobEvent event;
  EXPECT_FALSE(reader->Read(&event));
  const grpc::Status st = reader->Finish();
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(daemon_->events()->SubscriptionCount(), before);
}

TEST_F(MetricsExporterTest, PromtoolAcceptsTheLiveScrape) {
  StartDaemon();
  for (int j = 0; j < 2; ++j) {
    const std::string id = CreateJob(j ? kTokenB : kTokenA);
    Move(id, ftd::v1::STARTING);
    Move(id, ftd::v1::RUNNING);
    for (int step = 1; step <= 3; ++step) Report(id, step);
    if (j == 0) Eval(id, 3, 2.5);
  }
  ASSERT_EQ(HttpCall(daemon_->http_port(), "GET", "/v1/jobs", "", kTokenA)->status, 200);
  ScrapeOrDie();
  std::string raw;
  const std::vector<Sample> s = ScrapeOrDie(&raw);
  ASSERT_EQ(CountSamples(s, "ftd_job_loss"), 2);
  ASSERT_EQ(CountSamples(s, "ftd_job_eval_loss"), 1);
  const std::string file = env_.root() + "/scrape.txt";
  std::ofstream(file) << raw;
  const std::string cmd = "promtool check metrics < " + file + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int rc = ::pclose(p);
  EXPECT_EQ(rc, 0) << "promtool check metrics:\n" << out << "\n--- scrape:\n" << raw;
  EXPECT_EQ(out, "") << raw;
}

}  // namespace
}  // namespace ftd::testing
