// Storage isolation between tenants, through CreateJob over real gRPC: every path field
// (base_model, datasets.train, datasets.validation, output) must lie in the caller's own
// namespace <root>/<tenant>/ of its root (base models also in the shared read-only root), with
// symlinks resolved; a job's output directory is new or an earlier job's of the same tenant, and
// two live jobs never share one.
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "tests/server/server_test_util.h"

namespace ftd::testing {
namespace {

using ::testing::HasSubstr;

class TenantIsolationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Tenant model roots beside the shared one, and a dedicated output root.
    for (const std::string& d : {Models(), Models() + "/" + kTenantA, Models() + "/" + kTenantB, Outputs(),
                                 Outputs() + "/" + kTenantA, Outputs() + "/" + kTenantB}) {
      ASSERT_EQ(::mkdir(d.c_str(), 0755), 0) << d;
    }
    ASSERT_EQ(::mkdir((Models() + "/" + kTenantB + "/private-model").c_str(), 0755), 0);
    std::ofstream(Models() + "/" + kTenantB + "/private-model/config.json") << "{}";
    std::ofstream(Outputs() + "/" + kTenantB + "/marker") << "b's output";
    server::DaemonOptions o = env_.Options();
    o.model_roots = {Models()};
    o.output_roots = {Outputs()};
    auto d = server::Daemon::Start(o);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = *std::move(d);
    stub_ = MakeStub(daemon_->grpc_port());
  }

  std::string Models() const { return env_.root() + "/tenant-models"; }
  std::string Outputs() const { return env_.root() + "/tenant-outputs"; }
  std::string BFile() const { return env_.train_file(kTenantB); }

  // CreateJob as `token`; "OK" or the error message.
  std::string Create(const std::string& token, const ftd::v1::JobSpec& spec, std::string* id = nullptr) {
    ftd::v1::CreateJobRequest req;
    *req.mutable_spec() = spec;
    grpc::ClientContext ctx;
    Authorize(&ctx, token);
    ftd::v1::CreateJobResponse resp;
    grpc::Status st = stub_->CreateJob(&ctx, req, &resp);
    if (id != nullptr) *id = resp.job().id();
    if (!st.ok()) {
      EXPECT_TRUE(st.error_code() == grpc::StatusCode::INVALID_ARGUMENT ||
                  st.error_code() == grpc::StatusCode::FAILED_PRECONDITION)
          << st.error_code() << " " << st.error_message();
    }
    return st.ok() ? "OK" : st.error_message();
  }
  ftd::v1::JobSpec Spec() const { return ValidSpec(env_); }

  TestEnv env_;
  std::unique_ptr<server::Daemon> daemon_;
  std::unique_ptr<ftd::v1::JobService::Stub> stub_;
};

TEST_F(TenantIsolationTest, ReadsOfAnotherTenantsFilesAreRejectedThroughEveryInputField) {
  auto spec = Spec();
  spec.mutable_datasets()->set_train(BFile());
  EXPECT_THAT(Create(kTokenA, spec), HasSubstr("spec.datasets.train: `" + BFile() + "` resolves outside"));
  spec = Spec();
  spec.mutable_datasets()->set_validation(BFile());
  EXPECT_THAT(Create(kTokenA, spec), HasSubstr("spec.datasets.validation:"));
  spec = Spec();
  spec.set_base_model(Models() + "/" + kTenantB + "/private-model");
  EXPECT_THAT(Create(kTokenA, spec), HasSubstr("spec.base_model:"));
  // The owner may.
  EXPECT_EQ(Create(kTokenB, spec), "OK");
  // Relative paths resolve in the caller's own namespace, never another's.
  spec = Spec();
  spec.mutable_datasets()->set_train(std::string("../") + kTenantB + "/train.jsonl");
  EXPECT_THAT(Create(kTokenA, spec), HasSubstr("spec.datasets.train: must not contain `..`"));
  // Every tenant reads the shared model root.
  spec = Spec();
  spec.set_base_model(env_.model_dir());
  EXPECT_EQ(Create(kTokenA, spec), "OK");
  EXPECT_EQ(Create(kTokenB, spec), "OK");
}

TEST_F(TenantIsolationTest, SymlinksIntoAnotherTenantsNamespaceAreResolvedAndRejected) {
  const std::string a_data = env_.data_root() + "/" + kTenantA;
  ASSERT_EQ(::symlink(BFile().c_str(), (a_data + "/stolen.jsonl").c_str()), 0);
  ASSERT_EQ(::symlink((env_.data_root() + "/" + kTenantB).c_str(), (a_data + "/b-dir").c_str()), 0);
  ASSERT_EQ(::symlink((Models() + "/" + kTenantB).c_str(), (Models() + "/" + kTenantA + "/b-models").c_str()), 0);
  ASSERT_EQ(::symlink((Outputs() + "/" + kTenantB).c_str(), (Outputs() + "/" + kTenantA + "/b-out").c_str()), 0);
  auto spec = Spec();
  spec.mutable_datasets()->set_train(a_data + "/stolen.jsonl");
  EXPECT_THAT(Create(kTokenA, spec), HasSubstr("spec.datasets.train:"));
  spec = Spec();
  spec.mutable_datasets()->set_train("b-dir/train.jsonl");  // relative, through the link
  EXPECT_THAT(Create(kTokenA, spec), HasSubstr("spec.datasets.train:"));
  spec = Spec();
  spec.mutable_datasets()->set_validation(a_data + "/b-dir/train.jsonl");
  EXPECT_THAT(Create(kTokenA, spec), HasSubstr("spec.datasets.validation:"));
  spec = Spec();
  spec.set_base_model(Models() + "/" + kTenantA + "/b-models/private-model");
  EXPECT_THAT(Create(kTokenA, spec), HasSubstr("spec.base_model:"));
  // Writes: an output through a link into b's namespace, even below a directory that does not
  // exist yet.
  spec = Spec();
  spec.set_output(Outputs() + "/" + kTenantA + "/b-out/new-run");
  EXPECT_THAT(Create(kTokenA, spec), HasSubstr("spec.output:"));
}

TEST_F(TenantIsolationTest, WritesOutsideTheOwnOutputNamespaceAreRejected) {
  auto spec = Spec();
  spec.set_output(Outputs() + "/" + kTenantB + "/mine-now");
  EXPECT_THAT(Create(kTokenA, spec), HasSubstr("spec.output:"));
  spec.set_output(Outputs() + "/" + kTenantB);  // b's whole namespace
  EXPECT_THAT(Create(kTokenA, spec), HasSubstr("spec.output:"));
  spec.set_output(Outputs());  // the root above every namespace
  EXPECT_THAT(Create(kTokenA, spec), HasSubstr("spec.output:"));
  spec.set_output(env_.model_dir() + "/overwritten");  // the shared models are read-only
  EXPECT_THAT(Create(kTokenA, spec), HasSubstr("spec.output:"));
  spec.set_output(env_.data_root() + "/" + kTenantA + "/out");  // not an output root
  EXPECT_THAT(Create(kTokenA, spec), HasSubstr("spec.output:"));
  // The default output lies in the caller's namespace.
  std::string id;
  ASSERT_EQ(Create(kTokenA, Spec(), &id), "OK");
  auto job = daemon_->store()->GetJob(id);
  ASSERT_TRUE(job.ok());
  char real[PATH_MAX];
  ASSERT_NE(::realpath(Outputs().c_str(), real), nullptr);
  EXPECT_EQ(job->spec().output(), absl::StrCat(real, "/", kTenantA, "/", id));
}

TEST_F(TenantIsolationTest, AnOutputDirectoryBelongsToOneLiveJobAndToItsTenant) {
  auto spec = Spec();
  spec.set_output(Outputs() + "/" + kTenantA + "/run");
  std::string first;
  ASSERT_EQ(Create(kTokenA, spec, &first), "OK");
  // A second live job on the same directory, or inside it, or around it.
  EXPECT_THAT(Create(kTokenA, spec), HasSubstr("spec.output: "));
  EXPECT_THAT(Create(kTokenA, spec), HasSubstr("is the output directory of live job " + first));
  spec.set_output(Outputs() + "/" + kTenantA + "/run/inner");
  EXPECT_THAT(Create(kTokenA, spec), HasSubstr("overlaps the output directory of live job " + first));
  // Once the first job has ended, a later job of the same tenant may continue in it.
  std::filesystem::create_directories(Outputs() + "/" + kTenantA + "/run/checkpoint-5");
  ASSERT_TRUE(daemon_->jobs()->Cancel(first, "test").ok());
  spec.set_output(Outputs() + "/" + kTenantA + "/run");
  EXPECT_EQ(Create(kTokenA, spec), "OK");
  // An existing, non-empty directory that no job of the tenant wrote is not taken over.
  std::filesystem::create_directories(Outputs() + "/" + kTenantA + "/hand-made");
  std::ofstream(Outputs() + "/" + kTenantA + "/hand-made/file") << "x";
  spec.set_output(Outputs() + "/" + kTenantA + "/hand-made");
  EXPECT_THAT(Create(kTokenA, spec), HasSubstr("already exists and is not the output of an earlier job of tenant"));
  // An empty one is.
  std::filesystem::create_directories(Outputs() + "/" + kTenantA + "/empty");
  spec.set_output(Outputs() + "/" + kTenantA + "/empty");
  EXPECT_EQ(Create(kTokenA, spec), "OK");
}

TEST_F(TenantIsolationTest, RetriesOfACreateAreAnsweredNotRefusedAsOutputConflicts) {
  ftd::v1::CreateJobRequest req;
  *req.mutable_spec() = Spec();
  req.mutable_spec()->set_output(Outputs() + "/" + kTenantA + "/retried");
  req.set_request_id("retry-1");
  std::string ids[2];
  for (std::string& id : ids) {
    grpc::ClientContext ctx;
    Authorize(&ctx, kTokenA);
    ftd::v1::CreateJobResponse resp;
    grpc::Status st = stub_->CreateJob(&ctx, req, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    id = resp.job().id();
  }
  EXPECT_EQ(ids[0], ids[1]);
}

}  // namespace
}  // namespace ftd::testing
