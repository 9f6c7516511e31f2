// The routed (token, slot) pairs grouped by expert, for grouped GEMM: a stable counting sort of
// the flattened expert ids experts[T, k] (flat index t*k + j), the same order as
// `experts.reshape(-1).sort(stable=true)`. CUDA: a block histogram, one scan over experts and a
// stable scatter (warp match + per-warp ranks); no sort, no host synchronisation.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "kernels/kernels_available.h"

namespace ftd::kernels {

struct ExpertOrder {
  at::Tensor counts;   // [E] int64: rows per expert
  at::Tensor ends;     // [E] int32: inclusive prefix sum of counts (at::_grouped_mm's offs)
  at::Tensor order;    // [T*k] int64: sorted row -> flat index t*k + j
  at::Tensor inverse;  // [T*k] int64: flat index -> sorted row
};

// Expert ids must lie in [0, num_experts); num_experts <= 1024 for the CUDA kernels.
ExpertOrder SortByExpert(const at::Tensor& experts, int64_t num_experts);

ExpertOrder SortByExpertReference(const at::Tensor& experts, int64_t num_experts);
ExpertOrder SortByExpertCuda(const at::Tensor& experts, int64_t num_experts);  // CPU-only builds: throws

}  // namespace ftd::kernels
