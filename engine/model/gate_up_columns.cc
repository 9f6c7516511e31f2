#include "engine/model/gate_up_columns.h"

#include <ATen/ATen.h>

namespace ftd::engine {

bool HasInterleavedGateUp(const TensorSpec& spec) {
  return spec.expert_names == ExpertNames::kFusedInterleaved &&
         (spec.slot == Slot::kExpertsGateUp || spec.slot == Slot::kExpertsGateUpBias);
}

at::Tensor DeinterleaveGateUp(const at::Tensor& t) {
  const int64_t last = t.dim() - 1;
  return at::cat({t.slice(last, 0, t.size(last), 2), t.slice(last, 1, t.size(last), 2)}, last);
}

at::Tensor InterleaveGateUp(const at::Tensor& t) {
  const int64_t last = t.dim() - 1, F = t.size(last) / 2;
  return at::stack({t.narrow(last, 0, F), t.narrow(last, F, F)}, -1).flatten(last, last + 1);
}

}  // namespace ftd::engine
