#include "kernels/adamw.h"

#include <cmath>
#include <cstdint>

#include <ATen/ATen.h>

namespace ftd::kernels {

bool StepScalarsValid(const at::Tensor& scalars, c10::Device device) {
  return scalars.defined() && scalars.scalar_type() == at::kFloat && scalars.numel() == 2 &&
         scalars.is_contiguous() && scalars.device() == device;
}

void AdamWStepReference(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                        const at::Tensor& exp_avg_sq, const at::Tensor& step, const AdamWHyper& h) {
  const double st = step.item<double>();
  const double bc1 = 1 - std::pow(h.beta1, st), bc2 = 1 - std::pow(h.beta2, st);
  const bool dev = h.scalars.defined();
  const double lr = dev ? h.scalars[0].item<double>() : h.lr;
  const double grad_scale = dev ? h.scalars[1].item<double>() : h.grad_scale;
  at::Tensor p = param.to(at::kFloat), g = grad.to(at::kFloat) * static_cast<float>(grad_scale);
  at::Tensor m = exp_avg.to(at::kFloat), v = exp_avg_sq.to(at::kFloat);
  p = p - p * static_cast<float>(lr * h.weight_decay);
  m = m * static_cast<float>(h.beta1) + g * static_cast<float>(1 - h.beta1);
  v = v * static_cast<float>(h.beta2) + g * g * static_cast<float>(1 - h.beta2);
  at::Tensor denom = v.sqrt() / static_cast<float>(std::sqrt(bc2)) + static_cast<float>(h.eps);
  p = p - m / denom * static_cast<float>(lr / bc1);
  param.copy_(p);
  exp_avg.copy_(m);
  exp_avg_sq.copy_(v);
}

bool AdamWCudaSupports(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                       const at::Tensor& exp_avg_sq, const at::Tensor& step) {
#ifdef FTD_WITH_CUDA
  const auto dt = param.scalar_type();
  if (dt != at::kBFloat16 && dt != at::kFloat) return false;
  for (const at::Tensor* t : {&param, &grad, &exp_avg, &exp_avg_sq}) {
    if (!t->is_cuda() || !t->is_contiguous() || t->scalar_type() != dt || t->numel() != param.numel() ||
        t->device() != param.device()) {
      return false;
    }
  }
  return step.is_cuda() && step.device() == param.device() && step.numel() == 1 && step.scalar_type() == at::kFloat;
#else
  (void)param;
  (void)grad;
  (void)exp_avg;
  (void)exp_avg_sq;
  (void)step;
  return false;
#endif
}

bool AdamWRowSparseSupports(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                            const at::Tensor& exp_avg_sq, const at::Tensor& step, const at::Tensor& touched,
                            const AdamWHyper& h) {
  if (!AdamWCudaSupports(param, grad, exp_avg, exp_avg_sq, step) || param.dim() != 2) return false;
  if (!touched.defined() || !touched.is_cuda() || touched.device() != param.device() ||
      touched.scalar_type() != at::kByte || touched.numel() != param.size(0) || !touched.is_contiguous()) {
    return false;
  }
  // Skipping an untouched row is exact only without weight decay (see adamw.h).
  return h.weight_decay == 0.0;
}

bool AdamWEmbeddingSupports(const at::Tensor& param, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                            const at::Tensor& step, const at::Tensor& touched, const at::Tensor& ids,
                            const AdamWHyper& h) {
  if (!AdamWRowSparseSupports(param, param, exp_avg, exp_avg_sq, step, touched, h)) return false;
  if (param.scalar_type() != at::kBFloat16 || param.size(1) % 8 != 0) return false;  // 16-byte rows
  for (const at::Tensor* t : {&param, &exp_avg, &exp_avg_sq}) {
    if (reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 != 0) return false;
  }
  if (!ids.defined() || ids.scalar_type() != at::kLong || ids.dim() != 1 || !ids.is_contiguous() ||
      ids.device() != param.device()) {
    return false;
  }
  return ids.size(0) < (int64_t{1} << 31);
}

#ifndef FTD_WITH_CUDA
void AdamWEmbeddingStepCuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const AdamWHyper&) {
  TORCH_CHECK(false, "AdamWEmbeddingStepCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
void AdamWRowSparseStepCuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, const AdamWHyper&) {
  TORCH_CHECK(false, "AdamWRowSparseStepCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
at::Tensor EmbeddingTokenRowsCuda(const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  TORCH_CHECK(false, "EmbeddingTokenRowsCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
// CPU-only builds: callers check AdamWCudaSupports (always false here) first.
void AdamWStepCuda(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                   const AdamWHyper&) {
  TORCH_CHECK(false, "AdamWStepCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
#endif

}  // namespace ftd::kernels
