// Grouped GEMMs over runs of rows, the MoE experts' layout: group g's rows are
// [offs[g-1], offs[g]) (offs: [E] int32 inclusive prefix sums on the tensors' device, as
// at::_grouped_mm takes them). On bf16 CUDA tensors of an sm90 GPU they run ftd's own Hopper
// kernels (kernels/grouped_gemm_sm90.cuh: CUTLASS 3.x ptr-array, TMA + wgmma, persistent, with a
// choice of tile; 64-row tiles waste less on the uneven groups a real router makes), elsewhere
// the references (one at::mm per group, fp32 accumulation for 16-bit inputs).
#pragma once

#include <optional>

#include <ATen/core/Tensor.h>

#include "kernels/grouped_gemm_launch.h"

namespace ftd::kernels {

// out [N, M]: out[rows_g] = rows[rows_g] @ w[g].  rows [N, K]; w [E, K, M], contiguous or the
// transpose(1, 2) view of a contiguous [E, M, K] (the backward's w^T).
at::Tensor GroupedMm(const at::Tensor& rows, const at::Tensor& w, const at::Tensor& offs,
                     std::optional<GroupedGemmTile> tile = std::nullopt);

// out [E, K, M]: out[g] = a[rows_g]^T @ b[rows_g] (the weight gradient; zeros for an empty group).
// a [N, K], b [N, M], both contiguous.
at::Tensor GroupedMmWeightGrad(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                               std::optional<GroupedGemmTile> tile = std::nullopt);

// Groups [first, first + count) of GroupedMmWeightGrad: out [count, K, M], the whole gradient's
// slice (bit for bit on the own kernel; offs stays on the device).
at::Tensor GroupedMmWeightGradGroups(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs, int64_t first,
                                     int64_t count);

// Whether the own kernels serve these operands (bf16 CUDA on sm90, built with CUTLASS, the
// dimensions multiples of 8); the functions above take the references otherwise.
bool GroupedMmCudaSupports(const at::Tensor& rows, const at::Tensor& w);
bool GroupedMmWeightGradCudaSupports(const at::Tensor& a, const at::Tensor& b);

// The tile the functions above use when none is given (FTD_GROUPED_GEMM_TILES overrides it for
// benchmarks: "rows=<tile>,rows_t=<tile>,wgrad=<tile>", names as GroupedGemmTileName).
GroupedGemmTile DefaultGroupedGemmTile(GroupedOperands operands);

// LibTorch references.
at::Tensor GroupedMmReference(const at::Tensor& rows, const at::Tensor& w, const at::Tensor& offs);
at::Tensor GroupedMmWeightGradReference(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs);

// The CUDA launchers (FTD_WITH_CUTLASS; otherwise they throw).
at::Tensor GroupedMmCuda(const at::Tensor& rows, const at::Tensor& w, const at::Tensor& offs, GroupedGemmTile tile);
at::Tensor GroupedMmWeightGradCuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                   GroupedGemmTile tile);
// Groups [first, first + count) of GroupedMmWeightGradCuda's output: out [count, K, M] (offs is
// every group's, on the device; nothing is read on the host).
at::Tensor GroupedMmWeightGradGroupsCuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                         int64_t first, int64_t count, GroupedGemmTile tile);

}  // namespace ftd::kernels
