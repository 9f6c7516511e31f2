#include "kernels/grouped_gemm_adamw.h"

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

bool GroupedMmWeightGradCompactAdamWCudaSupports(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                                 const at::Tensor& param, const at::Tensor& master_low,
                                                 const CompactMoments& moments, const at::Tensor& step,
                                                 const AdamWHyper& h) {
  if (!GroupedMmWeightGradCudaSupports(a, b) || !master_low.defined()) return false;
  if (param.dim() != 3 || param.size(0) != offs.numel() || param.size(1) != a.size(1) || param.size(2) != b.size(1)) {
    return false;
  }
  if (param.size(2) % kCompactUpdateBlock != 0 || param.device() != a.device()) return false;
  // The state as the element-wise kernel takes it (the parameter standing in for its gradient).
  return CompactAdamWCudaSupports(param, master_low, param, moments, step, h);
}

void GroupedMmWeightGradCompactAdamW(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs,
                                     const at::Tensor& param, const at::Tensor& master_low,
                                     const CompactMoments& moments, const at::Tensor& step, const AdamWHyper& h) {
  if (GroupedMmWeightGradCompactAdamWCudaSupports(a, b, offs, param, master_low, moments, step, h)) {
    GroupedMmWeightGradCompactAdamWCuda(a, b, offs, param, master_low, moments, step, h);
  } else {
    GroupedMmWeightGradCompactAdamWReference(a, b, offs, param, master_low, moments, step, h);
  }
}

WeightGradNormMethod PickWeightGradNormMethod(int64_t rows, int64_t groups, int64_t k, int64_t m) {
  if (groups <= 0) return WeightGradNormMethod::kSquaresOnly;
  const double per_group = static_cast<double>(rows) / static_cast<double>(groups);
  const bool pays = per_group >= 512 && per_group * static_cast<double>(k + m) <= 0.5 * static_cast<double>(k * m);
  return pays ? WeightGradNormMethod::kGram : WeightGradNormMethod::kSquaresOnly;
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
void GroupedMmWeightGradSquaredNormCuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        WeightGradNormMethod, int64_t) {
  TORCH_CHECK(false, "GroupedMmWeightGradSquaredNormCuda: this build has no CUTLASS grouped GEMM (FTD_WITH_CUTLASS)");
}
#endif

}  // namespace ftd::kernels
