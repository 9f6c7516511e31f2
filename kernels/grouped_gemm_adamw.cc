#include "kernels/grouped_gemm_adamw.h"

#include <algorithm>

#include "kernels/grouped_gemm.h"

namespace ftd::kernels {

void GroupedMmWeightGradCompactAdamWReference(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                              const at::Tensor& param, const at::Tensor& master_low,
                                              const CompactMoments& moments, const at::Tensor& step,
                                              const AdamWHyper& h) {
  const at::Tensor grad = GroupedMmWeightGrad(a, b, offs);  // [E, K, M]
  TORCH_CHECK(grad.sizes() == param.sizes(), "GroupedMmWeightGradCompactAdamW: the gradient of a ", a.sizes(),
              " and b ", b.sizes(), " over ", offs.numel(), " groups is ", grad.sizes(), ", the parameter ",
              param.sizes());
  CompactAdamWStep(param, master_low, grad, moments, step, h);
}

const char* WeightGradUpdateName(WeightGradUpdate how) {
  return how == WeightGradUpdate::kEpilogue ? "epilogue" : "l2_chunks";
}

bool GroupedMmWeightGradCompactAdamWCudaSupports(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                                 const at::Tensor& param, const at::Tensor& master_low,
                                                 const CompactMoments& moments, const at::Tensor& step,
                                                 const AdamWHyper& h, WeightGradUpdate how) {
  if (!GroupedMmWeightGradCudaSupports(a, b) || !master_low.defined()) return false;
  if (param.dim() != 3 || param.size(0) != offs.numel() || param.size(1) != a.size(1) || param.size(2) != b.size(1)) {
    return false;
  }
  // The epilogue steps a tile row as one block of the moments; a chunk must start on a block.
  const int64_t aligned = how == WeightGradUpdate::kEpilogue ? param.size(2) : param.size(1) * param.size(2);
  if (aligned % kCompactUpdateBlock != 0 || param.device() != a.device() || !param.is_contiguous()) return false;
  // The state as the element-wise kernel takes it (the parameter standing in for its gradient).
  return CompactAdamWCudaSupports(param, master_low, param, moments, step, h);
}

void GroupedMmWeightGradCompactAdamW(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                     const at::Tensor& param, const at::Tensor& master_low,
                                     const CompactMoments& moments, const at::Tensor& step, const AdamWHyper& h,
                                     WeightGradUpdate how) {
  if (!GroupedMmWeightGradCompactAdamWCudaSupports(a, b, offs, param, master_low, moments, step, h, how)) {
    GroupedMmWeightGradCompactAdamWReference(a, b, offs, param, master_low, moments, step, h);
  } else if (how == WeightGradUpdate::kEpilogue) {
    GroupedMmWeightGradCompactAdamWCuda(a, b, offs, param, master_low, moments, step, h);
  } else {
    GroupedMmWeightGradThenCompactAdamWCuda(a, b, offs, param, master_low, moments, step, h);
  }
}

int64_t L2ChunkGroups(int64_t k, int64_t m) {
  // Well under the H100's 50 MB L2: the step streams ~6x the chunk's bytes of weights and
  // moments through it while it reads the chunk back.
  constexpr int64_t kChunkBytes = int64_t{12} << 20;
  return std::max<int64_t>(1, kChunkBytes / std::max<int64_t>(1, 2 * k * m));
}

void GroupedMmWeightGradThenCompactAdamWCuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                             const at::Tensor& param, const at::Tensor& master_low,
                                             const CompactMoments& moments, const at::Tensor& step,
                                             const AdamWHyper& h, int64_t chunk_groups, bool discard_chunks) {
  TORCH_CHECK(GroupedMmWeightGradCompactAdamWCudaSupports(a, b, offs, param, master_low, moments, step, h,
                                                          WeightGradUpdate::kL2Chunks),
              "GroupedMmWeightGradThenCompactAdamWCuda: needs contiguous bf16 sm90 CUDA a [N, K], b [N, M] and a ",
              "bf16 parameter [E, K, M] with its compact state, K * M a multiple of 256; got ", a.sizes(), ", ",
              b.sizes(), ", ", param.sizes());
  const int64_t groups = param.size(0), per_group = param.size(1) * param.size(2);
  const int64_t chunk = chunk_groups > 0 ? chunk_groups : L2ChunkGroups(param.size(1), param.size(2));
  const at::Tensor p = param.view({-1}), low = master_low.view({-1});
  AdamWHyper chunk_h = h;
  chunk_h.discard_grad = discard_chunks;
  for (int64_t first = 0; first < groups; first += chunk) {
    const int64_t count = std::min(chunk, groups - first);
    // Freed at the end of the iteration: the next chunk's dW gets the same block, still in L2.
    const at::Tensor dw = GroupedMmWeightGradGroupsCuda(a, b, offs, first, count,
                                                        DefaultGroupedGemmTile(GroupedOperands::kWeightGrad));
    const int64_t begin = first * per_group, length = count * per_group;
    CompactAdamWStepCuda(p.narrow(0, begin, length), low.narrow(0, begin, length), dw.view({-1}),
                         moments.Narrow(begin, length), step, chunk_h);
  }
}

bool GroupedMmWeightGradSquaredNormCudaSupports(const at::Tensor& a, const at::Tensor& b, const at::Tensor& sq_sum) {
  return GroupedMmWeightGradCudaSupports(a, b) && b.size(1) % kCompactUpdateBlock == 0 &&
         sq_sum.scalar_type() == at::kFloat && sq_sum.numel() == 1 && sq_sum.device() == a.device() &&
         sq_sum.is_contiguous();
}

void GroupedMmWeightGradSquaredNorm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                    const at::Tensor& sq_sum) {
  if (GroupedMmWeightGradSquaredNormCudaSupports(a, b, sq_sum)) {
    GroupedMmWeightGradSquaredNormCuda(a, b, offs, sq_sum);
    return;
  }
  sq_sum.add_(GroupedMmWeightGrad(a, b, offs).to(at::kFloat).square().sum().reshape(sq_sum.sizes()));
}

#ifndef FTD_WITH_CUTLASS
void GroupedMmWeightGradCompactAdamWCuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const CompactMoments&, const at::Tensor&,
                                         const AdamWHyper&) {
  TORCH_CHECK(false, "GroupedMmWeightGradCompactAdamWCuda: this build has no CUTLASS grouped GEMM (FTD_WITH_CUTLASS)");
}
void GroupedMmWeightGradSquaredNormCuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  TORCH_CHECK(false, "GroupedMmWeightGradSquaredNormCuda: this build has no CUTLASS grouped GEMM (FTD_WITH_CUTLASS)");
}
#endif

}  // namespace ftd::kernels
