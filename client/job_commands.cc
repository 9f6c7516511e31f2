// Job commands: submit, plan, get, list, cancel, watch, logs, events, checkpoints.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "client/cli.h"
#include "client/job_file.h"
#include "client/progress_line.h"

// The rank-output service (proto/ftd/v1/worker.proto), when this tree has it.
#if __has_include("ftd/v1/worker.grpc.pb.h")
#include "ftd/v1/worker.grpc.pb.h"
#define FTD_HAVE_LOG_SERVICE 1
#else
#define FTD_HAVE_LOG_SERVICE 0
#endif

namespace ftd::client {
namespace {

using ftd::v1::FineTuneJob;
using ftd::v1::JobEvent;
using ftd::v1::JobState;

bool IsTerminal(JobState s) {
  return s == JobState::SUCCEEDED || s == JobState::FAILED || s == JobState::CANCELLED;
}

std::string Labels(const google::protobuf::Map<std::string, std::string>& labels) {
  std::vector<std::string> parts;
  std::map<std::string, std::string> sorted(labels.begin(), labels.end());
  for (const auto& [k, v] : sorted) parts.push_back(absl::StrCat(k, "=", v));
  return parts.empty() ? "-" : absl::StrJoin(parts, ",");
}

std::string Num(double v, const char* fmt = "%.4g") { return v == 0 ? "-" : absl::StrFormat(fmt, v); }

// Prints a message or a structured output of it; `table` prints the human form.
int Emit(Cli& cli, const google::protobuf::Message& msg, const std::function<void()>& table,
         const std::function<void()>& name = nullptr) {
  absl::StatusOr<OutputFormat> f = cli.Format();
  if (!f.ok()) return cli.Fail(std::string(f.status().message()));
  switch (*f) {
    case OutputFormat::kJson:
    case OutputFormat::kYaml:
      PrintStructured(*cli.out, ToJson(msg), *f);
      break;
    case OutputFormat::kName:
      if (name) {
        name();
        break;
      }
      [[fallthrough]];
    case OutputFormat::kTable:
      table();
      break;
  }
  return kExitOk;
}

void DescribeJob(std::ostream& out, const FineTuneJob& job) {
  const auto& s = job.spec();
  const auto& st = job.status();
  Table t({"ID:", job.id()});
  t.AddRow({"State:", absl::StrCat(ftd::v1::JobState_Name(st.state()),
                                   st.attempt() > 1 ? absl::StrCat(" (attempt ", st.attempt(), ")") : "",
                                   st.state() == JobState::QUEUED && st.queue_position() > 0
                                       ? absl::StrCat(", queue position ", st.queue_position())
                                       : "")});
  t.AddRow({"Tenant:", job.tenant().empty() ? "-" : job.tenant()});
  t.AddRow({"Labels:", Labels(job.labels())});
  t.AddRow({"Created:", absl::StrCat(TimeString(job.create_time()), " (", Age(job.create_time()), " ago)")});
  t.AddRow({"Updated:", TimeString(job.update_time())});
  t.AddRow({"Base model:", s.base_model()});
  t.AddRow({"Method:", s.method() != "lora" ? (s.method().empty() ? std::string("full") : s.method())
                                            : absl::StrFormat("lora (rank %d, alpha %g%s, targets %s%s)", s.lora().rank(),
                                                              s.lora().alpha(), s.lora().use_rslora() ? ", rslora" : "",
                                                              absl::StrJoin(s.lora().targets(), ", "),
                                                              s.lora().merge() ? ", merge" : "")});
  t.AddRow({"Train data:", absl::StrCat(s.datasets().train(), " (", s.datasets().format(), ")")});
  if (!s.datasets().validation().empty()) {
    const int every = s.hyperparameters().eval_every();
    t.AddRow({"Validation:", absl::StrCat(s.datasets().validation(),
                                          every > 0 ? absl::StrCat(" (eval every ", every, " steps)") : " (no eval_every)")});
  }
  t.AddRow({"Output:", s.output().empty() ? "-" : s.output()});
  t.AddRow({"Resources:", absl::StrFormat("%d node(s) x %d GPU(s), ep %d, zero %d%s", s.resources().nodes(),
                                          s.resources().gpus_per_node(), s.parallelism().ep_size(),
                                          s.parallelism().zero_stage(),
                                          absl::StrCat(s.parallelism().activation_checkpointing() ? ", act. ckpt" : "",
                                                       s.parallelism().recompute_expert_grads()
                                                           ? ", expert grads recomputed"
                                                           : ""))});
  const auto& hp = s.hyperparameters();
  t.AddRow({"Training:", absl::StrFormat("max_steps %d, global batch %d, micro %d, seq %d, lr %g (%s, warmup %d), "
                                         "clip %g, precision %s",
                                         hp.max_steps(), hp.global_batch(), hp.micro_batch(), hp.seq_len(),
                                         hp.lr(), hp.schedule(), hp.warmup_steps(), hp.grad_clip(),
                                         s.precision().empty() ? "auto" : s.precision())});
  const auto& p = st.progress();
  if (p.step() > 0 || p.total_steps() > 0) {
    t.AddRow({"Progress:", absl::StrCat("step ", p.step(), "/", p.total_steps(),
                                        p.tokens() > 0 ? absl::StrCat(", ", HumanCount(p.tokens()), " tokens") : "")});
  }
  const auto& m = st.metrics();
  if (m.step_seconds() > 0 || m.loss() != 0) {
    t.AddRow({"Metrics:", absl::StrFormat("%s tok/s/GPU, %.1f TFLOP/s/GPU, MFU %.1f%%, loss %.4f, step %.2fs, peak %s",
                                          HumanCount(m.tokens_per_second_per_gpu()), m.model_tflops_per_gpu(),
                                          100 * m.mfu(), m.loss(), m.step_seconds(),
                                          HumanBytes(static_cast<double>(m.peak_memory_bytes())))});
  }
  if (m.eval_step() > 0) {
    t.AddRow({"Eval loss:", absl::StrFormat("%.4f (validation set, at step %d)", m.eval_loss(), m.eval_step())});
  }
  if (st.placement().ranks_size() > 0) {
    std::map<std::string, int> per_worker;
    for (const auto& r : st.placement().ranks()) ++per_worker[r.worker()];
    std::vector<std::string> parts;
    for (const auto& [w, n] : per_worker) parts.push_back(absl::StrCat(w, " x", n));
    t.AddRow({"Placement:", absl::StrJoin(parts, ", ")});
  }
  if (st.checkpoints_size() > 0) {
    const auto& last = st.checkpoints(st.checkpoints_size() - 1);
    t.AddRow({"Checkpoints:", absl::StrCat(st.checkpoints_size(), last.kind() == "adapter" ? " LoRA adapters" : "",
                                           " (latest: step ", last.step(), ", ", last.path(), ")")});
  }
  if (st.has_error()) {
    t.AddRow({"Error:", absl::StrCat(st.error().code(), ": ", st.error().message(),
                                     st.error().retryable() ? " (retryable)" : "")});
  }
  t.Print(out);
}

void PrintPlan(std::ostream& out, const ftd::v1::JobPlan& plan, const ftd::v1::JobSpec& spec, double gpu_gib) {
  Table t({"World size:", absl::StrFormat("%d (%d node(s) x %d GPU(s))", plan.world_size(),
                                          spec.resources().nodes(), spec.resources().gpus_per_node())});
  t.AddRow({"Data parallel:", absl::StrFormat("%d (ep %d)", plan.data_parallel_size(),
                                              plan.data_parallel_size() > 0 ? plan.world_size() / plan.data_parallel_size() : 0)});
  t.AddRow({"Grad accumulation:", absl::StrCat(plan.gradient_accumulation_steps())});
  t.AddRow({"Parameters:", plan.parameter_count() > 0 ? HumanCount(static_cast<double>(plan.parameter_count())) : "unknown"});
  const double gib = static_cast<double>(plan.memory_bytes_per_gpu()) / (1ull << 30);
  t.AddRow({"Memory per GPU:", plan.memory_bytes_per_gpu() > 0 ? absl::StrFormat("%.1f GiB (estimate)", gib) : "unknown"});
  t.AddRow({"Fits:", plan.memory_bytes_per_gpu() <= 0
                         ? "unknown (no estimate)"
                         : (gib <= gpu_gib ? absl::StrFormat("yes (%.0f GiB GPUs, --gpu-memory)", gpu_gib)
                                           : absl::StrFormat("NO: needs %.1f GiB of %.0f GiB per GPU", gib, gpu_gib))});
  t.Print(out);
  for (const std::string& n : plan.notes()) out << "note: " << n << "\n";
}

// Parses "running,queued" / repeated --state values into enum values.
absl::StatusOr<std::vector<JobState>> ParseStates(const std::vector<std::string>& values) {
  std::vector<JobState> states;
  for (const std::string& v : values) {
    for (absl::string_view part : absl::StrSplit(v, ',', absl::SkipEmpty())) {
      JobState s;
      if (!ftd::v1::JobState_Parse(absl::AsciiStrToUpper(part), &s) || s == JobState::JOB_STATE_UNSPECIFIED) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--state ", part, ": not a job state (QUEUED, STARTING, RUNNING, CANCELLING, SUCCEEDED, FAILED, CANCELLED)"));
      }
      states.push_back(s);
    }
  }
  return states;
}

// "step 40: eval loss 2.1234 (5,120 targets)"
std::string EvalText(const ftd::v1::EvalResult& e) {
  std::string t = absl::StrFormat("step %d: eval loss %.4f", e.step(), e.loss());
  if (e.targets() > 0) absl::StrAppend(&t, " (", e.targets(), " targets)");
  return t;
}

std::string EventKind(const JobEvent& e) {
  switch (e.kind_case()) {
    case JobEvent::kStatus: return "status";
    case JobEvent::kMetrics: return "metrics";
    case JobEvent::kMessage: return "message";
    case JobEvent::kCheckpoint: return "checkpoint";
    case JobEvent::kEval: return "eval";
    default: return "-";
  }
}

std::string EventDetail(const JobEvent& e) {
  switch (e.kind_case()) {
    case JobEvent::kStatus: {
      std::string d = ftd::v1::JobState_Name(e.status().state());
      if (e.status().attempt() > 1) absl::StrAppend(&d, " (attempt ", e.status().attempt(), ")");
      if (e.status().has_error()) absl::StrAppend(&d, ": ", e.status().error().code(), ": ", e.status().error().message());
      return d;
    }
    case JobEvent::kMetrics: {
      const auto& m = e.metrics();
      std::string d = m.step() > 0 ? absl::StrCat("step ", m.step(), m.total_steps() > 0 ? absl::StrCat("/", m.total_steps()) : "", ": ")
                                   : "";
      absl::StrAppend(&d, absl::StrFormat("loss %.4f, %s tok/s/GPU, MFU %.1f%%, step time %.2fs", m.loss(),
                                          HumanCount(m.tokens_per_second_per_gpu()), 100 * m.mfu(), m.step_seconds()));
      return d;
    }
    case JobEvent::kMessage: return OneLine(e.message());
    case JobEvent::kCheckpoint: return absl::StrCat("step ", e.checkpoint().step(), ": ", e.checkpoint().path());
    case JobEvent::kEval: return EvalText(e.eval());
    default: return "";
  }
}

absl::StatusOr<FineTuneJob> GetJob(Connection* c, const std::string& id) {
  ftd::v1::GetJobRequest req;
  req.set_id(id);
  FineTuneJob job;
  auto ctx = c->NewContext();
  grpc::Status s = c->stub()->GetJob(ctx.get(), req, &job);
  if (!s.ok()) return absl::Status(static_cast<absl::StatusCode>(s.error_code()), c->Describe(s));
  return job;
}

// Every stored event of a job, in order, page by page.
absl::StatusOr<std::vector<JobEvent>> ListAllJobEvents(Connection* c, const std::string& id) {
  std::vector<JobEvent> all;
  std::string token;
  do {
    ftd::v1::ListJobEventsRequest req;
    req.set_id(id);
    req.set_page_size(1000);
    req.set_page_token(token);
    ftd::v1::ListJobEventsResponse resp;
    auto ctx = c->NewContext();
    grpc::Status s = c->stub()->ListJobEvents(ctx.get(), req, &resp);
    if (!s.ok()) return absl::Status(static_cast<absl::StatusCode>(s.error_code()), c->Describe(s));
    for (auto& e : *resp.mutable_events()) all.push_back(std::move(e));
    token = resp.next_page_token();
  } while (!token.empty());
  return all;
}

// Rank of a log line "[rank N] ...", or -1.
int RankOf(const std::string& message) {
  int rank = -1;
  if (absl::StartsWith(message, "[rank ")) {
    size_t close = message.find(']');
    if (close != std::string::npos && absl::SimpleAtoi(message.substr(6, close - 6), &rank)) return rank;
  }
  return -1;
}

// Watches `id` until it ends; returns the exit code for its final state.
int WatchJob(Cli& cli, Connection* c, const std::string& id) {
  std::ostream& out = *cli.out;
  const bool tty = ::isatty(STDOUT_FILENO) == 1 && cli.out == &std::cout;
  absl::StatusOr<FineTuneJob> job = GetJob(c, id);
  if (!job.ok()) return cli.Fail(std::string(job.status().message()));
  ftd::v1::JobStatus current = job->status();
  EtaEstimator eta;
  std::string shown;
  bool line_open = false;
  auto render = [&](bool force) {
    eta.Observe(current.progress().step(), absl::Now());
    std::string line = ProgressLine(id, current,
                                    eta.SecondsLeft(current.progress().step(), current.progress().total_steps(),
                                                    current.metrics().step_seconds()));
    if (line == shown && !force) return;
    shown = line;
    if (tty) {
      out << "\r\033[K" << line << std::flush;
      line_open = true;
    } else {
      out << line << std::endl;
    }
  };
  auto print_above = [&](const std::string& text) {
    if (tty && line_open) out << "\r\033[K";
    out << text << std::endl;
    line_open = false;
    if (tty) render(true);
  };
  // The end: the final line, the error of a failed job, the exit code of its state.
  auto finish = [&]() -> int {
    render(true);
    if (tty) out << "\n";
    out.flush();
    if (current.state() == JobState::FAILED) {
      *cli.err << "ftctl: job " << id << " FAILED"
               << (current.error().message().empty() ? "" : ": " + current.error().code() + ": " + current.error().message())
               << std::endl;
    }
    return ExitCodeForState(current.state());
  };
  if (IsTerminal(current.state())) return finish();
  render(true);

  int64_t last_seq = 0;
  int reconnects = 0;
  for (;;) {
    auto ctx = c->NewContext(/*streaming=*/true);
    ftd::v1::WatchJobRequest req;
    req.set_id(id);
    req.set_after_seq(last_seq);
    auto reader = c->stub()->WatchJob(ctx.get(), req);
    JobEvent ev;
    while (reader->Read(&ev)) {
      reconnects = 0;
      last_seq = ev.seq();
      switch (ev.kind_case()) {
        case JobEvent::kStatus: {
          ftd::v1::JobMetrics keep = current.metrics();
          current = ev.status();
          if (!current.has_metrics()) *current.mutable_metrics() = keep;
          break;
        }
        case JobEvent::kMetrics:
          *current.mutable_metrics() = ev.metrics();
          // Each sample names its own step: the line shows that step with that sample's numbers.
          if (ev.metrics().step() > 0) current.mutable_progress()->set_step(ev.metrics().step());
          if (ev.metrics().total_steps() > 0) {
            current.mutable_progress()->set_total_steps(ev.metrics().total_steps());
          }
          break;
        case JobEvent::kMessage:
          print_above(absl::StrCat(TimeString(ev.time()), "  ", OneLine(ev.message())));
          break;
        case JobEvent::kCheckpoint:
          print_above(absl::StrCat(TimeString(ev.time()), "  checkpoint at step ", ev.checkpoint().step(), ": ",
                                   ev.checkpoint().path()));
          break;
        case JobEvent::kEval:
          current.mutable_metrics()->set_eval_loss(ev.eval().loss());
          current.mutable_metrics()->set_eval_step(ev.eval().step());
          print_above(absl::StrCat(TimeString(ev.time()), "  ", EvalText(ev.eval())));
          break;
        default:
          break;
      }
      render(false);
      if (IsTerminal(current.state())) {
        ctx->TryCancel();
        break;
      }
    }
    grpc::Status s = reader->Finish();
    if (IsTerminal(current.state())) break;
    if (s.ok()) {
      // The stream ended without a terminal event in view (e.g. the server shut down cleanly).
      if (absl::StatusOr<FineTuneJob> j = GetJob(c, id); j.ok() && IsTerminal(j->status().state())) {
        current = j->status();
        break;
      }
    }
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE || s.ok()) {
      if (++reconnects <= 10) {
        if (line_open) out << "\n";
        line_open = false;
        *cli.err << "ftctl: " << (s.ok() ? "watch stream ended" : c->Describe(s)) << "; reconnecting ("
                 << reconnects << "/10)" << std::endl;
        std::this_thread::sleep_for(std::chrono::milliseconds(250 * (1 << std::min(reconnects, 4))));
        continue;
      }
    }
    if (line_open) out << "\n";
    return cli.Fail(c->Describe(s));
  }
  return finish();
}

// Shared by submit and plan.
struct SubmitArgs {
  std::string file;
  std::vector<std::string> sets;
  std::vector<std::string> labels;
  std::string request_id;
  bool watch = false;
  double gpu_memory_gib = 80;
};

absl::StatusOr<JobFile> LoadJob(const SubmitArgs& a) {
  absl::StatusOr<JobFile> jf = JobFile::Load(a.file, a.sets);
  if (!jf.ok()) return jf.status();
  for (const std::string& l : a.labels) {
    size_t eq = l.find('=');
    if (eq == std::string::npos || eq == 0) {
      return absl::InvalidArgumentError(absl::StrCat("--label ", l, ": expected key=value"));
    }
    jf->AddLabel(l.substr(0, eq), l.substr(eq + 1), "--label " + l);
  }
  if (!a.request_id.empty()) jf->mutable_request()->set_request_id(a.request_id);
  return jf;
}

// CreateJob; a validation error is rewritten to point at the job file's line.
absl::StatusOr<ftd::v1::CreateJobResponse> Create(Connection* c, const JobFile& jf, bool validate_only) {
  ftd::v1::CreateJobRequest req = jf.request();
  req.set_validate_only(validate_only);
  ftd::v1::CreateJobResponse resp;
  auto ctx = c->NewContext();
  grpc::Status s = c->stub()->CreateJob(ctx.get(), req, &resp);
  if (s.error_code() == grpc::StatusCode::INVALID_ARGUMENT) {
    return absl::InvalidArgumentError(jf.Annotate(OneLine(s.error_message())));
  }
  if (!s.ok()) return absl::Status(static_cast<absl::StatusCode>(s.error_code()), c->Describe(s));
  return resp;
}

void AddFileOptions(CLI::App* sub, SubmitArgs& a) {
  sub->add_option("-f,--filename", a.file, "job file (YAML or JSON; - for stdin)")->required();
  sub->add_option("--set", a.sets, "override a field: key=value (e.g. hyperparameters.lr=2e-5; a list: lora.targets=attention,experts); repeatable");
}

}  // namespace

void AddJobCommands(CLI::App& app, Cli& cli) {
  // submit
  static SubmitArgs submit;
  auto* sub = app.add_subcommand("submit", "Submit a fine-tune job from a job file");
  AddFileOptions(sub, submit);
  sub->add_option("--label,-l", submit.labels, "add a label key=value; repeatable");
  sub->add_option("--request-id", submit.request_id, "idempotency key: resubmitting returns the same job");
  sub->add_flag("--watch,-w", submit.watch, "follow the job until it ends (exit code reflects its final state)");
  sub->footer(R"(The job file holds JobSpec's fields (proto/ftd/v1/jobs.proto), optionally with labels: and
request_id: at the top level, or the whole CreateJobRequest under spec:. Example job.yaml:

  base_model: /models/Qwen3-30B-A3B
  datasets: {train: /data/chat.jsonl, format: jsonl_tokens}
  hyperparameters: {max_steps: 1000, global_batch: 64, micro_batch: 1, seq_len: 4096, lr: 1.0e-5}
  parallelism: {ep_size: 8, zero_stage: 2}
  resources: {nodes: 1, gpus_per_node: 8}
  labels: {team: nlp}

Validation errors name the field and the line of the file that set it.

Examples:
  ftctl submit -f job.yaml
  ftctl submit -f job.yaml --set hyperparameters.lr=2e-5 --set resources.gpus_per_node=4 --watch
  ftctl submit -f job.yaml -l team=nlp --request-id nightly-2024-06-01 -o name)");
  sub->callback([&] {
    cli.action = [&]() -> int {
      absl::StatusOr<JobFile> jf = LoadJob(submit);
      if (!jf.ok()) return cli.Fail(std::string(jf.status().message()));
      absl::StatusOr<Connection*> c = cli.Connect();
      if (!c.ok()) return cli.Fail(std::string(c.status().message()));
      absl::StatusOr<ftd::v1::CreateJobResponse> r = Create(*c, *jf, false);
      if (!r.ok()) return cli.Fail(std::string(r.status().message()));
      int rc = Emit(
          cli, *r,
          [&] {
            const auto& p = r->plan();
            *cli.out << r->job().id() << " submitted ("
                     << ftd::v1::JobState_Name(r->job().status().state()) << "; world size " << p.world_size();
            if (p.memory_bytes_per_gpu() > 0) {
              *cli.out << ", ~" << HumanBytes(static_cast<double>(p.memory_bytes_per_gpu())) << "/GPU";
            }
            *cli.out << ")" << std::endl;
          },
          [&] { *cli.out << r->job().id() << std::endl; });
      if (rc != kExitOk || !submit.watch) return rc;
      return WatchJob(cli, *c, r->job().id());
    };
  });

  // plan
  static SubmitArgs plan;
  auto* pl = app.add_subcommand("plan", "Validate a job file and show its plan (nothing is submitted)");
  AddFileOptions(pl, plan);
  pl->add_option("--gpu-memory", plan.gpu_memory_gib, "GPU memory in GiB to check the estimate against")
      ->capture_default_str();
  pl->footer(R"(Prints the world size, data-parallel size, gradient accumulation, parameter count and the
estimated memory per GPU, and whether that fits in --gpu-memory (exit code 5 when it does not).

Examples:
  ftctl plan -f job.yaml
  ftctl plan -f job.yaml --set resources.gpus_per_node=4 --gpu-memory 141 -o json)");
  pl->callback([&] {
    cli.action = [&]() -> int {
      absl::StatusOr<JobFile> jf = LoadJob(plan);
      if (!jf.ok()) return cli.Fail(std::string(jf.status().message()));
      absl::StatusOr<Connection*> c = cli.Connect();
      if (!c.ok()) return cli.Fail(std::string(c.status().message()));
      absl::StatusOr<ftd::v1::CreateJobResponse> r = Create(*c, *jf, true);
      if (!r.ok()) return cli.Fail(std::string(r.status().message()));
      const double gib = static_cast<double>(r->plan().memory_bytes_per_gpu()) / (1ull << 30);
      const bool fits = r->plan().memory_bytes_per_gpu() <= 0 || gib <= plan.gpu_memory_gib;
      int rc = Emit(cli, r->plan(), [&] { PrintPlan(*cli.out, r->plan(), jf->request().spec(), plan.gpu_memory_gib); });
      return rc != kExitOk ? rc : (fits ? kExitOk : kExitNoFit);
    };
  });

  // get
  static std::string get_id;
  auto* get = app.add_subcommand("get", "Show one job");
  get->add_option("id", get_id, "job id")->required();
  get->footer("Examples:\n  ftctl get job-0123abcd\n  ftctl get job-0123abcd -o yaml   # its spec: is a valid job file");
  get->callback([&] {
    cli.action = [&]() -> int {
      absl::StatusOr<Connection*> c = cli.Connect();
      if (!c.ok()) return cli.Fail(std::string(c.status().message()));
      absl::StatusOr<FineTuneJob> job = GetJob(*c, get_id);
      if (!job.ok()) return cli.Fail(std::string(job.status().message()));
      return Emit(cli, *job, [&] { DescribeJob(*cli.out, *job); }, [&] { *cli.out << job->id() << "\n"; });
    };
  });

  // list
  static std::vector<std::string> list_states, list_labels;
  static int list_limit = 0;
  auto* ls = app.add_subcommand("list", "List jobs (newest first)");
  ls->alias("ls");
  ls->add_option("--state,-s", list_states, "only jobs in these states (repeatable or comma-separated)");
  ls->add_option("--label,-l", list_labels, "only jobs with this label key=value (repeatable: all must match)");
  ls->add_option("--limit", list_limit, "at most this many jobs (default: all)");
  ls->footer("Examples:\n  ftctl list\n  ftctl list --state RUNNING,QUEUED --label team=nlp\n  ftctl list -o name   # ids only");
  ls->callback([&] {
    cli.action = [&]() -> int {
      absl::StatusOr<std::vector<JobState>> states = ParseStates(list_states);
      if (!states.ok()) return cli.Fail(std::string(states.status().message()));
      for (const std::string& l : list_labels) {
        if (l.find('=') == std::string::npos || l.front() == '=') return cli.Fail("--label " + l + ": expected key=value");
      }
      absl::StatusOr<Connection*> c = cli.Connect();
      if (!c.ok()) return cli.Fail(std::string(c.status().message()));
      ftd::v1::ListJobsResponse all;
      std::string token;
      do {
        ftd::v1::ListJobsRequest req;
        for (JobState s : *states) req.add_states(s);
        for (const std::string& l : list_labels) req.add_labels(l);
        req.set_page_size(list_limit > 0 ? std::min(list_limit - all.jobs_size(), 500) : 500);
        req.set_page_token(token);
        ftd::v1::ListJobsResponse resp;
        auto ctx = (*c)->NewContext();
        grpc::Status s = (*c)->stub()->ListJobs(ctx.get(), req, &resp);
        if (!s.ok()) return cli.Fail((*c)->Describe(s));
        for (auto& j : *resp.mutable_jobs()) *all.add_jobs() = std::move(j);
        token = resp.next_page_token();
      } while (!token.empty() && (list_limit <= 0 || all.jobs_size() < list_limit));
      return Emit(
          cli, all,
          [&] {
            Table t({"ID", "STATE", "STEP", "LOSS", "EVAL LOSS", "TOK/S/GPU", "MFU", "AGE", "LABELS"});
            for (const auto& j : all.jobs()) {
              const auto& st = j.status();
              t.AddRow({j.id(), ftd::v1::JobState_Name(st.state()),
                        st.progress().total_steps() > 0
                            ? absl::StrCat(st.progress().step(), "/", st.progress().total_steps())
                            : "-",
                        Num(st.metrics().loss(), "%.4f"),
                        st.metrics().eval_step() > 0 ? absl::StrFormat("%.4f", st.metrics().eval_loss()) : "-",
                        st.metrics().tokens_per_second_per_gpu() > 0 ? HumanCount(st.metrics().tokens_per_second_per_gpu()) : "-",
                        st.metrics().mfu() > 0 ? absl::StrFormat("%.1f%%", 100 * st.metrics().mfu()) : "-",
                        Age(j.create_time()), Labels(j.labels())});
            }
            if (all.jobs_size() == 0) {
              *cli.out << "No jobs found." << std::endl;
            } else {
              t.Print(*cli.out);
            }
          },
          [&] {
            for (const auto& j : all.jobs()) *cli.out << j.id() << "\n";
          });
    };
  });

  // cancel
  static std::string cancel_id, cancel_reason;
  auto* cancel = app.add_subcommand("cancel", "Cancel a job (queued jobs end at once, running ones stop their ranks)");
  cancel->add_option("id", cancel_id, "job id")->required();
  cancel->add_option("--reason", cancel_reason, "recorded in the job's event log");
  cancel->footer("Examples:\n  ftctl cancel job-0123abcd\n  ftctl cancel job-0123abcd --reason 'wrong dataset'");
  cancel->callback([&] {
    cli.action = [&]() -> int {
      absl::StatusOr<Connection*> c = cli.Connect();
      if (!c.ok()) return cli.Fail(std::string(c.status().message()));
      ftd::v1::CancelJobRequest req;
      req.set_id(cancel_id);
      req.set_reason(cancel_reason.empty() ? "cancelled with ftctl" : cancel_reason);
      FineTuneJob job;
      auto ctx = (*c)->NewContext();
      grpc::Status s = (*c)->stub()->CancelJob(ctx.get(), req, &job);
      if (!s.ok()) return cli.Fail(absl::StrCat("cannot cancel: ", (*c)->Describe(s)));
      return Emit(cli, job, [&] {
        *cli.out << job.id() << " " << ftd::v1::JobState_Name(job.status().state())
                 << (job.status().state() == JobState::CANCELLING ? " (its ranks are being stopped)" : "") << std::endl;
      }, [&] { *cli.out << job.id() << "\n"; });
    };
  });

  // watch
  static std::string watch_id;
  auto* watch = app.add_subcommand("watch", "Follow a job live until it ends");
  watch->add_option("id", watch_id, "job id")->required();
  watch->footer(R"(Shows one live line (step/total, tokens/s/GPU, MFU, loss, eval loss, ETA), with messages,
evaluations and checkpoints printed above it. Reconnects if the coordinator restarts. Exit code: 0 SUCCEEDED, 3 FAILED,
4 CANCELLED, 1 error.

Examples:
  ftctl watch job-0123abcd
  ftctl watch job-0123abcd && echo done)");
  watch->callback([&] {
    cli.action = [&]() -> int {
      absl::StatusOr<Connection*> c = cli.Connect();
      if (!c.ok()) return cli.Fail(std::string(c.status().message()));
      return WatchJob(cli, *c, watch_id);
    };
  });

  // events
  static std::string events_id;
  auto* events = app.add_subcommand("events", "List a job's events (status changes, metrics, messages, checkpoints)");
  events->add_option("id", events_id, "job id")->required();
  events->footer("Examples:\n  ftctl events job-0123abcd\n  ftctl events job-0123abcd -o json");
  events->callback([&] {
    cli.action = [&]() -> int {
      absl::StatusOr<Connection*> c = cli.Connect();
      if (!c.ok()) return cli.Fail(std::string(c.status().message()));
      absl::StatusOr<std::vector<JobEvent>> events = ListAllJobEvents(*c, events_id);
      if (!events.ok()) return cli.Fail(std::string(events.status().message()));
      ftd::v1::ListJobEventsResponse all;
      for (JobEvent& e : *events) *all.add_events() = std::move(e);
      return Emit(cli, all, [&] {
        Table t({"SEQ", "TIME", "KIND", "DETAIL"});
        for (const auto& e : all.events()) t.AddRow({absl::StrCat(e.seq()), TimeString(e.time()), EventKind(e), EventDetail(e)});
        t.Print(*cli.out);
      });
    };
  });

  // checkpoints
  static std::string ckpt_id;
  auto* ckpt = app.add_subcommand("checkpoints",
                                  "List a job's checkpoints (HF directories; PEFT adapter directories for method lora)");
  ckpt->add_option("id", ckpt_id, "job id")->required();
  ckpt->footer("Examples:\n  ftctl checkpoints job-0123abcd\n  ftctl checkpoints job-0123abcd -o name   # paths only");
  ckpt->callback([&] {
    cli.action = [&]() -> int {
      absl::StatusOr<Connection*> c = cli.Connect();
      if (!c.ok()) return cli.Fail(std::string(c.status().message()));
      ftd::v1::ListCheckpointsRequest req;
      req.set_id(ckpt_id);
      ftd::v1::ListCheckpointsResponse resp;
      auto ctx = (*c)->NewContext();
      grpc::Status s = (*c)->stub()->ListCheckpoints(ctx.get(), req, &resp);
      if (!s.ok()) return cli.Fail((*c)->Describe(s));
      return Emit(
          cli, resp,
          [&] {
            if (resp.checkpoints_size() == 0) {
              *cli.out << "No checkpoints yet." << std::endl;
              return;
            }
            Table t({"STEP", "TIME", "KIND", "PATH"});
            for (const auto& k : resp.checkpoints()) {
              t.AddRow({absl::StrCat(k.step()), TimeString(k.create_time()), k.kind().empty() ? "full" : k.kind(),
                        k.path()});
            }
            t.Print(*cli.out);
          },
          [&] {
            for (const auto& k : resp.checkpoints()) *cli.out << k.path() << "\n";
          });
    };
  });

  // logs
  static std::string logs_id;
  static int logs_rank = -1;
  static int logs_tail = 0;
  static bool logs_follow = false;
  auto* logs = app.add_subcommand("logs", "Print a job's rank output");
  logs->add_option("id", logs_id, "job id")->required();
  logs->add_option("--rank", logs_rank, "only the lines of this rank");
  logs->add_option("--tail", logs_tail, "only the last N buffered lines");
  logs->add_flag("--follow,-f", logs_follow, "keep printing new lines until the job ends");
  logs->footer(R"(The lines are the ranks' output as buffered by the coordinator (JobLogService.StreamLogs,
REST GET /v1/jobs/{id}/logs); against a coordinator without it, the job's message events.

Examples:
  ftctl logs job-0123abcd
  ftctl logs job-0123abcd --rank 0 --follow
  ftctl logs job-0123abcd --tail 100)");
  logs->callback([&] {
    cli.action = [&]() -> int {
      absl::StatusOr<Connection*> c = cli.Connect();
      if (!c.ok()) return cli.Fail(std::string(c.status().message()));
      absl::StatusOr<OutputFormat> f = cli.Format();
      if (!f.ok()) return cli.Fail(std::string(f.status().message()));
      auto print_json = [&](const google::protobuf::Message& m) {
        if (*f == OutputFormat::kJson) {
          *cli.out << ToJson(m).dump() << "\n";  // one JSON object per line
        } else {
          *cli.out << "---\n" << ToYaml(ToJson(m)) << "\n";
        }
      };
      const bool structured = *f == OutputFormat::kJson || *f == OutputFormat::kYaml;
#if FTD_HAVE_LOG_SERVICE
      {
        auto stub = ftd::v1::JobLogService::NewStub((*c)->channel());
        auto ctx = (*c)->NewContext(/*streaming=*/true);
        ftd::v1::StreamLogsRequest req;
        req.set_id(logs_id);
        req.set_follow(logs_follow);
        req.set_tail(logs_tail);
        auto reader = stub->StreamLogs(ctx.get(), req);
        ftd::v1::LogLine line;
        while (reader->Read(&line)) {
          if (logs_rank >= 0 && line.rank() != logs_rank) continue;
          if (structured) {
            print_json(line);
          } else {
            *cli.out << "[rank " << line.rank() << "] " << line.text() << "\n";
          }
          cli.out->flush();
        }
        grpc::Status s = reader->Finish();
        if (s.error_code() != grpc::StatusCode::UNIMPLEMENTED) {
          return s.ok() ? kExitOk : cli.Fail((*c)->Describe(s));
        }
        // An older coordinator: fall back to the message events below.
      }
#endif
      auto print = [&](const JobEvent& e) {
        if (e.kind_case() != JobEvent::kMessage) return;
        if (logs_rank >= 0 && RankOf(e.message()) != logs_rank) return;
        if (structured) {
          print_json(e);
        } else {
          *cli.out << TimeString(e.time()) << "  " << e.message() << "\n";
        }
        cli.out->flush();
      };
      int64_t last_seq = 0;
      absl::StatusOr<std::vector<JobEvent>> stored = ListAllJobEvents(*c, logs_id);
      if (!stored.ok()) return cli.Fail(std::string(stored.status().message()));
      for (const JobEvent& e : *stored) {
        print(e);
        last_seq = std::max(last_seq, e.seq());
      }
      if (!logs_follow) return kExitOk;
      absl::StatusOr<FineTuneJob> job = GetJob(*c, logs_id);
      if (!job.ok()) return cli.Fail(std::string(job.status().message()));
      if (IsTerminal(job->status().state())) return kExitOk;
      auto ctx = (*c)->NewContext(/*streaming=*/true);
      ftd::v1::WatchJobRequest req;
      req.set_id(logs_id);
      req.set_after_seq(last_seq);
      auto reader = (*c)->stub()->WatchJob(ctx.get(), req);
      JobEvent e;
      while (reader->Read(&e)) {
        print(e);
        if (e.kind_case() == JobEvent::kStatus && IsTerminal(e.status().state())) {
          ctx->TryCancel();
          break;
        }
      }
      grpc::Status s = reader->Finish();
      if (!s.ok() && s.error_code() != grpc::StatusCode::CANCELLED) return cli.Fail((*c)->Describe(s));
      return kExitOk;
    };
  });
}

}  // namespace ftd::client
