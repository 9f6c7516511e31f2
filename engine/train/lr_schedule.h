// Learning-rate schedules with linear warmup, as HF's get_{cosine,linear,constant}_schedule_with_warmup.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace ftd::engine {

struct LrSchedule {
  enum class Kind { kCosine, kLinear, kConstant };
  Kind kind = Kind::kCosine;
  double peak_lr = 1e-5;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;

  static absl::StatusOr<LrSchedule> Create(const std::string& kind, double peak_lr, int64_t warmup_steps,
                                           int64_t total_steps);
  // The learning rate for optimizer step `step` (0-based), as HF's LambdaLR gives it.
  double At(int64_t step) const;
};

}  // namespace ftd::engine
