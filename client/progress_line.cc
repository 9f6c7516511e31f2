#include "client/progress_line.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/output.h"

namespace ftd::client {

void EtaEstimator::Observe(int64_t step, absl::Time now) {
  // Step 0 is startup (rendezvous, model load), not the training pace.
  if (step <= 0 || (!window_.empty() && window_.back().first >= step)) return;  // not new progress
  window_.emplace_back(step, now);
  // Keep the last ~2 minutes, at least two points.
  while (window_.size() > 2 && now - window_.front().second > absl::Minutes(2)) window_.pop_front();
}

double EtaEstimator::SecondsLeft(int64_t step, int64_t total, double step_seconds) const {
  if (total <= 0 || step >= total) return total > 0 ? 0 : -1;
  const int64_t left = total - step;
  if (window_.size() >= 2) {
    const auto& [s0, t0] = window_.front();
    const auto& [s1, t1] = window_.back();
    double secs = absl::ToDoubleSeconds(t1 - t0);
    if (s1 > s0 && secs > 0) return left * secs / static_cast<double>(s1 - s0);
  }
  if (step_seconds > 0) return left * step_seconds;
  return -1;
}

std::string ProgressLine(const std::string& id, const ftd::v1::JobStatus& status, double eta) {
  using ftd::v1::JobState;
  std::string line = absl::StrCat(id, "  ", ftd::v1::JobState_Name(status.state()));
  const auto& p = status.progress();
  const auto& m = status.metrics();
  switch (status.state()) {
    case JobState::QUEUED:
      if (status.queue_position() > 0) absl::StrAppend(&line, "  queue position ", status.queue_position());
      absl::StrAppend(&line, "  waiting for GPUs");
      if (status.attempt() > 1) absl::StrAppend(&line, "  (attempt ", status.attempt(), ")");
      return line;
    case JobState::STARTING:
      absl::StrAppend(&line, "  ranks starting (", status.placement().ranks_size(), " placed)");
      return line;
    default:
      break;
  }
  if (p.total_steps() > 0) {
    absl::StrAppend(&line, absl::StrFormat("  step %d/%d (%d%%)", p.step(), p.total_steps(),
                                           static_cast<int>(100 * p.step() / p.total_steps())));
  } else if (p.step() > 0) {
    absl::StrAppend(&line, "  step ", p.step());
  }
  if (m.tokens_per_second_per_gpu() > 0) {
    absl::StrAppend(&line, "  ", HumanCount(m.tokens_per_second_per_gpu()), " tok/s/GPU");
  }
  if (m.mfu() > 0) absl::StrAppend(&line, absl::StrFormat("  MFU %.1f%%", 100 * m.mfu()));
  if (m.loss() != 0) absl::StrAppend(&line, absl::StrFormat("  loss %.4f", m.loss()));
  if (m.eval_step() > 0) absl::StrAppend(&line, absl::StrFormat("  eval loss %.4f", m.eval_loss()));
  if (status.state() == JobState::RUNNING) {
    absl::StrAppend(&line, "  ETA ", eta >= 0 ? HumanDuration(eta) : "-");
  }
  if (status.state() == JobState::FAILED && !status.error().message().empty()) {
    absl::StrAppend(&line, "  error: ", status.error().code().empty() ? "" : status.error().code() + ": ",
                    status.error().message());
  }
  return line;
}

int ExitCodeForState(ftd::v1::JobState state) {
  switch (state) {
    case ftd::v1::JobState::SUCCEEDED:
      return 0;
    case ftd::v1::JobState::FAILED:
      return 3;
    case ftd::v1::JobState::CANCELLED:
      return 4;
    default:
      return 1;
  }
}

}  // namespace ftd::client
