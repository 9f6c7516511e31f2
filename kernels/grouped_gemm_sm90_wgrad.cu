// The grouped GEMM for GroupedOperands::kWeightGrad (kernels/grouped_gemm_sm90.cuh).
#include "kernels/grouped_gemm_sm90.cuh"

namespace ftd::kernels::sm90 {

size_t WeightGradWorkspaceBytes(const GroupedGemmArgs& args, GroupedGemmTile tile) {
  return WorkspaceBytesFor<GroupedOperands::kWeightGrad>(args, tile);
}

std::string LaunchWeightGrad(const GroupedGemmArgs& args, GroupedGemmTile tile, void* workspace, size_t bytes,
                     cudaStream_t stream) {
  return LaunchFor<GroupedOperands::kWeightGrad>(args, tile, workspace, bytes, stream);
}

}  // namespace ftd::kernels::sm90
