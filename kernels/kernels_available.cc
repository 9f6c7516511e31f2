#include "kernels/kernels_available.h"

#include <ATen/Context.h>
#include <ATen/core/TensorBase.h>

namespace ftd::kernels {

bool CudaKernelsAvailable() {
#ifdef FTD_WITH_CUDA
  return at::hasCUDA();
#else
  return false;
#endif
}

bool OnKernelDevice(const at::TensorBase& t) {
#ifdef FTD_WITH_CUDA
  return t.is_cuda();
#else
  (void)t;
  return false;
#endif
}

}  // namespace ftd::kernels
