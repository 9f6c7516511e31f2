// Thousands of malformed REST bodies and gRPC messages: bad JSON, wrong types, huge fields,
// path escapes, out-of-range numbers, garbage bytes. Every one is rejected (4xx /
// INVALID_ARGUMENT), the server stays up and the store does not change.
#include <unistd.h>

#include <random>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"
#include "tests/server/server_test_util.h"

namespace ftd::testing {
namespace {

class FuzzTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // A symlink inside the model root that escapes it.
    ASSERT_EQ(::symlink("/etc", (env_.model_root() + "/escape").c_str()), 0);
    auto d = server::Daemon::Start(env_.Options());
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = *std::move(d);
    // One legitimate job, so that id-taking routes have something to aim at.
    auto stub = MakeStub(daemon_->grpc_port());
    grpc::ClientContext ctx;
    Authorize(&ctx, kTokenA);
    ftd::v1::CreateJobRequest req;
    *req.mutable_spec() = ValidSpec(env_);
    ftd::v1::CreateJobResponse resp;
    ASSERT_TRUE(stub->CreateJob(&ctx, req, &resp).ok());
    job_id_ = resp.job().id();
    jobs_before_ = *daemon_->store()->CountJobs();
    events_before_ = *daemon_->store()->CountEvents();
  }

  void ExpectStoreUnchangedAndServing() {
    EXPECT_EQ(*daemon_->store()->CountJobs(), jobs_before_);
    EXPECT_EQ(*daemon_->store()->CountEvents(), events_before_);
    EXPECT_EQ(HttpCall(daemon_->http_port(), "GET", "/healthz")->status, 200);
    EXPECT_EQ(HealthCheck(daemon_->grpc_port(), "ftd.v1.JobService"), 1);
    auto got = HttpCall(daemon_->http_port(), "GET", "/v1/jobs/" + job_id_, "", kTokenA);
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(got->status, 200);
    EXPECT_EQ(JsonGet(got->body, "status.state"), "QUEUED");
  }

  TestEnv env_;
  std::unique_ptr<server::Daemon> daemon_;
  std::string job_id_;
  int64_t jobs_before_ = 0, events_before_ = 0;
};

std::string RandomBytes(std::mt19937& rng, size_t n) {
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

std::string RandomWord(std::mt19937& rng, size_t n) {
  std::string s(n, 'a');
  for (char& c : s) c = static_cast<char>('!' + rng() % 90);
  return s;
}

// Mutations that make a valid spec invalid, each a different field or kind of damage.
std::vector<std::function<void(ftd::v1::JobSpec*, std::mt19937&)>> InvalidSpecMutations(
    const TestEnv& env) {
  using S = ftd::v1::JobSpec;
  const std::string model_root = env.model_root();
  return {
      [](S* s, std::mt19937& r) { s->mutable_hyperparameters()->set_seq_len(-int(r() % 1000) - 0); },
      [](S* s, std::mt19937& r) { s->mutable_hyperparameters()->set_seq_len(131073 + int(r() % 1000000)); },
      [](S* s, std::mt19937& r) { s->mutable_hyperparameters()->set_lr(-double(r() % 100) - 0.5); },
      [](S* s, std::mt19937&) { s->mutable_hyperparameters()->set_lr(std::nan("")); },
      [](S* s, std::mt19937&) { s->mutable_hyperparameters()->set_lr(INFINITY); },
      [](S* s, std::mt19937& r) { s->mutable_hyperparameters()->set_micro_batch(-int(r() % 50)); },
      [](S* s, std::mt19937& r) { s->mutable_hyperparameters()->set_global_batch(8 * int(r() % 9) + 3); },
      [](S* s, std::mt19937&) { s->mutable_hyperparameters()->set_max_steps(0); s->mutable_hyperparameters()->set_epochs(0); },
      [](S* s, std::mt19937& r) { s->mutable_hyperparameters()->set_warmup_steps(101 + int(r() % 1000)); },
      [](S* s, std::mt19937& r) { s->mutable_hyperparameters()->set_schedule(absl::StrCat("sched", r() % 100)); },
      [](S* s, std::mt19937& r) { s->mutable_resources()->set_gpus_per_node(17 + int(r() % 1000)); },
      [](S* s, std::mt19937& r) { s->mutable_resources()->set_nodes(-1 - int(r() % 10)); },
      [](S* s, std::mt19937& r) { s->mutable_resources()->set_nodes(300 + int(r() % 700)); },
      [](S* s, std::mt19937& r) { s->mutable_parallelism()->set_ep_size(3 + 2 * int(r() % 2)); },
      [](S* s, std::mt19937& r) { s->mutable_parallelism()->set_zero_stage(4 + int(r() % 10)); },
      [](S* s, std::mt19937& r) { s->mutable_backends()->set_gate(RandomWord(r, 1 + r() % 8)); },
      [](S* s, std::mt19937&) { s->mutable_backends()->set_attention("flash3"); },
      [](S* s, std::mt19937& r) { s->set_method("lora"); s->mutable_lora()->set_dropout(0.01 + double(r() % 50) / 100); },
      [](S* s, std::mt19937& r) { s->mutable_checkpointing()->set_keep_last(-1 - int(r() % 5)); },
      [](S* s, std::mt19937& r) { s->mutable_scheduling()->set_priority(1001 + int(r() % 100000)); },
      [](S* s, std::mt19937& r) { s->mutable_scheduling()->set_max_runtime_seconds(-1 - int64_t(r() % 5)); },
      [](S* s, std::mt19937&) { s->set_webhook_url("javascript:alert(1)"); },
      [](S* s, std::mt19937& r) { s->set_webhook_url("http://" + std::string(2000 + r() % 10000, 'a')); },
      [](S* s, std::mt19937&) { s->clear_base_model(); },
      [](S* s, std::mt19937&) { s->set_base_model("/etc/passwd"); },
      [](S* s, std::mt19937&) { s->set_base_model("../../../../etc"); },
      [model_root](S* s, std::mt19937&) { s->set_base_model(model_root + "/../../etc"); },
      [model_root](S* s, std::mt19937&) { s->set_base_model(model_root + "/escape/shadow"); },
      [](S* s, std::mt19937&) { s->set_base_model("file:///etc"); },
      [](S* s, std::mt19937&) { s->set_base_model("hf://Qwen/Qwen3-30B-A3B"); },
      [](S* s, std::mt19937& r) { s->set_base_model(std::string(5000 + r() % 60000, 'm')); },
      [](S* s, std::mt19937&) { s->mutable_datasets()->set_train("/proc/self/environ"); },
      [](S* s, std::mt19937&) { s->mutable_datasets()->set_train("a/../../b"); },
      [](S* s, std::mt19937&) { s->mutable_datasets()->set_validation("/dev/zero"); },
      [](S* s, std::mt19937&) { s->mutable_datasets()->set_train(std::string("tr\0ain", 6)); },
      [](S* s, std::mt19937& r) { s->mutable_datasets()->set_format(RandomWord(r, 3)); },
      [](S* s, std::mt19937&) { s->set_output("/etc/cron.d"); },
  };
}

TEST_F(FuzzTest, MalformedRestBodiesAndPathsAreAll4xx) {
  std::mt19937 rng(20240611);
  const int port = daemon_->http_port();
  ftd::v1::JobSpec valid = ValidSpec(env_);
  std::string valid_json;
  ASSERT_TRUE(google::protobuf::util::MessageToJsonString(valid, &valid_json).ok());
  const std::string valid_body = absl::StrCat("{\"spec\":", valid_json, "}");

  std::vector<std::string> bodies = {
      "", "{", "}", "[]", "null", "\"spec\"", "{\"spec\":}", "{\"spec\":null,}", "{'spec':{}}",
      "{\"spec\": []}", "{\"spec\": 5}", "{\"labels\": 5}", "{\"labels\": {\"k\": 5}}",
      "{\"validateOnly\": \"yes\"}", "{\"requestId\": 12}", "{\"unknownField\": 1}",
      "{\"spec\": {\"hyperparameters\": {\"seqLen\": \"abc\"}}}",
      "{\"spec\": {\"hyperparameters\": {\"seqLen\": 1e99}}}",
      "{\"spec\": {\"hyperparameters\": {\"seqLen\": 4096.5}}}",
      "{\"spec\": {\"hyperparameters\": {\"lr\": \"NaN\"}}}",
      "{\"spec\": {\"resources\": {\"nodes\": {}}}}",
      "{\"spec\": {\"baseModel\": [\"a\"]}}",
      std::string("{\"spec\": {\"baseModel\": \"\xff\xfe\"}}"),
      "{\"spec\": {\"baseModel\": \"\\u0000\"}}",
  };
  // Truncations of a valid body: never a complete object.
  for (size_t cut = 1; cut < valid_body.size(); cut += 7) bodies.push_back(valid_body.substr(0, cut));
  // Random bytes and random JSON-looking noise.
  for (int i = 0; i < 300; ++i) bodies.push_back(RandomBytes(rng, 1 + rng() % 512));
  // Valid JSON carrying an invalid spec.
  auto mutations = InvalidSpecMutations(env_);
  for (int i = 0; i < 900; ++i) {
    ftd::v1::JobSpec spec = valid;
    int n = 1 + int(rng() % 3);
    for (int k = 0; k < n; ++k) mutations[rng() % mutations.size()](&spec, rng);
    std::string json;
    if (!google::protobuf::util::MessageToJsonString(spec, &json).ok()) continue;  // bad UTF-8
    bodies.push_back(absl::StrCat("{\"spec\":", json, "}"));
  }
  // Huge fields within the request limit, bad labels and request ids.
  bodies.push_back(absl::StrCat("{\"spec\":", valid_json, ",\"requestId\":\"", std::string(50000, 'r'), "\"}"));
  bodies.push_back(absl::StrCat("{\"spec\":", valid_json, ",\"requestId\":\"a b\"}"));
  std::string many_labels = "{";
  for (int i = 0; i < 100; ++i) absl::StrAppend(&many_labels, i ? "," : "", "\"k", i, "\":\"v\"");
  bodies.push_back(absl::StrCat("{\"spec\":", valid_json, ",\"labels\":", many_labels, "}}"));
  bodies.push_back(absl::StrCat("{\"spec\":", valid_json, ",\"labels\":{\"UPPER\":\"v\"}}"));
  bodies.push_back(absl::StrCat("{\"spec\":", valid_json, ",\"labels\":{\"k\":\"", std::string(300, 'v'), "\"}}"));

  int checked = 0;
  for (const std::string& body : bodies) {
    auto r = HttpCall(port, "POST", "/v1/jobs", body, kTokenA);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_GE(r->status, 400) << body.substr(0, 2000);
    EXPECT_LT(r->status, 500) << body.substr(0, 200) << " -> " << r->body;
    ++checked;
  }
  // Bad ids, queries and paths on the other routes.
  std::vector<std::string> targets = {
      "/v1/jobs/..%2F..%2Fetc%2Fpasswd", "/v1/jobs/%00", "/v1/jobs/" + std::string(5000, 'x'),
      "/v1/jobs/a%20b", "/v1/jobs/job;rm", "/v1/jobs?pageSize=-1", "/v1/jobs?pageSize=1e9",
      "/v1/jobs?pageToken=%ff%fe", "/v1/jobs?states=99", "/v1/jobs?labels=novalue",
      "/v1/jobs?pageSize=1&pageSize=x", "/v1/jobs/" + job_id_ + "/events?pageToken=AAAA",
      "/v1/jobs/" + job_id_ + "/events?pageSize=-5", "/v1/jobs/" + job_id_ + ":watch?afterSeq=-1",
      "/v1/jobs/" + job_id_ + ":watch?afterSeq=abc", "/v1/jobs/" + job_id_ + "?x=%zz",
  };
  for (int i = 0; i < 200; ++i) {
    std::string garbage;
    for (int k = 0; k < 1 + int(rng() % 20); ++k) absl::StrAppend(&garbage, "%", absl::Hex(rng() % 256, absl::kZeroPad2));
    targets.push_back("/v1/jobs/" + garbage);
    targets.push_back("/v1/jobs?" + garbage + "=" + garbage);
  }
  for (const std::string& target : targets) {
    auto r = HttpCall(port, "GET", target, "", kTokenA);
    ASSERT_TRUE(r.ok());
    EXPECT_GE(r->status, 400) << target;
    EXPECT_LT(r->status, 500) << target << " -> " << r->body;
    ++checked;
  }
  // Cancel with junk bodies.
  for (int i = 0; i < 100; ++i) {
    auto r = HttpCall(port, "POST", "/v1/jobs/" + job_id_ + ":cancel", RandomBytes(rng, 1 + rng() % 64), kTokenA);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->status, 400);
    ++checked;
  }
  // Malformed HTTP framing: garbage request lines must not take the server down.
  for (int i = 0; i < 50; ++i) {
    auto r = HttpRaw(port, RandomBytes(rng, 1 + rng() % 300) + "\r\n\r\n");
    ASSERT_TRUE(r.ok());
    EXPECT_TRUE(r->status == 0 || (r->status >= 400 && r->status < 500)) << r->status;
    ++checked;
  }
  EXPECT_GT(checked, 1800);
  ExpectStoreUnchangedAndServing();
}

TEST_F(FuzzTest, MalformedGrpcMessagesAreAllInvalidArgument) {
  std::mt19937 rng(777);
  auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", daemon_->grpc_port()),
                                     grpc::InsecureChannelCredentials());
  const std::vector<std::string> methods = {"/ftd.v1.JobService/CreateJob", "/ftd.v1.JobService/GetJob",
                                            "/ftd.v1.JobService/ListJobs", "/ftd.v1.JobService/CancelJob",
                                            "/ftd.v1.JobService/ListJobEvents",
                                            "/ftd.v1.JobService/ListCheckpoints"};
  int checked = 0;
  // Garbage bytes: wire-format errors (or, by luck, parseable junk that validation rejects).
  for (int i = 0; i < 600; ++i) {
    std::string bytes = RandomBytes(rng, 1 + rng() % 256);
    bytes[0] = static_cast<char>(0x0a | (rng() % 2 ? 0x80 : 0));  // field 1 with bad length or varint
    const std::string& method = methods[rng() % methods.size()];
    grpc::Status st = RawUnaryCall(channel.get(), method, kTokenA, bytes);
    EXPECT_TRUE(st.error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
                (st.error_code() == grpc::StatusCode::NOT_FOUND && method != methods[0]))
        << method << " -> " << st.error_code() << " " << st.error_message();
    ++checked;
  }
  // Truncated encodings of a CreateJob whose base_model (spec's first field) escapes the
  // roots: every prefix is malformed or invalid.
  ftd::v1::CreateJobRequest escaping;
  *escaping.mutable_spec() = ValidSpec(env_);
  escaping.mutable_spec()->set_base_model("/etc");
  escaping.set_request_id("trunc");
  const std::string full = escaping.SerializeAsString();
  for (size_t cut = 0; cut <= full.size(); ++cut) {
    grpc::Status st = RawUnaryCall(channel.get(), methods[0], kTokenA, full.substr(0, cut));
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << cut;
    ++checked;
  }
  // Well-formed messages with invalid content.
  auto stub = ftd::v1::JobService::NewStub(channel);
  auto mutations = InvalidSpecMutations(env_);
  for (int i = 0; i < 1200; ++i) {
    ftd::v1::CreateJobRequest req;
    *req.mutable_spec() = ValidSpec(env_);
    int n = 1 + int(rng() % 3);
    for (int k = 0; k < n; ++k) mutations[rng() % mutations.size()](req.mutable_spec(), rng);
    if (rng() % 4 == 0) req.set_validate_only(true);
    grpc::ClientContext ctx;
    Authorize(&ctx, kTokenA);
    ftd::v1::CreateJobResponse resp;
    grpc::Status st = stub->CreateJob(&ctx, req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
    ++checked;
  }
  // Invalid ids, page tokens and sequence numbers on the other RPCs.
  for (int i = 0; i < 200; ++i) {
    const std::string junk_id = RandomBytes(rng, 1 + rng() % 100) + "/..";
    grpc::ClientContext c1, c2, c3, c4;
    for (auto* c : {&c1, &c2, &c3, &c4}) Authorize(c, kTokenA);
    ftd::v1::GetJobRequest g;
    g.set_id(junk_id);
    ftd::v1::FineTuneJob job;
    EXPECT_EQ(stub->GetJob(&c1, g, &job).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    ftd::v1::ListJobsRequest l;
    l.set_page_token(RandomBytes(rng, 1 + rng() % 40));
    if (rng() % 2) l.set_page_size(-1 - int(rng() % 100));
    ftd::v1::ListJobsResponse lr;
    EXPECT_EQ(stub->ListJobs(&c2, l, &lr).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    ftd::v1::ListJobEventsRequest e;
    e.set_id(job_id_);
    e.set_page_token(absl::StrCat("x", rng()));
    ftd::v1::ListJobEventsResponse er;
    EXPECT_EQ(stub->ListJobEvents(&c3, e, &er).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    ftd::v1::CancelJobRequest cr;
    cr.set_id(job_id_);
    cr.set_reason(std::string(2000 + rng() % 5000, 'r'));
    EXPECT_EQ(stub->CancelJob(&c4, cr, &job).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    checked += 4;
  }
  EXPECT_GT(checked, 2500);
  ExpectStoreUnchangedAndServing();
}

}  // namespace
}  // namespace ftd::testing
