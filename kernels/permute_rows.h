// Rows into expert order and back, each the other's backward (with the order of expert_sort.h):
//   PermuteRows(x [T, H], order) -> [T*k, H]      out[p] = x[order[p] / k]
//   UnpermuteSum(y [T*k, H], inverse) -> [T, H]   out[t] = sum_j y[inverse[t*k + j]]
// CUDA: one warp per output row, 16-byte accesses; the sum is a gather in j order (fp32
// accumulation, no atomics, deterministic).
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "kernels/kernels_available.h"

namespace ftd::kernels {

// Differentiable in x / y; order and inverse are int64 [T*k].
at::Tensor PermuteRows(const at::Tensor& x, const at::Tensor& order, const at::Tensor& inverse, int64_t k);
at::Tensor UnpermuteSum(const at::Tensor& y, const at::Tensor& order, const at::Tensor& inverse, int64_t k);

at::Tensor PermuteRowsReference(const at::Tensor& x, const at::Tensor& order, int64_t k);
at::Tensor UnpermuteSumReference(const at::Tensor& y, const at::Tensor& inverse, int64_t k);

// FTD_WITH_CUDA; CPU-only builds define them to throw.
at::Tensor PermuteRowsCuda(const at::Tensor& x, const at::Tensor& order, int64_t k);
at::Tensor UnpermuteSumCuda(const at::Tensor& y, const at::Tensor& inverse, int64_t k);

}  // namespace ftd::kernels
