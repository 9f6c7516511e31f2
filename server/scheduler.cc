#include "server/scheduler.h"

#include <signal.h>
#include <string.h>

#include <algorithm>

#include "absl/random/random.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/ascii.h"
#include "common/status_macros.h"
#include "server/job_state_machine.h"
#include "server/scheduler_placement.h"
#include "server/time_util.h"
#include "spdlog/spdlog.h"

namespace ftd::server {
namespace {

ftd::v1::JobError MakeError(std::string code, std::string message, bool retryable) {
  ftd::v1::JobError e;
  e.set_code(std::move(code));
  e.set_message(std::move(message));
  e.set_retryable(retryable);
  return e;
}

// When the job's runtime limit ends (InfiniteFuture without a limit or before its first start).
absl::Time RuntimeDeadline(const ftd::v1::FineTuneJob& job) {
  const int64_t limit = job.spec().scheduling().max_runtime_seconds();
  if (limit <= 0 || !job.status().has_start_time()) return absl::InfiniteFuture();
  return FromProtoTime(job.status().start_time()) + absl::Seconds(limit);
}

ftd::v1::JobError DeadlineError(const ftd::v1::FineTuneJob& job) {
  return MakeError("DEADLINE_EXCEEDED",
                   absl::StrCat("the job ran for its spec.scheduling.max_runtime_seconds = ",
                                job.spec().scheduling().max_runtime_seconds(), " s since its first start at ",
                                absl::FormatTime(FromProtoTime(job.status().start_time()))),
                   /*retryable=*/false);
}

int SlotsOf(const ftd::v1::WorkerResources& r) {
  return r.gpus_size() > 0 ? r.gpus_size() : r.cpu_slots();
}

// Why a rank ended, from its exit status and its last output lines.
ftd::v1::JobError RankExitError(const std::string& job_id, int attempt, int rank,
                                const std::string& worker, int exit_code, int term_signal,
                                const std::vector<std::string>& tail) {
  std::string how = term_signal != 0
                        ? absl::StrCat("was killed by signal ", term_signal, " (",
                                       strsignal(term_signal), ")")
                        : absl::StrCat("exited with code ", exit_code);
  std::string code = term_signal != 0 ? "RANK_KILLED" : "RANK_EXIT";
  std::string last;
  for (auto it = tail.rbegin(); it != tail.rend(); ++it) {
    if (absl::StrContains(absl::AsciiStrToLower(*it), "out of memory")) code = "OOM";
    if (absl::StrContains(*it, "NCCL") && code != "OOM") code = "NCCL_ERROR";
    if (last.empty() && !it->empty()) last = *it;
  }
  std::string msg = absl::StrCat("attempt ", attempt, ": rank ", rank, " on worker ", worker, " ",
                                 how);
  if (!last.empty()) absl::StrAppend(&msg, ": ", last.substr(0, 400));
  return MakeError(code, msg, true);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(JobManager* manager,
                                                             SchedulerOptions options) {
  if (options.rendezvous_port_base <= 0 || options.rendezvous_port_count <= 0 ||
      options.rendezvous_port_base + options.rendezvous_port_count > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--rendezvous-port-base ", options.rendezvous_port_base, " with ",
        options.rendezvous_port_count, " ports is not a valid port range"));
  }
  if (options.heartbeat_timeout <= options.heartbeat_interval) {
    return absl::InvalidArgumentError("--heartbeat-timeout must exceed --heartbeat-interval");
  }
  std::unique_ptr<Scheduler> s(new Scheduler(manager, options));
  absl::BitGen gen;  // a restarted coordinator does not reuse the previous run's ports first
  s->port_cursor_ = absl::Uniform<int>(gen, 0, options.rendezvous_port_count);
  return s;
}

Scheduler::~Scheduler() { Stop(); }

void Scheduler::Start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { Loop(); });
}

void Scheduler::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

void Scheduler::Loop() {
  while (!stop_.WaitForNotificationWithTimeout(options_.tick)) Tick();
}

absl::StatusOr<RecoveryReport> Scheduler::Recover() {
  absl::MutexLock lock(&mu_);
  RecoveryReport report;
  const absl::Time now = absl::Now();
  FTD_ASSIGN_OR_RETURN(
      std::vector<std::string> ids,
      manager_->store()->JobIdsInStates({ftd::v1::STARTING, ftd::v1::RUNNING, ftd::v1::CANCELLING}));
  for (const std::string& id : ids) {
    FTD_ASSIGN_OR_RETURN(ftd::v1::FineTuneJob job, manager_->store()->GetJob(id));
    const ftd::v1::JobState state = job.status().state();
    if (job.status().placement().ranks_size() == 0) {
      // Never placed on a worker (or placed by a coordinator that did not record it).
      JobManager::TransitionOptions o;
      if (state == ftd::v1::CANCELLING) {
        o.message = "cancelled: the coordinator restarted while the job was being cancelled";
        FTD_RETURN_IF_ERROR(manager_->Transition(id, ftd::v1::CANCELLED, o).status());
        ++report.cancelled;
      } else {
        o.message = "requeued: the coordinator restarted while the job was starting";
        FTD_RETURN_IF_ERROR(manager_->Transition(id, ftd::v1::QUEUED, o).status());
        ++report.requeued;
      }
      continue;
    }
    Attempt a;
    a.job_id = id;
    a.attempt = job.status().attempt();
    a.spec = job.spec();
    a.orphan = true;
    a.started = now;
    a.last_progress = now;
    a.stop_deadline = now + options_.adopt_grace;
    a.runtime_deadline = RuntimeDeadline(job);
    for (const auto& r : job.status().placement().ranks()) {
      RankSlot slot;
      slot.rank = r.rank();
      slot.local_rank = r.local_rank();
      slot.worker = r.worker();
      a.ranks.push_back(std::move(slot));
    }
    std::sort(a.ranks.begin(), a.ranks.end(),
              [](const RankSlot& x, const RankSlot& y) { return x.rank < y.rank; });
    for (const auto& c : job.status().checkpoints()) a.checkpoint_steps.insert(c.step());
    if (state == ftd::v1::CANCELLING) {
      a.phase = Phase::kStopping;
      a.outcome = Outcome::kCancelled;
    } else {
      a.phase = state == ftd::v1::RUNNING ? Phase::kRunning : Phase::kStarting;
    }
    spdlog::info("scheduler: job {} attempt {} ({}) awaits its workers for adoption", id,
                 a.attempt, ftd::v1::JobState_Name(state));
    attempts_[id] = std::move(a);
  }
  FTD_ASSIGN_OR_RETURN(report.jobs, manager_->store()->CountJobs());
  FTD_ASSIGN_OR_RETURN(report.events, manager_->store()->CountEvents());
  return report;
}

absl::StatusOr<ftd::v1::RegisterResponse> Scheduler::Register(
    const ftd::v1::RegisterRequest& request) {
  if (request.name().empty() || request.name().size() > 63 ||
      request.name().find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") !=
          std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "register: name `", request.name().substr(0, 80), "` must be 1-63 characters of A-Z a-z 0-9 . _ -"));
  }
  if (request.address().empty()) return absl::InvalidArgumentError("register: address is required");
  const int slots = SlotsOf(request.resources());
  if (slots <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("register: worker ", request.name(), " offers no GPU and no CPU slot"));
  }
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  WorkerInfo info;
  info.name = request.name();
  info.address = request.address();
  info.resources = request.resources();
  info.total_slots = slots;
  info.has_gpus = request.resources().gpus_size() > 0;
  info.registered_at = now;
  info.last_heartbeat = now;
  const bool was_known = registry_.Has(info.name);
  const std::string session = registry_.Register(std::move(info));
  views_[request.name()] = WorkerView{};  // the new session's sequence numbers start over
  queue_dirty_ = true;
  spdlog::info("scheduler: worker {} registered ({} at {}, {} {} slots, {} ranks reported){}",
               request.name(), session, request.address(), slots,
               request.resources().gpus_size() > 0 ? "GPU" : "CPU", request.ranks_size(),
               was_known ? ", replacing its previous session" : "");
  // The ranks it reports are handled as a first heartbeat without reports (adoption happens
  // there; exits wait for the reports that precede them, see RankProcess.last_report_seq).
  ftd::v1::HeartbeatRequest first;
  first.set_name(request.name());
  first.set_session_id(session);
  *first.mutable_ranks() = request.ranks();
  HeartbeatLocked(first, now).IgnoreError();
  ftd::v1::RegisterResponse response;
  response.set_session_id(session);
  response.set_heartbeat_interval_ms(
      static_cast<int32_t>(absl::ToInt64Milliseconds(options_.heartbeat_interval)));
  return response;
}

Scheduler::Attempt* Scheduler::FindAttempt(const ftd::v1::RankKey& key) {
  auto it = attempts_.find(key.job_id());
  if (it == attempts_.end() || it->second.attempt != key.attempt()) return nullptr;
  if (key.rank() < 0 || key.rank() >= static_cast<int>(it->second.ranks.size())) return nullptr;
  return &it->second;
}

void Scheduler::ApplyReport(const ftd::v1::RankReport& report) {
  Attempt* a = FindAttempt(report.key());
  if (a == nullptr) return;  // fenced: a stale attempt's report
  const std::string& id = a->job_id;
  switch (report.kind_case()) {
    case ftd::v1::RankReport::kStep: {
      a->last_progress = absl::Now();
      auto st = manager_->RecordProgress(id, report.step().progress(), report.step().metrics());
      if (!st.ok()) spdlog::warn("scheduler: job {}: progress not recorded: {}", id, st.status().ToString());
      break;
    }
    case ftd::v1::RankReport::kCheckpoint: {
      a->last_progress = absl::Now();
      if (!a->checkpoint_steps.insert(report.checkpoint().step()).second) break;
      ftd::v1::Checkpoint c = report.checkpoint();
      if (!c.has_create_time()) *c.mutable_create_time() = ToProtoTime(absl::Now());
      auto st = manager_->AddCheckpoint(id, c);
      if (!st.ok()) spdlog::warn("scheduler: job {}: checkpoint not recorded: {}", id, st.status().ToString());
      break;
    }
    case ftd::v1::RankReport::kEval: {
      a->last_progress = absl::Now();
      auto st = manager_->RecordEval(id, report.eval());
      if (!st.ok()) spdlog::warn("scheduler: job {}: eval not recorded: {}", id, st.status().ToString());
      break;
    }
    case ftd::v1::RankReport::kFinalCheckpoint:
      a->final_checkpoint = report.final_checkpoint();
      break;
    case ftd::v1::RankReport::kLog:
      logs_.Append(id, a->attempt, report.key().rank(), report.log());
      break;
    default:
      break;
  }
}

absl::StatusOr<ftd::v1::HeartbeatResponse> Scheduler::Heartbeat(
    const ftd::v1::HeartbeatRequest& request) {
  absl::MutexLock lock(&mu_);
  return HeartbeatLocked(request, absl::Now());
}

absl::StatusOr<ftd::v1::HeartbeatResponse> Scheduler::HeartbeatLocked(
    const ftd::v1::HeartbeatRequest& request, absl::Time now) {
  if (!registry_.Touch(request.name(), request.session_id(), now)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "heartbeat: worker ", request.name(), " session ", request.session_id(),
        " is not registered (the coordinator restarted or a newer session exists): register again"));
  }
  WorkerView& view = views_[request.name()];
  view.last_report = now;
  ftd::v1::HeartbeatResponse response;

  // 1. Reports, in order, once each.
  int64_t acked = view.acked_seq;
  for (const ftd::v1::RankReport& report : request.reports()) {
    if (report.seq() <= view.acked_seq) continue;
    ApplyReport(report);
    acked = std::max(acked, report.seq());
  }
  view.acked_seq = acked;
  response.set_ack_seq(acked);

  // 2. The worker's processes: adopt, record exits, fence off stale ones.
  absl::flat_hash_set<std::pair<std::string, int>> listed;  // (job, rank) of current attempts
  absl::flat_hash_set<std::string> touched;
  ftd::v1::StopRanks stale;
  for (const ftd::v1::RankProcess& p : request.ranks()) {
    Attempt* a = FindAttempt(p.key());
    if (a == nullptr || a->ranks[p.key().rank()].worker != request.name()) {
      if (p.state() == ftd::v1::RANK_EXITED) {
        *response.add_forget() = p.key();
      } else {
        *stale.add_ranks() = p.key();
      }
      continue;
    }
    RankSlot& slot = a->ranks[p.key().rank()];
    listed.insert({a->job_id, slot.rank});
    touched.insert(a->job_id);
    slot.seen = true;
    // An exit counts once the reports the rank produced before it have been applied; until
    // then the rank is still finishing (its reports come with a later heartbeat).
    if (p.state() == ftd::v1::RANK_EXITED && p.last_report_seq() <= acked) {
      if (!slot.exited) {
        slot.exited = true;
        slot.exit_code = p.exit_code();
        slot.term_signal = p.term_signal();
        slot.tail.assign(p.tail().begin(), p.tail().end());
        spdlog::info("scheduler: job {} attempt {} rank {} on {}: exited (code {}, signal {})",
                     a->job_id, a->attempt, slot.rank, request.name(), slot.exit_code,
                     slot.term_signal);
      }
      *response.add_forget() = p.key();
      queue_dirty_ = true;  // a slot is free
    }
  }
  if (stale.ranks_size() > 0) {
    stale.set_reason("stale attempt: the job is not running this attempt here");
    stale.set_grace_ms(static_cast<int32_t>(absl::ToInt64Milliseconds(options_.stop_grace)));
    *response.add_stop() = std::move(stale);
  }
  // Ranks placed here that the worker no longer lists.
  for (auto& [id, a] : attempts_) {
    for (RankSlot& slot : a.ranks) {
      if (slot.worker != request.name() || slot.exited || listed.contains({id, slot.rank})) continue;
      if (a.phase == Phase::kStopping) {
        slot.exited = true;  // gone: the worker's list is complete, and nothing starts any more
        touched.insert(id);
      } else if (slot.seen) {
        slot.exited = true;
        slot.exit_code = -1;
        slot.tail = {"the process vanished from its worker (the worker restarted?)"};
        touched.insert(id);
      }
    }
  }
  for (const std::string& id : touched) {
    auto it = attempts_.find(id);
    if (it != attempts_.end()) Evaluate(it->second);
  }
  Reap();

  // 3. What this worker must start and stop now.
  for (auto& [id, a] : attempts_) {
    if (a.orphan) {
      if (a.phase != Phase::kStopping) continue;
    }
    if (a.phase == Phase::kStopping) {
      ftd::v1::StopRanks stop;
      for (const RankSlot& slot : a.ranks) {
        if (slot.worker != request.name() || slot.exited || !listed.contains({id, slot.rank})) continue;
        ftd::v1::RankKey* k = stop.add_ranks();
        k->set_job_id(id);
        k->set_attempt(a.attempt);
        k->set_rank(slot.rank);
      }
      if (stop.ranks_size() > 0) {
        stop.set_reason(a.error.message().empty() ? "stopping" : a.error.message());
        stop.set_grace_ms(static_cast<int32_t>(absl::ToInt64Milliseconds(options_.stop_grace)));
        *response.add_stop() = std::move(stop);
      }
      continue;
    }
    ftd::v1::StartRanks start;
    int local_world = 0;
    for (const RankSlot& slot : a.ranks) {
      if (slot.worker != request.name()) continue;
      ++local_world;
      if (slot.seen) continue;
      auto* r = start.add_ranks();
      r->set_rank(slot.rank);
      r->set_local_rank(slot.local_rank);
    }
    if (start.ranks_size() == 0) continue;
    start.set_job_id(id);
    start.set_attempt(a.attempt);
    *start.mutable_spec() = a.spec;
    start.set_world_size(static_cast<int>(a.ranks.size()));
    start.set_local_world_size(local_world);
    start.set_master_addr(a.master_addr);
    start.set_master_port(a.master_port);
    start.set_resume(a.resume);
    (*start.mutable_env())["FTD_JOB_ID"] = id;
    (*start.mutable_env())["FTD_ATTEMPT"] = absl::StrCat(a.attempt);
    // A peer that dies makes collectives fail instead of hang (c10d NCCL).
    (*start.mutable_env())["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "1";
    *response.add_start() = std::move(start);
  }
  UpdateBusy();
  return response;
}

void Scheduler::Evaluate(Attempt& a) {
  const absl::Time now = absl::Now();
  if (a.orphan) {
    bool all_seen = true;
    for (const RankSlot& s : a.ranks) all_seen &= s.seen;
    if (all_seen) {
      a.orphan = false;
      spdlog::info("scheduler: job {} attempt {} adopted: all {} ranks reported", a.job_id,
                   a.attempt, a.ranks.size());
      manager_->AppendMessage(a.job_id, absl::StrCat("attempt ", a.attempt,
                                                     " adopted after a coordinator restart"))
          .IgnoreError();
      a.last_progress = now;
    }
  }
  if (a.phase == Phase::kStopping) return;  // Reap() finalizes
  bool all_seen = true, all_ok = true;
  for (const RankSlot& s : a.ranks) {
    all_seen &= s.seen;
    all_ok &= s.exited && s.exit_code == 0 && s.term_signal == 0;
    if (s.exited && (s.exit_code != 0 || s.term_signal != 0)) {
      BeginStop(a, Outcome::kFailed,
                RankExitError(a.job_id, a.attempt, s.rank, s.worker, s.exit_code, s.term_signal,
                              s.tail));
      return;
    }
  }
  if (all_ok) {
    a.phase = Phase::kStopping;
    a.outcome = Outcome::kSucceeded;
    a.stop_deadline = now;
    return;
  }
  if (a.phase == Phase::kStarting && all_seen && !a.orphan) {
    JobManager::TransitionOptions o;
    o.message = absl::StrCat("attempt ", a.attempt, ": all ", a.ranks.size(), " ranks running");
    auto st = manager_->Transition(a.job_id, ftd::v1::RUNNING, o);
    if (!st.ok()) {
      spdlog::warn("scheduler: job {}: {}", a.job_id, st.status().ToString());
    }
    a.phase = Phase::kRunning;
    a.last_progress = now;
  }
}

void Scheduler::BeginStop(Attempt& a, Outcome outcome, ftd::v1::JobError error) {
  if (a.phase == Phase::kStopping) return;
  spdlog::info("scheduler: job {} attempt {}: stopping the gang: {}", a.job_id, a.attempt,
               error.message());
  a.phase = Phase::kStopping;
  a.outcome = outcome;
  a.error = std::move(error);
  // The workers SIGKILL after stop_grace; allow heartbeats to report it, then give up on them.
  a.stop_deadline = absl::Now() + options_.stop_grace + options_.heartbeat_timeout;
}

void Scheduler::Reap() {
  const absl::Time now = absl::Now();
  std::vector<std::string> done;
  for (auto& [id, a] : attempts_) {
    if (a.phase != Phase::kStopping) continue;
    bool all_gone = true;
    for (const RankSlot& s : a.ranks) all_gone &= s.exited;
    if (all_gone || now >= a.stop_deadline) {
      Finalize(a);
      done.push_back(id);
    }
  }
  for (const std::string& id : done) attempts_.erase(id);
  if (!done.empty()) {
    UpdateBusy();
    queue_dirty_ = true;
  }
}

void Scheduler::Finalize(Attempt& a) {
  absl::StatusOr<ftd::v1::FineTuneJob> job = manager_->store()->GetJob(a.job_id);
  if (!job.ok()) {
    spdlog::error("scheduler: job {}: {}", a.job_id, job.status().ToString());
    return;
  }
  const ftd::v1::JobState state = job->status().state();
  if (IsTerminalState(state)) return;
  JobManager::TransitionOptions o;
  absl::StatusOr<ftd::v1::FineTuneJob> st = *job;
  if (a.outcome == Outcome::kFailed && a.error.code() == "DEADLINE_EXCEEDED" && !a.final_checkpoint.empty()) {
    // The ranks had finished training when the deadline came: every rank exited 0.
    bool all_ok = true;
    for (const RankSlot& s : a.ranks) all_ok &= s.exited && s.exit_code == 0 && s.term_signal == 0;
    if (all_ok) a.outcome = Outcome::kSucceeded;
  }
  if (state == ftd::v1::CANCELLING) {
    o.message = absl::StrCat("cancelled: attempt ", a.attempt, "'s ranks stopped");
    st = manager_->Transition(a.job_id, ftd::v1::CANCELLED, o);
  } else if (a.outcome == Outcome::kSucceeded) {
    if (state == ftd::v1::STARTING) {
      manager_->Transition(a.job_id, ftd::v1::RUNNING, {}).IgnoreError();
    }
    o.message = a.final_checkpoint.empty()
                    ? absl::StrCat("succeeded: all ranks of attempt ", a.attempt, " exited 0")
                    : absl::StrCat("succeeded: final checkpoint ", a.final_checkpoint);
    st = manager_->Transition(a.job_id, ftd::v1::SUCCEEDED, o);
  } else if (a.outcome == Outcome::kCancelled) {
    // Orphan of a cancel (CANCELLING before the restart) already handled above; nothing else.
  } else {
    if (!a.lost_worker.empty() && a.error.code() != "WORKER_LOST") {
      // Peers of a dead node fail first (connection closed); the lost worker is the cause.
      a.error = MakeError("WORKER_LOST",
                          absl::StrCat("attempt ", a.attempt, ": worker ", a.lost_worker,
                                       " missed heartbeats (first symptom: ", a.error.message(), ")"),
                          true);
    }
    const int max_restarts = job->spec().scheduling().max_restarts();
    if (a.error.code() == "DEADLINE_EXCEEDED") {
      const auto& cks = job->status().checkpoints();
      absl::StrAppend(a.error.mutable_message(), "; stopped after step ", job->status().progress().step(),
                      cks.empty() ? std::string("; no checkpoint")
                                  : absl::StrCat("; last checkpoint ", cks[cks.size() - 1].path(), " (step ",
                                                 cks[cks.size() - 1].step(), ")"));
    }
    if (a.error.retryable() && a.attempt < max_restarts) {
      o.message = absl::StrCat(a.error.code(), ": ", a.error.message(), "; requeued to resume (restart ",
                               a.attempt + 1, " of ", max_restarts, ")");
      st = manager_->Transition(a.job_id, ftd::v1::QUEUED, o);
    } else {
      o.message = absl::StrCat(a.error.code(), ": ", a.error.message(),
                               !a.error.retryable() ? "" : max_restarts > 0 ? "; out of restarts" : "; no restarts allowed");
      o.error = a.error;
      st = manager_->Transition(a.job_id, ftd::v1::FAILED, o);
    }
  }
  if (!st.ok()) {
    spdlog::error("scheduler: job {}: {}", a.job_id, st.status().ToString());
  } else {
    spdlog::info("scheduler: job {} attempt {} ended: {}", a.job_id, a.attempt,
                 ftd::v1::JobState_Name(st->status().state()));
  }
}

void Scheduler::FailLostWorkers(absl::Time now) {
  for (const std::string& name : registry_.Expired(now - options_.heartbeat_timeout)) {
    spdlog::warn("scheduler: worker {} missed heartbeats for {}: lost", name,
                 absl::FormatDuration(options_.heartbeat_timeout));
    registry_.Remove(name);
    views_.erase(name);
    for (auto& [id, a] : attempts_) {
      bool here = false;
      for (RankSlot& s : a.ranks) {
        if (s.worker != name) continue;
        here = true;
        if (!s.exited) {
          s.exited = true;
          s.exit_code = -1;
        }
      }
      if (here) {
        a.lost_worker = name;
        BeginStop(a, Outcome::kFailed,
                  MakeError("WORKER_LOST",
                            absl::StrCat("attempt ", a.attempt, ": worker ", name, " missed heartbeats for ",
                                         absl::FormatDuration(options_.heartbeat_timeout)),
                            true));
      }
    }
  }
}

void Scheduler::HandleCancels() {
  absl::StatusOr<std::vector<std::string>> ids =
      manager_->store()->JobIdsInStates({ftd::v1::CANCELLING});
  if (!ids.ok()) return;
  for (const std::string& id : *ids) {
    auto it = attempts_.find(id);
    if (it == attempts_.end()) {
      JobManager::TransitionOptions o;
      o.message = "cancelled: no ranks were running";
      manager_->Transition(id, ftd::v1::CANCELLED, o).IgnoreError();
      continue;
    }
    BeginStop(it->second, Outcome::kCancelled, MakeError("CANCELLED", "cancelled by request", false));
  }
}

void Scheduler::UpdateBusy() {
  absl::flat_hash_map<std::string, int> busy;
  for (const auto& [id, a] : attempts_) {
    for (const RankSlot& s : a.ranks) {
      if (!s.exited) ++busy[s.worker];
    }
  }
  for (const WorkerInfo& w : registry_.Snapshot()) {
    auto it = busy.find(w.name);
    registry_.SetBusy(w.name, it == busy.end() ? 0 : it->second);
  }
}

int Scheduler::NextPort(const std::string& address) {
  absl::flat_hash_set<int> used;
  for (const auto& [id, a] : attempts_) {
    if (a.master_addr == address) used.insert(a.master_port);
  }
  for (int i = 0; i < options_.rendezvous_port_count; ++i) {
    port_cursor_ = (port_cursor_ + 1) % options_.rendezvous_port_count;
    const int port = options_.rendezvous_port_base + port_cursor_;
    if (!used.contains(port)) return port;
  }
  return options_.rendezvous_port_base;
}

void Scheduler::ScheduleQueue(absl::Time now) {
  if (!queue_dirty_ && now - last_queue_scan_ < options_.queue_rescan) return;
  std::vector<WorkerInfo> workers = registry_.Snapshot();
  if (workers.empty()) return;  // nothing can start: do not read the queue
  queue_dirty_ = false;
  last_queue_scan_ = now;
  std::vector<ftd::v1::FineTuneJob> queue;
  JobQuery query;
  query.states = {ftd::v1::QUEUED};
  query.page_size = 500;
  for (;;) {
    absl::StatusOr<JobPage> page = manager_->store()->ListJobs(query);
    if (!page.ok()) {
      spdlog::error("scheduler: reading the queue: {}", page.status().ToString());
      return;
    }
    for (ftd::v1::FineTuneJob& job : page->jobs) {
      if (!attempts_.contains(job.id())) queue.push_back(std::move(job));
    }
    if (page->next_page_token.empty()) break;
    query.page_token = page->next_page_token;
  }
  if (queue.empty()) return;
  std::sort(queue.begin(), queue.end(), [](const ftd::v1::FineTuneJob& x, const ftd::v1::FineTuneJob& y) {
    const int px = x.spec().scheduling().priority(), py = y.spec().scheduling().priority();
    if (px != py) return px > py;
    const int64_t tx = ToUnixMicros(x.create_time()), ty = ToUnixMicros(y.create_time());
    if (tx != ty) return tx < ty;
    return x.id() < y.id();
  });

  std::vector<FreeSlots> free, total;
  absl::flat_hash_map<std::string, std::string> address;
  for (const WorkerInfo& w : workers) {
    total.push_back({w.name, w.total_slots});
    // A worker that skipped heartbeats may be gone: place nothing on it until it is heard.
    if (now - w.last_heartbeat > 3 * options_.heartbeat_interval) continue;
    free.push_back({w.name, w.total_slots - w.busy_slots});
    address[w.name] = w.address;
  }
  for (const ftd::v1::FineTuneJob& job : queue) {
    if (now >= RuntimeDeadline(job)) {  // requeued after a failure, and out of time meanwhile
      JobManager::TransitionOptions o;
      o.error = DeadlineError(job);
      o.error->set_message(absl::StrCat(o.error->message(), "; not restarted"));
      o.message = absl::StrCat("DEADLINE_EXCEEDED: ", o.error->message());
      manager_->Transition(job.id(), ftd::v1::FAILED, o).IgnoreError();
      continue;
    }
    const int nodes = std::max(1, job.spec().resources().nodes());
    const int per_node = std::max(1, job.spec().resources().gpus_per_node());
    if (!GangFitsCapacity(total, nodes, per_node)) {
      if (too_big_noted_.insert(job.id()).second && !total.empty()) {
        manager_->AppendMessage(job.id(), absl::StrCat("waiting: ", nodes, " x ", per_node,
                                                       " ranks do not fit the registered workers"))
            .IgnoreError();
      }
      continue;  // cannot run until larger workers register; does not block the others
    }
    std::optional<GangPlacement> placement = PlaceGang(free, nodes, per_node);
    if (!placement.has_value()) break;  // strict priority: nothing behind the head starts

    Attempt a;
    a.job_id = job.id();
    a.spec = job.spec();
    a.master_addr = address[placement->ranks[0].worker];
    a.master_port = NextPort(a.master_addr);
    a.resume = job.status().checkpoints_size() > 0;
    a.started = now;
    a.last_progress = now;
    ftd::v1::JobStatus::Placement proto;
    for (const PlacedRank& r : placement->ranks) {
      RankSlot slot;
      slot.rank = r.rank;
      slot.local_rank = r.local_rank;
      slot.worker = r.worker;
      a.ranks.push_back(slot);
      auto* pr = proto.add_ranks();
      pr->set_rank(r.rank);
      pr->set_worker(r.worker);
      pr->set_local_rank(r.local_rank);
    }
    for (const auto& c : job.status().checkpoints()) a.checkpoint_steps.insert(c.step());
    JobManager::TransitionOptions o;
    std::vector<std::string> where;
    for (const auto& [w, n] : placement->per_worker) where.push_back(absl::StrCat(w, " x", n));
    o.message = absl::StrCat("placed ", placement->world_size, " ranks on ", absl::StrJoin(where, ", "),
                             "; rendezvous ", a.master_addr, ":", a.master_port,
                             a.resume ? "; resuming from the last checkpoint" : "");
    o.placement = proto;
    absl::StatusOr<ftd::v1::FineTuneJob> started = manager_->Transition(job.id(), ftd::v1::STARTING, o);
    if (!started.ok()) continue;  // cancelled meanwhile
    a.attempt = started->status().attempt();
    a.runtime_deadline = RuntimeDeadline(*started);
    spdlog::info("scheduler: job {} attempt {}: {}", job.id(), a.attempt, o.message);
    for (const auto& [w, n] : placement->per_worker) {
      for (FreeSlots& f : free) {
        if (f.worker == w) f.free -= n;
      }
    }
    attempts_[job.id()] = std::move(a);
  }
  UpdateBusy();
}

void Scheduler::Tick() {
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  FailLostWorkers(now);
  HandleCancels();
  for (auto& [id, a] : attempts_) {
    if (a.orphan && a.phase != Phase::kStopping && now >= a.stop_deadline) {
      a.orphan = false;
      for (RankSlot& s : a.ranks) {
        if (!s.seen) s.exited = true, s.exit_code = -1;
      }
      BeginStop(a, Outcome::kFailed,
                MakeError("NOT_ADOPTED",
                          absl::StrCat("attempt ", a.attempt, ": its workers did not report its ranks within ",
                                       absl::FormatDuration(options_.adopt_grace),
                                       " of the coordinator restart"),
                          true));
    } else if (a.phase == Phase::kRunning && !a.orphan && now - a.last_progress > options_.hang_timeout) {
      BeginStop(a, Outcome::kFailed,
                MakeError("HANG", absl::StrCat("attempt ", a.attempt, ": no step for ",
                                               absl::FormatDuration(options_.hang_timeout)),
                          true));
    }
  }
  EnforceDeadlines(now);
  Reap();
  ScheduleQueue(now);
}

void Scheduler::EnforceDeadlines(absl::Time now) {
  for (auto& [id, a] : attempts_) {
    if (a.phase == Phase::kStopping || now < a.runtime_deadline) continue;
    absl::StatusOr<ftd::v1::FineTuneJob> job = manager_->store()->GetJob(id);
    if (!job.ok()) continue;
    // Stopped like a cancel: SIGTERM, the ranks finish their step and save a checkpoint.
    a.orphan = false;
    BeginStop(a, Outcome::kFailed, DeadlineError(*job));
  }
}

}  // namespace ftd::server
