// The real `ftd` binary is SIGKILLed with jobs in every state and restarted on the same
// --data-dir: every job and every event is still there, acknowledged creates included.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <sys/stat.h>

#include <atomic>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/message_differencer.h"
#include "server/event_hub.h"
#include "server/job_manager.h"
#include "server/sqlite_job_store.h"
#include "server/time_util.h"
#include "tests/server/server_test_util.h"

namespace ftd::testing {
namespace {

using google::protobuf::util::MessageDifferencer;

std::vector<std::string> DaemonArgs(const TestEnv& env) {
  return {"--data-dir", env.data_dir(), "--grpc-listen", "127.0.0.1:0", "--http-listen",
          "127.0.0.1:0", "--tokens-file", env.tokens_file(), "--shared-model-root", env.model_root(),
          "--data-root", env.data_root()};
}

// Every job (admin view) and its full event log.
struct Snapshot {
  std::map<std::string, ftd::v1::FineTuneJob> jobs;
  std::map<std::string, std::vector<ftd::v1::JobEvent>> events;
};

Snapshot TakeSnapshot(ftd::v1::JobService::Stub* stub) {
  Snapshot s;
  ftd::v1::ListJobsRequest req;
  req.set_page_size(500);
  for (;;) {
    grpc::ClientContext ctx;
    Authorize(&ctx, kTokenAdmin);
    ftd::v1::ListJobsResponse resp;
    grpc::Status st = stub->ListJobs(&ctx, req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    for (const auto& j : resp.jobs()) s.jobs[j.id()] = j;
    if (!st.ok() || resp.next_page_token().empty()) break;
    req.set_page_token(resp.next_page_token());
  }
  for (const auto& [id, job] : s.jobs) {
    ftd::v1::ListJobEventsRequest ereq;
    ereq.set_id(id);
    ereq.set_page_size(1000);
    grpc::ClientContext ctx;
    Authorize(&ctx, kTokenAdmin);
    ftd::v1::ListJobEventsResponse eresp;
    EXPECT_TRUE(stub->ListJobEvents(&ctx, ereq, &eresp).ok());
    s.events[id].assign(eresp.events().begin(), eresp.events().end());
  }
  return s;
}

TEST(CrashRecoveryTest, KillDashNineLosesNothingAcknowledged) {
  TestEnv env;
  ::mkdir(env.data_dir().c_str(), 0755);
  // Jobs in states the API alone cannot reach, written through the scheduler API first.
  std::map<std::string, ftd::v1::JobState> seeded;
  {
    auto store = server::SqliteJobStore::Open(env.data_dir() + "/jobs.db");
    ASSERT_TRUE(store.ok()) << store.status();
    server::EventHub hub;
    server::JobManager manager(store->get(), &hub);
    using ftd::v1::JobState;
    const std::vector<std::vector<JobState>> paths = {
        {ftd::v1::STARTING},
        {ftd::v1::STARTING, ftd::v1::RUNNING},
        {ftd::v1::STARTING, ftd::v1::RUNNING, ftd::v1::SUCCEEDED},
        {ftd::v1::STARTING, ftd::v1::RUNNING, ftd::v1::FAILED},
        {ftd::v1::STARTING, ftd::v1::RUNNING, ftd::v1::CANCELLING},
    };
    for (size_t i = 0; i < paths.size(); ++i) {
      server::NewJob n;
      n.job.set_id(absl::StrCat("job-seeded-", i));
      n.job.set_tenant("tenant-a");
      *n.job.mutable_spec() = ValidSpec(env);
      n.job.mutable_status()->set_state(ftd::v1::QUEUED);
      *n.job.mutable_create_time() = server::ToProtoTime(absl::Now());
      n.spec_hash = "seeded";
      ASSERT_TRUE(manager.Create(n).ok());
      for (JobState s : paths[i]) {
        ASSERT_TRUE(manager.Transition(n.job.id(), s, {}).ok());
        if (s == ftd::v1::RUNNING) {
          ftd::v1::JobStatus::Progress p;
          p.set_step(7);
          ASSERT_TRUE(manager.RecordProgress(n.job.id(), p, ftd::v1::JobMetrics()).ok());
        }
      }
      seeded[n.job.id()] = paths[i].back();
    }
  }

  auto first = SpawnDaemon(DaemonArgs(env));
  ASSERT_TRUE(first.ok()) << first.status();
  auto stub = MakeStub(first->grpc_port);
  // Recovery on start: STARTING/RUNNING were requeued, CANCELLING finished as CANCELLED.
  Snapshot recovered = TakeSnapshot(stub.get());
  EXPECT_EQ(recovered.jobs.at("job-seeded-0").status().state(), ftd::v1::QUEUED);
  EXPECT_EQ(recovered.jobs.at("job-seeded-1").status().state(), ftd::v1::QUEUED);
  EXPECT_EQ(recovered.jobs.at("job-seeded-1").status().attempt(), 1);
  EXPECT_EQ(recovered.jobs.at("job-seeded-2").status().state(), ftd::v1::SUCCEEDED);
  EXPECT_EQ(recovered.jobs.at("job-seeded-3").status().state(), ftd::v1::FAILED);
  EXPECT_EQ(recovered.jobs.at("job-seeded-4").status().state(), ftd::v1::CANCELLED);

  // API traffic: creates (some idempotent), cancels.
  std::vector<std::string> created;
  for (int i = 0; i < 12; ++i) {
    ftd::v1::CreateJobRequest req;
    *req.mutable_spec() = ValidSpec(env);
    if (i % 3 == 0) req.set_request_id(absl::StrCat("req-", i));
    (*req.mutable_labels())["i"] = absl::StrCat(i);
    grpc::ClientContext ctx;
    Authorize(&ctx, i % 2 ? kTokenA : kTokenB);
    ftd::v1::CreateJobResponse resp;
    ASSERT_TRUE(stub->CreateJob(&ctx, req, &resp).ok());
    created.push_back(resp.job().id());
  }
  for (int i = 0; i < 12; i += 4) {
    grpc::ClientContext ctx;
    Authorize(&ctx, kTokenAdmin);
    ftd::v1::CancelJobRequest req;
    req.set_id(created[i]);
    ftd::v1::FineTuneJob job;
    ASSERT_TRUE(stub->CancelJob(&ctx, req, &job).ok());
  }
  Snapshot before = TakeSnapshot(stub.get());
  ASSERT_EQ(before.jobs.size(), 17u);

  // Creates in flight when the kill lands: whatever was acknowledged must survive.
  std::mutex mu;
  std::vector<std::string> acknowledged;
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    auto writer_stub = MakeStub(first->grpc_port);
    for (int i = 0; !stop; ++i) {
      ftd::v1::CreateJobRequest req;
      *req.mutable_spec() = ValidSpec(env);
      grpc::ClientContext ctx;
      Authorize(&ctx, kTokenA);
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      ftd::v1::CreateJobResponse resp;
      if (!writer_stub->CreateJob(&ctx, req, &resp).ok()) break;
      std::lock_guard<std::mutex> lock(mu);
      acknowledged.push_back(resp.job().id());
    }
  });
  absl::SleepFor(absl::Milliseconds(300));
  KillHard(*first);
  stop = true;
  writer.join();
  EXPECT_GT(acknowledged.size(), 5u);

  auto second = SpawnDaemon(DaemonArgs(env));
  ASSERT_TRUE(second.ok()) << second.status();
  auto stub2 = MakeStub(second->grpc_port);
  Snapshot after = TakeSnapshot(stub2.get());
  for (const auto& [id, job] : before.jobs) {
    ASSERT_TRUE(after.jobs.count(id)) << id;
    EXPECT_TRUE(MessageDifferencer::Equals(job, after.jobs.at(id))) << id;
    ASSERT_EQ(before.events.at(id).size(), after.events.at(id).size()) << id;
    for (size_t k = 0; k < before.events.at(id).size(); ++k) {
      EXPECT_TRUE(MessageDifferencer::Equals(before.events.at(id)[k], after.events.at(id)[k]));
    }
  }
  for (const std::string& id : acknowledged) EXPECT_TRUE(after.jobs.count(id)) << id;
  // The one create in flight at the kill may or may not have committed; nothing else is new.
  EXPECT_GE(after.jobs.size(), before.jobs.size() + acknowledged.size());
  EXPECT_LE(after.jobs.size(), before.jobs.size() + acknowledged.size() + 1);

  // Idempotency keys survived too.
  ftd::v1::CreateJobRequest retry;
  *retry.mutable_spec() = ValidSpec(env);
  retry.set_request_id("req-3");
  (*retry.mutable_labels())["i"] = "3";
  grpc::ClientContext ctx;
  Authorize(&ctx, kTokenA);
  ftd::v1::CreateJobResponse resp;
  ASSERT_TRUE(stub2->CreateJob(&ctx, retry, &resp).ok());
  EXPECT_EQ(resp.job().id(), created[3]);

  // A second kill -9 right away, and a third start: still identical.
  KillHard(*second);
  auto third = SpawnDaemon(DaemonArgs(env));
  ASSERT_TRUE(third.ok()) << third.status();
  Snapshot again = TakeSnapshot(MakeStub(third->grpc_port).get());
  EXPECT_EQ(again.jobs.size(), after.jobs.size());
  KillHard(*third);
}

TEST(CrashRecoveryTest, HealthIsNotServingWhileTheStoreIsReplayed) {
  TestEnv env;
  ::mkdir(env.data_dir().c_str(), 0755);
  constexpr int kRunning = 400;  // each is requeued, one fsync'd transaction apiece
  {
    auto store = server::SqliteJobStore::Open(env.data_dir() + "/jobs.db");
    ASSERT_TRUE(store.ok());
    for (int i = 0; i < kRunning; ++i) {
      server::NewJob n;
      n.job.set_id(absl::StrCat("job-running-", i));
      n.job.set_tenant("tenant-a");
      n.job.mutable_status()->set_state(ftd::v1::RUNNING);
      *n.job.mutable_create_time() = server::ToProtoTime(absl::Now());
      *n.first_event.mutable_status() = n.job.status();
      ASSERT_TRUE((*store)->CreateJob(n).ok());
    }
  }
  const int grpc_port = UnusedLoopbackPort(), http_port = UnusedLoopbackPort();
  std::vector<std::string> args = DaemonArgs(env);
  args[3] = absl::StrCat("127.0.0.1:", grpc_port);
  args[5] = absl::StrCat("127.0.0.1:", http_port);
  std::atomic<bool> done{false};
  std::set<int> grpc_seen, readyz_seen;
  std::thread prober([&] {
    while (!done) {
      grpc_seen.insert(HealthCheck(grpc_port, ""));
      auto r = HttpCall(http_port, "GET", "/readyz");
      if (r.ok()) readyz_seen.insert(r->status);
      absl::SleepFor(absl::Milliseconds(5));
    }
  });
  auto d = SpawnDaemon(args);
  done = true;
  prober.join();
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_TRUE(grpc_seen.count(2)) << "never saw NOT_SERVING during the replay";
  EXPECT_TRUE(readyz_seen.count(503));
  EXPECT_EQ(HealthCheck(grpc_port, ""), 1);
  EXPECT_EQ(HealthCheck(grpc_port, "ftd.v1.JobService"), 1);
  EXPECT_EQ(HttpCall(http_port, "GET", "/readyz")->status, 200);
  auto queued = HttpCall(http_port, "GET", "/v1/jobs?states=QUEUED&pageSize=300", "", kTokenA);
  ASSERT_TRUE(queued.ok());
  EXPECT_NE(JsonGet(queued->body, "nextPageToken"), "");  // more than 300 requeued
  KillHard(*d);
}

TEST(CrashRecoveryTest, SecondDaemonOnTheSameDataDirIsRefusedAndSighupReloadsTokens) {
  TestEnv env;
  auto first = SpawnDaemon(DaemonArgs(env));
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = SpawnDaemon(DaemonArgs(env));
  EXPECT_FALSE(second.ok());
  EXPECT_EQ(HttpCall(first->http_port, "GET", "/v1/jobs", "", kTokenA)->status, 200);
  { std::ofstream(env.tokens_file()) << "after-sighup-token-0001 tenant-z user\n"; }
  ::kill(first->pid, SIGHUP);
  int status = 0;
  for (int i = 0; i < 50; ++i) {
    status = HttpCall(first->http_port, "GET", "/v1/jobs", "", kTokenA)->status;
    if (status == 401) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(status, 401);
  EXPECT_EQ(HttpCall(first->http_port, "GET", "/v1/jobs", "", "after-sighup-token-0001")->status, 200);
  KillHard(*first);
}

}  // namespace
}  // namespace ftd::testing
