// Every ftctl command, run as the real binary against a real coordinator (an in-process
// server::Daemon on loopback gRPC), including the error paths: unreachable server, bad or
// missing token, validation errors pointing at the job file's line, NOT_FOUND, cancelling a
// finished job, TLS. Job execution is driven through the daemon's JobManager, the same
// interface the scheduler uses.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "tests/server/server_test_util.h"

namespace ftd::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ftd::v1::JobState;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

struct Result {
  int code = -1;
  std::string out, err;
};

// A running ftctl: stdout/stderr go to files; Wait() reaps it (SIGKILL after the deadline).
class Process {
 public:
  Process(const std::vector<std::string>& args, const std::map<std::string, std::string>& env,
          const std::string& scratch) {
    static int counter = 0;
    const std::string base = absl::StrCat(scratch, "/run", counter++);
    out_path_ = base + ".out";
    err_path_ = base + ".err";
    const std::string binary = std::string(FTD_BIN_DIR) + "/ftctl";
    pid_ = ::fork();
    if (pid_ == 0) {
      int out = ::open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int err = ::open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int in = ::open("/dev/null", O_RDONLY);
      ::dup2(out, 1);
      ::dup2(err, 2);
      ::dup2(in, 0);
      ::unsetenv("FTD_ENDPOINT");
      ::unsetenv("FTD_TOKEN");
      ::unsetenv("FTD_CONFIG");
      ::unsetenv("FTD_CA_CERT");
      ::unsetenv("XDG_CONFIG_HOME");
      ::setenv("HOME", scratch.c_str(), 1);  // no ~/.config/ftd/config.yaml of the machine's user
      for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
      std::vector<char*> argv;
      argv.push_back(const_cast<char*>(binary.c_str()));
      for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv(binary.c_str(), argv.data());
      ::_exit(127);
    }
  }
  std::string out() const { return ReadFile(out_path_); }
  Result Wait(absl::Duration timeout = absl::Seconds(60)) {
    Result r;
    absl::Time deadline = absl::Now() + timeout;
    int status = 0;
    for (;;) {
      pid_t done = ::waitpid(pid_, &status, WNOHANG);
      if (done == pid_) break;
      if (absl::Now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        r.err = "<killed: timeout>";
        break;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = ReadFile(out_path_);
    r.err += ReadFile(err_path_);
    return r;
  }

 private:
  pid_t pid_ = -1;
  std::string out_path_, err_path_;
};

// Waits (polling) until `pred` holds or `timeout` passes.
bool WaitFor(const std::function<bool()>& pred, absl::Duration timeout = absl::Seconds(30)) {
  absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    if (pred()) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return pred();
}

class FtctlTest : public ::testing::Test {
 protected:
  void SetUp() override { StartDaemon(env_.Options()); }

  void StartDaemon(const server::DaemonOptions& options) {
    auto d = server::Daemon::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = *std::move(d);
    endpoint_ = absl::StrCat("127.0.0.1:", daemon_->grpc_port());
  }

  std::map<std::string, std::string> Env(const std::string& token = kTokenA) const {
    return {{"FTD_ENDPOINT", endpoint_}, {"FTD_TOKEN", token}};
  }
  Result Run(const std::vector<std::string>& args) { return Process(args, Env(), env_.root()).Wait(); }
  Result RunEnv(const std::vector<std::string>& args, const std::map<std::string, std::string>& env) {
    return Process(args, env, env_.root()).Wait();
  }

  // A job file valid for TestEnv's roots. Line numbers matter to the tests: keep in sync.
  std::string JobYaml(const std::string& lr = "1.0e-5", int gpus = 2) const {
    return absl::StrCat(
        "# a test job\n",                                   // 1
        "base_model: ", env_.model_dir(), "\n",             // 2
        "datasets:\n",                                      // 3
        "  train: ", env_.train_file(), "\n",               // 4
        "  format: jsonl_tokens\n",                         // 5
        "hyperparameters:\n",                               // 6
        "  max_steps: 10\n",                                // 7
        "  global_batch: 8\n",                              // 8
        "  micro_batch: 1\n",                               // 9
        "  seq_len: 256\n",                                 // 10
        "  lr: ", lr, "\n",                                 // 11
        "parallelism: {ep_size: 2}\n",                      // 12
        "resources:\n",                                     // 13
        "  nodes: 1\n",                                     // 14
        "  gpus_per_node: ", gpus, "\n",                    // 15
        "labels:\n",                                        // 16
        "  team: nlp\n");                                   // 17
  }
  std::string WriteJob(const std::string& text, const std::string& name = "job.yaml") {
    std::string path = env_.root() + "/" + name;
    WriteFile(path, text);
    return path;
  }
  std::string Submit(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"submit", "-f", WriteJob(JobYaml()), "-o", "name"};
    args.insert(args.end(), extra.begin(), extra.end());
    Result r = Run(args);
    EXPECT_EQ(r.code, 0) << r.err;
    std::string id(absl::StripAsciiWhitespace(r.out));
    EXPECT_FALSE(id.empty());
    return id;
  }

  void Transition(const std::string& id, JobState to, const std::string& message = "") {
    server::JobManager::TransitionOptions o;
    o.message = message;
    if (to == JobState::STARTING) {
      ftd::v1::JobStatus::Placement p;
      for (int r = 0; r < 2; ++r) {
        auto* rank = p.add_ranks();
        rank->set_rank(r);
        rank->set_worker("node-a");
        rank->set_local_rank(r);
      }
      o.placement = p;
    }
    if (to == JobState::FAILED) {
      ftd::v1::JobError e;
      e.set_code("RANK_EXITED");
      e.set_message("rank 1 exited with code 9");
      o.error = e;
    }
    auto st = daemon_->jobs()->Transition(id, to, o);
    ASSERT_TRUE(st.ok()) << st.status();
  }
  void Progress(const std::string& id, int64_t step, double loss) {
    ftd::v1::JobStatus::Progress p;
    p.set_step(step);
    p.set_total_steps(10);
    p.set_tokens(step * 8 * 256);
    ftd::v1::JobMetrics m;
    m.set_tokens_per_second_per_gpu(4512.5);
    m.set_mfu(0.231);
    m.set_loss(loss);
    m.set_step_seconds(0.5);
    m.set_model_tflops_per_gpu(228.4);
    ASSERT_TRUE(daemon_->jobs()->RecordProgress(id, p, m).ok());
  }

  TestEnv env_;
  std::unique_ptr<server::Daemon> daemon_;
  std::string endpoint_;
};

TEST_F(FtctlTest, VersionAndHelpOnEveryCommand) {
  Result v = Run({"version"});
  EXPECT_EQ(v.code, 0);
  EXPECT_THAT(v.out, HasSubstr("ftctl 0.1.0 (api ftd.v1)"));
  Result top = Run({"--help"});
  EXPECT_EQ(top.code, 0);
  for (const char* cmd : {"submit", "get", "list", "cancel", "watch", "logs", "events", "checkpoints", "plan",
                          "version", "model", "completion"}) {
    EXPECT_THAT(top.out, HasSubstr(cmd));
  }
  for (std::vector<std::string> cmd :
       std::vector<std::vector<std::string>>{{"submit"}, {"get"}, {"list"}, {"cancel"}, {"watch"}, {"logs"},
                                             {"events"}, {"checkpoints"}, {"plan"}, {"version"}, {"model"},
                                             {"model", "init"}, {"model", "inspect"}, {"completion"}}) {
    cmd.push_back("--help");
    Result h = Run(cmd);
    EXPECT_EQ(h.code, 0) << cmd[0];
    EXPECT_THAT(h.out, HasSubstr("Examples")) << cmd[0];
  }
  Result bad = Run({"frobnicate"});
  EXPECT_EQ(bad.code, 2);
  EXPECT_THAT(bad.err, HasSubstr("ftctl:"));
}

TEST_F(FtctlTest, SubmitGetListCancelEvents) {
  const std::string id = Submit({"--request-id", "req-1"});
  // Idempotent: the same request id gives the same job.
  EXPECT_EQ(Submit({"--request-id", "req-1"}), id);

  Result plain = Run({"submit", "-f", WriteJob(JobYaml()), "-l", "owner=ana"});
  EXPECT_EQ(plain.code, 0) << plain.err;
  EXPECT_THAT(plain.out, HasSubstr("submitted (QUEUED; world size 2"));

  Result get = Run({"get", id});
  EXPECT_EQ(get.code, 0) << get.err;
  EXPECT_THAT(get.out, HasSubstr(id));
  EXPECT_THAT(get.out, HasSubstr("QUEUED"));
  EXPECT_THAT(get.out, HasSubstr("team=nlp"));
  EXPECT_THAT(get.out, HasSubstr("1 node(s) x 2 GPU(s), ep 2"));

  Result json = Run({"get", id, "-o", "json"});
  ASSERT_EQ(json.code, 0);
  nlohmann::json j = nlohmann::json::parse(json.out);
  EXPECT_EQ(j["id"], id);
  EXPECT_EQ(j["status"]["state"], "QUEUED");
  EXPECT_EQ(j["spec"]["hyperparameters"]["seq_len"], 256);

  // -o yaml: its spec is a valid job file again.
  Result yaml = Run({"get", id, "-o", "yaml"});
  ASSERT_EQ(yaml.code, 0);
  EXPECT_THAT(yaml.out, HasSubstr("state: QUEUED"));
  EXPECT_THAT(yaml.out, HasSubstr("team: nlp"));

  Result list = Run({"list"});
  EXPECT_EQ(list.code, 0) << list.err;
  EXPECT_THAT(list.out, HasSubstr("ID"));
  EXPECT_THAT(list.out, HasSubstr(id));
  EXPECT_THAT(Run({"list", "--state", "running"}).out, Not(HasSubstr(id)));
  EXPECT_THAT(Run({"list", "--state", "QUEUED,RUNNING", "--label", "team=nlp"}).out, HasSubstr(id));
  EXPECT_THAT(Run({"list", "--label", "team=vision"}).out, HasSubstr("No jobs found."));
  Result names = Run({"list", "-o", "name", "--label", "owner=ana"});
  EXPECT_EQ(std::vector<std::string>(absl::StrSplit(absl::StripAsciiWhitespace(names.out), '\n')).size(), 1u);
  Result bad_state = Run({"list", "--state", "DONE"});
  EXPECT_EQ(bad_state.code, 1);
  EXPECT_THAT(bad_state.err, HasSubstr("--state DONE: not a job state"));

  // Another tenant sees nothing of it.
  Result other = RunEnv({"get", id}, Env(kTokenB));
  EXPECT_EQ(other.code, 1);
  EXPECT_THAT(other.err, HasSubstr("not found"));

  Result cancel = Run({"cancel", id, "--reason", "wrong data"});
  EXPECT_EQ(cancel.code, 0) << cancel.err;
  EXPECT_THAT(cancel.out, HasSubstr("CANCELLED"));
  // Cancelling a finished job: a clear one-line error, exit 1.
  Result again = Run({"cancel", id});
  EXPECT_EQ(again.code, 1);
  EXPECT_THAT(again.err, HasSubstr("cannot cancel: job " + id));
  EXPECT_THAT(again.err, HasSubstr("CANCELLED"));
  EXPECT_EQ(std::count(again.err.begin(), again.err.end(), '\n'), 1);

  Result events = Run({"events", id});
  EXPECT_EQ(events.code, 0) << events.err;
  EXPECT_THAT(events.out, HasSubstr("SEQ"));
  EXPECT_THAT(events.out, HasSubstr("status"));
  EXPECT_THAT(events.out, HasSubstr("CANCELLED"));
  Result events_json = Run({"events", id, "-o", "json"});
  EXPECT_GE(nlohmann::json::parse(events_json.out)["events"].size(), 2u);
}

TEST_F(FtctlTest, ValidationErrorNamesFieldAndLine) {
  // lr is on line 11 of the job file.
  Result r = Run({"submit", "-f", WriteJob(JobYaml("3.0"))});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.err, HasSubstr("job.yaml:11: spec.hyperparameters.lr: must be a finite number in (0, 1], got 3"));
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  // The same through plan.
  EXPECT_THAT(Run({"plan", "-f", WriteJob(JobYaml("3.0"))}).err, HasSubstr("job.yaml:11: spec.hyperparameters.lr"));
  // A world size of 3 breaks ep_size 2 (line 12) and the batch (line 8): the first error wins.
  Result world = Run({"submit", "-f", WriteJob(JobYaml("1e-5", 3))});
  EXPECT_EQ(world.code, 1);
  EXPECT_THAT(world.err, HasSubstr("job.yaml:8: spec.hyperparameters.global_batch: must be a multiple"));
  // A --set value is named as such.
  Result set = Run({"submit", "-f", WriteJob(JobYaml()), "--set", "hyperparameters.seq_len=0"});
  EXPECT_THAT(set.err, HasSubstr("--set hyperparameters.seq_len=0: spec.hyperparameters.seq_len: must be in"));
  // A field the file does not set points at its section.
  std::string no_steps = JobYaml();
  no_steps.replace(no_steps.find("  max_steps: 10\n"), 16, "  epochs: 0\n");
  Result missing = Run({"submit", "-f", WriteJob(no_steps)});
  EXPECT_THAT(missing.err, HasSubstr("job.yaml:6: spec.hyperparameters.max_steps: max_steps or epochs must be positive"));
  // Client-side: unknown fields and bad types, with their lines.
  std::string typo = JobYaml();
  typo.replace(typo.find("  seq_len:"), 10, "  seq_lenn:");
  Result unknown = Run({"submit", "-f", WriteJob(typo)});
  EXPECT_EQ(unknown.code, 1);
  EXPECT_THAT(unknown.err, HasSubstr("job.yaml:10: spec.hyperparameters.seq_lenn: unknown field"));
  std::string bad_type = JobYaml();
  bad_type.replace(bad_type.find("max_steps: 10"), 13, "max_steps: ten");
  EXPECT_THAT(Run({"submit", "-f", WriteJob(bad_type)}).err,
              HasSubstr("job.yaml:7: spec.hyperparameters.max_steps: expected an integer, got \"ten\""));
  EXPECT_THAT(Run({"submit", "-f", WriteJob("a: [1, 2\n")}).err, HasSubstr("job.yaml:"));
  Result label = Run({"submit", "-f", WriteJob(JobYaml()), "--label", "Bad Key=x"});
  EXPECT_EQ(label.code, 1);
  EXPECT_THAT(label.err, HasSubstr("--label Bad Key=x: labels[Bad Key]: key must match"));
  std::string bad_label = JobYaml();
  bad_label.replace(bad_label.find("  team: nlp"), 11, "  Team: nlp");
  EXPECT_THAT(Run({"submit", "-f", WriteJob(bad_label)}).err, HasSubstr("job.yaml:17: labels[Team]: key must match"));
  Result no_file = Run({"submit", "-f", env_.root() + "/absent.yaml"});
  EXPECT_EQ(no_file.code, 1);
  EXPECT_THAT(no_file.err, HasSubstr("absent.yaml: cannot read the job file"));
  EXPECT_EQ(*daemon_->store()->CountJobs(), 0);
}

TEST_F(FtctlTest, UnreachableBadTokenAndNotFound) {
  Result down = RunEnv({"list"}, {{"FTD_ENDPOINT", absl::StrCat("127.0.0.1:", UnusedLoopbackPort())}, {"FTD_TOKEN", kTokenA}});
  EXPECT_EQ(down.code, 1);
  EXPECT_THAT(down.err, HasSubstr("cannot reach the coordinator at 127.0.0.1:"));
  EXPECT_THAT(down.err, HasSubstr("connection refused"));
  EXPECT_EQ(std::count(down.err.begin(), down.err.end(), '\n'), 1) << down.err;

  Result bad = RunEnv({"list"}, Env("not-a-token-0123456789"));
  EXPECT_EQ(bad.code, 1);
  EXPECT_THAT(bad.err, HasSubstr("rejected the token"));
  Result none = RunEnv({"get", "ftj-x"}, {{"FTD_ENDPOINT", endpoint_}});
  EXPECT_EQ(none.code, 1);
  EXPECT_THAT(none.err, HasSubstr("requires a token"));

  for (const char* cmd : {"get", "cancel", "watch", "events", "checkpoints", "logs"}) {
    Result r = Run({cmd, "job-doesnotexist"});
    EXPECT_EQ(r.code, 1) << cmd;
    EXPECT_THAT(r.err, HasSubstr("job-doesnotexist not found")) << cmd << ": " << r.err;
  }
  Result bad_ep = RunEnv({"list"}, {{"FTD_ENDPOINT", "localhost"}});
  EXPECT_THAT(bad_ep.err, HasSubstr("expected HOST:PORT"));
}

TEST_F(FtctlTest, PlanShowsWorldSizeMemoryAndFit) {
  const std::string job = WriteJob(JobYaml());
  Result r = Run({"plan", "-f", job});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_THAT(r.out, HasSubstr("World size:"));
  EXPECT_THAT(r.out, HasSubstr("2 (1 node(s) x 2 GPU(s))"));
  EXPECT_THAT(r.out, HasSubstr("Memory per GPU:"));
  EXPECT_THAT(r.out, HasSubstr("Fits:"));
  EXPECT_THAT(r.out, HasSubstr("yes"));
  Result tight = Run({"plan", "-f", job, "--gpu-memory", "0.0001"});
  EXPECT_EQ(tight.code, 5);
  EXPECT_THAT(tight.out, HasSubstr("NO: needs"));
  Result json = Run({"plan", "-f", job, "-o", "json"});
  nlohmann::json j = nlohmann::json::parse(json.out);
  EXPECT_EQ(j["world_size"], 2);
  EXPECT_EQ(j["data_parallel_size"], 1);
  EXPECT_EQ(*daemon_->store()->CountJobs(), 0);  // validate_only stored nothing
}

// Each line of `watch` shows a sample's own step with that sample's numbers: the steps advance
// with every update (they once stood still while the loss changed).
TEST_F(FtctlTest, WatchShowsEachSamplesOwnStep) {
  const std::string id = Submit();
  Process watch({"watch", id}, Env(), env_.root());
  ASSERT_TRUE(WaitFor([&] { return watch.out().find("QUEUED") != std::string::npos; })) << watch.out();
  int n = 0;  // once a message shows up, the watch's stream is live
  ASSERT_TRUE(WaitFor([&] {
    EXPECT_TRUE(daemon_->jobs()->AppendMessage(id, absl::StrCat("live ", n++)).ok());
    return watch.out().find("live") != std::string::npos;
  }));
  Transition(id, JobState::STARTING);
  Transition(id, JobState::RUNNING);
  for (int step = 1; step <= 10; ++step) Progress(id, step, 5.0 - 0.25 * step);
  Transition(id, JobState::SUCCEEDED);
  Result r = watch.Wait();
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  std::vector<int> steps;
  for (absl::string_view line : absl::StrSplit(r.out, '\n')) {
    if (!absl::StrContains(line, "RUNNING  step ")) continue;
    int step = 0;
    double loss = 0;
    ASSERT_EQ(std::sscanf(std::string(line.substr(line.find("step "))).c_str(), "step %d/10", &step), 1) << line;
    if (step == 0) continue;  // the RUNNING status, before any sample
    const size_t at = line.find("loss ");
    ASSERT_NE(at, absl::string_view::npos) << line;
    ASSERT_EQ(std::sscanf(std::string(line.substr(at)).c_str(), "loss %lf", &loss), 1) << line;
    EXPECT_NEAR(loss, 5.0 - 0.25 * step, 1e-4) << "step and loss of different samples: " << line;
    steps.push_back(step);
  }
  EXPECT_EQ(steps, (std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10})) << r.out;
}

TEST_F(FtctlTest, WatchShowsProgressAndExitsWithTheFinalState) {
  const std::string id = Submit({"--set", "datasets.validation=" + env_.train_file(), "--set",
                                 "hyperparameters.eval_every=5"});
  Process watch({"watch", id}, Env(), env_.root());
  ASSERT_TRUE(WaitFor([&] { return watch.out().find("QUEUED") != std::string::npos; })) << watch.out();
  // Once a message shows up, the watch's stream is live.
  int n = 0;
  ASSERT_TRUE(WaitFor([&] {
    EXPECT_TRUE(daemon_->jobs()->AppendMessage(id, absl::StrCat("hello ", n++)).ok());
    return watch.out().find("hello") != std::string::npos;
  }));
  Transition(id, JobState::STARTING);
  Transition(id, JobState::RUNNING);
  Progress(id, 5, 2.3412);
  ftd::v1::Checkpoint ck;
  ck.set_step(5);
  ck.set_path(env_.root() + "/out/checkpoint-5");
  ASSERT_TRUE(daemon_->jobs()->AddCheckpoint(id, ck).ok());
  ASSERT_TRUE(WaitFor([&] { return watch.out().find("checkpoint at step 5") != std::string::npos; }))
      << watch.out() << Run({"events", id}).out;
  // An evaluation on the validation set: printed above the line, then shown on it.
  ftd::v1::EvalResult eval;
  eval.set_step(5);
  eval.set_loss(2.401);
  eval.set_targets(640);
  ASSERT_TRUE(daemon_->jobs()->RecordEval(id, eval).ok());
  ASSERT_TRUE(WaitFor([&] { return watch.out().find("step 5: eval loss 2.4010 (640 targets)") != std::string::npos; }))
      << watch.out();
  Progress(id, 10, 1.9876);
  Transition(id, JobState::SUCCEEDED);
  Result r = watch.Wait();
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_THAT(r.out, HasSubstr("RUNNING"));
  EXPECT_THAT(r.out, HasSubstr("tok/s/GPU"));
  EXPECT_THAT(r.out, HasSubstr("MFU 23.1%"));
  EXPECT_THAT(r.out, HasSubstr("ETA"));
  EXPECT_THAT(r.out, HasSubstr("SUCCEEDED  step 10/10 (100%)  4.5k tok/s/GPU  MFU 23.1%  loss 1.9876  eval loss 2.4010"));

  // Checkpoints and `get` of the finished job.
  Result ckpts = Run({"checkpoints", id});
  EXPECT_EQ(ckpts.code, 0);
  EXPECT_THAT(ckpts.out, HasSubstr("checkpoint-5"));
  EXPECT_EQ(std::string(absl::StripAsciiWhitespace(Run({"checkpoints", id, "-o", "name"}).out)), ck.path());
  Result get = Run({"get", id});
  EXPECT_THAT(get.out, HasSubstr("step 10/10"));
  EXPECT_THAT(get.out, HasSubstr("node-a x2"));
  EXPECT_THAT(get.out, HasSubstr("(eval every 5 steps)"));
  EXPECT_THAT(get.out, HasSubstr("Eval loss:"));
  EXPECT_THAT(get.out, HasSubstr("2.4010 (validation set, at step 5)"));
  EXPECT_THAT(Run({"list"}).out, HasSubstr("EVAL LOSS"));
  EXPECT_THAT(Run({"list"}).out, HasSubstr("2.4010"));
  EXPECT_THAT(Run({"events", id}).out, HasSubstr("step 5: eval loss 2.4010 (640 targets)"));
  nlohmann::json got = nlohmann::json::parse(Run({"get", id, "-o", "json"}).out);
  EXPECT_DOUBLE_EQ(got["status"]["metrics"]["eval_loss"].get<double>(), 2.401);
  // watch of a finished job returns at once with its code; logs of it succeed.
  EXPECT_EQ(Run({"watch", id}).code, 0);
  EXPECT_EQ(Run({"logs", id}).code, 0);
  EXPECT_EQ(Run({"logs", id, "--follow"}).code, 0);
}

TEST_F(FtctlTest, WatchReconnectsAcrossACoordinatorRestart) {
  // A port it can restart on (outside the ephemeral range; see UnusedLoopbackPort).
  daemon_.reset();
  server::DaemonOptions o = env_.Options();
  o.grpc_listen = absl::StrCat("127.0.0.1:", UnusedLoopbackPort());
  StartDaemon(o);
  const std::string id = Submit();
  Process watch({"watch", id}, Env(), env_.root());
  ASSERT_TRUE(WaitFor([&] { return watch.out().find("QUEUED") != std::string::npos; }));
  int n = 0;
  ASSERT_TRUE(WaitFor([&] {
    EXPECT_TRUE(daemon_->jobs()->AppendMessage(id, absl::StrCat("before restart ", n++)).ok());
    return watch.out().find("before restart") != std::string::npos;
  }));
  // Same data directory and port: the store (and the job) survive.
  daemon_.reset();
  StartDaemon(o);
  Transition(id, JobState::STARTING);
  Transition(id, JobState::RUNNING);
  Progress(id, 10, 1.5);
  Transition(id, JobState::SUCCEEDED);
  Result r = watch.Wait();
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_THAT(r.err, HasSubstr("reconnecting"));
  EXPECT_THAT(r.out, HasSubstr("SUCCEEDED  step 10/10"));
}

TEST_F(FtctlTest, SubmitWatchFailedAndCancelledExitCodes) {
  Process submit({"submit", "-f", WriteJob(JobYaml()), "--watch"}, Env(), env_.root());
  std::string id;
  ASSERT_TRUE(WaitFor([&] {
    auto jobs = daemon_->store()->CountJobs();
    return jobs.ok() && *jobs == 1 && submit.out().find("QUEUED") != std::string::npos;
  }));
  id = submit.out().substr(0, submit.out().find(' '));  // "<id> submitted ..."
  Transition(id, JobState::STARTING);
  Transition(id, JobState::FAILED);
  Result failed = submit.Wait();
  EXPECT_EQ(failed.code, 3) << failed.out << failed.err;
  EXPECT_THAT(failed.err, HasSubstr("FAILED: RANK_EXITED: rank 1 exited with code 9"));
  // Watching the failed job afterwards says the same at once.
  Result again = Run({"watch", id});
  EXPECT_EQ(again.code, 3);
  EXPECT_THAT(again.out, HasSubstr(id + "  FAILED"));
  EXPECT_THAT(again.err, HasSubstr("FAILED: RANK_EXITED"));

  const std::string id2 = Submit();
  Process watch({"watch", id2}, Env(), env_.root());
  ASSERT_TRUE(WaitFor([&] { return watch.out().find("QUEUED") != std::string::npos; }));
  EXPECT_EQ(Run({"cancel", id2}).code, 0);
  EXPECT_EQ(watch.Wait().code, 4);
}

#if __has_include("server/scheduler_logs.h")
// Rank output through JobLogService.StreamLogs (lines as the workers report them).
TEST_F(FtctlTest, LogsOfRanks) {
  const std::string id = Submit();
  auto append = [&](int rank, const std::string& text) {
    ftd::v1::LogLines lines;
    lines.add_lines(text);
    daemon_->scheduler()->logs()->Append(id, 1, rank, lines);
  };
  append(0, "rank zero says hi");
  append(1, "rank one says hi");
  append(0, "step 1 loss 2.5");
  Result all = Run({"logs", id});
  EXPECT_EQ(all.code, 0) << all.err;
  EXPECT_THAT(all.out, HasSubstr("[rank 0] rank zero says hi"));
  EXPECT_THAT(all.out, HasSubstr("[rank 1] rank one says hi"));
  Result one = Run({"logs", id, "--rank", "1"});
  EXPECT_THAT(one.out, HasSubstr("rank one"));
  EXPECT_THAT(one.out, Not(HasSubstr("rank zero")));
  Result tail = Run({"logs", id, "--tail", "1"});
  EXPECT_EQ(std::string(absl::StripAsciiWhitespace(tail.out)), "[rank 0] step 1 loss 2.5");
  Result json = Run({"logs", id, "--tail", "1", "-o", "json"});
  nlohmann::json j = nlohmann::json::parse(json.out);
  EXPECT_EQ(j["text"], "step 1 loss 2.5");

  Process follow({"logs", id, "--follow", "--rank", "0"}, Env(), env_.root());
  ASSERT_TRUE(WaitFor([&] { return follow.out().find("step 1 loss") != std::string::npos; }));
  append(0, "step 2 loss 2.1");
  ASSERT_TRUE(WaitFor([&] { return follow.out().find("step 2 loss 2.1") != std::string::npos; })) << follow.out();
  EXPECT_EQ(Run({"cancel", id}).code, 0);
  Result done = follow.Wait();
  EXPECT_EQ(done.code, 0) << done.err;
}
#endif

TEST_F(FtctlTest, ConfigFileAndPrecedence) {
  const std::string cfg = env_.root() + "/ftd.yaml";
  WriteFile(cfg, absl::StrCat("endpoint: ", endpoint_, "\ntoken: ", kTokenA, "\ntimeout: 10\n"));
  Result r = RunEnv({"list"}, {{"FTD_CONFIG", cfg}});
  EXPECT_EQ(r.code, 0) << r.err;
  // The default location, ~/.config/ftd/config.yaml.
  ::mkdir((env_.root() + "/.config").c_str(), 0755);
  ::mkdir((env_.root() + "/.config/ftd").c_str(), 0755);
  WriteFile(env_.root() + "/.config/ftd/config.yaml", absl::StrCat("endpoint: ", endpoint_, "\ntoken: ", kTokenB, "\n"));
  EXPECT_EQ(RunEnv({"list"}, {}).code, 0);
  // Flags beat the environment, which beats the file.
  Result env_wins = RunEnv({"list"}, {{"FTD_TOKEN", "bad-token-0123456789"}});
  EXPECT_THAT(env_wins.err, HasSubstr("rejected the token"));
  EXPECT_EQ(RunEnv({"list", "--token", kTokenA}, {{"FTD_TOKEN", "bad-token-0123456789"}}).code, 0);
  WriteFile(cfg, "endpoint: x:1\ntokn: abc\n");
  Result bad = RunEnv({"list"}, {{"FTD_CONFIG", cfg}});
  EXPECT_EQ(bad.code, 1);
  EXPECT_THAT(bad.err, HasSubstr("ftd.yaml:2: tokn: unknown key"));
}

TEST_F(FtctlTest, Tls) {
  daemon_.reset();
  const std::string cert = env_.root() + "/cert.pem", key = env_.root() + "/key.pem";
  ASSERT_EQ(std::system(absl::StrCat("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
                                     "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout ",
                                     key, " -out ", cert, " 2>/dev/null")
                            .c_str()),
            0);
  server::DaemonOptions o = env_.Options();
  o.tls_cert_file = cert;
  o.tls_key_file = key;
  StartDaemon(o);
  EXPECT_EQ(Run({"list", "--ca-cert", cert}).code, 0);
  EXPECT_EQ(Run({"list", "--insecure-skip-verify"}).code, 0);
  Result plain = Run({"list"});
  EXPECT_EQ(plain.code, 1);
  EXPECT_THAT(plain.err, HasSubstr("cannot reach the coordinator"));
  EXPECT_THAT(plain.err, HasSubstr("--ca-cert"));
  Result not_pem = Run({"list", "--ca-cert", env_.tokens_file()});
  EXPECT_THAT(not_pem.err, HasSubstr("not a PEM certificate"));
}

TEST_F(FtctlTest, Completion) {
  Result bash = Run({"completion", "bash"});
  ASSERT_EQ(bash.code, 0);
  EXPECT_THAT(bash.out, HasSubstr("complete -F _ftctl ftctl"));
  EXPECT_THAT(bash.out, HasSubstr("--gpu-memory"));
  EXPECT_THAT(bash.out, HasSubstr("/model/inspect"));
  const std::string script = env_.root() + "/ftctl.bash";
  WriteFile(script, bash.out);
  EXPECT_EQ(std::system(absl::StrCat("bash -n ", script).c_str()), 0);
  // Complete `ftctl ge` and `ftctl get <TAB>` (job ids from the coordinator).
  const std::string id = Submit();
  const std::string probe = env_.root() + "/probe.sh";
  WriteFile(probe, absl::StrCat("PATH=", FTD_BIN_DIR, ":$PATH; export FTD_ENDPOINT=", endpoint_, " FTD_TOKEN=", kTokenA,
                                "; source ", script,
                                "\nCOMP_WORDS=(ftctl ge); COMP_CWORD=1; _ftctl; echo \"${COMPREPLY[@]}\"",
                                "\nCOMP_WORDS=(ftctl get ''); COMP_CWORD=2; _ftctl; echo \"${COMPREPLY[@]}\"",
                                "\nCOMP_WORDS=(ftctl list --state R); COMP_CWORD=3; _ftctl; echo \"${COMPREPLY[@]}\"\n"));
  const std::string out = env_.root() + "/probe.out";
  ASSERT_EQ(std::system(absl::StrCat("bash ", probe, " > ", out).c_str()), 0);
  std::vector<std::string> lines = absl::StrSplit(ReadFile(out), '\n');
  ASSERT_GE(lines.size(), 3u);
  EXPECT_EQ(lines[0], "get");
  EXPECT_THAT(lines[1], HasSubstr(id));
  EXPECT_EQ(lines[2], "RUNNING");
  Result zsh = Run({"completion", "zsh"});
  EXPECT_EQ(zsh.code, 0);
  EXPECT_THAT(zsh.out, HasSubstr("#compdef ftctl"));
  EXPECT_THAT(zsh.out, HasSubstr("compdef _ftctl ftctl"));
  if (::access("/usr/bin/zsh", X_OK) == 0) {
    WriteFile(env_.root() + "/_ftctl", zsh.out);
    EXPECT_EQ(std::system(absl::StrCat("zsh -n ", env_.root(), "/_ftctl").c_str()), 0);
  }
  EXPECT_EQ(Run({"completion", "fish"}).code, 2);
}

}  // namespace
}  // namespace ftd::testing
