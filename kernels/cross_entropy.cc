#include "kernels/cross_entropy.h"

#include <ATen/ATen.h>

namespace ftd::kernels {

std::pair<at::Tensor, at::Tensor> CrossEntropyRowsReference(const at::Tensor& logits, const at::Tensor& targets,
                                                            int64_t ignore_index) {
  TORCH_CHECK(logits.dim() == 2 && targets.dim() == 1 && targets.size(0) == logits.size(0),
              "CrossEntropyRows: logits [N, V] and targets [N], got ", logits.sizes(), " and ", targets.sizes());
  at::Tensor lf = logits.to(at::kFloat);
  at::Tensor valid = targets.ne(ignore_index);
  at::Tensor safe = at::where(valid, targets, at::zeros_like(targets)).unsqueeze(1);
  at::Tensor lse = at::logsumexp(lf, 1, /*keepdim=*/true);
  at::Tensor loss = ((lse - lf.gather(1, safe)).squeeze(1) * valid).to(at::kFloat);
  at::Tensor grad = (lf - lse).exp_();
  grad.scatter_add_(1, safe, at::full({logits.size(0), 1}, -1.0f, grad.options()));
  grad.mul_(valid.unsqueeze(1).to(at::kFloat));
  return {loss, grad.to(logits.scalar_type())};
}

bool CrossEntropyRowsCudaSupports(const at::Tensor& logits, const at::Tensor& targets) {
#ifdef FTD_WITH_CUDA
  return logits.is_cuda() && targets.is_cuda() && logits.dim() == 2 && logits.is_contiguous() &&
         targets.dim() == 1 && targets.size(0) == logits.size(0) && targets.scalar_type() == at::kLong &&
         (logits.scalar_type() == at::kBFloat16 || logits.scalar_type() == at::kHalf ||
          logits.scalar_type() == at::kFloat);
#else
  (void)logits;
  (void)targets;
  return false;
#endif
}

#ifndef FTD_WITH_CUDA
// CPU-only builds: callers check CrossEntropyRowsCudaSupports (always false here) first.
at::Tensor CrossEntropyRowsInPlaceCuda(const at::Tensor&, const at::Tensor&, int64_t) {
  TORCH_CHECK(false, "CrossEntropyRowsInPlaceCuda: this build has no CUDA kernels (FTD_CUDA=OFF)");
}
#endif

}  // namespace ftd::kernels
