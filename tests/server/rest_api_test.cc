// Every JobService route over real HTTP on loopback (civetweb), from the proto's
// google.api.http annotations, with the protobuf JSON mapping and SSE for watch.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "google/protobuf/util/json_util.h"
#include "tests/server/server_test_util.h"

namespace ftd::testing {
namespace {

using ::testing::HasSubstr;

class RestApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = server::Daemon::Start(env_.Options());
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = *std::move(d);
    port_ = daemon_->http_port();
  }
  std::string SpecJson(int seq_len = 4096) {
    ftd::v1::JobSpec spec = ValidSpec(env_);
    spec.mutable_hyperparameters()->set_seq_len(seq_len);
    std::string json;
    (void)google::protobuf::util::MessageToJsonString(spec, &json);
    return json;
  }
  HttpResponse Call(const std::string& method, const std::string& target,
                    const std::string& body = "", const std::string& token = kTokenA) {
    auto r = HttpCall(port_, method, target, body, token);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : HttpResponse();
  }
  std::string CreateJob(const std::string& token = kTokenA, const std::string& extra = "") {
    HttpResponse r = Call("POST", "/v1/jobs", absl::StrCat("{\"spec\":", SpecJson(), extra, "}"), token);
    EXPECT_EQ(r.status, 200) << r.body;
    return JsonGet(r.body, "job.id");
  }

  TestEnv env_;
  std::unique_ptr<server::Daemon> daemon_;
  int port_ = 0;
};

TEST_F(RestApiTest, HealthAndReadinessNeedNoToken) {
  auto h = HttpCall(port_, "GET", "/healthz");
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->status, 200);
  auto r = HttpCall(port_, "GET", "/readyz");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(JsonGet(r->body, "status"), "SERVING");
}

TEST_F(RestApiTest, CreateGetListCancelWithJsonMapping) {
  HttpResponse plan = Call("POST", "/v1/jobs",
                           absl::StrCat("{\"spec\":", SpecJson(), ",\"validateOnly\":true}"));
  ASSERT_EQ(plan.status, 200) << plan.body;
  EXPECT_EQ(JsonGet(plan.body, "plan.worldSize"), "8");
  EXPECT_EQ(JsonGet(plan.body, "job"), "");

  HttpResponse created = Call("POST", "/v1/jobs",
                              absl::StrCat("{\"spec\":", SpecJson(), ",\"labels\":{\"team\":\"nlp\"}}"));
  ASSERT_EQ(created.status, 200) << created.body;
  EXPECT_EQ(created.headers["content-type"], "application/json");
  const std::string id = JsonGet(created.body, "job.id");
  EXPECT_EQ(JsonGet(created.body, "job.status.state"), "QUEUED");

  HttpResponse got = Call("GET", "/v1/jobs/" + id);
  ASSERT_EQ(got.status, 200);
  EXPECT_EQ(JsonGet(got.body, "id"), id);
  EXPECT_EQ(JsonGet(got.body, "labels.team"), "nlp");
  EXPECT_EQ(JsonGet(got.body, "spec.hyperparameters.seqLen"), "4096");

  HttpResponse cancelled = Call("POST", "/v1/jobs/" + id + ":cancel", "{\"reason\":\"oops\"}");
  ASSERT_EQ(cancelled.status, 200) << cancelled.body;
  EXPECT_EQ(JsonGet(cancelled.body, "status.state"), "CANCELLED");
  // Empty body is fine for cancel too; cancelling twice is FAILED_PRECONDITION -> 400.
  HttpResponse again = Call("POST", "/v1/jobs/" + id + ":cancel");
  EXPECT_EQ(again.status, 400);
  EXPECT_EQ(JsonGet(again.body, "status"), "FAILED_PRECONDITION");

  HttpResponse missing = Call("GET", "/v1/jobs/job-0000000000000000");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(JsonGet(missing.body, "status"), "NOT_FOUND");
  EXPECT_EQ(Call("DELETE", "/v1/jobs/" + id).status, 405);
  EXPECT_EQ(Call("GET", "/v1/nothing-here").status, 404);
}

TEST_F(RestApiTest, ListWithPageTokensStateAndLabelFilters) {
  for (int i = 0; i < 5; ++i) {
    CreateJob(kTokenA, absl::StrCat(",\"labels\":{\"run\":\"", i % 2 ? "odd" : "even", "\"}"));
  }
  CreateJob(kTokenB);
  std::vector<std::string> ids;
  std::string token;
  for (int pages = 0;; ++pages) {
    ASSERT_LT(pages, 5);
    std::string target = "/v1/jobs?pageSize=2";
    if (!token.empty()) target += "&page_token=" + token;
    HttpResponse r = Call("GET", target);
    ASSERT_EQ(r.status, 200) << r.body;
    for (int i = 0; i < 2; ++i) {
      std::string id = JsonGet(r.body, absl::StrCat("jobs.", i, ".id"));
      if (!id.empty()) ids.push_back(id);
    }
    token = JsonGet(r.body, "nextPageToken");
    if (token.empty()) break;
  }
  EXPECT_EQ(ids.size(), 5u);
  HttpResponse odd = Call("GET", "/v1/jobs?states=QUEUED&labels=run%3Dodd");
  ASSERT_EQ(odd.status, 200) << odd.body;
  EXPECT_NE(JsonGet(odd.body, "jobs.1.id"), "");
  EXPECT_EQ(JsonGet(odd.body, "jobs.2.id"), "");
  EXPECT_EQ(Call("GET", "/v1/jobs?states=BOGUS").status, 400);
  EXPECT_EQ(Call("GET", "/v1/jobs?pageSize=abc").status, 400);
  EXPECT_EQ(Call("GET", "/v1/jobs?unknownParam=1").status, 400);
}

TEST_F(RestApiTest, IdempotentCreateAndFieldNamedErrors) {
  const std::string body = absl::StrCat("{\"spec\":", SpecJson(), ",\"requestId\":\"abc-1\"}");
  HttpResponse a = Call("POST", "/v1/jobs", body);
  HttpResponse b = Call("POST", "/v1/jobs", body);
  ASSERT_EQ(a.status, 200);
  ASSERT_EQ(b.status, 200);
  EXPECT_EQ(JsonGet(a.body, "job.id"), JsonGet(b.body, "job.id"));
  HttpResponse conflict =
      Call("POST", "/v1/jobs", absl::StrCat("{\"spec\":", SpecJson(2048), ",\"requestId\":\"abc-1\"}"));
  EXPECT_EQ(conflict.status, 409);
  EXPECT_EQ(JsonGet(conflict.body, "status"), "ALREADY_EXISTS");

  HttpResponse bad = Call("POST", "/v1/jobs", absl::StrCat("{\"spec\":", SpecJson(0), "}"));
  EXPECT_EQ(bad.status, 400);
  EXPECT_THAT(JsonGet(bad.body, "message"), HasSubstr("spec.hyperparameters.seq_len"));
  EXPECT_EQ(*daemon_->store()->CountJobs(), 1);
}

TEST_F(RestApiTest, EventsAndCheckpointsRoutes) {
  const std::string id = CreateJob();
  ASSERT_TRUE(daemon_->jobs()->Transition(id, ftd::v1::STARTING, {}).ok());
  ftd::v1::Checkpoint c;
  c.set_step(10);
  c.set_path("/out/step-10");
  ASSERT_TRUE(daemon_->jobs()->AddCheckpoint(id, c).ok());
  HttpResponse page1 = Call("GET", "/v1/jobs/" + id + "/events?pageSize=2");
  ASSERT_EQ(page1.status, 200) << page1.body;
  EXPECT_EQ(JsonGet(page1.body, "events.0.seq"), "1");
  EXPECT_EQ(JsonGet(page1.body, "events.1.status.state"), "STARTING");
  const std::string next = JsonGet(page1.body, "nextPageToken");
  ASSERT_FALSE(next.empty());
  HttpResponse page2 = Call("GET", "/v1/jobs/" + id + "/events?pageSize=2&pageToken=" + next);
  ASSERT_EQ(page2.status, 200);
  EXPECT_EQ(JsonGet(page2.body, "events.0.seq"), "3");
  EXPECT_EQ(JsonGet(page2.body, "events.0.checkpoint.path"), "/out/step-10");
  EXPECT_EQ(JsonGet(page2.body, "nextPageToken"), "");
  HttpResponse ckpts = Call("GET", "/v1/jobs/" + id + "/checkpoints");
  ASSERT_EQ(ckpts.status, 200);
  EXPECT_EQ(JsonGet(ckpts.body, "checkpoints.0.step"), "10");
}

TEST_F(RestApiTest, WatchAsServerSentEventsAndResumeWithLastEventId) {
  const std::string id = CreateJob();
  auto stream = SseStream::Open(port_, "/v1/jobs/" + id + ":watch", kTokenA);
  ASSERT_TRUE(stream.ok()) << stream.status();
  EXPECT_EQ((*stream)->status(), 200);
  auto first = (*stream)->Read(1, absl::Seconds(5));
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].id, "1");
  EXPECT_EQ(first[0].event, "status");
  auto* jobs = daemon_->jobs();
  ASSERT_TRUE(jobs->Transition(id, ftd::v1::STARTING, {}).ok());
  ASSERT_TRUE(jobs->Transition(id, ftd::v1::RUNNING, {}).ok());
  ftd::v1::JobMetrics m;
  m.set_tokens_per_second_per_gpu(1234.5);
  ASSERT_TRUE(jobs->RecordProgress(id, ftd::v1::JobStatus::Progress(), m).ok());
  ASSERT_TRUE(jobs->Transition(id, ftd::v1::SUCCEEDED, {}).ok());
  auto rest = (*stream)->Read(10, absl::Seconds(5));
  ASSERT_EQ(rest.size(), 4u);
  EXPECT_EQ(rest[2].event, "metrics");
  EXPECT_EQ(JsonGet(rest[2].data, "metrics.tokensPerSecondPerGpu"), "1234.5");
  EXPECT_EQ(JsonGet(rest[3].data, "status.state"), "SUCCEEDED");
  (*stream)->Read(1, absl::Seconds(2));
  EXPECT_TRUE((*stream)->ended());  // closed after the terminal event

  auto resumed = SseStream::Open(port_, "/v1/jobs/" + id + ":watch", kTokenA, {"Last-Event-ID: 3"});
  ASSERT_TRUE(resumed.ok());
  auto tail = (*resumed)->Read(10, absl::Seconds(5));
  ASSERT_EQ(tail.size(), 2u);
  EXPECT_EQ(tail[0].id, "4");
  EXPECT_EQ(tail[1].id, "5");
  auto by_query = SseStream::Open(port_, "/v1/jobs/" + id + ":watch?afterSeq=1", kTokenA);
  ASSERT_TRUE(by_query.ok());
  EXPECT_EQ((*by_query)->Read(10, absl::Seconds(5)).size(), 4u);
}

TEST_F(RestApiTest, UnauthenticatedIs401AndOtherTenantsJobsAreInvisible) {
  const std::string id = CreateJob();
  HttpResponse anon = Call("GET", "/v1/jobs/" + id, "", "");
  EXPECT_EQ(anon.status, 401);
  EXPECT_THAT(anon.headers["www-authenticate"], HasSubstr("Bearer"));
  EXPECT_EQ(Call("GET", "/v1/jobs", "", "wrong-token-000000000").status, 401);
  EXPECT_EQ(Call("POST", "/v1/jobs", absl::StrCat("{\"spec\":", SpecJson(), "}"), "").status, 401);
  auto sse = SseStream::Open(port_, "/v1/jobs/" + id + ":watch", "");
  ASSERT_TRUE(sse.ok());
  EXPECT_EQ((*sse)->status(), 401);

  EXPECT_EQ(Call("GET", "/v1/jobs/" + id, "", kTokenB).status, 404);
  EXPECT_EQ(Call("POST", "/v1/jobs/" + id + ":cancel", "", kTokenB).status, 404);
  EXPECT_EQ(Call("GET", "/v1/jobs/" + id + "/events", "", kTokenB).status, 404);
  HttpResponse list_b = Call("GET", "/v1/jobs", "", kTokenB);
  EXPECT_EQ(JsonGet(list_b.body, "jobs"), "");
  EXPECT_EQ(JsonGet(Call("GET", "/v1/jobs/" + id).body, "status.state"), "QUEUED");
  EXPECT_EQ(Call("GET", "/v1/jobs/" + id, "", kTokenAdmin).status, 200);
}

TEST_F(RestApiTest, OversizedBodyIs413AndExtraRoutesCanBeAdded) {
  std::string huge(2 << 20, 'x');
  HttpResponse r = Call("POST", "/v1/jobs", huge);
  EXPECT_EQ(r.status, 413);
  daemon_->http()->AddHandler("/metrics", [](mg_connection* conn) {
    return server::RestGateway::SendJson(conn, 200, "{\"extra\":true}");
  });
  auto m = HttpCall(port_, "GET", "/metrics");
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->status, 200);
  EXPECT_EQ(JsonGet(m->body, "extra"), "true");
}

}  // namespace
}  // namespace ftd::testing
