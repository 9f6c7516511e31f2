// The Hopper grouped GEMM's launcher (kernels/grouped_gemm_sm90*.cu), free of LibTorch headers so
// that the CUTLASS translation units stay small; kernels/grouped_gemm.h is the tensor-facing API.
// bf16 operands, fp32 accumulation, bf16 output; groups are runs of rows given by their inclusive
// prefix sums `offs` on the device (no host sync), as at::_grouped_mm takes them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/adamw_compact_args.h"

// cudaStream_t without the CUDA headers (CPU builds include this file too).
struct CUstream_st;

namespace ftd::kernels {

// Which operands a group multiplies; E groups, group g's rows are [offs[g-1], offs[g]).
enum class GroupedOperands {
  kRowsTimesWeight,   // d[rows_g] = a[rows_g] @ b[g]:      a [N, K], b [E, K, M] (row-major), d [N, M]
  kRowsTimesWeightT,  // d[rows_g] = a[rows_g] @ b[g]^T:    a [N, K], b [E, M, K] (row-major), d [N, M]
  kWeightGrad,        // d[g] = a[rows_g]^T @ b[rows_g]:    a [N, K], b [N, M], d [E, K, M]; empty groups give zeros
};

// CTA tile and kernel schedule (CUTLASS 3.x sm90 ptr-array kernels, TMA + wgmma, persistent).
enum class GroupedGemmTile {
  kPingpong64x256,      // two consumer warpgroups alternate 64x256 tiles: short groups waste < 64 rows
  kCooperative128x256,  // both consumer warpgroups on one 128x256 tile (what LibTorch picks here)
  kPingpong128x128,
  // Clusters of two CTAs along M: each weight tile is loaded once (TMA multicast) for both.
  kPingpong64x256Cluster2,
  kCooperative128x256Cluster2,
};
constexpr int kGroupedGemmTileCount = 5;
const char* GroupedGemmTileName(GroupedGemmTile tile);

struct GroupedGemmArgs {
  GroupedOperands operands = GroupedOperands::kRowsTimesWeight;
  const void* a = nullptr;
  const void* b = nullptr;
  void* d = nullptr;
  const int32_t* offs = nullptr;  // on the device: inclusive prefix sums of the rows, every group's
  // The launch covers groups [first_group, first_group + groups) of offs. kWeightGrad writes them
  // to d[0, groups) (a chunk of the stacked gradient); the rows layouts read b[first_group + g].
  int first_group = 0;
  int groups = 0;
  int64_t k = 0;  // a's columns
  int64_t m = 0;  // d's columns (b's last dimension, or its middle one for kRowsTimesWeightT)
  // SMs the persistent CTAs spread over; 0 (or more than the device has): all of them. Fewer
  // leave SMs to work running beside the GEMM on another stream.
  int sm_count = 0;
  // kWeightGrad: on the device, one flag per group of offs; a group whose flag is set is left out
  // (nothing computed, nothing written). Null: every group.
  const uint8_t* skip_groups = nullptr;
};

// Device bytes the launch needs as scratch (per-group arguments and CUTLASS's tensor maps).
size_t GroupedGemmWorkspaceBytes(const GroupedGemmArgs& args, GroupedGemmTile tile);

// Enqueues the GEMM on `stream`; "" on success, else what failed (CUTLASS's status or CUDA's error).
// Every pointer must be 16-byte aligned and k, m multiples of 8 (TMA).
std::string LaunchGroupedGemmSm90(const GroupedGemmArgs& args, GroupedGemmTile tile, void* workspace,
                                  size_t workspace_bytes, CUstream_st* stream);

// kWeightGrad with the compact AdamW update in the epilogue: d[g] = a[rows_g]^T @ b[rows_g] is
// rounded to bf16 (as the plain launch stores it) and steps `state`'s parameter, the stacked
// [groups, k, m] weight whose gradient it is, in place; nothing is written to args.d. The 128x256
// cooperative tile; m must be a multiple of 256 (a tile row is one block of the moments).
size_t WeightGradCompactAdamWWorkspaceBytes(const GroupedGemmArgs& args);
std::string LaunchWeightGradCompactAdamWSm90(const GroupedGemmArgs& args, const CompactUpdateState& state,
                                             void* workspace, size_t workspace_bytes, CUstream_st* stream);

// The squared Frobenius norm of the kWeightGrad product, summed over the groups and added to
// sq_sum (fp32 on the device), without forming the product: ||a_g^T b_g||^2 = sum_ij (a_g a_g^T)_ij
// (b_g b_g^T)_ij, the groups' token Gram matrices, 2 T_g^2 (k + m) FLOPs against the product's
// 2 T_g k m (a third of it for Mixtral-8x7B's experts at ~1,000 tokens each). The first Gram of each
// group is stored in fp32 in `gram` (capacity floats), the second is multiplied into it in its
// GEMM's epilogue. Groups whose Gram does not fit get their flag in `done` (one byte per group, on
// the device) left 0, the others 1: the caller adds the left-out groups' squares another way.
size_t GramSquaredNormWorkspaceBytes(const GroupedGemmArgs& args);
std::string LaunchGramSquaredNormSm90(const GroupedGemmArgs& args, float* gram, int64_t capacity, uint8_t* done,
                                      float* sq_sum, void* workspace, size_t workspace_bytes, CUstream_st* stream);

}  // namespace ftd::kernels
