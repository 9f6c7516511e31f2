#include "engine/model/core/norms.h"

#include <ATen/ATen.h>

#include "kernels/kernels_available.h"
#include "kernels/rms_norm.h"

namespace ftd::engine {

using kernels::OnKernelDevice;

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  if (OnKernelDevice(x) && kernels::RmsNormCudaSupports(x, weight)) return kernels::RmsNorm(x, weight, eps);
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor variance = xf.pow(2).mean(-1, /*keepdim=*/true);
  xf = xf * at::rsqrt(variance + eps);
  return weight * xf.to(x.scalar_type());
}

std::pair<at::Tensor, at::Tensor> AddRmsNorm(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                                             double eps) {
  if (OnKernelDevice(x) && kernels::RmsNormCudaSupports(x, weight) && residual.sizes() == x.sizes() &&
      residual.scalar_type() == x.scalar_type()) {
    auto [normed, sum] = kernels::AddRmsNorm(x, residual, weight, eps);
    return {normed, sum};
  }
  at::Tensor sum = x + residual;
  return {RmsNorm(sum, weight, eps), sum};
}

}  // namespace ftd::engine
