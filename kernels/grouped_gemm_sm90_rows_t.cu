// The grouped GEMM for GroupedOperands::kRowsTimesWeightT (kernels/grouped_gemm_sm90.cuh).
#include "kernels/grouped_gemm_sm90.cuh"

namespace ftd::kernels::sm90 {

size_t RowsTWorkspaceBytes(const GroupedGemmArgs& args, GroupedGemmTile tile) {
  return WorkspaceBytesFor<GroupedOperands::kRowsTimesWeightT>(args, tile);
}

std::string LaunchRowsT(const GroupedGemmArgs& args, GroupedGemmTile tile, void* workspace, size_t bytes,
                     cudaStream_t stream) {
  return LaunchFor<GroupedOperands::kRowsTimesWeightT>(args, tile, workspace, bytes, stream);
}

}  // namespace ftd::kernels::sm90
