#include "engine/train/lr_schedule.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace ftd::engine {

absl::StatusOr<LrSchedule> LrSchedule::Create(const std::string& kind, double peak_lr, int64_t warmup_steps,
                                              int64_t total_steps) {
  LrSchedule s;
  if (kind.empty() || kind == "cosine") {
    s.kind = Kind::kCosine;
  } else if (kind == "linear") {
    s.kind = Kind::kLinear;
  } else if (kind == "constant") {
    s.kind = Kind::kConstant;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("schedule \"", kind, "\" is not one of cosine, linear, constant"));
  }
  if (peak_lr <= 0) return absl::InvalidArgumentError("lr must be positive");
  if (warmup_steps < 0) return absl::InvalidArgumentError("warmup_steps must be >= 0");
  if (total_steps <= 0) return absl::InvalidArgumentError("the total number of steps must be positive");
  s.peak_lr = peak_lr;
  s.warmup_steps = warmup_steps;
  s.total_steps = total_steps;
  return s;
}

double LrSchedule::At(int64_t step) const {
  if (step < warmup_steps) {
    return peak_lr * static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup_steps));
  }
  const double progress = static_cast<double>(step - warmup_steps) /
                          static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps));
  switch (kind) {
    case Kind::kCosine:
      return peak_lr * std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * progress)));
    case Kind::kLinear:
      return peak_lr * std::max(0.0, static_cast<double>(total_steps - step) /
                                         static_cast<double>(std::max<int64_t>(1, total_steps - warmup_steps)));
    case Kind::kConstant:
      return peak_lr;
  }
  return peak_lr;
}

}  // namespace ftd::engine
