// The `ftd` command line: flags from a config file, --local-worker, clear startup errors; and
// readiness gating (UNAVAILABLE / 503 until the store has been replayed).
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "server/event_hub.h"
#include "server/job_api.h"
#include "server/rest_gateway.h"
#include "server/sqlite_job_store.h"
#include "tests/server/server_test_util.h"

namespace ftd::testing {
namespace {

using ::testing::HasSubstr;

TEST(CliTest, FlagsComeFromAConfigFile) {
  TestEnv env;
  const std::string config = env.root() + "/ftd.toml";
  std::ofstream(config) << "data-dir = \"" << env.data_dir() << "\"\n"
                        << "grpc-listen = \"127.0.0.1:0\"\nhttp-listen = \"127.0.0.1:0\"\n"
                        << "tokens-file = \"" << env.tokens_file() << "\"\n"
                        << "shared-model-root = [\"" << env.model_root() << "\"]\n"
                        << "data-root = [\"" << env.data_root() << "\"]\n"
                        << "local-worker = true\n";
  auto d = SpawnDaemon({"--config", config});
  ASSERT_TRUE(d.ok()) << d.status();
  // The roots from the file are in force: a spec under them is accepted.
  ftd::v1::CreateJobRequest req;
  *req.mutable_spec() = ValidSpec(env);
  req.set_validate_only(true);
  grpc::ClientContext ctx;
  Authorize(&ctx, kTokenA);
  ftd::v1::CreateJobResponse resp;
  grpc::Status st = MakeStub(d->grpc_port)->CreateJob(&ctx, req, &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.plan().world_size(), 8);
  KillHard(*d);
}

TEST(CliTest, StartupErrorsNameTheProblem) {
  TestEnv env;
  auto missing = SpawnDaemon({"--data-dir", env.data_dir()});
  ASSERT_FALSE(missing.ok());
  { std::ofstream(env.tokens_file()) << "# ok\nonly-two-fields-0123456 tenant\n"; }
  auto bad_tokens = SpawnDaemon({"--data-dir", env.data_dir(), "--tokens-file", env.tokens_file(),
                                 "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"});
  ASSERT_FALSE(bad_tokens.ok());
  EXPECT_THAT(std::string(bad_tokens.status().message()),
              HasSubstr(env.tokens_file() + ":2: expected `TOKEN TENANT ROLE`"));
  auto bad_root = SpawnDaemon({"--data-dir", env.data_dir(), "--tokens-file", env.tokens_file(),
                               "--model-root", "/does/not/exist"});
  ASSERT_FALSE(bad_root.ok());
}

TEST(ReadinessTest, CallsAreUnavailableAndReadyzIs503UntilReplayed) {
  TestEnv env;
  auto store = server::SqliteJobStore::Open(env.root() + "/jobs.db");
  ASSERT_TRUE(store.ok());
  server::EventHub hub;
  server::JobManager manager(store->get(), &hub);
  server::ValidatorConfig vc;
  vc.shared_model_roots = {env.model_root()};
  vc.data_roots = {env.data_root()};
  auto validator = server::SpecValidator::Create(vc);
  ASSERT_TRUE(validator.ok());
  auto tokens = server::TokenRegistry::LoadFromFile(env.tokens_file());
  ASSERT_TRUE(tokens.ok());
  server::JobApi api(&manager, &*validator, tokens->get());
  auto gateway = server::RestGateway::Start(server::RestGatewayOptions(), &api);
  ASSERT_TRUE(gateway.ok()) << gateway.status();
  const int port = (*gateway)->port();

  EXPECT_EQ(HttpCall(port, "GET", "/readyz")->status, 503);
  EXPECT_EQ(HttpCall(port, "GET", "/healthz")->status, 200);  // alive, not ready
  EXPECT_EQ(HttpCall(port, "GET", "/v1/jobs", "", kTokenA)->status, 503);
  server::Principal who{"tenant-a", server::Role::kUser};
  EXPECT_EQ(api.ListJobs(who, {}).status().code(), absl::StatusCode::kUnavailable);
  api.SetReady(true);
  EXPECT_EQ(HttpCall(port, "GET", "/readyz")->status, 200);
  EXPECT_EQ(HttpCall(port, "GET", "/v1/jobs", "", kTokenA)->status, 200);
}

}  // namespace
}  // namespace ftd::testing
