#include "kernels/squared_norm.h"

#include <ATen/ATen.h>

namespace ftd::kernels {

namespace {
void CheckSum(const at::Tensor& x, const at::Tensor& sum) {
  TORCH_CHECK(sum.defined() && sum.numel() == 1 && sum.scalar_type() == at::kFloat,
              "AddSquaredNorm: sum must be an fp32 scalar tensor");
  TORCH_CHECK(sum.device() == x.device(), "AddSquaredNorm: sum is on ", sum.device(), ", x on ", x.device());
}
}  // namespace

void AddSquaredNormReference(const at::Tensor& x, const at::Tensor& sum) {
  CheckSum(x, sum);
  if (x.numel() == 0) return;
  sum.add_(at::_foreach_norm({x}, 2, at::kFloat)[0].square().reshape(sum.sizes()));
}

void AddSquaredNorm(const at::Tensor& x, const at::Tensor& sum) {
#ifdef FTD_WITH_CUDA
  if (x.is_cuda()) return AddSquaredNormCuda(x, sum);
#endif
  AddSquaredNormReference(x, sum);
}

#ifndef FTD_WITH_CUDA
void AddSquaredNormCuda(const at::Tensor&, const at::Tensor&) {
  TORCH_CHECK(false, "AddSquaredNormCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
#endif

}  // namespace ftd::kernels
