#include "server/scheduler_logs.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace ftd::server {

void JobLogs::Append(const std::string& job_id, int attempt, int rank,
                     const ftd::v1::LogLines& lines) {
  absl::MutexLock lock(&mu_);
  if (!jobs_.contains(job_id) && jobs_.size() >= max_jobs_) {
    auto oldest = jobs_.begin();
    for (auto it = jobs_.begin(); it != jobs_.end(); ++it) {
      if (it->second.last_use < oldest->second.last_use) oldest = it;
    }
    jobs_.erase(oldest);
  }
  Buffer& b = jobs_[job_id];
  b.last_use = ++clock_;
  auto add = [&](std::string text) {
    ftd::v1::LogLine line;
    line.set_rank(rank);
    line.set_attempt(attempt);
    line.set_text(std::move(text));
    b.lines.push_back(std::move(line));
    if (b.lines.size() > max_lines_) {
      b.lines.pop_front();
      ++b.first;
    }
  };
  if (lines.dropped() > 0) add(absl::StrCat("[", lines.dropped(), " lines dropped by the worker]"));
  for (const std::string& text : lines.lines()) add(text);
  changed_.SignalAll();
}

std::vector<ftd::v1::LogLine> JobLogs::Read(const std::string& job_id, int64_t* next, int tail,
                                            absl::Duration wait) {
  absl::MutexLock lock(&mu_);
  const absl::Time deadline = absl::Now() + wait;
  for (;;) {
    auto it = jobs_.find(job_id);
    if (it != jobs_.end()) {
      Buffer& b = it->second;
      const int64_t end = b.first + static_cast<int64_t>(b.lines.size());
      int64_t from = std::max(*next, b.first);
      if (*next == 0 && tail > 0) from = std::max(b.first, end - tail);
      if (from < end) {
        std::vector<ftd::v1::LogLine> out(b.lines.begin() + (from - b.first), b.lines.end());
        *next = end;
        return out;
      }
    }
    if (changed_.WaitWithDeadline(&mu_, deadline)) return {};
  }
}

}  // namespace ftd::server
