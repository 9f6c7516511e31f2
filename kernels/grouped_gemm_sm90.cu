// Dispatch of the grouped GEMM's launcher (kernels/grouped_gemm_launch.h) to the instantiations
// of each operand layout (kernels/grouped_gemm_sm90_{rows,rows_t,wgrad,wgrad_adamw,gram}.cu).
#include "kernels/grouped_gemm_launch.h"

namespace ftd::kernels {
namespace sm90 {
size_t RowsWorkspaceBytes(const GroupedGemmArgs& args, GroupedGemmTile tile);
size_t RowsTWorkspaceBytes(const GroupedGemmArgs& args, GroupedGemmTile tile);
size_t WeightGradWorkspaceBytes(const GroupedGemmArgs& args, GroupedGemmTile tile);
std::string LaunchRows(const GroupedGemmArgs& args, GroupedGemmTile tile, void* workspace, size_t bytes,
                       cudaStream_t stream);
std::string LaunchRowsT(const GroupedGemmArgs& args, GroupedGemmTile tile, void* workspace, size_t bytes,
                        cudaStream_t stream);
std::string LaunchWeightGrad(const GroupedGemmArgs& args, GroupedGemmTile tile, void* workspace, size_t bytes,
                             cudaStream_t stream);
size_t WeightGradCompactAdamWWorkspaceBytes(const GroupedGemmArgs& args);
std::string LaunchWeightGradCompactAdamW(const GroupedGemmArgs& args, const CompactUpdateState& state,
                                         void* workspace, size_t bytes, cudaStream_t stream);
size_t GramWorkspaceBytes(const GroupedGemmArgs& args);
std::string LaunchGram(const GroupedGemmArgs& args, float* gram, int64_t capacity, uint8_t* done, float* sq_sum,
                       void* workspace, size_t bytes, cudaStream_t stream);
}  // namespace sm90

const char* GroupedGemmTileName(GroupedGemmTile tile) {
  switch (tile) {
    case GroupedGemmTile::kPingpong64x256: return "pingpong_64x256";
    case GroupedGemmTile::kCooperative128x256: return "cooperative_128x256";
    case GroupedGemmTile::kPingpong128x128: return "pingpong_128x128";
    case GroupedGemmTile::kPingpong64x256Cluster2: return "pingpong_64x256_cluster2";
    case GroupedGemmTile::kCooperative128x256Cluster2: return "cooperative_128x256_cluster2";
  }
  return "?";
}

size_t GroupedGemmWorkspaceBytes(const GroupedGemmArgs& args, GroupedGemmTile tile) {
  switch (args.operands) {
    case GroupedOperands::kRowsTimesWeight: return sm90::RowsWorkspaceBytes(args, tile);
    case GroupedOperands::kRowsTimesWeightT: return sm90::RowsTWorkspaceBytes(args, tile);
    case GroupedOperands::kWeightGrad: return sm90::WeightGradWorkspaceBytes(args, tile);
  }
  return 0;
}

std::string LaunchGroupedGemmSm90(const GroupedGemmArgs& args, GroupedGemmTile tile, void* workspace,
                                  size_t workspace_bytes, cudaStream_t stream) {
  if (args.groups == 0) return "";
  switch (args.operands) {
    case GroupedOperands::kRowsTimesWeight: return sm90::LaunchRows(args, tile, workspace, workspace_bytes, stream);
    case GroupedOperands::kRowsTimesWeightT: return sm90::LaunchRowsT(args, tile, workspace, workspace_bytes, stream);
    case GroupedOperands::kWeightGrad: return sm90::LaunchWeightGrad(args, tile, workspace, workspace_bytes, stream);
  }
  return "grouped GEMM: unknown operands";
}

size_t WeightGradCompactAdamWWorkspaceBytes(const GroupedGemmArgs& args) {
  return sm90::WeightGradCompactAdamWWorkspaceBytes(args);
}

std::string LaunchWeightGradCompactAdamWSm90(const GroupedGemmArgs& args, const CompactUpdateState& state,
                                             void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (args.groups == 0) return "";
  return sm90::LaunchWeightGradCompactAdamW(args, state, workspace, workspace_bytes, stream);
}

size_t GramSquaredNormWorkspaceBytes(const GroupedGemmArgs& args) { return sm90::GramWorkspaceBytes(args); }

std::string LaunchGramSquaredNormSm90(const GroupedGemmArgs& args, float* gram, int64_t capacity, uint8_t* done,
                                      float* sq_sum, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (args.groups == 0) return "";
  return sm90::LaunchGram(args, gram, capacity, done, sq_sum, workspace, workspace_bytes, stream);
}

}  // namespace ftd::kernels
