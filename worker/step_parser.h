// Turns rank 0's output into reports: the engine's stdout lines
//   step N/M loss X grad_norm Y lr Z tokens/s T step_time Ss a2a As
//   eval step N/M loss X targets T
//   checkpoint PATH          final checkpoint: PATH
// and, when the engine writes one (--metrics-out, CONTRACT.md), its per-step JSON lines.
#pragma once

#include <optional>
#include <string>

#include "absl/strings/string_view.h"
#include "ftd/v1/worker.pb.h"

namespace ftd::worker {

// A step, eval, checkpoint or final-checkpoint report (without key and seq), or nullopt.
// With `steps_from_metrics_file` only log lines count (the metrics file reports the rest).
std::optional<ftd::v1::RankReport> ParseStdoutLine(absl::string_view line, int world_size,
                                                   bool steps_from_metrics_file);

// One line of the metrics file: {"event":"step"|"eval"|"checkpoint"|"done",...}; nullopt for
// lines that are not JSON objects of those events (an eval line needs numeric step and loss).
std::optional<ftd::v1::RankReport> ParseMetricsLine(absl::string_view line);

}  // namespace ftd::worker
