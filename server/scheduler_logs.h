// JobLogs: the coordinator's bounded buffer of each job's rank output, filled from the
// workers' reports and read by StreamLogs / GET /v1/jobs/{id}/logs. Lines are numbered per job
// so that followers can wait for the ones after what they have read.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ftd/v1/worker.pb.h"

namespace ftd::server {

class JobLogs {
 public:
  explicit JobLogs(size_t max_lines_per_job = 10000, size_t max_jobs = 256)
      : max_lines_(max_lines_per_job), max_jobs_(max_jobs) {}

  void Append(const std::string& job_id, int attempt, int rank, const ftd::v1::LogLines& lines);

  // Lines numbered >= *next (all buffered when *next is 0 and tail is 0; the last `tail`
  // lines when tail > 0); *next is moved past what is returned. Waits up to `wait` for lines
  // when none are there.
  std::vector<ftd::v1::LogLine> Read(const std::string& job_id, int64_t* next, int tail,
                                     absl::Duration wait);

 private:
  struct Buffer {
    int64_t first = 0;  // number of lines.front()
    std::deque<ftd::v1::LogLine> lines;
    uint64_t last_use = 0;
  };
  const size_t max_lines_;
  const size_t max_jobs_;
  absl::Mutex mu_;
  absl::CondVar changed_;
  absl::flat_hash_map<std::string, Buffer> jobs_ ABSL_GUARDED_BY(mu_);
  uint64_t clock_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace ftd::server
