// JobStore (real SQLite files), the state machine, tokens, spec validation and the plan.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <utility>
#include <vector>

#include <google/protobuf/util/json_util.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/job_manager.h"
#include "server/job_plan.h"
#include "server/job_state_machine.h"
#include "server/job_watch.h"
#include "server/spec_validator.h"
#include "server/sqlite_connection.h"
#include "server/sqlite_job_store.h"
#include "server/time_util.h"
#include "server/token_registry.h"
#include "tests/server/server_test_util.h"

namespace ftd::server {
namespace {

using ::testing::HasSubstr;
using ftd::testing::TestEnv;
using ftd::v1::FineTuneJob;
using ftd::v1::JobEvent;

NewJob MakeJob(const std::string& id, const std::string& tenant, int64_t create_us,
               const std::string& request_id = "", const std::string& hash = "h") {
  NewJob n;
  n.job.set_id(id);
  n.job.set_tenant(tenant);
  n.job.mutable_status()->set_state(ftd::v1::QUEUED);
  n.job.mutable_create_time()->set_seconds(create_us / 1000000);
  n.job.mutable_create_time()->set_nanos(static_cast<int>(create_us % 1000000) * 1000);
  n.request_id = request_id;
  n.spec_hash = hash;
  *n.first_event.mutable_status() = n.job.status();
  return n;
}

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ::mkdir(env_.data_dir().c_str(), 0755);
    auto store = SqliteJobStore::Open(path());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }
  std::string path() const { return env_.data_dir() + "/jobs.db"; }
  TestEnv env_;
  std::unique_ptr<SqliteJobStore> store_;
};

TEST_F(StoreTest, CreateGetAndIdempotencyByTenantAndRequestId) {
  auto a = store_->CreateJob(MakeJob("j1", "t1", 1000, "req-1", "hash-1"));
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(a->created);
  ASSERT_EQ(a->events.size(), 1u);
  EXPECT_EQ(a->events[0].seq(), 1);
  // Same tenant + request id: the stored job comes back with its hash, nothing is written.
  auto again = store_->CreateJob(MakeJob("j2", "t1", 2000, "req-1", "hash-2"));
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->created);
  EXPECT_EQ(again->job.id(), "j1");
  EXPECT_EQ(again->existing_spec_hash, "hash-1");
  // Another tenant may use the same request id.
  auto other = store_->CreateJob(MakeJob("j3", "t2", 3000, "req-1", "hash-1"));
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE(other->created);
  EXPECT_EQ(*store_->CountJobs(), 2);
  EXPECT_EQ(store_->GetJob("j2").status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(store_->GetJob("nope").status().message()), HasSubstr("nope"));
}

TEST_F(StoreTest, ListPaginatesNewestFirstWithFilters) {
  for (int i = 0; i < 25; ++i) {
    NewJob n = MakeJob(absl::StrCat("j", 100 + i), i % 2 ? "odd" : "even", 1000 + i);
    (*n.job.mutable_labels())["team"] = i % 3 == 0 ? "nlp" : "vision";
    ASSERT_TRUE(store_->CreateJob(n).ok());
  }
  JobQuery q;
  q.page_size = 10;
  std::vector<std::string> seen;
  for (int pages = 0;; ++pages) {
    ASSERT_LT(pages, 5);
    auto page = store_->ListJobs(q);
    ASSERT_TRUE(page.ok()) << page.status();
    for (const auto& j : page->jobs) seen.push_back(j.id());
    if (page->next_page_token.empty()) break;
    q.page_token = page->next_page_token;
  }
  ASSERT_EQ(seen.size(), 25u);
  EXPECT_EQ(seen.front(), "j124");
  EXPECT_EQ(seen.back(), "j100");
  EXPECT_EQ(std::set<std::string>(seen.begin(), seen.end()).size(), 25u);

  JobQuery filtered;
  filtered.tenant = "even";
  filtered.labels = {{"team", "nlp"}};
  filtered.page_size = 100;
  auto page = store_->ListJobs(filtered);
  ASSERT_TRUE(page.ok());
  // even i in [0,25) with i % 3 == 0: 0, 6, 12, 18, 24.
  ASSERT_EQ(page->jobs.size(), 5u);
  for (const auto& j : page->jobs) {
    EXPECT_EQ(j.tenant(), "even");
    EXPECT_EQ(j.labels().at("team"), "nlp");
  }
  JobQuery bad;
  bad.page_token = "not-a-token";
  EXPECT_EQ(store_->ListJobs(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(StoreTest, UpdateAppendsEventsWithSequenceNumbersAndAbortsOnError) {
  ASSERT_TRUE(store_->CreateJob(MakeJob("j1", "t", 1)).ok());
  auto up = store_->UpdateJob(
      "j1",
      [](FineTuneJob& job, std::vector<JobEvent>& events) {
        job.mutable_status()->set_state(ftd::v1::STARTING);
        events.emplace_back().set_message("a");
        events.emplace_back().set_message("b");
        return absl::OkStatus();
      },
      Durability::kSynchronous);
  ASSERT_TRUE(up.ok()) << up.status();
  EXPECT_EQ(up->events[1].seq(), 3);
  EXPECT_EQ(up->job.etag(), "2");
  auto failed = store_->UpdateJob(
      "j1",
      [](FineTuneJob& job, std::vector<JobEvent>& events) {
        job.mutable_status()->set_state(ftd::v1::FAILED);
        events.emplace_back().set_message("lost");
        return absl::FailedPreconditionError("no");
      },
      Durability::kProcessCrashSafe);
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->GetJob("j1")->status().state(), ftd::v1::STARTING);
  auto events = store_->ReadEvents("j1", 0, 100);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 3u);
  EXPECT_EQ((*events)[2].message(), "b");
  auto page = store_->ListEvents("j1", 2, "");
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->events.size(), 2u);
  auto page2 = store_->ListEvents("j1", 2, page->next_page_token);
  ASSERT_TRUE(page2.ok());
  ASSERT_EQ(page2->events.size(), 1u);
  EXPECT_EQ(page2->events[0].seq(), 3);
  EXPECT_TRUE(page2->next_page_token.empty());
  // A token of one job's events does not page another's.
  ASSERT_TRUE(store_->CreateJob(MakeJob("j2", "t", 2)).ok());
  EXPECT_EQ(store_->ListEvents("j2", 2, page->next_page_token).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(StoreTest, SchemaVersionIsRecordedAndNewerSchemasAreRefused) {
  EXPECT_EQ(*store_->SchemaVersion(), SqliteJobStore::kSchemaVersion);
  ASSERT_TRUE(store_->CreateJob(MakeJob("j1", "t", 1)).ok());
  store_.reset();
  // Reopening migrates nothing and keeps the data.
  auto reopened = SqliteJobStore::Open(path());
  ASSERT_TRUE(reopened.ok());
  EXPECT_EQ(*(*reopened)->CountJobs(), 1);
  reopened->reset();
  {
    auto conn = SqliteConnection::Open(path());
    ASSERT_TRUE(conn.ok());
    ASSERT_TRUE((*conn)->Exec("INSERT INTO schema_version VALUES(99)").ok());
  }
  auto refused = SqliteJobStore::Open(path());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("schema version 99"));
}

TEST_F(StoreTest, QueuePositionOrdersByPriorityThenAge) {
  NewJob low = MakeJob("low", "t", 1);
  NewJob high = MakeJob("high", "t", 5);
  high.job.mutable_spec()->mutable_scheduling()->set_priority(10);
  NewJob later = MakeJob("later", "t", 9);
  for (auto* n : {&low, &high, &later}) ASSERT_TRUE(store_->CreateJob(*n).ok());
  EXPECT_EQ(*store_->QueuePosition(*store_->GetJob("high")), 1);
  EXPECT_EQ(*store_->QueuePosition(*store_->GetJob("low")), 2);
  EXPECT_EQ(*store_->QueuePosition(*store_->GetJob("later")), 3);
}

TEST_F(StoreTest, ManagerDrivesTheStateMachineAndWatchSeesEveryEventInOrder) {
  EventHub hub;
  JobManager manager(store_.get(), &hub);
  auto created = manager.Create(MakeJob("j1", "t", 1));
  ASSERT_TRUE(created.ok());
  auto watch = JobWatch::Open(store_.get(), &hub, "j1", 0, nullptr);
  ASSERT_TRUE(watch.ok());
  // Illegal: QUEUED -> RUNNING skips STARTING.
  EXPECT_EQ(manager.Transition("j1", ftd::v1::RUNNING, {}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(manager.Transition("j1", ftd::v1::STARTING, {}).ok());
  ASSERT_TRUE(manager.Transition("j1", ftd::v1::RUNNING, {}).ok());
  ftd::v1::JobStatus::Progress progress;
  progress.set_step(5);
  ftd::v1::JobMetrics metrics;
  metrics.set_loss(2.5);
  ASSERT_TRUE(manager.RecordProgress("j1", progress, metrics).ok());
  ftd::v1::Checkpoint ckpt;
  ckpt.set_step(5);
  ckpt.set_path("/out/step-5");
  ASSERT_TRUE(manager.AddCheckpoint("j1", ckpt).ok());
  ASSERT_TRUE(manager.Transition("j1", ftd::v1::SUCCEEDED, {}).ok());
  EXPECT_EQ(manager.Cancel("j1", "").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(manager.RecordProgress("j1", progress, metrics).status().code(),
            absl::StatusCode::kFailedPrecondition);

  std::vector<int64_t> seqs;
  std::vector<JobEvent::KindCase> kinds;
  for (int i = 0; i < 20 && !(*watch)->finished(); ++i) {
    auto next = (*watch)->Next();
    ASSERT_TRUE(next.ok());
    if (!next->has_value()) break;
    seqs.push_back((*next)->seq());
    kinds.push_back((*next)->kind_case());
  }
  EXPECT_EQ(seqs, (std::vector<int64_t>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(kinds.back(), JobEvent::kStatus);
  EXPECT_TRUE((*watch)->finished());
  EXPECT_EQ(store_->GetJob("j1")->status().checkpoints_size(), 1);
}

TEST_F(StoreTest, EvalLossIsStoredWithTheMetricsSurvivesStepSamplesAndReopening) {
  {
    EventHub hub;
    JobManager manager(store_.get(), &hub);
    ASSERT_TRUE(manager.Create(MakeJob("j1", "t", 1)).ok());
    ASSERT_TRUE(manager.Transition("j1", ftd::v1::STARTING, {}).ok());
    ASSERT_TRUE(manager.Transition("j1", ftd::v1::RUNNING, {}).ok());
    ftd::v1::JobStatus::Progress progress;
    ftd::v1::JobMetrics metrics;
    progress.set_step(2);
    metrics.set_loss(3.0);
    ASSERT_TRUE(manager.RecordProgress("j1", progress, metrics).ok());
    ftd::v1::EvalResult eval;
    eval.set_step(2);
    eval.set_loss(2.75);
    eval.set_targets(123);
    auto after_eval = manager.RecordEval("j1", eval);
    ASSERT_TRUE(after_eval.ok()) << after_eval.status();
    EXPECT_EQ(after_eval->status().metrics().eval_loss(), 2.75);
    EXPECT_EQ(after_eval->status().metrics().eval_step(), 2);
    EXPECT_EQ(after_eval->status().metrics().loss(), 3.0);  // the step sample stays
    // The next step sample carries no eval: the stored eval stays, and its event carries it.
    progress.set_step(3);
    metrics.set_loss(2.9);
    auto after_step = manager.RecordProgress("j1", progress, metrics);
    ASSERT_TRUE(after_step.ok());
    EXPECT_EQ(after_step->status().metrics().loss(), 2.9);
    EXPECT_EQ(after_step->status().metrics().eval_loss(), 2.75);
    EXPECT_EQ(after_step->status().metrics().eval_step(), 2);
    // Bad steps are refused, and nothing is recorded for an ended job.
    ftd::v1::EvalResult bad;
    bad.set_loss(1.0);
    EXPECT_EQ(manager.RecordEval("j1", bad).status().code(), absl::StatusCode::kInvalidArgument);
    ASSERT_TRUE(manager.Transition("j1", ftd::v1::SUCCEEDED, {}).ok());
    eval.set_step(4);
    EXPECT_EQ(manager.RecordEval("j1", eval).status().code(), absl::StatusCode::kFailedPrecondition);
  }
  store_.reset();
  auto reopened = SqliteJobStore::Open(path());
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  auto job = (*reopened)->GetJob("j1");
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->status().metrics().eval_loss(), 2.75);
  EXPECT_EQ(job->status().metrics().eval_step(), 2);
  EXPECT_EQ(job->status().metrics().loss(), 2.9);
  EXPECT_EQ(job->status().progress().step(), 3);
  auto events = (*reopened)->ReadEvents("j1", 0, 100);
  ASSERT_TRUE(events.ok());
  std::vector<JobEvent> evals, samples;
  for (const JobEvent& e : *events) {
    if (e.kind_case() == JobEvent::kEval) evals.push_back(e);
    if (e.kind_case() == JobEvent::kMetrics) samples.push_back(e);
  }
  ASSERT_EQ(evals.size(), 1u);
  EXPECT_EQ(evals[0].eval().step(), 2);
  EXPECT_EQ(evals[0].eval().loss(), 2.75);
  EXPECT_EQ(evals[0].eval().targets(), 123);
  ASSERT_EQ(samples.size(), 2u);
  EXPECT_EQ(samples[0].metrics().eval_step(), 0);  // before the first evaluation
  EXPECT_EQ(samples[1].metrics().eval_step(), 2);
  EXPECT_EQ(samples[1].metrics().eval_loss(), 2.75);
}

TEST_F(StoreTest, AWatchFarBehindFallsBackToTheStoreWithoutLosingEvents) {
  EventHub hub;
  JobManager manager(store_.get(), &hub);
  ASSERT_TRUE(manager.Create(MakeJob("j1", "t", 1)).ok());
  int wakeups = 0;
  auto watch = JobWatch::Open(store_.get(), &hub, "j1", 0, [&] { ++wakeups; });
  ASSERT_TRUE(watch.ok());
  // More live events than a watch buffers, with nobody consuming.
  constexpr int kEvents = 5000;
  for (int i = 0; i < kEvents; ++i) {
    ftd::v1::JobStatus::Progress p;
    p.set_step(i);
    ASSERT_TRUE(manager.RecordProgress("j1", p, ftd::v1::JobMetrics()).ok());
  }
  EXPECT_EQ(wakeups, kEvents);
  int64_t expected = 1;
  for (;;) {
    auto next = (*watch)->Next();
    ASSERT_TRUE(next.ok());
    if (!next->has_value()) break;
    ASSERT_EQ((*next)->seq(), expected++);
  }
  EXPECT_EQ(expected, kEvents + 2);
}

TEST(StateMachineTest, LegalTransitionsOnly) {
  using namespace ftd::v1;
  EXPECT_TRUE(IsLegalTransition(QUEUED, STARTING));
  EXPECT_TRUE(IsLegalTransition(QUEUED, CANCELLED));
  EXPECT_TRUE(IsLegalTransition(RUNNING, QUEUED));
  EXPECT_TRUE(IsLegalTransition(CANCELLING, CANCELLED));
  EXPECT_FALSE(IsLegalTransition(QUEUED, RUNNING));
  EXPECT_FALSE(IsLegalTransition(QUEUED, SUCCEEDED));
  for (JobState terminal : {SUCCEEDED, FAILED, CANCELLED}) {
    EXPECT_TRUE(IsTerminalState(terminal));
    for (int to = 0; to <= 7; ++to) EXPECT_FALSE(IsLegalTransition(terminal, JobState(to)));
    EXPECT_EQ(CancelTarget(terminal).status().code(), absl::StatusCode::kFailedPrecondition);
  }
  EXPECT_EQ(*CancelTarget(QUEUED), CANCELLED);
  EXPECT_EQ(*CancelTarget(RUNNING), CANCELLING);
}

TEST(TokenRegistryTest, ParsesCommentsRejectsBadLinesAndReloads) {
  TestEnv env;
  auto registry = TokenRegistry::LoadFromFile(env.tokens_file());
  ASSERT_TRUE(registry.ok()) << registry.status();
  EXPECT_EQ((*registry)->size(), 3u);
  auto admin = (*registry)->Authenticate(absl::StrCat("Bearer ", ftd::testing::kTokenAdmin));
  ASSERT_TRUE(admin.ok());
  EXPECT_TRUE(admin->is_admin());
  EXPECT_EQ(admin->tenant, "ops");
  EXPECT_EQ((*registry)->Authenticate("Bearer wrong-token-0000000").status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ((*registry)->Authenticate(ftd::testing::kTokenA).status().code(),
            absl::StatusCode::kUnauthenticated);  // no "Bearer "

  auto bad_role = TokenRegistry::Parse("tok-0123456789abcdef t root\n", "f");
  EXPECT_THAT(std::string(bad_role.status().message()), HasSubstr("f:1: role must be"));
  auto short_line = TokenRegistry::Parse("# c\n\ntok-0123456789abcdef t\n", "f");
  EXPECT_THAT(std::string(short_line.status().message()), HasSubstr("f:3:"));
  auto dup = TokenRegistry::Parse("tok-0123456789abcdef a user\ntok-0123456789abcdef b user\n", "f");
  EXPECT_THAT(std::string(dup.status().message()), HasSubstr("f:2: token appears twice"));

  // A broken file on reload keeps the old tokens; a good one replaces them.
  { std::ofstream(env.tokens_file()) << "garbage\n"; }
  EXPECT_FALSE((*registry)->Reload().ok());
  EXPECT_TRUE((*registry)->Authenticate(absl::StrCat("Bearer ", ftd::testing::kTokenA)).ok());
  { std::ofstream(env.tokens_file()) << "brand-new-token-0123 newco user\n"; }
  ASSERT_TRUE((*registry)->Reload().ok());
  EXPECT_FALSE((*registry)->Authenticate(absl::StrCat("Bearer ", ftd::testing::kTokenA)).ok());
  EXPECT_EQ((*registry)->Authenticate("Bearer brand-new-token-0123")->tenant, "newco");
}

class ValidatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ValidatorConfig config;
    config.shared_model_roots = {env_.model_root()};
    config.data_roots = {env_.data_root()};
    config.output_roots = {env_.output_root()};
    auto v = SpecValidator::Create(config);
    ASSERT_TRUE(v.ok()) << v.status();
    validator_ = std::make_unique<SpecValidator>(*std::move(v));
  }
  std::string Error(ftd::v1::JobSpec spec) {
    std::vector<std::string> notes;
    absl::Status st = validator_->ValidateAndNormalize(ftd::testing::kTenantA, &spec, &notes);
    return st.ok() ? "OK" : std::string(st.message());
  }
  TestEnv env_;
  std::unique_ptr<SpecValidator> validator_;
};

TEST_F(ValidatorTest, AcceptsTheValidSpecAndAppliesDefaults) {
  ftd::v1::JobSpec spec = ftd::testing::ValidSpec(env_);
  spec.clear_backends();
  std::vector<std::string> notes;
  ASSERT_TRUE(validator_->ValidateAndNormalize(ftd::testing::kTenantA, &spec, &notes).ok());
  EXPECT_EQ(spec.backends().gate(), "real");
  EXPECT_EQ(spec.method(), "full");
  EXPECT_THAT(notes, ::testing::Contains(HasSubstr("spec.backends.gate defaulted to real")));
}

// grad_clip has presence: unset means HF's default 1.0, an explicit 0 turns clipping off (and
// reaches the engine as 0); precision defaults to auto and names its field when unknown.
TEST_F(ValidatorTest, GradClipAndPrecisionDefaults) {
  ftd::v1::JobSpec spec = ftd::testing::ValidSpec(env_);
  spec.mutable_hyperparameters()->clear_grad_clip();
  std::vector<std::string> notes;
  ASSERT_TRUE(validator_->ValidateAndNormalize(ftd::testing::kTenantA, &spec, &notes).ok());
  EXPECT_TRUE(spec.hyperparameters().has_grad_clip());
  EXPECT_EQ(spec.hyperparameters().grad_clip(), 1.0);
  EXPECT_EQ(spec.precision(), "auto");
  spec = ftd::testing::ValidSpec(env_);
  spec.mutable_hyperparameters()->set_grad_clip(0.0);
  ASSERT_TRUE(validator_->ValidateAndNormalize(ftd::testing::kTenantA, &spec, &notes).ok());
  EXPECT_EQ(spec.hyperparameters().grad_clip(), 0.0);
  std::string json;
  google::protobuf::util::JsonPrintOptions o;
  o.preserve_proto_field_names = true;
  ASSERT_TRUE(google::protobuf::util::MessageToJsonString(spec, &json, o).ok());
  EXPECT_THAT(json, HasSubstr("\"grad_clip\":0"));  // what the worker hands the engine
  spec = ftd::testing::ValidSpec(env_);
  spec.set_precision("fp8");
  EXPECT_THAT(Error(spec), HasSubstr("spec.precision: must be one of auto, compact, compact_sr, fp32_master, bf16_pure"));
}

TEST_F(ValidatorTest, NamesTheFieldOfEveryViolation) {
  auto spec = [&] { return ftd::testing::ValidSpec(env_); };
  auto s = spec();
  s.mutable_hyperparameters()->set_seq_len(0);
  EXPECT_THAT(Error(s), HasSubstr("spec.hyperparameters.seq_len"));
  s = spec();
  s.mutable_hyperparameters()->set_seq_len(1 << 20);
  EXPECT_THAT(Error(s), HasSubstr("spec.hyperparameters.seq_len: must be in [1, 131072]"));
  s = spec();
  s.mutable_hyperparameters()->set_lr(std::nan(""));
  EXPECT_THAT(Error(s), HasSubstr("spec.hyperparameters.lr"));
  s = spec();
  s.mutable_hyperparameters()->set_global_batch(12);  // not a multiple of 1 x 8
  EXPECT_THAT(Error(s), HasSubstr("spec.hyperparameters.global_batch"));
  s = spec();
  s.mutable_parallelism()->set_ep_size(3);
  EXPECT_THAT(Error(s), HasSubstr("spec.parallelism.ep_size"));
  s = spec();
  s.mutable_resources()->set_nodes(1000);
  s.mutable_resources()->set_gpus_per_node(16);
  EXPECT_THAT(Error(s), HasSubstr("spec.resources: world size"));
  s = spec();
  s.mutable_backends()->set_gate("random");
  EXPECT_THAT(Error(s), HasSubstr("spec.backends.gate: must be one of real, balanced"));
  s = spec();
  s.set_method("qlora");
  EXPECT_THAT(Error(s), HasSubstr("spec.method: must be one of full, lora"));
  s = spec();
  s.set_webhook_url("ftp://x");
  EXPECT_THAT(Error(s), HasSubstr("spec.webhook_url"));
  s = spec();
  s.mutable_hyperparameters()->set_max_steps(0);
  s.mutable_hyperparameters()->set_epochs(0);
  EXPECT_THAT(Error(s), HasSubstr("spec.hyperparameters.max_steps"));
  s = spec();
  s.mutable_scheduling()->set_priority(5000);
  EXPECT_THAT(Error(s), HasSubstr("spec.scheduling.priority"));
}

// A setting that is accepted must take effect: values the engine has no implementation of are
// refused by name, with the reason; the implemented one (or none: the default) passes.
TEST_F(ValidatorTest, RefusesSettingsTheEngineCannotHonour) {
  auto spec = [&] { return ftd::testing::ValidSpec(env_); };
  auto s = spec();
  s.set_method("lora");
  s.mutable_lora()->set_dropout(0.05);
  EXPECT_THAT(Error(s), HasSubstr("spec.lora.dropout: only 0 is supported"));
  s = spec();
  s.mutable_backends()->set_dispatcher("fused");
  EXPECT_THAT(Error(s), HasSubstr("spec.backends.dispatcher: fused is not supported yet"));
  // Every implemented backend passes (the engine checks them against the rank's device).
  for (const char* attention : {"sdpa", "flash", "cudnn"}) {
    for (const char* experts : {"grouped_mm", "ftd", "loop"}) {
      s = spec();
      s.mutable_backends()->set_attention(attention);
      s.mutable_backends()->set_experts(experts);
      EXPECT_EQ(Error(s), "OK") << attention << " " << experts;
    }
  }
  s = spec();
  s.mutable_backends()->set_attention("xformers");
  EXPECT_THAT(Error(s), HasSubstr("spec.backends.attention: must be one of sdpa, flash, cudnn"));
  s = spec();
  s.mutable_backends()->set_experts("magic");
  EXPECT_THAT(Error(s), HasSubstr("spec.backends.experts: must be one of grouped_mm, ftd, loop"));
  for (int stage : {1, 4}) {
    s = spec();
    s.mutable_parallelism()->set_zero_stage(stage);
    EXPECT_THAT(Error(s), HasSubstr("spec.parallelism.zero_stage: must be 2 (dense gradients")) << stage;
  }
  s = spec();
  s.mutable_parallelism()->set_zero_stage(3);  // dense parameters sharded too
  std::vector<std::string> stage3_notes;
  EXPECT_TRUE(validator_->ValidateAndNormalize(ftd::testing::kTenantA, &s, &stage3_notes).ok());
  s = spec();
  s.clear_backends();
  s.mutable_parallelism()->set_zero_stage(0);
  std::vector<std::string> notes;
  ASSERT_TRUE(validator_->ValidateAndNormalize(ftd::testing::kTenantA, &s, &notes).ok());
  EXPECT_EQ(s.parallelism().zero_stage(), 2);
  EXPECT_EQ(s.backends().attention(), "sdpa");
  EXPECT_EQ(s.backends().experts(), "grouped_mm");
  EXPECT_EQ(s.backends().dispatcher(), "alltoall");
  EXPECT_THAT(notes, ::testing::Contains(HasSubstr("spec.parallelism.zero_stage defaulted to 2")));
}

// parallelism.recompute_expert_grads: accepted where the engine honours it (one GPU, backends.experts
// ftd, one micro-batch a step, full weights, compact state), refused by name everywhere else.
TEST_F(ValidatorTest, RecomputeExpertGradsOnlyWhereTheEngineHonoursIt) {
  auto spec = [&] {
    ftd::v1::JobSpec s = ftd::testing::ValidSpec(env_);
    s.mutable_resources()->set_gpus_per_node(1);
    s.mutable_parallelism()->set_ep_size(1);
    s.mutable_hyperparameters()->set_global_batch(1);
    s.mutable_backends()->set_experts("ftd");
    s.mutable_parallelism()->set_recompute_expert_grads(true);
    return s;
  };
  EXPECT_EQ(Error(spec()), "OK");
  auto s = spec();
  s.set_precision("compact");
  EXPECT_EQ(Error(s), "OK");
  const std::string field = "spec.parallelism.recompute_expert_grads: ";
  s = spec();
  s.mutable_resources()->set_gpus_per_node(2);
  s.mutable_hyperparameters()->set_global_batch(2);
  EXPECT_THAT(Error(s), HasSubstr(field + "needs one GPU (the world size is 2"));
  s = spec();
  s.mutable_backends()->set_experts("grouped_mm");
  EXPECT_THAT(Error(s), HasSubstr(field + "needs backends.experts ftd"));
  // Unset, backends.experts takes the one backend the setting runs on, and says so.
  s = spec();
  s.mutable_backends()->clear_experts();
  std::vector<std::string> notes;
  ASSERT_TRUE(validator_->ValidateAndNormalize(ftd::testing::kTenantA, &s, &notes).ok());
  EXPECT_EQ(s.backends().experts(), "ftd");
  EXPECT_THAT(notes, ::testing::Contains(HasSubstr("spec.backends.experts defaulted to ftd")));
  s = spec();
  s.mutable_hyperparameters()->set_global_batch(4);
  EXPECT_THAT(Error(s), HasSubstr(field + "needs one micro-batch a step"));
  s = spec();
  s.set_precision("fp32_master");
  EXPECT_THAT(Error(s), HasSubstr(field + "needs precision compact (or auto), got fp32_master"));
  s = spec();
  s.set_method("lora");
  EXPECT_THAT(Error(s), HasSubstr(field + "applies to method full"));
}

// Method lora: defaults noted, every field checked by name, lora without method lora refused.
TEST_F(ValidatorTest, LoraSpec) {
  auto spec = [&] {
    ftd::v1::JobSpec s = ftd::testing::ValidSpec(env_);
    s.set_method("lora");
    return s;
  };
  ftd::v1::JobSpec s = spec();
  std::vector<std::string> notes;
  ASSERT_TRUE(validator_->ValidateAndNormalize(ftd::testing::kTenantA, &s, &notes).ok());
  EXPECT_EQ(s.lora().rank(), 16);
  EXPECT_EQ(s.lora().alpha(), 32);
  EXPECT_THAT(std::vector<std::string>(s.lora().targets().begin(), s.lora().targets().end()),
              ::testing::ElementsAre("attention", "experts"));
  EXPECT_THAT(notes, ::testing::Contains(HasSubstr("spec.lora.rank defaulted to 16")));
  s = spec();
  s.mutable_lora()->set_rank(8);
  ASSERT_TRUE(validator_->ValidateAndNormalize(ftd::testing::kTenantA, &s, &notes).ok());
  EXPECT_EQ(s.lora().alpha(), 16);  // 2 x rank
  s = spec();
  s.mutable_lora()->set_rank(5000);
  EXPECT_THAT(Error(s), HasSubstr("spec.lora.rank"));
  s = spec();
  s.mutable_lora()->set_alpha(-2);
  EXPECT_THAT(Error(s), HasSubstr("spec.lora.alpha"));
  s = spec();
  s.mutable_lora()->add_targets("router");
  EXPECT_THAT(Error(s), HasSubstr("spec.lora.targets: router cannot be adapted"));
  s = spec();
  s.mutable_lora()->add_targets("lm_head");
  EXPECT_THAT(Error(s), HasSubstr("spec.lora.targets: `lm_head` is not one of"));
  s = spec();
  s.set_precision("fp16_master");
  EXPECT_THAT(Error(s), HasSubstr("spec.precision"));
  s = spec();
  s.mutable_parallelism()->set_zero_stage(3);
  EXPECT_THAT(Error(s), HasSubstr("spec.parallelism.zero_stage: 3 is not supported with method lora"));
  s = spec();
  s.mutable_lora()->set_init_adapter("/etc");
  EXPECT_THAT(Error(s), HasSubstr("spec.lora.init_adapter"));
  s = ftd::testing::ValidSpec(env_);
  s.mutable_lora()->set_rank(4);
  EXPECT_THAT(Error(s), HasSubstr("spec.lora: only with spec.method lora"));
}

TEST_F(ValidatorTest, WebhooksGoOnlyToAllowedDestinations) {
  auto s = ftd::testing::ValidSpec(env_);
  s.set_webhook_url("http://hooks.example.com/ftd");
  EXPECT_THAT(Error(s), HasSubstr("spec.webhook_url: webhooks are disabled on this coordinator"));
  ValidatorConfig config = validator_->config();
  config.webhook_allow = {"hooks.example.com", "127.0.0.1:8443"};
  auto allowing = SpecValidator::Create(config);
  ASSERT_TRUE(allowing.ok()) << allowing.status();
  auto check = [&](const std::string& url) {
    auto spec = ftd::testing::ValidSpec(env_);
    spec.set_webhook_url(url);
    std::vector<std::string> notes;
    absl::Status st = allowing->ValidateAndNormalize(ftd::testing::kTenantA, &spec, &notes);
    return st.ok() ? "OK" : std::string(st.message());
  };
  EXPECT_EQ(check("http://hooks.example.com/ftd"), "OK");
  EXPECT_EQ(check("https://HOOKS.example.com:443/x?y=1"), "OK");  // any port of a bare host
  EXPECT_EQ(check("https://127.0.0.1:8443/hook"), "OK");
  EXPECT_THAT(check("http://127.0.0.1:8080/hook"), HasSubstr("destination 127.0.0.1:8080 is not in the operator's allow-list"));
  EXPECT_THAT(check("http://169.254.169.254/latest/meta-data"), HasSubstr("not in the operator's allow-list"));
  EXPECT_THAT(check("http://localhost/admin"), HasSubstr("not in the operator's allow-list"));
  EXPECT_THAT(check("http://hooks.example.com@10.0.0.1/"), HasSubstr("spec.webhook_url: must not carry user information"));
  EXPECT_THAT(check("ftp://hooks.example.com/"), HasSubstr("spec.webhook_url: must be an http:// or https:// URL"));
  config.webhook_allow = {"bad host"};
  EXPECT_THAT(std::string(SpecValidator::Create(config).status().message()), HasSubstr("--webhook-allow `bad host`"));
}

TEST_F(ValidatorTest, ConfinesPathsToRootsThroughDotDotAndSymlinks) {
  auto s = ftd::testing::ValidSpec(env_);
  s.set_base_model(env_.model_root() + "/../datasets");
  EXPECT_THAT(Error(s), HasSubstr("spec.base_model: must not contain `..`"));
  s = ftd::testing::ValidSpec(env_);
  s.set_base_model("/etc");
  EXPECT_THAT(Error(s), HasSubstr("spec.base_model: `/etc` resolves outside the allowed roots"));
  // A symlink inside the root that points out of it.
  ASSERT_EQ(::symlink("/etc", (env_.model_root() + "/escape").c_str()), 0);
  s = ftd::testing::ValidSpec(env_);
  s.set_base_model(env_.model_root() + "/escape/passwd");
  EXPECT_THAT(Error(s), HasSubstr("resolves outside the allowed roots"));
  s = ftd::testing::ValidSpec(env_);
  s.mutable_datasets()->set_train("s3://bucket/x");
  EXPECT_THAT(Error(s), HasSubstr("spec.datasets.train: only local paths"));
  // Relative paths resolve under the first root; not-yet-existing ones are fine.
  s = ftd::testing::ValidSpec(env_);
  s.mutable_datasets()->set_train("future/train.jsonl");
  std::vector<std::string> notes;
  ASSERT_TRUE(validator_->ValidateAndNormalize(ftd::testing::kTenantA, &s, &notes).ok());
  char real_root[PATH_MAX];
  ASSERT_NE(::realpath(env_.data_root().c_str(), real_root), nullptr);
  EXPECT_EQ(s.datasets().train(), std::string(real_root) + "/tenant-a/future/train.jsonl");
}

// Qwen3-30B-A3B's config.json fields, at `layers` decoder layers.
std::string Qwen3MoeConfig(int layers) {
  return absl::StrCat(R"({"model_type": "qwen3_moe", "hidden_size": 2048, "num_hidden_layers": )", layers, R"(,
      "vocab_size": 151936, "num_attention_heads": 32, "num_key_value_heads": 4,
      "head_dim": 128, "intermediate_size": 6144, "moe_intermediate_size": 768,
      "num_experts": 128, "num_experts_per_tok": 8, "tie_word_embeddings": false})");
}

TEST(JobPlanTest, CountsParametersAndEstimatesMemoryByTheDocumentedFormula) {
  // Qwen3-30B-A3B's config.json fields: about 30.5 B parameters.
  auto size = CountParameters(Qwen3MoeConfig(48));
  ASSERT_TRUE(size.ok()) << size.status();
  EXPECT_EQ(size->total(), 30532122624);  // the engine's count (engine/model/tensor_layout.h)
  EXPECT_EQ(size->family, "Qwen3-MoE");
  ftd::v1::JobSpec spec;
  spec.mutable_resources()->set_nodes(1);
  spec.mutable_resources()->set_gpus_per_node(8);
  spec.mutable_parallelism()->set_ep_size(8);
  spec.mutable_parallelism()->set_zero_stage(2);
  spec.mutable_parallelism()->set_activation_checkpointing(true);
  spec.mutable_hyperparameters()->set_micro_batch(1);
  spec.mutable_hyperparameters()->set_seq_len(4096);
  const double pd = double(size->dense_parameters), pe = double(size->expert_parameters) / 8;
  // AdamW state per parameter by precision: fp32 master and moments; compact (the default):
  // a 16-bit low half, two 1-byte moments and 8 bytes of scales per 256; compact_sr: no low half.
  for (const auto& [precision, state] : std::vector<std::pair<std::string, double>>{{"fp32_master", 12.0},
                                                                                     {"", 4.0 + 8.0 / 256},
                                                                                     {"compact", 4.0 + 8.0 / 256},
                                                                                     {"compact_sr", 2.0 + 8.0 / 256},
                                                                                     {"bf16_pure", 4.0}}) {
    spec.set_precision(precision);
    const double expected = 2 * (pd + pe) + 2 * (pd / 8 + pe) + state * (pd / 8 + pe) +
                            48 * 2 * 2048.0 * 4096 + 34 * 2048.0 * 4096 + 4 * 151936.0 * 4096;
    EXPECT_NEAR(double(EstimateMemoryPerGpu(*size, spec)), expected, 2.0) << precision;
  }
  // One GPU, no clipping, one micro-batch a step: the optimizer steps in backward, no gradient
  // is held.
  spec.mutable_resources()->set_gpus_per_node(1);
  spec.mutable_parallelism()->set_ep_size(1);
  spec.mutable_hyperparameters()->set_global_batch(1);
  spec.set_precision("compact");
  spec.mutable_hyperparameters()->set_grad_clip(0.0);
  const double all = pd + double(size->expert_parameters);
  const double one_gpu = 2 * all + (4.0 + 8.0 / 256) * all + 48 * 2 * 2048.0 * 4096 + 34 * 2048.0 * 4096 +
                         4 * 151936.0 * 4096;
  EXPECT_NEAR(double(EstimateMemoryPerGpu(*size, spec)), one_gpu, 2.0);
  spec.mutable_hyperparameters()->set_grad_clip(1.0);
  EXPECT_NEAR(double(EstimateMemoryPerGpu(*size, spec)), one_gpu + 2 * all, 2.0);
  EXPECT_EQ(CountParameters("[]").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(CountParameters("{\"hidden_size\": 8}").status().message()), HasSubstr("model_type"));
  EXPECT_THAT(std::string(CountParameters(R"({"model_type": "qwen3_moe", "hidden_size": 8})").status().message()),
              HasSubstr("vocab_size"));
  EXPECT_THAT(std::string(CountParameters(R"({"model_type": "llama"})").status().message()),
              HasSubstr("deepseek_v3"));  // the supported families are named
}

// parallelism.recompute_expert_grads: the plan holds the expert GEMMs' operands and one chunk of
// an expert weight's gradient (whole experts of a layer's gate_up) instead of every expert gradient.
TEST(JobPlanTest, RecomputeExpertGradsHoldsOperandsInsteadOfExpertGradients) {
  // Qwen3-30B-A3B's layer shape at 4 layers (bench/run_service_gpu.sh's model).
  auto size = CountParameters(Qwen3MoeConfig(4));
  ASSERT_TRUE(size.ok()) << size.status();
  EXPECT_EQ(size->expert_operand_elements_per_token, 4 * 8 * (2 * 2048 + 3 * 768));
  // 85 experts' gate_up gradients (6.3 MB each in bf16) fit the 512 MiB chunk.
  EXPECT_EQ(size->largest_expert_grad_chunk, 85 * 2048 * 2 * 768);
  ftd::v1::JobSpec spec;
  spec.mutable_resources()->set_nodes(1);
  spec.mutable_resources()->set_gpus_per_node(1);
  spec.mutable_hyperparameters()->set_micro_batch(1);
  spec.mutable_hyperparameters()->set_global_batch(1);
  spec.mutable_hyperparameters()->set_seq_len(4096);
  const double formed = double(EstimateMemoryPerGpu(*size, spec));
  spec.mutable_parallelism()->set_recompute_expert_grads(true);
  const double recomputed = double(EstimateMemoryPerGpu(*size, spec));
  const double operands = 2.0 * 4096 * size->expert_operand_elements_per_token;
  EXPECT_NEAR(formed - recomputed, 2.0 * size->expert_parameters - operands - 2.0 * size->largest_expert_grad_chunk, 2.0);
  // 2.4 B expert parameters: 4.8 GB of gradients against 1.6 GB of operands and a 0.5 GB chunk.
  EXPECT_GT(formed - recomputed, 2.0e9);
  // Without clipping the optimizer steps in backward: nothing is held either way.
  spec.mutable_hyperparameters()->set_grad_clip(0.0);
  const double in_backward = double(EstimateMemoryPerGpu(*size, spec));
  spec.mutable_parallelism()->set_recompute_expert_grads(false);
  EXPECT_EQ(in_backward, double(EstimateMemoryPerGpu(*size, spec)));
}

// The plan of a clipped one-GPU job names parallelism.recompute_expert_grads with what it would
// save, and says what it saves when set; a multi-GPU job's plan does not offer it.
TEST(JobPlanTest, NotesWhatRecomputeExpertGradsSaves) {
  char dir_template[] = "/tmp/ftd-plan-XXXXXX";
  ASSERT_NE(::mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  std::ofstream(dir + "/config.json") << Qwen3MoeConfig(4);
  ftd::v1::JobSpec spec;
  spec.set_base_model(dir);
  spec.mutable_resources()->set_nodes(1);
  spec.mutable_resources()->set_gpus_per_node(1);
  spec.mutable_hyperparameters()->set_micro_batch(1);
  spec.mutable_hyperparameters()->set_global_batch(1);
  spec.mutable_hyperparameters()->set_seq_len(4096);
  // 4.8 GB of expert gradients against 1.7 GB of operands and a 0.5 GB chunk of the gate_up gradient.
  EXPECT_THAT(PlanJob(spec).notes(), ::testing::Contains(HasSubstr(
                                         "parallelism.recompute_expert_grads (with backends.experts ftd) would hold "
                                         "the expert GEMMs' operands instead of the experts' gradients: 2.4 GiB less")));
  spec.mutable_parallelism()->set_recompute_expert_grads(true);
  EXPECT_THAT(PlanJob(spec).notes(),
              ::testing::Contains(HasSubstr("parallelism.recompute_expert_grads: the expert GEMMs' operands are held "
                                            "instead of the experts' gradients (2.4 GiB less)")));
  spec.mutable_parallelism()->set_recompute_expert_grads(false);
  spec.mutable_resources()->set_gpus_per_node(8);
  spec.mutable_hyperparameters()->set_global_batch(8);
  EXPECT_THAT(PlanJob(spec).notes(), ::testing::Not(::testing::Contains(HasSubstr("recompute_expert_grads"))));
  std::filesystem::remove_all(dir);
}

// Method lora: the base frozen (bf16 weights only), the adapters trained with fp32 state (auto).
TEST(JobPlanTest, LoraCountsAdaptersAndPlansAFrozenBase) {
  const char* qwen3 = R"({"model_type": "qwen3_moe", "hidden_size": 2048, "num_hidden_layers": 48,
      "vocab_size": 151936, "num_attention_heads": 32, "num_key_value_heads": 4,
      "head_dim": 128, "intermediate_size": 6144, "moe_intermediate_size": 768,
      "num_experts": 128, "num_experts_per_tok": 8, "tie_word_embeddings": false})";
  ftd::v1::JobSpec spec;
  spec.set_method("lora");
  spec.mutable_lora()->set_rank(16);
  spec.mutable_lora()->add_targets("attention");
  spec.mutable_lora()->add_targets("experts");
  spec.mutable_resources()->set_nodes(1);
  spec.mutable_resources()->set_gpus_per_node(1);
  spec.mutable_parallelism()->set_ep_size(1);
  spec.mutable_parallelism()->set_activation_checkpointing(true);
  spec.mutable_hyperparameters()->set_micro_batch(1);
  spec.mutable_hyperparameters()->set_global_batch(1);
  spec.mutable_hyperparameters()->set_seq_len(4096);
  auto size = CountParameters(qwen3, spec);
  ASSERT_TRUE(size.ok()) << size.status();
  // r (in + out) per projection: q/k/v/o 278,528 a layer; every expert's gate_up and down
  // 13,107,200 a layer: 642.5M, the count PEFT reports for the same targets (DESIGN.md).
  EXPECT_EQ(size->lora_dense_parameters, 48 * 278528);
  EXPECT_EQ(size->lora_expert_parameters, int64_t{48} * 13107200);
  const double all = double(size->total()), adapters = 48.0 * 278528 + 48.0 * 13107200;
  const double expected = 2 * all + 2 * adapters + 2 * adapters + 12 * adapters + 48 * 2 * 2048.0 * 4096 +
                          34 * 2048.0 * 4096 + 4 * 151936.0 * 4096;
  EXPECT_NEAR(double(EstimateMemoryPerGpu(*size, spec)), expected, 2.0);
  // precision compact: the adapters' state is the compact one (2 + 2 + 8/256 bytes, not 12).
  ftd::v1::JobSpec compact = spec;
  compact.set_precision("compact");
  EXPECT_NEAR(double(EstimateMemoryPerGpu(*size, compact)), expected - (12 - (4 + 8.0 / 256)) * adapters, 2.0);
  // Far below a full fine-tune of the same model on the same GPU.
  ftd::v1::JobSpec full = spec;
  full.set_method("full");
  full.clear_lora();
  EXPECT_LT(double(EstimateMemoryPerGpu(*size, spec)), 0.4 * double(EstimateMemoryPerGpu(*size, full)));
  // A target the model lacks is named.
  spec.mutable_lora()->add_targets("shared_experts");
  EXPECT_THAT(std::string(CountParameters(qwen3, spec).status().message()),
              HasSubstr("spec.lora.targets: shared_experts matches nothing in this qwen3_moe model"));
}

// DeepSeek-V3's and Moonlight's config.json fields (as the presets of ftd-train init-model).
constexpr char kDeepseekV3Config[] = R"({"model_type": "deepseek_v3", "vocab_size": 129280, "hidden_size": 7168,
    "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61, "num_attention_heads": 128,
    "num_key_value_heads": 128, "n_shared_experts": 1, "n_routed_experts": 256, "routed_scaling_factor": 2.5,
    "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
    "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8, "first_k_dense_replace": 3, "norm_topk_prob": true,
    "max_position_embeddings": 163840, "num_nextn_predict_layers": 1, "rope_theta": 10000,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096, "type": "yarn"}})";
constexpr char kMoonlightConfig[] = R"({"model_type": "deepseek_v3", "vocab_size": 163840, "hidden_size": 2048,
    "intermediate_size": 11264, "moe_intermediate_size": 1408, "num_hidden_layers": 27, "num_attention_heads": 16,
    "num_key_value_heads": 16, "n_shared_experts": 2, "n_routed_experts": 64, "routed_scaling_factor": 2.446,
    "kv_lora_rank": 512, "q_lora_rank": null, "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
    "n_group": 1, "topk_group": 1, "num_experts_per_tok": 6, "first_k_dense_replace": 1, "norm_topk_prob": true,
    "max_position_embeddings": 8192, "num_nextn_predict_layers": 0, "rope_theta": 50000.0, "rms_norm_eps": 1e-05,
    "scoring_func": "sigmoid", "topk_method": "noaux_tc", "moe_layer_freq": 1})";

TEST(JobPlanTest, DeepseekV3AndMoonlightCountsAndZeroStages) {
  auto v3 = CountParameters(kDeepseekV3Config);
  ASSERT_TRUE(v3.ok()) << v3.status();
  EXPECT_EQ(v3->family, "DeepSeek-V3");
  EXPECT_NEAR(double(v3->total()) / 1e9, 671.0, 1.0);  // DeepSeek-V3's "671B total" (main model, no MTP)
  auto moonlight = CountParameters(kMoonlightConfig);
  ASSERT_TRUE(moonlight.ok()) << moonlight.status();
  EXPECT_NEAR(double(moonlight->total()) / 1e9, 16.0, 0.1);  // Moonlight-16B-A3B

  // 64 GPUs (8 nodes of 8), ep 64: ZeRO-3 keeps one layer's dense parameters (and the one
  // gathered next) plus a 1/64 shard of the rest, instead of every dense parameter.
  ftd::v1::JobSpec spec;
  spec.mutable_resources()->set_nodes(8);
  spec.mutable_resources()->set_gpus_per_node(8);
  spec.mutable_parallelism()->set_ep_size(64);
  spec.mutable_parallelism()->set_activation_checkpointing(true);
  spec.mutable_hyperparameters()->set_micro_batch(1);
  spec.mutable_hyperparameters()->set_seq_len(4096);
  spec.mutable_parallelism()->set_zero_stage(2);
  const double two = double(EstimateMemoryPerGpu(*v3, spec));
  spec.mutable_parallelism()->set_zero_stage(3);
  const double three = double(EstimateMemoryPerGpu(*v3, spec));
  const double pl = double(v3->layer_dense_parameters), lmax = double(v3->max_layer_dense_parameters);
  EXPECT_GT(pl, 10e9);  // MLA and shared experts: ~11B dense parameters in the layers
  EXPECT_NEAR(two - three, 2 * (pl - pl / 64 - 2 * lmax), 2.0);
  EXPECT_LT(three, two - 18.0 * (1ull << 30));
}

}  // namespace
}  // namespace ftd::server
