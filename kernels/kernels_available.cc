#include "kernels/kernels_available.h"

#include <ATen/Context.h>

namespace ftd::kernels {

bool CudaKernelsAvailable() {
#ifdef FTD_WITH_CUDA
  return at::hasCUDA();
#else
  return false;
#endif
}

}  // namespace ftd::kernels
