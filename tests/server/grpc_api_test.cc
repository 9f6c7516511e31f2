// Every JobService RPC over real gRPC on loopback, against an in-process daemon.
#include <atomic>
#include <fstream>
#include <set>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/server/server_test_util.h"

namespace ftd::testing {
namespace {

using ::testing::HasSubstr;
using ftd::v1::JobState;

class GrpcApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = server::Daemon::Start(env_.Options());
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = *std::move(d);
    stub_ = MakeStub(daemon_->grpc_port());
  }

  grpc::Status Create(const std::string& token, const ftd::v1::CreateJobRequest& req,
                      ftd::v1::CreateJobResponse* resp) {
    grpc::ClientContext ctx;
    Authorize(&ctx, token);
    return stub_->CreateJob(&ctx, req, resp);
  }
  std::string CreateJob(const std::string& token, std::map<std::string, std::string> labels = {}) {
    ftd::v1::CreateJobRequest req;
    *req.mutable_spec() = ValidSpec(env_);
    for (auto& [k, v] : labels) (*req.mutable_labels())[k] = v;
    ftd::v1::CreateJobResponse resp;
    grpc::Status st = Create(token, req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return resp.job().id();
  }
  grpc::Status Get(const std::string& token, const std::string& id, ftd::v1::FineTuneJob* job) {
    grpc::ClientContext ctx;
    Authorize(&ctx, token);
    ftd::v1::GetJobRequest req;
    req.set_id(id);
    return stub_->GetJob(&ctx, req, job);
  }
  grpc::Status Cancel(const std::string& token, const std::string& id, ftd::v1::FineTuneJob* job) {
    grpc::ClientContext ctx;
    Authorize(&ctx, token);
    ftd::v1::CancelJobRequest req;
    req.set_id(id);
    req.set_reason("test");
    return stub_->CancelJob(&ctx, req, job);
  }

  TestEnv env_;
  std::unique_ptr<server::Daemon> daemon_;
  std::unique_ptr<ftd::v1::JobService::Stub> stub_;
};

TEST_F(GrpcApiTest, CreateGetAndValidateOnlyPlan) {
  ftd::v1::CreateJobRequest req;
  *req.mutable_spec() = ValidSpec(env_);
  req.set_validate_only(true);
  ftd::v1::CreateJobResponse plan_only;
  ASSERT_TRUE(Create(kTokenA, req, &plan_only).ok());
  EXPECT_TRUE(plan_only.job().id().empty());
  EXPECT_EQ(plan_only.plan().world_size(), 8);
  EXPECT_EQ(plan_only.plan().data_parallel_size(), 1);
  EXPECT_GT(plan_only.plan().parameter_count(), 0);
  EXPECT_GT(plan_only.plan().memory_bytes_per_gpu(), 0);
  EXPECT_EQ(*daemon_->store()->CountJobs(), 0);  // validate_only stores nothing

  // Without a config.json the estimate is 0 with a note.
  *req.mutable_spec() = ValidSpec(env_);
  req.mutable_spec()->set_base_model(env_.model_root() + "/not-downloaded-yet");
  ASSERT_TRUE(Create(kTokenA, req, &plan_only).ok());
  EXPECT_EQ(plan_only.plan().memory_bytes_per_gpu(), 0);
  EXPECT_THAT(plan_only.plan().notes(), ::testing::Contains(HasSubstr("cannot read")));

  const std::string id = CreateJob(kTokenA, {{"team", "nlp"}});
  ftd::v1::FineTuneJob job;
  ASSERT_TRUE(Get(kTokenA, id, &job).ok());
  EXPECT_EQ(job.tenant(), "tenant-a");
  EXPECT_EQ(job.status().state(), ftd::v1::QUEUED);
  EXPECT_EQ(job.status().queue_position(), 1);
  EXPECT_EQ(job.labels().at("team"), "nlp");
  EXPECT_EQ(job.spec().hyperparameters().seq_len(), 4096);
  EXPECT_FALSE(job.etag().empty());
}

TEST_F(GrpcApiTest, IdempotentCreateByRequestId) {
  ftd::v1::CreateJobRequest req;
  *req.mutable_spec() = ValidSpec(env_);
  req.set_request_id("pipeline-run-42");
  ftd::v1::CreateJobResponse first, second, third;
  ASSERT_TRUE(Create(kTokenA, req, &first).ok());
  ASSERT_TRUE(Create(kTokenA, req, &second).ok());
  EXPECT_EQ(first.job().id(), second.job().id());
  EXPECT_EQ(*daemon_->store()->CountJobs(), 1);
  // Same request id, different spec: ALREADY_EXISTS naming the job.
  req.mutable_spec()->mutable_hyperparameters()->set_seq_len(2048);
  grpc::Status st = Create(kTokenA, req, &third);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_THAT(st.error_message(), HasSubstr(first.job().id()));
  // Another tenant's request ids are its own.
  ASSERT_TRUE(Create(kTokenB, req, &third).ok());
  EXPECT_NE(third.job().id(), first.job().id());
}

TEST_F(GrpcApiTest, ListPaginatesAndFiltersByStateAndLabel) {
  std::set<std::string> nlp;
  for (int i = 0; i < 7; ++i) {
    std::string id = CreateJob(kTokenA, {{"team", i % 2 ? "nlp" : "cv"}});
    if (i % 2) nlp.insert(id);
  }
  CreateJob(kTokenB);
  ftd::v1::FineTuneJob cancelled;
  ASSERT_TRUE(Cancel(kTokenA, *nlp.begin(), &cancelled).ok());

  std::vector<std::string> all;
  ftd::v1::ListJobsRequest req;
  req.set_page_size(3);
  for (int pages = 0;; ++pages) {
    ASSERT_LT(pages, 5);
    grpc::ClientContext ctx;
    Authorize(&ctx, kTokenA);
    ftd::v1::ListJobsResponse resp;
    ASSERT_TRUE(stub_->ListJobs(&ctx, req, &resp).ok());
    EXPECT_LE(resp.jobs_size(), 3);
    for (const auto& j : resp.jobs()) {
      EXPECT_EQ(j.tenant(), "tenant-a");
      all.push_back(j.id());
    }
    if (resp.next_page_token().empty()) break;
    req.set_page_token(resp.next_page_token());
  }
  EXPECT_EQ(all.size(), 7u);

  ftd::v1::ListJobsRequest filtered;
  filtered.add_states(ftd::v1::QUEUED);
  filtered.add_labels("team=nlp");
  grpc::ClientContext ctx;
  Authorize(&ctx, kTokenA);
  ftd::v1::ListJobsResponse resp;
  ASSERT_TRUE(stub_->ListJobs(&ctx, filtered, &resp).ok());
  EXPECT_EQ(resp.jobs_size(), 2);  // 3 nlp jobs, one cancelled
  for (const auto& j : resp.jobs()) {
    EXPECT_TRUE(nlp.count(j.id()));
    EXPECT_EQ(j.status().state(), ftd::v1::QUEUED);
  }
  // Admins see every tenant.
  grpc::ClientContext admin_ctx;
  Authorize(&admin_ctx, kTokenAdmin);
  ftd::v1::ListJobsResponse everything;
  ASSERT_TRUE(stub_->ListJobs(&admin_ctx, ftd::v1::ListJobsRequest(), &everything).ok());
  EXPECT_EQ(everything.jobs_size(), 8);

  grpc::ClientContext bad_ctx;
  Authorize(&bad_ctx, kTokenA);
  ftd::v1::ListJobsRequest bad;
  bad.set_page_token("garbage");
  EXPECT_EQ(stub_->ListJobs(&bad_ctx, bad, &resp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(GrpcApiTest, CancelQueuedThenCancelAgainIsFailedPreconditionAndUnknownIsNotFound) {
  const std::string id = CreateJob(kTokenA);
  ftd::v1::FineTuneJob job;
  ASSERT_TRUE(Cancel(kTokenA, id, &job).ok());
  EXPECT_EQ(job.status().state(), ftd::v1::CANCELLED);
  grpc::Status again = Cancel(kTokenA, id, &job);
  EXPECT_EQ(again.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(again.error_message(), HasSubstr("CANCELLED"));
  EXPECT_EQ(Get(kTokenA, "job-doesnotexist", &job).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Cancel(kTokenA, "job-doesnotexist", &job).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Get(kTokenA, "../etc", &job).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // A job finished by the scheduler API cannot be cancelled either.
  const std::string done = CreateJob(kTokenA);
  ASSERT_TRUE(daemon_->jobs()->Transition(done, ftd::v1::STARTING, {}).ok());
  ASSERT_TRUE(daemon_->jobs()->Transition(done, ftd::v1::RUNNING, {}).ok());
  ASSERT_TRUE(daemon_->jobs()->Transition(done, ftd::v1::SUCCEEDED, {}).ok());
  EXPECT_EQ(Cancel(kTokenA, done, &job).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  // A running job goes to CANCELLING (the scheduler finishes the cancel).
  const std::string running = CreateJob(kTokenA);
  ASSERT_TRUE(daemon_->jobs()->Transition(running, ftd::v1::STARTING, {}).ok());
  ASSERT_TRUE(Cancel(kTokenA, running, &job).ok());
  EXPECT_EQ(job.status().state(), ftd::v1::CANCELLING);
}

TEST_F(GrpcApiTest, EventsAndCheckpointsArePagedAndListed) {
  const std::string id = CreateJob(kTokenA);
  auto* jobs = daemon_->jobs();
  ASSERT_TRUE(jobs->Transition(id, ftd::v1::STARTING, {}).ok());
  ASSERT_TRUE(jobs->Transition(id, ftd::v1::RUNNING, {}).ok());
  for (int step = 1; step <= 5; ++step) {
    ftd::v1::JobStatus::Progress p;
    p.set_step(step);
    ftd::v1::JobMetrics m;
    m.set_loss(3.0 - step * 0.1);
    ASSERT_TRUE(jobs->RecordProgress(id, p, m).ok());
  }
  for (int step : {2, 4}) {
    ftd::v1::Checkpoint c;
    c.set_step(step);
    c.set_path(absl::StrCat("/out/step-", step));
    ASSERT_TRUE(jobs->AddCheckpoint(id, c).ok());
  }
  // 1 QUEUED + STARTING + RUNNING + 5 metrics + 2 checkpoints = 10 events.
  std::vector<int64_t> seqs;
  ftd::v1::ListJobEventsRequest req;
  req.set_id(id);
  req.set_page_size(4);
  for (int pages = 0;; ++pages) {
    ASSERT_LT(pages, 5);
    grpc::ClientContext ctx;
    Authorize(&ctx, kTokenA);
    ftd::v1::ListJobEventsResponse resp;
    ASSERT_TRUE(stub_->ListJobEvents(&ctx, req, &resp).ok());
    for (const auto& e : resp.events()) seqs.push_back(e.seq());
    if (resp.next_page_token().empty()) break;
    req.set_page_token(resp.next_page_token());
  }
  ASSERT_EQ(seqs.size(), 10u);
  for (size_t i = 0; i < seqs.size(); ++i) EXPECT_EQ(seqs[i], int64_t(i + 1));

  grpc::ClientContext ctx;
  Authorize(&ctx, kTokenA);
  ftd::v1::ListCheckpointsRequest creq;
  creq.set_id(id);
  ftd::v1::ListCheckpointsResponse cresp;
  ASSERT_TRUE(stub_->ListCheckpoints(&ctx, creq, &cresp).ok());
  ASSERT_EQ(cresp.checkpoints_size(), 2);
  EXPECT_EQ(cresp.checkpoints(1).path(), "/out/step-4");
}

// Reads events from a WatchJob stream on a thread until it ends or `n` arrive.
// `first_received` (optional) is incremented when the first event arrives: tests wait for it
// before generating events, so "from the current state" is well defined.
std::vector<ftd::v1::JobEvent> ReadWatch(ftd::v1::JobService::Stub* stub, const std::string& token,
                                         const std::string& id, int64_t after_seq, int n,
                                         grpc::Status* final_status,
                                         std::atomic<int>* first_received = nullptr) {
  grpc::ClientContext ctx;
  Authorize(&ctx, token);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  ftd::v1::WatchJobRequest req;
  req.set_id(id);
  req.set_after_seq(after_seq);
  auto reader = stub->WatchJob(&ctx, req);
  std::vector<ftd::v1::JobEvent> events;
  ftd::v1::JobEvent e;
  while (static_cast<int>(events.size()) < n && reader->Read(&e)) {
    events.push_back(e);
    if (events.size() == 1 && first_received != nullptr) first_received->fetch_add(1);
  }
  if (static_cast<int>(events.size()) >= n) ctx.TryCancel();
  *final_status = reader->Finish();
  return events;
}

void WaitUntil(const std::atomic<int>& counter, int value) {
  for (int i = 0; i < 1000 && counter.load() < value; ++i) absl::SleepFor(absl::Milliseconds(10));
  ASSERT_GE(counter.load(), value) << "watchers did not start";
}

TEST_F(GrpcApiTest, WatchStreamsLiveEventsEndsAtTerminalStateAndResumes) {
  const std::string id = CreateJob(kTokenA);
  std::vector<ftd::v1::JobEvent> live;
  grpc::Status live_status;
  std::atomic<int> started{0};
  std::thread watcher(
      [&] { live = ReadWatch(stub_.get(), kTokenA, id, 0, 100, &live_status, &started); });
  WaitUntil(started, 1);
  auto* jobs = daemon_->jobs();
  ASSERT_TRUE(jobs->Transition(id, ftd::v1::STARTING, {}).ok());
  ASSERT_TRUE(jobs->Transition(id, ftd::v1::RUNNING, {}).ok());
  ftd::v1::JobStatus::Progress p;
  p.set_step(1);
  ASSERT_TRUE(jobs->RecordProgress(id, p, ftd::v1::JobMetrics()).ok());
  JobState terminal = ftd::v1::FAILED;
  server::JobManager::TransitionOptions failed;
  failed.error = ftd::v1::JobError();
  failed.error->set_code("NCCL_TIMEOUT");
  failed.error->set_retryable(true);
  ASSERT_TRUE(jobs->Transition(id, terminal, failed).ok());
  watcher.join();
  // The stream ends by itself (OK) after the terminal status.
  EXPECT_TRUE(live_status.ok()) << live_status.error_message();
  ASSERT_EQ(live.size(), 5u);
  for (size_t i = 0; i < live.size(); ++i) EXPECT_EQ(live[i].seq(), int64_t(i + 1));
  EXPECT_EQ(live.back().status().state(), ftd::v1::FAILED);
  EXPECT_EQ(live.back().status().error().code(), "NCCL_TIMEOUT");

  // Resume after seq 2: exactly 3..5 again, from the store.
  grpc::Status resumed_status;
  auto resumed = ReadWatch(stub_.get(), kTokenA, id, 2, 100, &resumed_status);
  EXPECT_TRUE(resumed_status.ok());
  ASSERT_EQ(resumed.size(), 3u);
  EXPECT_EQ(resumed[0].seq(), 3);
  EXPECT_EQ(resumed[1].kind_case(), ftd::v1::JobEvent::kMetrics);
  // after_seq 0 on a finished job: its current (terminal) state, then the end.
  auto current = ReadWatch(stub_.get(), kTokenA, id, 0, 100, &resumed_status);
  ASSERT_EQ(current.size(), 1u);
  EXPECT_EQ(current[0].seq(), 5);
}

TEST_F(GrpcApiTest, WatchOfAQueuedJobDeliversTheCancel) {
  const std::string id = CreateJob(kTokenA);
  std::vector<ftd::v1::JobEvent> live;
  grpc::Status status;
  std::atomic<int> started{0};
  std::thread watcher([&] { live = ReadWatch(stub_.get(), kTokenA, id, 0, 100, &status, &started); });
  WaitUntil(started, 1);
  ftd::v1::FineTuneJob job;
  ASSERT_TRUE(Cancel(kTokenA, id, &job).ok());
  watcher.join();
  ASSERT_EQ(live.size(), 3u);  // QUEUED, message, CANCELLED
  EXPECT_EQ(live[0].status().state(), ftd::v1::QUEUED);
  EXPECT_EQ(live[1].message(), "cancel requested: test");
  EXPECT_EQ(live[2].status().state(), ftd::v1::CANCELLED);
}

TEST_F(GrpcApiTest, ManyWatchersSeeEveryEventOnceAndInOrderUnderConcurrentWriters) {
  const std::string id = CreateJob(kTokenA);
  constexpr int kWatchers = 64, kWriters = 4, kPerWriter = 60;
  std::vector<std::vector<ftd::v1::JobEvent>> seen(kWatchers);
  std::vector<grpc::Status> statuses(kWatchers);
  std::vector<std::thread> watchers;
  std::atomic<int> started{0};
  for (int w = 0; w < kWatchers; ++w) {
    // Half start from the beginning, half from the current state.
    watchers.emplace_back([&, w] {
      seen[w] = ReadWatch(stub_.get(), kTokenA, id, w % 2 ? 0 : 1, 1000, &statuses[w], &started);
    });
  }
  // Odd watchers start at the current state (QUEUED, seq 1) and even ones after seq 1: wait
  // until the odd ones have it, and give the even ones (no first event yet) time to subscribe.
  WaitUntil(started, kWatchers / 2);
  absl::SleepFor(absl::Milliseconds(200));
  std::vector<std::thread> writers;
  for (int t = 0; t < kWriters; ++t) {
    writers.emplace_back([&, t] {
      for (int i = 0; i < kPerWriter; ++i) {
        ASSERT_TRUE(daemon_->jobs()->AppendMessage(id, absl::StrCat("w", t, "-", i)).ok());
      }
    });
  }
  for (auto& t : writers) t.join();
  ftd::v1::FineTuneJob job;
  ASSERT_TRUE(Cancel(kTokenA, id, &job).ok());
  for (auto& t : watchers) t.join();
  const int64_t last = 1 + kWriters * kPerWriter + 2;  // QUEUED, messages, reason, CANCELLED
  for (int w = 0; w < kWatchers; ++w) {
    EXPECT_TRUE(statuses[w].ok()) << w << ": " << statuses[w].error_message();
    ASSERT_FALSE(seen[w].empty());
    // Gap-free and ordered, from seq 2 (after_seq=1) or 1 (the QUEUED state) to the end.
    const int64_t first = w % 2 ? 1 : 2;
    ASSERT_EQ(seen[w].size(), size_t(last - first + 1)) << w;
    for (size_t k = 0; k < seen[w].size(); ++k) EXPECT_EQ(seen[w][k].seq(), first + int64_t(k));
  }
}

TEST_F(GrpcApiTest, UnauthenticatedCallsAndCrossTenantAccessAreRejected) {
  const std::string id = CreateJob(kTokenA);
  ftd::v1::FineTuneJob job;
  EXPECT_EQ(Get("", id, &job).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Get("not-a-real-token-123456", id, &job).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  ftd::v1::CreateJobResponse resp;
  ftd::v1::CreateJobRequest req;
  *req.mutable_spec() = ValidSpec(env_);
  EXPECT_EQ(Create("", req, &resp).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  grpc::Status watch_status;
  ReadWatch(stub_.get(), "", id, 0, 1, &watch_status);
  EXPECT_EQ(watch_status.error_code(), grpc::StatusCode::UNAUTHENTICATED);

  // Tenant B can neither read, watch, list events of, nor cancel tenant A's job.
  EXPECT_EQ(Get(kTokenB, id, &job).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Cancel(kTokenB, id, &job).error_code(), grpc::StatusCode::NOT_FOUND);
  ReadWatch(stub_.get(), kTokenB, id, 0, 1, &watch_status);
  EXPECT_EQ(watch_status.error_code(), grpc::StatusCode::NOT_FOUND);
  grpc::ClientContext ctx;
  Authorize(&ctx, kTokenB);
  ftd::v1::ListJobEventsRequest ereq;
  ereq.set_id(id);
  ftd::v1::ListJobEventsResponse eresp;
  EXPECT_EQ(stub_->ListJobEvents(&ctx, ereq, &eresp).error_code(), grpc::StatusCode::NOT_FOUND);
  ASSERT_TRUE(Get(kTokenA, id, &job).ok());
  EXPECT_EQ(job.status().state(), ftd::v1::QUEUED);  // B's cancel changed nothing
  // The admin may.
  ASSERT_TRUE(Cancel(kTokenAdmin, id, &job).ok());
  EXPECT_EQ(job.status().state(), ftd::v1::CANCELLED);
}

TEST_F(GrpcApiTest, HealthIsServingAndReflectionListsTheService) {
  EXPECT_EQ(HealthCheck(daemon_->grpc_port(), ""), 1);
  EXPECT_EQ(HealthCheck(daemon_->grpc_port(), "ftd.v1.JobService"), 1);
  auto services = ReflectionServices(daemon_->grpc_port());
  ASSERT_TRUE(services.ok()) << services.status();
  EXPECT_THAT(*services, ::testing::Contains("ftd.v1.JobService"));
  EXPECT_THAT(*services, ::testing::Contains("grpc.health.v1.Health"));
  daemon_->Shutdown(absl::Milliseconds(100));
  EXPECT_NE(HealthCheck(daemon_->grpc_port(), ""), 1);
}

TEST_F(GrpcApiTest, TokensAreReloadedOnRequest) {
  { std::ofstream(env_.tokens_file()) << "rotated-token-0123456789 tenant-a user\n"; }
  ASSERT_TRUE(daemon_->ReloadTokens().ok());
  ftd::v1::FineTuneJob job;
  EXPECT_EQ(Get(kTokenA, "job-x", &job).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Get("rotated-token-0123456789", "job-x", &job).error_code(), grpc::StatusCode::NOT_FOUND);
}

}  // namespace
}  // namespace ftd::testing
