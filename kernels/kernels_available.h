// Whether the CUDA kernels can run: built with CUDA (FTD_WITH_CUDA) and a GPU is visible.
#pragma once

namespace ftd::kernels {

bool CudaKernelsAvailable();

}  // namespace ftd::kernels
