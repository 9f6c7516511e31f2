// kernels/adamw_compact_bulk.h: what the bulk-copy kernel takes.
#include "kernels/adamw_compact_bulk.h"

#ifdef FTD_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

namespace ftd::kernels {

bool CompactAdamWBulkSupports(const at::Tensor& param, const at::Tensor& master_low, const at::Tensor& grad,
                              const CompactMoments& moments, const at::Tensor& step, const AdamWHyper& h) {
#ifdef FTD_WITH_CUDA
  if (!CompactAdamWCudaSupports(param, master_low, grad, moments, step, h)) return false;
  if (!master_low.defined() || grad.scalar_type() != at::kBFloat16) return false;
  if (param.numel() % kCompactBulkChunk != 0) return false;
  // Bulk copies move 16-byte-aligned spans; a chunk's scales are 64 bytes.
  for (const at::Tensor* t : {&param, &master_low, &grad, &moments.r_codes, &moments.s_codes, &moments.r_scale,
                              &moments.s_max}) {
    if ((reinterpret_cast<uintptr_t>(t->data_ptr()) & 15u) != 0) return false;
  }
  return at::cuda::getDeviceProperties(param.device().index())->major == 9;
#else
  (void)param, (void)master_low, (void)grad, (void)moments, (void)step, (void)h;
  return false;
#endif
}

}  // namespace ftd::kernels
