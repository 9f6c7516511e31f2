// The grouped GEMM for GroupedOperands::kRowsTimesWeight (kernels/grouped_gemm_sm90.cuh).
#include "kernels/grouped_gemm_sm90.cuh"

namespace ftd::kernels::sm90 {

size_t RowsWorkspaceBytes(const GroupedGemmArgs& args, GroupedGemmTile tile) {
  return WorkspaceBytesFor<GroupedOperands::kRowsTimesWeight>(args, tile);
}

std::string LaunchRows(const GroupedGemmArgs& args, GroupedGemmTile tile, void* workspace, size_t bytes,
                     cudaStream_t stream) {
  return LaunchFor<GroupedOperands::kRowsTimesWeight>(args, tile, workspace, bytes, stream);
}

}  // namespace ftd::kernels::sm90
