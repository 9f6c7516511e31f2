// Whether the CUDA kernels can run: built with CUDA (FTD_WITH_CUDA) and a GPU is visible.
#pragma once

namespace at {
class TensorBase;
}  // namespace at

namespace ftd::kernels {

bool CudaKernelsAvailable();

// Whether the fused kernels serve `t`: a CUDA tensor in a build that has them (CPU keeps the
// ATen code, the reference the parity tests check).
bool OnKernelDevice(const at::TensorBase& t);

}  // namespace ftd::kernels
