// The live line of `ftctl watch` / `submit --watch`:
//   ftj-1a2b  RUNNING  step 120/1000 (12%)  4.51k tok/s/GPU  MFU 23.1%  loss 2.3412  ETA 5m12s
// (with "  eval loss 2.4010" after the loss once the job has evaluated on its validation set)
// and the ETA estimate behind it.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <utility>

#include "absl/time/time.h"
#include "ftd/v1/jobs.pb.h"

namespace ftd::client {

// Remaining time from the observed step rate over a sliding window (includes data loading,
// checkpoints and reporting), falling back to the reported step time.
class EtaEstimator {
 public:
  void Observe(int64_t step, absl::Time now);
  // Seconds left, or -1 when unknown.
  double SecondsLeft(int64_t step, int64_t total_steps, double step_seconds) const;

 private:
  std::deque<std::pair<int64_t, absl::Time>> window_;  // (step, when first seen)
};

std::string ProgressLine(const std::string& id, const ftd::v1::JobStatus& status, double eta_seconds);

// Exit code of `watch` for a final state: 0 SUCCEEDED, 3 FAILED, 4 CANCELLED (1 is kept for
// client-side errors, 2 for usage errors).
int ExitCodeForState(ftd::v1::JobState state);

}  // namespace ftd::client
