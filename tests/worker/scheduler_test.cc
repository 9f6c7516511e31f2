// The scheduler against a real SQLite store and JobManager, with workers simulated by calling
// Register/Heartbeat directly (the real ftd-worker is exercised by tests/python/test_worker.py).
#include "server/scheduler.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "server/sqlite_job_store.h"
#include "server/time_util.h"

namespace ftd::server {
namespace {

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ftd-sched-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    OpenScheduler();
  }
  void TearDown() override {
    sched_.reset();
    manager_.reset();
    store_.reset();
    ftd::RemoveTree(dir_).IgnoreError();
  }
  void OpenScheduler(SchedulerOptions o = Fast()) {
    sched_.reset();
    manager_.reset();
    store_.reset();
    auto store = SqliteJobStore::Open(dir_ + "/jobs.db");
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    manager_ = std::make_unique<JobManager>(store_.get(), &hub_);
    auto s = Scheduler::Create(manager_.get(), o);
    ASSERT_TRUE(s.ok()) << s.status();
    sched_ = *std::move(s);
  }

  static SchedulerOptions Fast() {
    SchedulerOptions o;
    o.heartbeat_timeout = absl::Seconds(30);
    o.adopt_grace = absl::Seconds(30);
    return o;
  }

  // A running two-node gang, one rank on each of workers a and b, with heartbeats every 50 ms
  // and a 300 ms timeout, so that a worker that goes silent is declared lost within a test.
  std::string RunTwoNodeGang(int max_restarts) {
    SchedulerOptions o = Fast();
    o.heartbeat_interval = absl::Milliseconds(50);
    o.heartbeat_timeout = absl::Milliseconds(300);
    OpenScheduler(o);
    const std::string id = AddJob(2, 1, 0, max_restarts);
    PlaceTwoNodeGang(id);
    return id;
  }

  // Workers a and b (one slot each) register, the scheduler places job `id` (2 nodes x 1 GPU) on
  // them, and each reports its rank running.
  void PlaceTwoNodeGang(const std::string& id) {
    Register("a", 1);
    Register("b", 1);
    sched_->Tick();
    Beat("a", {});
    Beat("b", {});
    Beat("a", {Proc(id, 0, 0)});
    Beat("b", {Proc(id, 0, 1)});
  }

  std::string AddJob(int nodes, int per_node, int priority = 0, int max_restarts = 0,
                     int64_t max_runtime_seconds = 0) {
    NewJob n;
    n.job.set_id(absl::StrCat("job-", ++next_id_));
    n.job.set_tenant("t");
    n.job.mutable_spec()->mutable_resources()->set_nodes(nodes);
    n.job.mutable_spec()->mutable_resources()->set_gpus_per_node(per_node);
    n.job.mutable_spec()->mutable_scheduling()->set_priority(priority);
    n.job.mutable_spec()->mutable_scheduling()->set_max_restarts(max_restarts);
    n.job.mutable_spec()->mutable_scheduling()->set_max_runtime_seconds(max_runtime_seconds);
    n.job.mutable_spec()->set_output("/tmp/out");
    n.job.mutable_status()->set_state(ftd::v1::QUEUED);
    *n.job.mutable_create_time() = ToProtoTime(absl::Now() + absl::Microseconds(next_id_));
    n.spec_hash = n.job.id();
    EXPECT_TRUE(manager_->Create(n).ok());
    return n.job.id();
  }

  std::string Register(const std::string& name, int slots,
                       const std::vector<ftd::v1::RankProcess>& ranks = {}) {
    ftd::v1::RegisterRequest r;
    r.set_name(name);
    r.set_address("127.0.0.1");
    r.mutable_resources()->set_cpu_slots(slots);
    for (const auto& p : ranks) *r.add_ranks() = p;
    auto resp = sched_->Register(r);
    EXPECT_TRUE(resp.ok()) << resp.status();
    sessions_[name] = resp->session_id();
    return resp->session_id();
  }

  ftd::v1::HeartbeatResponse Beat(const std::string& name, const std::vector<ftd::v1::RankProcess>& ranks,
                                  const std::vector<ftd::v1::RankReport>& reports = {}) {
    ftd::v1::HeartbeatRequest h;
    h.set_name(name);
    h.set_session_id(sessions_[name]);
    for (const auto& p : ranks) *h.add_ranks() = p;
    for (const auto& r : reports) *h.add_reports() = r;
    auto resp = sched_->Heartbeat(h);
    EXPECT_TRUE(resp.ok()) << resp.status();
    return resp.ok() ? *resp : ftd::v1::HeartbeatResponse();
  }

  static ftd::v1::RankProcess Proc(const std::string& job, int attempt, int rank, bool exited = false,
                                   int code = 0) {
    ftd::v1::RankProcess p;
    p.mutable_key()->set_job_id(job);
    p.mutable_key()->set_attempt(attempt);
    p.mutable_key()->set_rank(rank);
    p.set_state(exited ? ftd::v1::RANK_EXITED : ftd::v1::RANK_RUNNING);
    p.set_exit_code(code);
    return p;
  }

  // Rank 0's report of optimizer step `step` of `total`, numbered `seq`.
  static ftd::v1::RankReport StepReport(const std::string& job, int64_t seq, int64_t step, int64_t total) {
    ftd::v1::RankReport r;
    r.set_seq(seq);
    r.mutable_key()->set_job_id(job);
    r.mutable_key()->set_rank(0);
    r.mutable_step()->mutable_progress()->set_step(step);
    r.mutable_step()->mutable_progress()->set_total_steps(total);
    r.mutable_step()->mutable_metrics()->set_loss(10.0 / static_cast<double>(step));
    return r;
  }

  ftd::v1::FineTuneJob Job(const std::string& id) { return *store_->GetJob(id); }

  // Until the job's first start + max_runtime_seconds has passed.
  void SleepPastDeadline(const std::string& id) {
    const ftd::v1::FineTuneJob job = Job(id);
    const absl::Time deadline = FromProtoTime(job.status().start_time()) +
                                absl::Seconds(job.spec().scheduling().max_runtime_seconds());
    absl::SleepFor(deadline - absl::Now() + absl::Milliseconds(50));
  }

  std::string dir_;
  EventHub hub_;
  std::unique_ptr<SqliteJobStore> store_;
  std::unique_ptr<JobManager> manager_;
  std::unique_ptr<Scheduler> sched_;
  std::map<std::string, std::string> sessions_;
  int next_id_ = 0;
};

TEST_F(SchedulerTest, GangStartsRunsAndSucceeds) {
  const std::string id = AddJob(2, 2);
  Register("a", 2);
  Register("b", 2);
  sched_->Tick();
  EXPECT_EQ(Job(id).status().state(), ftd::v1::STARTING);
  auto ra = Beat("a", {});
  ASSERT_EQ(ra.start_size(), 1);
  EXPECT_EQ(ra.start(0).ranks_size(), 2);
  EXPECT_EQ(ra.start(0).world_size(), 4);
  EXPECT_EQ(ra.start(0).master_addr(), "127.0.0.1");
  EXPECT_GT(ra.start(0).master_port(), 0);
  auto rb = Beat("b", {});
  ASSERT_EQ(rb.start_size(), 1);
  EXPECT_EQ(rb.start(0).ranks(0).rank(), 2);
  EXPECT_EQ(rb.start(0).master_port(), ra.start(0).master_port());
  // Level-triggered: not started yet -> asked again.
  EXPECT_EQ(Beat("a", {}).start_size(), 1);
  Beat("a", {Proc(id, 0, 0), Proc(id, 0, 1)});
  Beat("b", {Proc(id, 0, 2), Proc(id, 0, 3)});
  EXPECT_EQ(Job(id).status().state(), ftd::v1::RUNNING);
  // Progress from rank 0, a checkpoint (twice: recorded once).
  ftd::v1::RankReport step;
  step.set_seq(1);
  *step.mutable_key() = Proc(id, 0, 0).key();
  step.mutable_step()->mutable_progress()->set_step(3);
  step.mutable_step()->mutable_metrics()->set_loss(2.5);
  ftd::v1::RankReport ck;
  ck.set_seq(2);
  *ck.mutable_key() = Proc(id, 0, 0).key();
  ck.mutable_checkpoint()->set_step(3);
  ck.mutable_checkpoint()->set_path("/tmp/out/checkpoint-3");
  auto r = Beat("a", {Proc(id, 0, 0), Proc(id, 0, 1)}, {step, ck});
  EXPECT_EQ(r.ack_seq(), 2);
  Beat("a", {Proc(id, 0, 0), Proc(id, 0, 1)}, {step, ck});  // a resend: ignored
  EXPECT_EQ(Job(id).status().progress().step(), 3);
  EXPECT_DOUBLE_EQ(Job(id).status().metrics().loss(), 2.5);
  EXPECT_EQ(Job(id).status().checkpoints_size(), 1);
  // All exit 0.
  auto fa = Beat("a", {Proc(id, 0, 0, true), Proc(id, 0, 1, true)});
  EXPECT_EQ(fa.forget_size(), 2);
  Beat("b", {Proc(id, 0, 2, true), Proc(id, 0, 3, true)});
  EXPECT_EQ(Job(id).status().state(), ftd::v1::SUCCEEDED);
}

TEST_F(SchedulerTest, EvalReportsAreRecordedWithTheJobsMetrics) {
  const std::string id = AddJob(1, 1);
  Register("a", 1);
  sched_->Tick();
  Beat("a", {});
  Beat("a", {Proc(id, 0, 0)});
  ASSERT_EQ(Job(id).status().state(), ftd::v1::RUNNING);
  auto report = [&](int64_t seq) {
    ftd::v1::RankReport r;
    r.set_seq(seq);
    *r.mutable_key() = Proc(id, 0, 0).key();
    return r;
  };
  ftd::v1::RankReport step = report(1);
  step.mutable_step()->mutable_progress()->set_step(2);
  step.mutable_step()->mutable_metrics()->set_loss(3.0);
  ftd::v1::RankReport eval = report(2);
  eval.mutable_eval()->set_step(2);
  eval.mutable_eval()->set_loss(2.75);
  eval.mutable_eval()->set_targets(50);
  ftd::v1::RankReport next = report(3);
  next.mutable_step()->mutable_progress()->set_step(3);
  next.mutable_step()->mutable_metrics()->set_loss(2.9);
  EXPECT_EQ(Beat("a", {Proc(id, 0, 0)}, {step, eval, next}).ack_seq(), 3);
  const auto m = Job(id).status().metrics();
  EXPECT_DOUBLE_EQ(m.loss(), 2.9);
  EXPECT_DOUBLE_EQ(m.eval_loss(), 2.75);
  EXPECT_EQ(m.eval_step(), 2);
  // A stale attempt's eval is fenced off.
  ftd::v1::RankReport stale = report(4);
  stale.mutable_key()->set_attempt(7);
  stale.mutable_eval()->set_step(3);
  stale.mutable_eval()->set_loss(9.0);
  Beat("a", {Proc(id, 0, 0)}, {stale});
  EXPECT_DOUBLE_EQ(Job(id).status().metrics().eval_loss(), 2.75);
}

TEST_F(SchedulerTest, StaleReportsAreFencedAndStaleRanksStopped) {
  const std::string id = AddJob(1, 1, 0, /*max_restarts=*/2);
  Register("a", 1);
  sched_->Tick();
  Beat("a", {});
  Beat("a", {Proc(id, 0, 0)});
  // The rank crashes: the attempt fails and the job is requeued as attempt 1.
  Beat("a", {Proc(id, 0, 0, true, 3)});
  auto job = Job(id);
  EXPECT_EQ(job.status().state(), ftd::v1::QUEUED);
  EXPECT_EQ(job.status().attempt(), 1);
  sched_->Tick();
  EXPECT_EQ(Job(id).status().state(), ftd::v1::STARTING);
  // A zombie of attempt 0 shows up running: told to stop; its progress is not recorded.
  ftd::v1::RankReport step;
  step.set_seq(10);
  *step.mutable_key() = Proc(id, 0, 0).key();
  step.mutable_step()->mutable_progress()->set_step(99);
  auto r = Beat("a", {Proc(id, 0, 0)}, {step});
  ASSERT_EQ(r.stop_size(), 1);
  EXPECT_EQ(r.stop(0).ranks(0).attempt(), 0);
  ASSERT_EQ(r.start_size(), 1);
  EXPECT_EQ(r.start(0).attempt(), 1);
  EXPECT_NE(Job(id).status().progress().step(), 99);
}

TEST_F(SchedulerTest, OutOfRestartsFailsWithTheReason) {
  const std::string id = AddJob(1, 1, 0, /*max_restarts=*/0);
  Register("a", 1);
  sched_->Tick();
  Beat("a", {});
  ftd::v1::RankProcess p = Proc(id, 0, 0, true, 0);
  p.set_term_signal(9);
  p.add_tail("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB");
  Beat("a", {p});
  auto job = Job(id);
  EXPECT_EQ(job.status().state(), ftd::v1::FAILED);
  EXPECT_EQ(job.status().error().code(), "OOM");
  EXPECT_NE(job.status().error().message().find("signal 9"), std::string::npos);
}

TEST_F(SchedulerTest, RegisterValidatesTheWorker) {
  ftd::v1::RegisterRequest r;
  r.set_name("../etc");
  r.set_address("127.0.0.1");
  r.mutable_resources()->set_cpu_slots(1);
  EXPECT_EQ(sched_->Register(r).status().code(), absl::StatusCode::kInvalidArgument);
  r.set_name("ok-name");
  r.mutable_resources()->set_cpu_slots(0);
  auto st = sched_->Register(r).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("no GPU and no CPU slot"), std::string::npos);
}

TEST_F(SchedulerTest, UnknownSessionMustRegisterAgain) {
  ftd::v1::HeartbeatRequest h;
  h.set_name("ghost");
  h.set_session_id("nope");
  EXPECT_EQ(sched_->Heartbeat(h).status().code(), absl::StatusCode::kFailedPrecondition);
  Register("a", 1);
  const std::string old = sessions_["a"];
  Register("a", 1);  // a newer session replaces it
  h.set_name("a");
  h.set_session_id(old);
  EXPECT_EQ(sched_->Heartbeat(h).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(SchedulerTest, StrictPriorityThenFifoWithoutPartialPlacement) {
  Register("a", 2);
  Register("b", 2);
  const std::string low = AddJob(3, 1, 0);
  const std::string high = AddJob(3, 1, 5);
  const std::string small = AddJob(1, 1, 0);  // fits next to high, but queued behind low
  const std::string huge = AddJob(1, 8, 9);   // fits no worker: waits, blocks nobody
  sched_->Tick();
  EXPECT_EQ(Job(high).status().state(), ftd::v1::STARTING);
  EXPECT_EQ(Job(low).status().state(), ftd::v1::QUEUED);
  EXPECT_EQ(Job(small).status().state(), ftd::v1::QUEUED);
  EXPECT_EQ(Job(huge).status().state(), ftd::v1::QUEUED);
  int busy = 0;
  for (const WorkerInfo& w : sched_->workers().Snapshot()) busy += w.busy_slots;
  EXPECT_EQ(busy, 3);
}

// spec.scheduling.max_runtime_seconds: the gang is stopped (the ranks save a checkpoint on
// SIGTERM) and the job FAILS with DEADLINE_EXCEEDED, not requeued despite max_restarts.
TEST_F(SchedulerTest, DeadlineStopsTheGangAndFailsTheJob) {
  const std::string id = AddJob(1, 1, 0, /*max_restarts=*/3, /*max_runtime_seconds=*/3);
  Register("a", 1);
  sched_->Tick();
  ASSERT_EQ(Job(id).status().state(), ftd::v1::STARTING);
  ASSERT_TRUE(Job(id).status().has_start_time());
  Beat("a", {Proc(id, 0, 0)});
  ASSERT_EQ(Job(id).status().state(), ftd::v1::RUNNING);
  sched_->Tick();
  EXPECT_EQ(Beat("a", {Proc(id, 0, 0)}).stop_size(), 0);  // not yet
  SleepPastDeadline(id);
  sched_->Tick();
  auto r = Beat("a", {Proc(id, 0, 0)});
  ASSERT_EQ(r.stop_size(), 1);
  EXPECT_EQ(r.stop(0).ranks(0).job_id(), id);
  // The rank saves a checkpoint at its step boundary and exits 1 (stopped by SIGTERM).
  ftd::v1::RankReport ck;
  ck.set_seq(1);
  ck.mutable_key()->set_job_id(id);
  ck.mutable_checkpoint()->set_step(7);
  ck.mutable_checkpoint()->set_path("/tmp/out/checkpoint-7");
  ftd::v1::RankProcess gone = Proc(id, 0, 0, /*exited=*/true, /*code=*/1);
  gone.set_last_report_seq(1);
  Beat("a", {gone}, {ck});
  sched_->Tick();
  const ftd::v1::FineTuneJob job = Job(id);
  EXPECT_EQ(job.status().state(), ftd::v1::FAILED);
  EXPECT_EQ(job.status().error().code(), "DEADLINE_EXCEEDED");
  EXPECT_FALSE(job.status().error().retryable());
  EXPECT_NE(job.status().error().message().find("last checkpoint /tmp/out/checkpoint-7"), std::string::npos)
      << job.status().error().message();
  EXPECT_EQ(job.status().attempt(), 0);
}

// The clock starts at the first placement and survives a coordinator restart and a requeue.
TEST_F(SchedulerTest, DeadlineSurvivesRestartsAndRequeues) {
  const std::string id = AddJob(1, 1, 0, /*max_restarts=*/3, /*max_runtime_seconds=*/5);
  Register("a", 1);
  sched_->Tick();
  Beat("a", {Proc(id, 0, 0)});
  ASSERT_EQ(Job(id).status().state(), ftd::v1::RUNNING);
  const int64_t started = Job(id).status().start_time().seconds();

  OpenScheduler();  // restart: the adopted attempt keeps the deadline of the first start
  ASSERT_TRUE(sched_->Recover().ok());
  Register("a", 1, {Proc(id, 0, 0)});
  // The rank fails: requeued (attempt 1) and placed again, with the same start time.
  Beat("a", {Proc(id, 0, 0, /*exited=*/true, /*code=*/1)});
  sched_->Tick();
  ASSERT_EQ(Job(id).status().attempt(), 1);
  sched_->Tick();
  Beat("a", {});
  Beat("a", {Proc(id, 1, 0)});
  ASSERT_EQ(Job(id).status().state(), ftd::v1::RUNNING);
  EXPECT_EQ(Job(id).status().start_time().seconds(), started);
  SleepPastDeadline(id);
  sched_->Tick();
  EXPECT_EQ(Beat("a", {Proc(id, 1, 0)}).stop_size(), 1);
  Beat("a", {Proc(id, 1, 0, /*exited=*/true, /*code=*/1)});
  sched_->Tick();
  EXPECT_EQ(Job(id).status().state(), ftd::v1::FAILED);
  EXPECT_EQ(Job(id).status().error().code(), "DEADLINE_EXCEEDED");
}

// A job requeued after a failure that runs out of time while waiting fails without starting.
TEST_F(SchedulerTest, QueuedJobPastItsDeadlineFailsWithoutStarting) {
  const std::string id = AddJob(1, 1, 0, /*max_restarts=*/3, /*max_runtime_seconds=*/3);
  Register("a", 1);
  sched_->Tick();
  Beat("a", {Proc(id, 0, 0)});
  Beat("a", {Proc(id, 0, 0, /*exited=*/true, /*code=*/1)});
  ASSERT_EQ(Job(id).status().state(), ftd::v1::QUEUED);
  SleepPastDeadline(id);
  sched_->Tick();
  EXPECT_EQ(Job(id).status().state(), ftd::v1::FAILED);
  EXPECT_EQ(Job(id).status().error().code(), "DEADLINE_EXCEEDED");
}

TEST_F(SchedulerTest, RestartAdoptsRunningAttempt) {
  const std::string id = AddJob(2, 1);
  PlaceTwoNodeGang(id);
  ASSERT_EQ(Job(id).status().state(), ftd::v1::RUNNING);

  OpenScheduler();  // the coordinator restarts
  auto report = sched_->Recover();
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->requeued, 0);
  sched_->Tick();
  EXPECT_EQ(Job(id).status().state(), ftd::v1::RUNNING);
  Register("a", 1, {Proc(id, 0, 0)});
  EXPECT_EQ(Beat("a", {Proc(id, 0, 0)}).start_size(), 0);  // nothing restarted
  Register("b", 1, {Proc(id, 0, 1)});
  Beat("b", {Proc(id, 0, 1)});
  sched_->Tick();
  EXPECT_EQ(Job(id).status().state(), ftd::v1::RUNNING);
  EXPECT_EQ(Job(id).status().attempt(), 0);
  Beat("a", {Proc(id, 0, 0, true)});
  Beat("b", {Proc(id, 0, 1, true)});
  EXPECT_EQ(Job(id).status().state(), ftd::v1::SUCCEEDED);
}

// The ranks finish while the coordinator is down: the workers register again with exited
// ranks (a Register carries no reports) and send rank 0's last steps in the next heartbeat. The
// job must not end before those steps are applied (it ended SUCCEEDED at the step of the last
// report the old coordinator saw).
TEST_F(SchedulerTest, RestartWithRanksExitedMeanwhileAppliesTheirReportsFirst) {
  const std::string id = AddJob(2, 1);
  Register("a", 1);
  Register("b", 1);
  sched_->Tick();
  Beat("a", {Proc(id, 0, 0)});
  Beat("b", {Proc(id, 0, 1)});
  Beat("a", {Proc(id, 0, 0)}, {StepReport(id, 1, 4, 40)});
  ASSERT_EQ(Job(id).status().progress().step(), 4);

  OpenScheduler();  // the coordinator restarts; meanwhile both ranks finish all 40 steps
  ASSERT_TRUE(sched_->Recover().ok());
  ftd::v1::RankProcess r0 = Proc(id, 0, 0, /*exited=*/true);
  r0.set_last_report_seq(40);  // its steps 5..40 are reports 5..40, not yet delivered
  ftd::v1::RankProcess r1 = Proc(id, 0, 1, /*exited=*/true);
  Register("b", 1, {r1});
  Register("a", 1, {r0});
  sched_->Tick();
  EXPECT_EQ(Job(id).status().state(), ftd::v1::RUNNING) << "ended before rank 0's reports";
  std::vector<ftd::v1::RankReport> steps;
  for (int step = 5; step <= 40; ++step) steps.push_back(StepReport(id, step, step, 40));
  auto resp = Beat("a", {r0}, steps);
  EXPECT_EQ(resp.ack_seq(), 40);
  ASSERT_EQ(resp.forget_size(), 1);  // the exit is recorded now
  sched_->Tick();
  const ftd::v1::FineTuneJob job = Job(id);
  EXPECT_EQ(job.status().state(), ftd::v1::SUCCEEDED);
  EXPECT_EQ(job.status().attempt(), 0);
  EXPECT_EQ(job.status().progress().step(), 40);
  EXPECT_EQ(job.status().metrics().step(), 40);
}

// A heartbeat whose report batch stops short of a rank's last report (the worker sends at most
// kMaxReportsPerHeartbeat) leaves the exit for a later heartbeat.
TEST_F(SchedulerTest, ExitWaitsForTheReportsBeforeIt) {
  const std::string id = AddJob(1, 1);
  Register("a", 1);
  sched_->Tick();
  Beat("a", {Proc(id, 0, 0)});
  ftd::v1::RankProcess done = Proc(id, 0, 0, /*exited=*/true);
  done.set_last_report_seq(3);
  auto first = Beat("a", {done}, {StepReport(id, 1, 1, 3), StepReport(id, 2, 2, 3)});
  EXPECT_EQ(first.forget_size(), 0);
  EXPECT_EQ(Job(id).status().state(), ftd::v1::RUNNING);
  auto second = Beat("a", {done}, {StepReport(id, 3, 3, 3)});
  EXPECT_EQ(second.forget_size(), 1);
  EXPECT_EQ(Job(id).status().state(), ftd::v1::SUCCEEDED);
  EXPECT_EQ(Job(id).status().progress().step(), 3);
}

TEST_F(SchedulerTest, LostWorkerFailsTheAttemptAndStopsTheGang) {
  const std::string id = RunTwoNodeGang(/*max_restarts=*/1);
  ASSERT_EQ(Job(id).status().state(), ftd::v1::RUNNING);
  // b goes silent; a keeps beating.
  for (int i = 0; i < 8; ++i) {
    absl::SleepFor(absl::Milliseconds(50));
    Beat("a", {Proc(id, 0, 0)});
  }
  sched_->Tick();
  auto r = Beat("a", {Proc(id, 0, 0)});
  ASSERT_EQ(r.stop_size(), 1);  // the survivor is stopped
  EXPECT_EQ(r.stop(0).ranks(0).rank(), 0);
  EXPECT_NE(r.stop(0).reason().find("worker b missed heartbeats"), std::string::npos);
  EXPECT_EQ(Job(id).status().state(), ftd::v1::RUNNING);  // until the gang is down
  Beat("a", {Proc(id, 0, 0, true, 0)});
  auto job = Job(id);
  EXPECT_EQ(job.status().state(), ftd::v1::QUEUED);
  EXPECT_EQ(job.status().attempt(), 1);
  // Only a remains (1 slot): the 2-rank job waits instead of being partly placed.
  sched_->Tick();
  EXPECT_EQ(Job(id).status().state(), ftd::v1::QUEUED);
}

TEST_F(SchedulerTest, LostWorkerIsTheCauseWhenItsPeersFailFirst) {
  const std::string id = RunTwoNodeGang(/*max_restarts=*/0);
  // b's node dies; a's rank sees its peer's connection close and exits 1 before b is declared lost.
  ftd::v1::RankProcess failed = Proc(id, 0, 0, true, 1);
  failed.add_tail("error: collective all_reduce failed: Connection closed by peer");
  Beat("a", {failed});
  EXPECT_EQ(Job(id).status().state(), ftd::v1::RUNNING);  // b's rank is not known to be gone yet
  absl::SleepFor(absl::Milliseconds(400));
  Beat("a", {});
  sched_->Tick();
  auto job = Job(id);
  EXPECT_EQ(job.status().state(), ftd::v1::FAILED);
  EXPECT_EQ(job.status().error().code(), "WORKER_LOST");
  EXPECT_NE(job.status().error().message().find("worker b missed heartbeats"), std::string::npos);
  EXPECT_NE(job.status().error().message().find("Connection closed by peer"), std::string::npos);
}

TEST_F(SchedulerTest, HangWatchdogFailsAnAttemptWithoutSteps) {
  SchedulerOptions o = Fast();
  o.hang_timeout = absl::Milliseconds(200);
  OpenScheduler(o);
  const std::string id = AddJob(1, 1);
  Register("a", 1);
  sched_->Tick();
  Beat("a", {});
  Beat("a", {Proc(id, 0, 0)});
  ASSERT_EQ(Job(id).status().state(), ftd::v1::RUNNING);
  absl::SleepFor(absl::Milliseconds(300));
  sched_->Tick();
  auto r = Beat("a", {Proc(id, 0, 0)});
  ASSERT_EQ(r.stop_size(), 1);
  Beat("a", {Proc(id, 0, 0, true, 0)});
  auto job = Job(id);
  EXPECT_EQ(job.status().state(), ftd::v1::FAILED);
  EXPECT_EQ(job.status().error().code(), "HANG");
}

TEST_F(SchedulerTest, CancelStopsRanksThenCancels) {
  const std::string id = AddJob(1, 2);
  Register("a", 2);
  sched_->Tick();
  Beat("a", {});
  Beat("a", {Proc(id, 0, 0), Proc(id, 0, 1)});
  ASSERT_TRUE(manager_->Cancel(id, "test").ok());
  sched_->Tick();
  auto r = Beat("a", {Proc(id, 0, 0), Proc(id, 0, 1)});
  ASSERT_EQ(r.stop_size(), 1);
  EXPECT_EQ(r.stop(0).ranks_size(), 2);
  EXPECT_EQ(Job(id).status().state(), ftd::v1::CANCELLING);
  Beat("a", {Proc(id, 0, 0, true, 0)});  // rank 1 already reaped and forgotten
  EXPECT_EQ(Job(id).status().state(), ftd::v1::CANCELLED);
}

}  // namespace
}  // namespace ftd::server
